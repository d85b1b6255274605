"""Prose → HTML: Markdown with `$…$` and `$$…$$` math, the math turned into MathML at
build time.

Math is cut out *before* Markdown sees it (so `a_i * b_j` is not read as emphasis),
converted with latex2mathml, and put back afterwards. The page then needs no script and
no font from anywhere: the browser lays out MathML itself.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
import functools
import html
import posixpath
import re

import markdown
from latex2mathml.converter import convert as latex_to_mathml

from tools.literate import LessonError
from tools.literate.files import page_url, relative_url

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
# latex2mathml lays out `align*` as a table but not its inline twin `aligned`; they mean
# the same here.
_ENVIRONMENT_ALIASES = {
    "aligned": "align*",
    "gathered": "gather*",
    "alignedat": "alignat*",
}
# LaTeX's `\arg` is the one standard function name latex2mathml does not know. Papers
# write `\arg\max`, which becomes its `\argmax` (limits below in display math); a bare
# `\arg` becomes an upright operator.
_ARG_MAX = re.compile(r"\\arg\s*\\(max|min)(?![A-Za-z])")
_ARG = re.compile(r"\\arg(?![A-Za-z])")


@functools.lru_cache(maxsize=1)
def _markdown() -> markdown.Markdown:
    return markdown.Markdown(
        extensions=_EXTENSIONS, extension_configs=_EXTENSION_CONFIGS
    )


@dataclass(frozen=True)
class Links:
    """What a page needs to resolve links to other pages: where it is, and what
    exists."""

    page_src: str  # "lessons/foundations/autograd.md"
    pages: frozenset[str]  # every page's docs path
    use_directory_urls: bool = True
    # lesson page → its section ids: a link to `lesson.md#id` must name one of them
    sections: Mapping[str, frozenset[str]] = field(default_factory=dict)


def render(
    lines: list[tuple[int | None, str]],
    path: str,
    links: Links | None = None,
    citations: dict[str, str] | None = None,
) -> str:
    """Render Markdown lines (each tagged with its source line) to HTML with math as
    MathML.

    With `links`, a link to another page's `.md` is checked (a missing page is an error
    at its line) and rewritten to that page's URL. With `citations` ({key: "Kingma & Ba,
    2015"}), each `[@key]` becomes a link to the page's bibliography entry `#ref-key`.
    """
    if links is not None:
        _check_links(lines, path, links)
    text, formulas = _extract_math(lines, path)
    body = _markdown().reset().convert(text)
    for index, (latex, display, line) in enumerate(formulas):
        mathml = _mathml(latex, display, path, line)
        placeholder = f"LITMATH{index}X"
        if display:
            # A block of its own becomes a div; one inside a list item stays in its
            # paragraph.
            body = body.replace(
                f"<p>{placeholder}</p>", f'<div class="lit-math">{mathml}</div>'
            )
            body = body.replace(placeholder, f'<span class="lit-math">{mathml}</span>')
        else:
            body = body.replace(placeholder, mathml)
    body = body.replace("LITDOLLARX", "$")
    if citations is not None:
        body = _link_citations(body, citations)
    if links is not None:
        body = rewrite_links(body, links)
    return body


_CITATION = re.compile(r"\[(@[\w:.-]+(?:\s*;\s*@[\w:.-]+)*)\]")


def _link_citations(body: str, citations: dict[str, str]) -> str:
    """`[@kingma2015adam]` → "(Kingma & Ba, 2015)" linked to its entry in the
    bibliography."""

    def replace(match):
        keys = [key.strip().lstrip("@") for key in match.group(1).split(";")]
        cited = [
            f'<a class="lit-cite" href="#ref-{key}">{html.escape(citations[key])}</a>'
            for key in keys
            if key in citations
        ]
        return f"({'; '.join(cited)})" if len(cited) == len(keys) else match.group(0)

    return _CITATION.sub(replace, body)


def _extract_math(
    lines: list[tuple[int | None, str]], path: str
) -> tuple[str, list[tuple[str, bool, int]]]:
    """Replace each formula by a placeholder; return the text and the formulas with
    their source lines.

    Skipped: fenced code blocks, `code spans`, and `\\$` (a literal dollar). Display
    math `$$…$$` and inline math `$…$` may both run over several lines, but not past the
    end of a paragraph. An unclosed `$$` is an error at the line where it opened. Inline
    `$…$` follows Pandoc's rule: the opening `$` is followed by a non-space, the closing
    one preceded by a non-space and not followed by a digit, and no formula holds a `$`
    of its own, so "costs $5 or $10" stays text.
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
        # Copy plain text up to the next character that can start math, code or an
        # escape.
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
            # Display math is a block of its own, so it never lands inside a paragraph's
            # <p>, unless it is indented under a list item: blank lines there would end
            # the list (step 4 of a recipe swallowed into a paragraph), so it stays in
            # the item's text.
            line_start = text.rfind("\n", 0, position) + 1
            indented = text[line_start:position].isspace()
            placeholder = f"LITMATH{len(formulas) - 1}X"
            pieces.append(placeholder if indented else f"\n\n{placeholder}\n\n")
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
    """The index of the `$` closing an inline formula opened at `start`, or None when it
    is a plain dollar."""
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
    latex = _ARG_MAX.sub(r"\\arg\1", latex)
    latex = _ARG.sub(r"\\mathop{\\mathrm{arg}}", latex)
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
    # latex2mathml passes a command it does not know through as text; a reader would see
    # `\foo` on the page.
    unknown = re.search(r"<m[io]>(\\[A-Za-z]+)</m[io]>", mathml)
    if unknown:
        raise LessonError(
            path,
            line,
            f"cannot render math {latex!r}: unknown command {unknown.group(1)}",
        )
    mathml = _typeset(mathml)
    # Keep the source as an annotation: screen readers and copy-paste get the LaTeX
    # back.
    annotation = (
        f'<annotation encoding="application/x-tex">{html.escape(latex)}</annotation>'
    )
    opening, body = mathml.split(">", 1)
    return (
        f"{opening}><semantics>{body[: -len('</math>')]}{annotation}</semantics></math>"
    )


