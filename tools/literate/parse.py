"""Source → sections: split a lesson into prose (comment runs and docstrings) and the
code they explain.

The split is read from `tokenize` (which lines are full-line comments, where strings
start and stop) and `ast` (which strings are docstrings, which definition encloses a
line). No line regexes: a one-line docstring, closing quotes on a text line, or
`s = \"\"\"...\"\"\"` each come out right because the tokenizer, not a pattern, says
where a string is.

Every source line lands in exactly one column: `Section.prose_lines` or `Section.code`.
That is the no-loss invariant, and `tests/tools/test_parse.py` checks it over generated
files and every real lesson.

A CUDA C lesson (`.cu`) is split by a small scanner instead (`_parse_cuda`): its first
`/* ... */` block holds the front matter and the introduction, a run of full-line `//`
comments is prose for the code that follows, and everything else is code.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tools.literate import LessonError


@dataclass
class Line:
    """One source line: its 1-based number and its text without the newline."""

    number: int
    text: str


@dataclass
class Section:
    """Prose beside the code it explains.

    `markdown` holds the prose as Markdown lines, each tagged with the source line it
    came from (`None` for a paragraph break the engine inserted between two joined
    blocks). `prose_lines` and `code` hold the original source lines of each column.
    """

    id: str = ""
    kind: str = "text"  # "intro", "text" or "exercises"
    markdown: list[tuple[int | None, str]] = field(default_factory=list)
    prose_lines: list[Line] = field(default_factory=list)
    code: list[Line] = field(default_factory=list)

    @property
    def prose(self) -> str:
        return "\n".join(text for _, text in self.markdown).strip("\n")

    def has_code(self) -> bool:
        return any(line.text.strip() for line in self.code)


@dataclass
class Lesson:
    """A parsed file: its sections in source order and its front matter (empty when it
    has none)."""

    path: Path
    source: str
    sections: list[Section]
    front_matter: dict
    front_matter_line: int  # line of the opening `---`, or 1 when there is none
    tree: ast.Module = field(
        repr=False, default=None
    )  # the module's AST, for readers of imports and classes (empty for CUDA C)
    language: str = "python"  # or "cuda"


def parse(source: str, path: str | Path = "<lesson>") -> Lesson:
    """Split `source` into sections. Raises `LessonError` (with `file:line`) for a file
    Python cannot parse. A `.cu` path is read as CUDA C."""
    path = Path(path)
    if path.suffix == ".cu":
        return _parse_cuda(source, path)
    try:
        # A bad escape in a plain string warns here; rules.check reports its line.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            tree = ast.parse(source, filename=str(path))
    except SyntaxError as error:
        raise LessonError(
            path, error.lineno or 1, f"syntax error: {error.msg}"
        ) from None
    lines = source.splitlines()
    comment_lines = _full_line_comments(source, path)
    docstrings = _docstrings(tree, lines)
    scopes = _scopes(tree)

    # Classify each line: prose from a comment, prose from a docstring, or code. A
    # docstring also remembers the first line of its definition's header, so the header
    # can travel with it (see below).
    docstring_at: dict[int, _Docstring] = {}
    for doc in docstrings:
        for number in range(doc.first, doc.last + 1):
            docstring_at[number] = doc

    sections: list[Section] = [Section()]
    number = 1
    while number <= len(lines):
        if number in docstring_at:
            doc = docstring_at[number]
            _start_docstring_section(sections, doc)
            _add_prose_block(
                sections[-1],
                [Line(n, lines[n - 1]) for n in range(doc.first, doc.last + 1)],
                doc.markdown,
            )
            number = doc.last + 1
        elif number in comment_lines:
            block = []
            while number <= len(lines) and number in comment_lines:
                block.append(Line(number, lines[number - 1]))
                number += 1
            if sections[-1].has_code():
                sections.append(Section())
            _add_prose_block(
                sections[-1], block, [_comment_text(line.text) for line in block]
            )
        elif not lines[number - 1].strip() and _blank_run_joins_prose(
            number, lines, sections[-1], comment_lines, docstring_at
        ):
            # A blank line between two prose blocks is a paragraph break in the prose,
            # not code.
            sections[-1].prose_lines.append(Line(number, ""))
            sections[-1].markdown.append((number, ""))
            number += 1
        else:
            sections[-1].code.append(Line(number, lines[number - 1]))
            number += 1
    sections = [s for s in sections if s.prose_lines or s.code]

    front_matter, front_matter_line = _split_front_matter(sections, docstrings, path)
    _name_sections(sections, scopes, docstrings)
    return Lesson(path, source, sections, front_matter, front_matter_line, tree)


# ---- tokens: which lines are full-line comments --------------------------------------


def _full_line_comments(source: str, path: Path) -> set[int]:
    found = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type != tokenize.COMMENT:
                continue
            row, col = token.start
            before = token.line[:col]
            # A shebang or an encoding declaration is an instruction to the interpreter,
            # not prose.
            if before.strip() or (
                row <= 2 and (token.string.startswith("#!") or "coding" in token.string)
            ):
                continue
            found.add(row)
    except tokenize.TokenError as error:
        raise LessonError(
            path, error.args[1][0], f"tokenize: {error.args[0]}"
        ) from None
    return found


def _comment_text(text: str) -> str:
    text = text.strip()[1:]
    return text[1:] if text.startswith(" ") else text


# ---- ast: which strings are docstrings, which definition encloses a line -------------


@dataclass
class _Docstring:
    first: int  # first and last source line of the string
    last: int
    # First line of the definition (its first decorator), or the string's line for
    # a module.
    header: int
    qualname: str  # "" for the module docstring
    markdown: list[str]


_STRING_PREFIX = re.compile(r"^[rRuUbBfF]{0,2}(\"\"\"|'''|\"|')")


def _docstrings(tree: ast.Module, lines: list[str]) -> list[_Docstring]:
    found = []

    def visit(node, qualname: str):
        body = getattr(node, "body", None)
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            string = body[0].value
            first, last = string.lineno, string.end_lineno
            # A docstring is prose only when it has its lines to itself: nothing before
            # its opening quotes and nothing after its closing ones. `def f(): "doc"`
            # stays code.
            alone = (
                not lines[first - 1][: string.col_offset].strip()
                and not lines[last - 1][string.end_col_offset :].strip()
            )
            if alone:
                header = (
                    first
                    if isinstance(node, ast.Module)
                    else min([node.lineno] + [d.lineno for d in node.decorator_list])
                )
                found.append(
                    _Docstring(
                        first,
                        last,
                        header,
                        qualname,
                        _docstring_markdown(lines[first - 1 : last]),
                    )
                )
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, f"{qualname}.{child.name}" if qualname else child.name)

    visit(tree, "")
    return found


def _docstring_markdown(raw: list[str]) -> list[str]:
    """One Markdown line per source line: quotes and prefix removed, body dedented like
    `inspect.cleandoc`."""
    text = "\n".join(raw).strip()
    opening = _STRING_PREFIX.match(text)
    body = text[opening.end() : len(text) - len(opening.group(1))]
    body_lines = body.split("\n")
    indents = [
        len(line) - len(line.lstrip()) for line in body_lines[1:] if line.strip()
    ]
    indent = min(indents, default=0)
    return [body_lines[0].strip()] + [line[indent:].rstrip() for line in body_lines[1:]]


def _scopes(tree: ast.Module) -> list[tuple[int, int, str]]:
    """(first line, last line, qualname) of every def and class, outermost first."""
    found = []

    def visit(node, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname = f"{prefix}.{child.name}" if prefix else child.name
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                found.append((first, child.end_lineno, qualname))
                visit(child, qualname)

    visit(tree, "")
    return found


# ---- sections ------------------------------------------------------------------------


def _start_docstring_section(sections: list[Section], doc: _Docstring) -> None:
    """Give a docstring its own section, unless the current one holds only its
    definition's header.

    A comment block right above `def f():` and f's docstring explain the same thing, so
    they join. Otherwise the header lines (decorators, `def ...:`) move from the end of
    the previous section into the new one, so that a definition's code starts beside its
    docstring.
    """
    current = sections[-1]
    code_lines = [line for line in current.code if line.text.strip()]
    if all(line.number >= doc.header for line in code_lines):
        return
    header = [line for line in current.code if line.number >= doc.header]
    current.code = [line for line in current.code if line.number < doc.header]
    sections.append(Section(code=header))


def _add_prose_block(
    section: Section, source_lines: list[Line], markdown: list[str]
) -> None:
    if section.markdown and section.markdown[-1][1] != "":
        section.markdown.append((None, ""))
    section.prose_lines.extend(source_lines)
    section.markdown.extend(zip([line.number for line in source_lines], markdown))


def _blank_run_joins_prose(number, lines, section, comment_lines, docstring_at) -> bool:
    """True for a blank line inside a run of blank lines that sits between two prose
    blocks."""
    if not section.prose_lines or section.code:
        return False
    following = number
    while following <= len(lines) and not lines[following - 1].strip():
        following += 1
    return following in comment_lines or following in docstring_at


_FRONT_MATTER = "---"


def _split_front_matter(
    sections: list[Section], docstrings: list[_Docstring], path: Path
) -> tuple[dict, int]:
    module_doc = next((d for d in docstrings if d.qualname == ""), None)
    if module_doc is None or not sections:
        return {}, 1
    intro = next(
        s
        for s in sections
        if any(line.number == module_doc.first for line in s.prose_lines)
    )
    intro.kind = "intro"
    # The front matter is the YAML between the first two `---` lines of the module
    # docstring.
    doc_lines = [
        (n, text)
        for n, text in intro.markdown
        if n is not None and module_doc.first <= n <= module_doc.last
    ]
    content = [(n, text) for n, text in doc_lines if text.strip()]
    if not content or content[0][1].strip() != _FRONT_MATTER:
        return {}, 1
    opening = content[0][0]
    closing = next(
        (n for n, text in doc_lines if n > opening and text.strip() == _FRONT_MATTER),
        None,
    )
    if closing is None:
        raise LessonError(
            path,
            opening,
            "front matter opened with '---' is never closed by a second '---'",
        )
    yaml_text = "\n".join(text for n, text in doc_lines if opening < n < closing)
    try:
        front_matter = yaml.safe_load(yaml_text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = opening + 1 + (mark.line if mark else 0)
        raise LessonError(
            path,
            line,
            f"front matter is not valid YAML: {getattr(error, 'problem', error)}",
        ) from None
    if not isinstance(front_matter, dict):
        raise LessonError(
            path, opening, "front matter must be a YAML mapping of field: value"
        )
    # The front matter lines stay in the prose column's accounting; the header shows
    # them, not the prose.
    intro.markdown = [
        (n, text)
        for n, text in intro.markdown
        if n is None or n > closing or n < module_doc.first
    ]
    return front_matter, opening


def _slug(text: str, words: int = 6) -> str:
    text = re.sub(r"[`*_$\\{}()\[\]]", " ", text.lower())
    return "-".join(re.findall(r"[a-z0-9]+", text)[:words])


def _name_sections(
    sections: list[Section], scopes, docstrings: list[_Docstring]
) -> None:
    """Give each section an id that survives edits elsewhere: its definition's name,
    plus its first words."""
    documented = {d.header: d.qualname for d in docstrings if d.qualname}
    seen: dict[str, int] = {}
    for section in sections:
        code = [line.number for line in section.code if line.text.strip()]
        first_code = code[0] if code else None
        if section.kind == "intro":
            base = "intro"
        elif section.prose.startswith("## Exercises"):
            section.kind = "exercises"
            base = "exercises"
        elif first_code in documented and any(
            line.number > first_code for line in section.prose_lines
        ):
            base = _slug(documented[first_code].replace(".", " "), 12)
        else:
            anchor = first_code or (
                section.prose_lines[0].number if section.prose_lines else 1
            )
            enclosing = [
                qualname
                for first, last, qualname in scopes
                if first <= anchor <= last and first != anchor
            ]
            words = _slug(section.prose) or "code"
            base = (
                f"{_slug(enclosing[-1].replace('.', ' '), 12)}--{words}"
                if enclosing
                else words
            )
        seen[base] = seen.get(base, 0) + 1
        section.id = base if seen[base] == 1 else f"{base}-{seen[base]}"


# ---- CUDA C --------------------------------------------------------------------------


def _parse_cuda(source: str, path: Path) -> Lesson:
    """Sections of a `.cu` lesson. The file opens (after blank lines) with a `/* ... */`
    block: front matter and introduction. After it, a run of full-line `//` comments is
    prose, `// ## Heading` starts a section, and every other line is code; a `//` line
    inside a later `/* ... */` block stays code, as does a trailing `// ...` after code.
    """
    lines = source.splitlines()
    first = next((n for n, text in enumerate(lines, 1) if text.strip()), None)
    if first is None or not lines[first - 1].lstrip().startswith("/*"):
        raise LessonError(
            path,
            first or 1,
            "a CUDA C lesson opens with a /* ... */ block holding its front matter "
            "and introduction",
        )
    last = next(
        (
            n
            for n in range(first, len(lines) + 1)
            if "*/" in _after_opening(lines, n, first)
        ),
        None,
    )
    if last is None:
        raise LessonError(path, first, "the opening /* block is never closed by */")
    if lines[last - 1].split("*/", 1)[1].strip():
        raise LessonError(
            path, last, "code after the opening block's */: start it on the next line"
        )
    intro_markdown = [text for text in lines[first - 1 : last]]
    intro_markdown[0] = intro_markdown[0].lstrip()[2:]
    intro_markdown[-1] = intro_markdown[-1].rsplit("*/", 1)[0]
    intro = Section(kind="intro")
    intro.code = [Line(n, lines[n - 1]) for n in range(1, first)]
    intro.prose_lines = [Line(n, lines[n - 1]) for n in range(first, last + 1)]
    intro.markdown = [
        (n, text.rstrip()) for n, text in zip(range(first, last + 1), intro_markdown)
    ]
    sections = [intro]

    prose_at = _cuda_prose_lines(lines, last + 1, path)
    number = last + 1
    while number <= len(lines):
        text = lines[number - 1]
        if number in prose_at:
            block = []
            while number <= len(lines) and number in prose_at:
                block.append(Line(number, lines[number - 1]))
                number += 1
            if sections[-1].has_code() or sections[-1].kind == "intro":
                sections.append(Section())
            _add_prose_block(
                sections[-1], block, [_cuda_comment_text(line.text) for line in block]
            )
        elif (
            not text.strip()
            and sections[-1].kind != "intro"
            and sections[-1].prose_lines
            and not sections[-1].code
            and _next_nonblank(lines, number) in prose_at
        ):
            sections[-1].prose_lines.append(Line(number, ""))
            sections[-1].markdown.append((number, ""))
            number += 1
        else:
            sections[-1].code.append(Line(number, text))
            number += 1
    sections = [s for s in sections if s.prose_lines or s.code]

    front_matter, front_matter_line = _cuda_front_matter(intro, path)
    _name_sections(sections, [], [])
    return Lesson(
        path,
        source,
        sections,
        front_matter,
        front_matter_line,
        ast.Module(body=[], type_ignores=[]),
        language="cuda",
    )


def _after_opening(lines: list[str], number: int, first: int) -> str:
    """The text of line `number` that can close the opening block (on its first line,
    what follows the `/*`)."""
    text = lines[number - 1]
    return text.lstrip()[2:] if number == first else text


def _next_nonblank(lines: list[str], number: int) -> int:
    while number <= len(lines) and not lines[number - 1].strip():
        number += 1
    return number


def _cuda_prose_lines(lines: list[str], start: int, path: Path) -> set[int]:
    """The full-line `//` comments from line `start` on, outside `/* */` blocks and
    string literals."""
    found = set()
    in_block = None  # the line a /* block opened on
    for number in range(start, len(lines) + 1):
        text = lines[number - 1]
        if in_block is None and text.lstrip().startswith("//"):
            found.add(number)
            continue
        at, quote = 0, None
        while at < len(text):
            pair = text[at : at + 2]
            if in_block is not None:
                if pair == "*/":
                    in_block, at = None, at + 2
                    continue
            elif quote:
                if text[at] == "\\":
                    at += 1
                elif text[at] == quote:
                    quote = None
            elif text[at] in "\"'":
                quote = text[at]
            elif pair == "//":
                break
            elif pair == "/*":
                in_block, at = number, at + 2
                continue
            at += 1
    if in_block is not None:
        raise LessonError(path, in_block, "this /* comment is never closed by */")
    return found


def _cuda_comment_text(text: str) -> str:
    text = text.strip()[2:]
    return text[1:] if text.startswith(" ") else text


def _cuda_front_matter(intro: Section, path: Path) -> tuple[dict, int]:
    """The YAML between the opening block's first two `---` lines, taken out of the
    introduction's prose."""
    content = [(n, text) for n, text in intro.markdown if text.strip()]
    if not content or content[0][1].strip() != _FRONT_MATTER:
        return {}, 1
    opening = content[0][0]
    closing = next(
        (
            n
            for n, text in intro.markdown
            if n > opening and text.strip() == _FRONT_MATTER
        ),
        None,
    )
    if closing is None:
        raise LessonError(
            path,
            opening,
            "front matter opened with '---' is never closed by a second '---'",
        )
    yaml_text = "\n".join(text for n, text in intro.markdown if opening < n < closing)
    try:
        front_matter = yaml.safe_load(yaml_text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = opening + 1 + (mark.line if mark else 0)
        raise LessonError(
            path,
            line,
            f"front matter is not valid YAML: {getattr(error, 'problem', error)}",
        ) from None
    if not isinstance(front_matter, dict):
        raise LessonError(
            path, opening, "front matter must be a YAML mapping of field: value"
        )
    intro.markdown = [(n, text) for n, text in intro.markdown if n > closing]
    return front_matter, opening
