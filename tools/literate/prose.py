"""Prose → HTML: Markdown with `$…$` and `$$…$$` math, the math turned into MathML at build time.

Math is cut out *before* Markdown sees it (so `a_i * b_j` is not read as emphasis), converted with
latex2mathml, and put back afterwards. The page then needs no script and no font from anywhere: the
browser lays out MathML itself.
"""

from __future__ import annotations

import bisect
import functools
import html
import posixpath
import re

import markdown
from latex2mathml.converter import convert as latex_to_mathml

from tools.literate import LessonError

_EXTENSIONS = [
    "tables",
    "fenced_code",
    "admonition",
    "attr_list",
    "def_list",
    "md_in_html",
    "sane_lists",
    "codehilite",
]
_EXTENSION_CONFIGS = {"codehilite": {"css_class": "highlight", "guess_lang": False}}
# latex2mathml lays out `align*` as a table but not its inline twin `aligned`; they mean the same here.
_ENVIRONMENT_ALIASES = {
    "aligned": "align*",
    "gathered": "gather*",
    "alignedat": "alignat*",
}


@functools.lru_cache(maxsize=1)
def _markdown() -> markdown.Markdown:
    return markdown.Markdown(
        extensions=_EXTENSIONS, extension_configs=_EXTENSION_CONFIGS
    )


def render(
    lines: list[tuple[int | None, str]],
    path: str,
    page_src: str | None = None,
    pages: set[str] | None = None,
) -> str:
    """Render Markdown lines (each tagged with its source line) to HTML with math as MathML.

    `page_src` is the page's path in the docs tree (`lessons/foundations/autograd.md`); a link to another
    lesson's `.md` is rewritten to that lesson's URL relative to it. When `pages` (every page's path) is
    given, a link to a page that does not exist is an error at its line.
    """
    if page_src and pages is not None:
        _check_links(lines, path, page_src, pages)
    text, formulas = _extract_math(lines, path)
    body = _markdown().reset().convert(text)
    for index, (latex, display, line) in enumerate(formulas):
        mathml = _mathml(latex, display, path, line)
        placeholder = f"LITMATH{index}X"
        if display:
            block = f'<div class="lit-math">{mathml}</div>'
            body = body.replace(f"<p>{placeholder}</p>", block)
        else:
            body = body.replace(placeholder, mathml)
    body = body.replace("LITDOLLARX", "$")
    if page_src:
        body = _rewrite_links(body, page_src)
    return body


def _extract_math(
    lines: list[tuple[int | None, str]], path: str
) -> tuple[str, list[tuple[str, bool, int]]]:
    """Replace each formula by a placeholder; return the text and the formulas with their source lines.

    Skipped: fenced code blocks, `code spans`, and `\\$` (a literal dollar). Display math `$$…$$` and inline
    math `$…$` may both run over several lines, but not past the end of a paragraph. An unclosed `$$` is an
    error at the line where it opened. Inline `$…$` follows Pandoc's rule: the opening `$` is followed by a
    non-space, the closing one preceded by a non-space and not followed by a digit, and no formula holds a
    `$` of its own, so "costs $5 or $10" stays text.
    """
    text = "\n".join(line for _, line in lines)
    starts, numbers, offset, last = [], [], 0, 1
    for number, line in lines:
        last = number or last
        starts.append(offset)
        numbers.append(last)
        offset += len(line) + 1

    def line_at(position: int) -> int:
        return numbers[bisect.bisect_right(starts, position) - 1]

    # Fenced code blocks pass through untouched: find their character ranges first.
    fenced: list[tuple[int, int]] = []
    opened_at = None
    for index, (_, line) in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            if opened_at is None:
                opened_at = starts[index]
            else:
                fenced.append((opened_at, starts[index] + len(line)))
                opened_at = None
    if opened_at is not None:
        fenced.append((opened_at, len(text)))

    formulas: list[tuple[str, bool, int]] = []
    pieces: list[str] = []
    position = 0
    while position < len(text):
        if fenced and position == fenced[0][0]:
            start, end = fenced.pop(0)
            pieces.append(text[start:end])
            position = end
            continue
        # Copy plain text up to the next character that can start math, code or an escape.
        special = _SPECIAL.search(text, position)
        stop = min(
            special.start() if special else len(text),
            fenced[0][0] if fenced else len(text),
        )
        if stop > position:
            pieces.append(text[position:stop])
            position = stop
            continue
        char = text[position]
        if text.startswith("\\$", position):
            pieces.append("LITDOLLARX")
            position += 2
        elif char == "`":
            run = len(text[position:]) - len(text[position:].lstrip("`"))
            close = text.find("`" * run, position + run)
            end = position + run if close < 0 else close + run
            pieces.append(text[position:end])
            position = end
        elif text.startswith("$$", position):
            close = text.find("$$", position + 2)
            if close < 0:
                raise LessonError(
                    path,
                    line_at(position),
                    "unclosed $$: display math opened here is never closed",
                )
            formulas.append(
                (text[position + 2 : close].strip(), True, line_at(position))
            )
            # Display math is a block of its own, so it never lands inside a paragraph's <p>.
            pieces.append(f"\n\nLITMATH{len(formulas) - 1}X\n\n")
            position = close + 2
        elif char == "$":
            close = _inline_close(text, position)
            if close is None:
                pieces.append("$")
                position += 1
            else:
                formulas.append((text[position + 1 : close], False, line_at(position)))
                pieces.append(f"LITMATH{len(formulas) - 1}X")
                position = close + 1
        else:
            pieces.append(char)
            position += 1
    return "".join(pieces), formulas


