"""Sections → HTML: the page body of one lesson, prose beside code, under a header of facts.

The code is highlighted once for the whole file (so a string spanning lines is coloured right), then cut
into lines and handed to the sections that own them, each line keeping its original number.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from pygments.lexers import PythonLexer
from pygments.token import STANDARD_TYPES

from tools.literate import prose
from tools.literate.benchmarks import Benchmarks
from tools.literate.figures import Figures
from tools.literate.parse import Lesson, Section


@dataclass
class PageFacts:
    """What the header states about a lesson, gathered by the plugin from files beside it."""

    module: str  # annotated.foundations.autograd
    test_path: str  # tests/foundations/test_autograd.py
    verified: str  # the first sentence of the test's docstring
    root: str  # relative URL from the page to the site root, ending in "/"
    page_src: str  # lessons/foundations/autograd.md
    pages: set[str]  # every page of the site, for checking links
    download_py: str  # site paths of the downloads
    download_ipynb: str
    download_test: str

    @property
    def lesson_path(self) -> str:
        """`annotated/foundations/autograd.py`: what the regeneration commands take."""
        return self.module.replace(".", "/") + ".py"


def highlight_lines(source: str) -> list[str]:
    """The HTML of each source line, highlighted with Pygments' CSS classes (`k`, `n`, `s2`, …)."""
    lines: list[list[str]] = [[]]
    for token_type, value in PythonLexer(stripnl=False, ensurenl=False).get_tokens(
        source
    ):
        css = STANDARD_TYPES.get(token_type)
        while css is None:
            token_type = token_type.parent
            css = STANDARD_TYPES.get(token_type)
        for index, piece in enumerate(value.split("\n")):
            if index:
                lines.append([])
            if piece:
                escaped = html.escape(piece, quote=False)
                # Whitespace and plain names take the code block's own colour; leaving them bare keeps pages
                # (and the search indexer's work) small.
                lines[-1].append(
                    f'<span class="{css}">{escaped}</span>'
                    if css and css not in ("w", "n")
                    else escaped
                )
    return ["".join(parts) for parts in lines]


def render_lesson(
    lesson: Lesson,
    facts: PageFacts,
    diagrams: dict[str, str],
    figures: Figures | None,
    benchmarks: Benchmarks | None,
    with_benchmarks: bool,
) -> str:
    """The whole page body: header, diagrams, the demo's figures and output, then the sections."""
    highlighted = highlight_lines(lesson.source)
    parts = [
        _header(lesson, facts, benchmarks, with_benchmarks),
        _diagrams(diagrams),
        _figures(figures, facts),
    ]
    for section in lesson.sections:
        parts.append(_section(section, highlighted, lesson, facts))
    return "\n".join(parts)


def _header(
    lesson: Lesson,
    facts: PageFacts,
    benchmarks: Benchmarks | None,
    with_benchmarks: bool,
) -> str:
    meta = lesson.front_matter
    root = facts.root
    rows = [
        (
            "Run",
            f"<code>python -m {facts.module}</code> · about {html.escape(str(meta['time']))} on 2 CPU cores",
        ),
        (
            "Verified against",
            f'{html.escape(facts.verified)} <a class="lit-test-link" href="{root}{facts.download_test}">{html.escape(facts.test_path)}</a>',
        ),
        ("Benchmarks", _benchmark_table(benchmarks, with_benchmarks, facts)),
        (
            "Download",
            f'<a download href="{root}{facts.download_py}">{facts.module.rsplit(".", 1)[1]}.py</a> · '
            f'<a download href="{root}{facts.download_ipynb}">{facts.module.rsplit(".", 1)[1]}.ipynb</a>',
        ),
    ]
    facts_html = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows)
    summary = prose.render(
        [(None, str(meta["summary"]))], str(lesson.path), facts.page_src
    )
    return f'<div class="lit-header"><div class="lit-summary">{summary}</div><dl class="lit-facts">{facts_html}</dl></div>'