# A prime is already a raised glyph: as a superscript it is raised and shrunk twice, and
# nearly vanishes. `g'` becomes g followed by the prime at full size.
_PRIME = re.compile(
    r"<msup>(<m[io][^>]*>[^<]*</m[io]>|<mrow>(?:(?!</?mrow>).)*</mrow>)"
    r"(?:<mi>|<mrow><mi>)(&#x02032;|&#x02033;|′|″)(?:</mi>|</mi></mrow>)</msup>"
)
# `+=` arrives as two operators, each with its own spacing ("+ ="): join them into one.
_COMPOUND = re.compile(
    r"<mo>(&#x0002B;|&#x02212;|&#x0002A;|/|:|&#x0003A;)</mo><mo>(&#x0003D;|=)</mo>"
)


# `|x|` arrives as two bars in the middle of a row, which the browser spaces like a
# relation ("tanh | x |"); an absolute value or a norm wants its bars close.
_BAR = '<mo stretchy="false">&#x0007C;</mo>'
_CLOSE_BAR = '<mo stretchy="false" lspace="0.05em" rspace="0.05em">&#x0007C;</mo>'


def _typeset(mathml: str) -> str:
    mathml = _PRIME.sub(r'<mrow>\1<mo lspace="0" rspace="0">\2</mo></mrow>', mathml)
    mathml = mathml.replace(_BAR, _CLOSE_BAR)
    return _COMPOUND.sub(r"<mo>\1\2</mo>", mathml)


_SPECIAL = re.compile(r"[\\`$]")
_MD_LINK = re.compile(r'href="(?![a-z]+:|/|#)([^"#]+)\.md(#[^"]*)?"')


_MD_TARGET = re.compile(r"\]\((?![a-z]+:|/|#)([^)\s#]+\.md)(#[^)\s]*)?\)")


# Anchors every lesson page has besides its sections: lines and the bibliography.
_LESSON_ANCHOR = re.compile(r"L\d+|references|ref-[\w:.-]+")


def _check_links(lines: list[tuple[int | None, str]], path: str, links: Links) -> None:
    for number, line in lines:
        for match in _MD_TARGET.finditer(line):
            target = posixpath.normpath(
                posixpath.join(posixpath.dirname(links.page_src), match.group(1))
            )
            if target not in links.pages:
                raise LessonError(
                    path,
                    number or 1,
                    f"link to {match.group(1)}: no page {target} in the site",
                )
            anchor = (match.group(2) or "#")[1:]
            known = links.sections.get(target)
            if anchor and known is not None and not _LESSON_ANCHOR.fullmatch(anchor):
                if anchor not in known:
                    raise LessonError(
                        path,
                        number or 1,
                        f"link to {match.group(1)}#{anchor}: {target} has no section "
                        f"{anchor!r}",
                    )


def rewrite_links(body: str, links: Links) -> str:
    """`href="autograd.md#value-mul"` on `lessons/foundations/x.md` →
    `href="../autograd/#value-mul"` (or `autograd.html#value-mul` without directory
    URLs)."""
    here = page_url(links.page_src, links.use_directory_urls)

    def replace(match):
        target = posixpath.normpath(
            posixpath.join(posixpath.dirname(links.page_src), match.group(1) + ".md")
        )
        url = page_url(target, links.use_directory_urls)
        return f'href="{relative_url(url, here)}{match.group(2) or ""}"'

    return _MD_LINK.sub(replace, body)