def _inline_close(text: str, start: int) -> int | None:
    """The index of the `$` closing an inline formula opened at `start`, or None when it is a plain dollar."""
    if start + 1 >= len(text) or text[start + 1].isspace():
        return None
    close = start + 1
    while True:
        close = text.find("$", close)
        if close < 0:
            return None
        if text[close - 1] != "\\":
            break
        close += 1
    formula = text[start:close]
    if (
        text[close - 1].isspace()
        or (close + 1 < len(text) and text[close + 1].isdigit())
        or "`" in formula
        or "\n\n" in formula
    ):
        return None
    return close


@functools.lru_cache(maxsize=4096)
def _convert(latex: str, display: bool) -> str:
    for name, alias in _ENVIRONMENT_ALIASES.items():
        latex = latex.replace(f"\\begin{{{name}}}", f"\\begin{{{alias}}}").replace(
            f"\\end{{{name}}}", f"\\end{{{alias}}}"
        )
    return latex_to_mathml(latex, display="block" if display else "inline")


def _mathml(latex: str, display: bool, path: str, line: int) -> str:
    depth = 0
    for match in re.finditer(r"\\.|[{}]", latex):
        depth += {"{": 1, "}": -1}.get(match.group(), 0)
        if depth < 0:
            break
    if depth != 0:
        raise LessonError(
            path, line, f"cannot render math {latex!r}: unbalanced braces"
        )
    try:
        mathml = _convert(latex, display)
    except (
        Exception
    ) as error:  # latex2mathml raises many types; each is a bad formula in the lesson
        raise LessonError(
            path,
            line,
            f"cannot render math {latex!r}: {type(error).__name__} {error}".rstrip(),
        ) from None
    # latex2mathml passes a command it does not know through as text; a reader would see `\foo` on the page.
    unknown = re.search(r"<m[io]>(\\[A-Za-z]+)</m[io]>", mathml)
    if unknown:
        raise LessonError(
            path,
            line,
            f"cannot render math {latex!r}: unknown command {unknown.group(1)}",
        )
    # Keep the source as an annotation: screen readers and copy-paste get the LaTeX back.
    annotation = (
        f'<annotation encoding="application/x-tex">{html.escape(latex)}</annotation>'
    )
    opening, body = mathml.split(">", 1)
    return (
        f"{opening}><semantics>{body[: -len('</math>')]}{annotation}</semantics></math>"
    )


_SPECIAL = re.compile(r"[\\`$]")
_MD_LINK = re.compile(r'href="(?![a-z]+:|/|#)([^"#]+)\.md(#[^"]*)?"')


_MD_TARGET = re.compile(r"\]\((?![a-z]+:|/|#)([^)\s#]+\.md)(#[^)\s]*)?\)")


def _check_links(
    lines: list[tuple[int | None, str]], path: str, page_src: str, pages: set[str]
) -> None:
    for number, line in lines:
        for match in _MD_TARGET.finditer(line):
            target = posixpath.normpath(
                posixpath.join(posixpath.dirname(page_src), match.group(1))
            )
            if target not in pages:
                raise LessonError(
                    path,
                    number or 1,
                    f"link to {match.group(1)}: no page {target} in the site",
                )


def _rewrite_links(body: str, page_src: str) -> str:
    """`href="autograd.md#value-mul"` on page `lessons/foundations/x.md` → `href="../autograd/#value-mul"`."""

    def replace(match):
        target = posixpath.normpath(
            posixpath.join(posixpath.dirname(page_src), match.group(1))
        )
        target_url = (
            ""
            if target == "index"
            else (
                target[: -len("index")] if target.endswith("/index") else target + "/"
            )
        )
        page_url = (
            posixpath.dirname(page_src)
            if page_src.endswith("index.md")
            else page_src[: -len(".md")]
        )
        relative = posixpath.relpath(target_url or ".", page_url or ".")
        return f'href="{relative}/{match.group(2) or ""}"'.replace("/./", "/").replace(
            '"./', '"'
        )

    return _MD_LINK.sub(replace, body)