def _benchmark_table(
    benchmarks: Benchmarks | None, with_benchmarks: bool, facts: PageFacts
) -> str:
    if not with_benchmarks:
        return "none: nothing in this lesson is timed against a library"
    if benchmarks is None:
        return _stale_note(
            f"not measured yet: run <code>python -m tools.literate.benchmarks {facts.lesson_path}</code>"
        )
    rows = []
    for result in benchmarks.results:
        ratio = (
            "baseline"
            if result.baseline
            else (f"{result.ratio:.2f}×" if result.ratio is not None else "")
        )
        rows.append(
            f"<tr><td>{html.escape(result.group)}</td><td><code>{html.escape(result.name)}</code></td>"
            f"<td>{_seconds(result.mean_s)}</td><td>{ratio}</td></tr>"
        )
    table = (
        '<table class="lit-bench"><thead><tr><th>group</th><th>benchmark</th><th>mean</th><th>vs baseline</th></tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table><p class="lit-machine">measured on {html.escape(benchmarks.machine)}</p>'
    )
    if not benchmarks.fresh:
        table = (
            _stale_note(
                "these results were measured on an older version of this lesson"
            )
            + table
        )
    return table


def _seconds(value: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _stale_note(text: str) -> str:
    return f'<span class="lit-stale">⚠ {text}</span>'


def _diagrams(diagrams: dict[str, str]) -> str:
    figures = "".join(
        f'<figure class="lit-diagram lit-diagram-{kind}"><div class="lit-svg" data-search-exclude>{svg}</div><figcaption>{caption}</figcaption></figure>'
        for kind, (caption, svg) in diagrams.items()
    )
    return f'<div class="lit-diagrams">{figures}</div>'


def _figures(figures: Figures | None, facts: PageFacts) -> str:
    regenerate = f"python -m tools.literate.figures {facts.lesson_path}"
    if figures is None:
        return f'<div class="lit-results">{_stale_note(f"no figures yet: run <code>{regenerate}</code>")}</div>'
    note = (
        ""
        if figures.fresh
        else _stale_note(
            f"these figures were made from an older version of this lesson: run <code>{regenerate}</code>"
        )
    )
    images = "".join(
        f'<figure class="lit-figure"><img src="{facts.root}{figures.folder}/{name}" alt="{_caption(name)}" loading="lazy">'
        f"<figcaption>{_caption(name)}</figcaption></figure>"
        for name in figures.files
    )
    output = (
        f'<pre class="lit-output"><code>{html.escape(figures.output)}</code></pre>'
        if figures.output
        else ""
    )
    return (
        f'<div class="lit-results"><p class="lit-results-title">What <code>{html.escape(figures.command)}</code> prints and draws</p>'
        f'{note}{output}<div class="lit-figures">{images}</div></div>'
    )


def _caption(file_name: str) -> str:
    words = file_name.rsplit(".", 1)[0].replace("_", " ").replace("-", " ")
    return html.escape(words[:1].upper() + words[1:])


def _section(
    section: Section, highlighted: list[str], lesson: Lesson, facts: PageFacts
) -> str:
    prose_html = (
        prose.render(section.markdown, str(lesson.path), facts.page_src, facts.pages)
        if section.prose
        else ""
    )
    code = list(section.code)
    # Blank lines at either end of a block carry nothing to read; the line numbers show they are there.
    while code and not code[0].text.strip():
        code.pop(0)
    while code and not code[-1].text.strip():
        code.pop()
    code_html = "".join(
        f'<span class="lit-ln">{line.number}</span>{highlighted[line.number - 1]}\n'
        for line in code
    )
    code_block = (
        f'<div class="highlight"><pre><code>{code_html}</code></pre></div>'
        if code
        else ""
    )
    where = (
        f"{section.prose_lines[0].number}–{section.prose_lines[-1].number}"
        if section.prose_lines
        else ""
    )
    return (
        f'<section class="lit-section lit-{section.kind}" id="{section.id}">'
        f'<div class="lit-prose"><a class="lit-anchor" href="#{section.id}" title="Link to this section">¶</a>'
        f'{prose_html}<span class="lit-lines" title="source lines of this prose">{where}</span></div>'
        f'<div class="lit-code" data-search-exclude>{code_block}</div></section>'
    )
