"""Sections → HTML: the page body of one lesson, prose beside code, under a header of
facts.

The code is highlighted once for the whole file (so a string spanning lines is coloured
right), then cut into lines and handed to the sections that own them, each line keeping
its number as an anchor (`#L123`). The number is drawn by CSS from `data-ln`, so it is
not part of the code's text: the copy button copies exactly the source lines.
"""

from __future__ import annotations

import functools
import html
import re
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urljoin

from pygments.lexers import CudaLexer, PythonLexer
from pygments.token import STANDARD_TYPES

from tools.literate import i18n, prose
from tools.literate.benchmarks import Benchmarks, comparison
from tools.literate.figures import Figures
from tools.literate.gpu_results import GpuRecord
from tools.literate.parse import Lesson, Section


@dataclass(frozen=True)
class Neighbour:
    title: str
    url: str  # relative to the page


@dataclass(frozen=True)
class PageFacts:
    """What the page states about a lesson beyond its own source, gathered by the
    pipeline."""

    module: str  # annotated.foundations.autograd
    # annotated/foundations/autograd.py: what regeneration commands take
    lesson_path: str
    test_path: str  # tests/foundations/test_autograd.py
    verified: str  # the first sentence of the test's docstring
    root: str  # relative URL from the page to the site root, ending in "/"
    links: prose.Links
    # site paths of the source (.py or .cu), the .ipynb (None for CUDA C) and the test
    downloads: tuple[str, str | None, str]
    diagram_files: dict  # kind → site path of its SVG file
    figures_folder: str  # site path of the stored figures
    previous: Neighbour | None
    next: Neighbour | None
    language: str = "python"  # or "cuda"
    # Measured on a GPU by the prepared check: a kernel lesson's page says so, or that
    # it has not been yet.
    on_gpu: bool = False
    # The competencies of the plan's checklist this lesson demonstrates, as HTML.
    demonstrates: str = ""
    # The worksheet's site path and its regions (`tools.literate.worksheet.Region`);
    # none when the lesson marks no regions.
    worksheet: str | None = None
    regions: tuple = ()
    # The papers page (relative URL), and how many lessons cite each work there: a
    # reference cited by other lessons too links to its entry, which lists them.
    papers: str | None = None
    citing: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SearchEntry:
    anchor: str
    title: str
    text: str


@functools.lru_cache(maxsize=512)
def highlight_lines(source: str, language: str = "python") -> tuple[str, ...]:
    """The HTML of each source line, highlighted with Pygments' CSS classes (`k`, `n`,
    `s2`, …). Remembered by content: both editions show the same code, and Pygments is
    a third of the time a page takes to render."""
    lexer = CudaLexer if language == "cuda" else PythonLexer
    lines: list[list[str]] = [[]]
    for token_type, value in lexer(stripnl=False, ensurenl=False).get_tokens(source):
        css = STANDARD_TYPES.get(token_type)
        while css is None:
            token_type = token_type.parent
            css = STANDARD_TYPES.get(token_type)
        for index, piece in enumerate(value.split("\n")):
            if index:
                lines.append([])
            if piece:
                escaped = html.escape(piece, quote=False)
                # Whitespace and plain names take the code block's own colour; leaving
                # them bare keeps pages (and the browser's work) small.
                bare = not css or css in ("w", "n")
                lines[-1].append(
                    escaped if bare else f'<span class="{css}">{escaped}</span>'
                )
    return tuple("".join(parts) for parts in lines)


def citation_labels(references: list[dict]) -> dict[str, str]:
    """{key: "Kingma & Ba, 2015"}: last names (one, two, or the first "et al.") and the
    year; works that would share a label get a letter after the year, in the order of
    the list ("He et al., 2016a", "He et al., 2016b")."""
    labels = {}
    for reference in references:
        # An author list cut short ends in "et al.": more authors than it names.
        authors = [str(author) for author in reference["authors"]]
        more = authors[-1:] == ["et al."]
        names = [surname(author) for author in authors if author != "et al."]
        if len(names) == 1 and not more:
            who = names[0]
        elif len(names) == 2 and not more:
            who = f"{names[0]} & {names[1]}"
        else:
            who = f"{names[0]} et al."
        labels[reference["key"]] = f"{who}, {reference['year']}"
    shared = Counter(labels.values())
    seen: Counter = Counter()
    for key, label in labels.items():
        if shared[label] > 1:
            labels[key] = label + "abcdefghijklmnopqrstuvwxyz"[seen[label]]
            seen[label] += 1
    return labels


def surname(author: str) -> str:
    """The name a citation label uses: "Kaiming He" → "He", "Aaron van den Oord" →
    "van den Oord", "Guy L. Steele Jr." → "Steele"; a group, whose name ends in a
    lowercase word ("The Triton authors"), is named whole, without "The"."""
    words = author.split()
    if words[-1] in ("Jr.", "Sr.", "II", "III", "IV") and len(words) > 1:
        words = words[:-1]
    if words[-1][:1].islower():
        return " ".join(words[1:] if words[0] == "The" else words)
    first = len(words) - 1
    while first > 0 and words[first - 1][:1].islower():
        first -= 1  # a particle: "van", "de", "von"
    return " ".join(words[first:])


def render_lesson(
    lesson: Lesson,
    facts: PageFacts,
    svgs: dict[str, tuple[str, str]],
    figures: Figures | None,
    benchmarks: Benchmarks | None,
    with_benchmarks: bool,
    gpu: GpuRecord | None = None,
) -> tuple[str, list[SearchEntry]]:
    """The whole page body, and one search entry per section of prose."""
    highlighted = highlight_lines(lesson.source, lesson.language)
    references = lesson.front_matter.get("references") or []
    citations = citation_labels(references)
    rendered = [
        (section, _prose(section, lesson, facts, citations))
        for section in lesson.sections
    ]
    intro = [html_ for section, html_ in rendered if section.kind == "intro"]
    parts = [
        _header(lesson, facts, figures, benchmarks, with_benchmarks, gpu),
        _contents(lesson.sections),
        f'<div class="lit-intro">{intro[0]}</div>' if intro else "",
        _diagrams(svgs, facts),
        _figures(figures, facts),
    ]
    for section, prose_html in rendered:
        if section.kind == "exercises":
            prose_html += _worksheet(facts)
        parts.append(_section(section, prose_html, highlighted))
    parts.append(_bibliography(references, citations, facts))
    parts.append(_pager(facts))
    return "\n".join(parts), _search_entries(rendered, lesson.front_matter["title"])


def _prose(section: Section, lesson: Lesson, facts: PageFacts, citations) -> str:
    if not section.prose:
        return ""
    return prose.render(section.markdown, str(lesson.path), facts.links, citations)


# ---- header --------------------------------------------------------------------------


def _header(
    lesson: Lesson,
    facts: PageFacts,
    figures: Figures | None,
    benchmarks: Benchmarks | None,
    with_benchmarks: bool,
    gpu: GpuRecord | None,
) -> str:
    meta = lesson.front_matter
    root = facts.root
    py, ipynb, test = facts.downloads
    stem = facts.module.rsplit(".", 1)[1]
    if facts.language == "cuda":
        run = (
            f"<code>python -m {facts.module} --device cuda</code> · needs a CUDA GPU "
            "(it compiles the file with nvcc and loads it); the test suite compiles it "
            "with <code>nvcc -arch=sm_90</code> on any machine"
        )
        download = (
            f'<a download href="{root}{py}">{stem}.cu</a> '
            '<span class="lit-note">(plain CUDA C; its Python driver is '
            f"<code>{facts.module.replace('.', '/')}.py</code>)</span>"
        )
    else:
        if figures is not None:
            took = (
                f"took {figures.seconds:.3g} s on {html.escape(figures.machine)} "
                f"(declared: {html.escape(str(meta['time']))})"
            )
        else:
            took = f"declared to take {html.escape(str(meta['time']))} on 2 CPU cores"
        run = f"<code>python -m {facts.module}</code> · {took}"
        download = (
            f'<a download href="{root}{py}">{stem}.py</a> · '
            f'<a download href="{root}{ipynb}">{stem}.ipynb</a> '
            '<span class="lit-note">(run outside this repository: the project modules '
            "they import are bundled in)</span>"
        )
        if facts.worksheet:
            download += (
                f' · <a download href="{root}{facts.worksheet}">{stem}_worksheet.py</a>'
                ' <span class="lit-note">(exercise mode: see '
                '<a href="#exercises">Exercises</a>)</span>'
            )
    rows = [
        ("Run", run),
        *_expected_row(figures),
        (
            "Verified against",
            f"{breakable(facts.verified)} "
            f'<a class="lit-test-link" href="{root}{test}">'
            f"{html.escape(facts.test_path)}</a>",
        ),
        ("Benchmarks", _benchmark_table(benchmarks, with_benchmarks, facts)),
    ]
    if facts.demonstrates:
        rows.insert(len(rows) - 1, ("Demonstrates", facts.demonstrates))
    if facts.on_gpu:
        rows.append(("On a GPU", _gpu_table(gpu)))
    rows.append(("Download", download))
    facts_html = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows)
    summary = prose.render(
        [(None, str(meta["summary"]))], str(lesson.path), facts.links
    )
    return (
        f'<div class="lit-header"><div class="lit-summary">{summary}</div>'
        f'<dl class="lit-facts">{facts_html}</dl></div>'
    )


def _expected_row(figures: Figures | None) -> list[tuple[str, str]]:
    """ "Expected result": the declared metric's range over the stored seeds, so a
    reader knows whether their run is normal; none when the lesson declares none."""
    band = figures.band() if figures is not None else None
    if band is None:
        return []
    expected = figures.expected
    low, high = band
    values = f"{low:.4g}" if f"{low:.4g}" == f"{high:.4g}" else f"{low:.4g}–{high:.4g}"
    text = (
        f"<code>{html.escape(expected['metric'])}</code> {values} over "
        f"{len(expected['values'])} seeds, {figures.seconds:.3g} s a run on "
        f"{html.escape(figures.machine)}"
    )
    if "short" in expected:
        short = expected["short"]
        flags = html.escape(" ".join(short["args"]))
        low, high = min(short["values"]), max(short["values"])
        text += (
            f'<br><span class="lit-note">the short run the test makes '
            f"(<code>{flags}</code>): {low:.4g}–{high:.4g}</span>"
        )
    return [("Expected result", text)]


def _gpu_value(name: str, value) -> str:
    """A reported number as a reader wants it: a fraction of a ceiling as a percentage,
    others to four significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return html.escape(str(value))
    if (" of " in f" {name} " or name.endswith("fraction")) and 0 <= value <= 2:
        return f"{value:.1%}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def _gpu_table(gpu: GpuRecord | None) -> str:
    measure = (
        "<code>bash tools/gpu_check.sh</code> on a machine with a CUDA GPU, then "
        "<code>python -m tools.literate.gpu_results gpu-results/gpu_check.json</code>"
    )
    if gpu is None:
        return _pending_note(f"not measured on a GPU yet: run {measure}")
    if gpu.error:
        return _pending_note(
            f"the GPU check failed on {html.escape(gpu.device)}: "
            f"{html.escape(gpu.error)}"
        )
    rows = "".join(
        f"<tr><td>{breakable(str(name))}</td>"
        f'<td class="lit-num">{_gpu_value(str(name), value)}</td></tr>'
        for name, value in gpu.report.items()
    )
    table = (
        '<div class="lit-bench-wrap"><table class="lit-bench"><thead><tr>'
        "<th>measured</th><th>value</th>"
        f"</tr></thead><tbody>{rows}</tbody></table></div>"
        f'<p class="lit-machine">measured by the prepared GPU check on '
        f"{html.escape(gpu.device)}, {html.escape(gpu.date)} "
        f"(torch {html.escape(gpu.torch)})</p>"
    )
    if not gpu.fresh:
        stale = "measured on an older version of this lesson: run"
        table = _pending_note(f"{stale} {measure}") + table
    return table


def _pending_note(text: str) -> str:
    """What only a machine with a GPU can bring up to date: a note, not a fault of the
    build (the CI machines have no GPU)."""
    return f'<span class="lit-pending">{text}</span>'


_LONG_TOKEN = re.compile(r"\S{20,}")


def breakable(text: str) -> str:
    """Escaped text whose long tokens (`torch.fake_quantize_per_tensor_affine`) may
    wrap after a `.`, `_`, `/` or `,` on a phone, never inside a word of the name."""
    return _LONG_TOKEN.sub(
        lambda match: re.sub(r"([._/,])(?=\w)", r"\1<wbr>", match.group(0)),
        html.escape(text),
    )


def _benchmark_table(
    benchmarks: Benchmarks | None, with_benchmarks: bool, facts: PageFacts
) -> str:
    if not with_benchmarks:
        return "none: nothing in this lesson is timed against a library"
    remeasure = f"python -m tools.literate.benchmarks {facts.lesson_path}"
    if benchmarks is None:
        return _stale_note(f"not measured yet: run <code>{remeasure}</code>")
    rows = []
    for result in benchmarks.results:
        words = comparison(result, benchmarks.baseline_of(result.group))
        rows.append(
            f"<tr><td>{html.escape(result.group)}</td>"
            f"<td>{html.escape(result.label)}</td>"
            f'<td class="lit-num">{_seconds(result.mean_s)}</td>'
            f"<td>{html.escape(words)}</td></tr>"
        )
    table = (
        '<div class="lit-bench-wrap"><table class="lit-bench"><thead><tr>'
        "<th>group</th><th>what runs</th><th>mean time</th>"
        "<th>compared with the baseline</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        f'<p class="lit-machine">measured with pytest-benchmark on '
        f"{html.escape(benchmarks.machine)}</p>"
    )
    if not benchmarks.fresh:
        stale = "these results were measured on an older version of this lesson: run"
        table = _stale_note(f"{stale} <code>{remeasure}</code>") + table
    return table


def _seconds(value: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g}\u00a0{unit}"
    return f"{value / 1e-9:.3g}\u00a0ns"


def _stale_note(text: str) -> str:
    return f'<span class="lit-stale">⚠ {text}</span>'


# ---- contents, diagrams, figures -----------------------------------------------------

_HEADING = re.compile(r"^(#{1,4})\s+(.+?)\s*#*$")


def heading_of(section: Section) -> str | None:
    """The text of the first Markdown heading in a section's prose, if it opens with
    one."""
    for _, text in section.markdown:
        if text.strip():
            match = _HEADING.match(text.strip())
            return match.group(2) if match else None
    return None


def _contents(sections: list[Section]) -> str:
    items = []
    for section in sections:
        title = heading_of(section)
        if title and section.kind != "intro":
            label = prose.render([(None, title)], "<toc>").removeprefix("<p>")
            label = label.removesuffix("</p>")
            items.append(f'<li><a href="#{section.id}">{label}</a></li>')
    items.append('<li><a href="#references">References</a></li>')
    return (
        '<nav class="lit-toc" aria-label="Sections">'
        "<details><summary>Sections</summary>"
        f"<ol>{''.join(items)}</ol></details></nav>"
    )


def _diagrams(svgs: dict[str, tuple[str, str]], facts: PageFacts) -> str:
    figures = "".join(
        f'<figure class="lit-diagram lit-diagram-{kind}">'
        f'<a class="lit-zoom glightbox" href="{facts.root}{facts.diagram_files[kind]}" '
        f'data-type="image" data-description="{html.escape(caption)}">'
        f'<div class="lit-svg" data-search-exclude>{svg}</div></a>'
        f"<figcaption>{caption}</figcaption></figure>"
        for kind, (caption, svg) in svgs.items()
    )
    return f'<div class="lit-diagrams">{figures}</div>'


def _figures(figures: Figures | None, facts: PageFacts) -> str:
    if facts.language == "cuda":
        # Its demo needs a GPU; what it measures is the header's "On a GPU" table.
        return ""
    regenerate = f"python -m tools.literate.figures {facts.lesson_path}"
    if figures is None:
        missing = _stale_note(f"no figures yet: run <code>{regenerate}</code>")
        return f'<div class="lit-results">{missing}</div>'
    note = ""
    if not figures.fresh:
        note = _stale_note(
            "these figures were made from an older version of this lesson: run "
            f"<code>{regenerate}</code>"
        )
    folder = f"{facts.root}{facts.figures_folder}"
    images = "".join(
        f'<figure class="lit-figure"><img src="{folder}/{figure.name}" '
        f'alt="{html.escape(figure.caption)}" width="{figure.width}" '
        f'height="{figure.height}" loading="lazy">'
        f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>"
        for figure in figures.files
    )
    output = ""
    if figures.output:
        output = (
            f'<pre class="lit-output"><code>{html.escape(figures.output)}</code></pre>'
        )
    return (
        '<div class="lit-results"><p class="lit-results-title">What '
        f"<code>{html.escape(figures.command)}</code> prints and draws</p>"
        f'{note}{output}<div class="lit-figures">{images}</div></div>'
    )


# ---- editions ------------------------------------------------------------------------

# The engine's own words on a lesson page, in the editions that translate them; the
# lesson's prose comes from its translation (`tools.literate.i18n`).
LABELS = {
    "zh": {
        "<dt>Run</dt>": "<dt>运行</dt>",
        "<dt>Expected result</dt>": "<dt>预期结果</dt>",
        "<dt>Verified against</dt>": "<dt>验证基准</dt>",
        "<dt>Demonstrates</dt>": "<dt>体现能力</dt>",
        "<dt>Benchmarks</dt>": "<dt>基准测试</dt>",
        "<dt>On a GPU</dt>": "<dt>GPU 上</dt>",
        "<dt>Download</dt>": "<dt>下载</dt>",
        "<summary>Sections</summary>": "<summary>本节目录</summary>",
        'aria-label="Sections"': 'aria-label="本节目录"',
        'aria-label="The lessons before and after"': 'aria-label="前后课程"',
        '<a href="#references">References</a>': '<a href="#references">参考文献</a>',
        "<h2>References</h2>": "<h2>参考文献</h2>",
        "<h3>Worksheet</h3>": "<h3>练习模式</h3>",
        "<th>Region</th><th>Hint</th><th>Graded by</th>": (
            "<th>待实现的函数</th><th>提示</th><th>评分测试</th>"
        ),
        "<p>Write the lesson's core yourself: ": "<p>亲手写出本章的核心：",
        " is this file with the bodies below replaced by <code>raise "
        "NotImplementedError</code> and a hint. Fill them in, then let the lesson's "
        "own tests grade your file from a clone of the repository:</p>": (
            " 就是本文件，只是下表中的函数体换成了 "
            "<code>raise NotImplementedError</code> 和一条提示。"
            "把它们写完，再在仓库的克隆中用本章自己的测试给你的文件评分：</p>"
        ),
        '<span class="lit-note">(run outside this repository: the project modules '
        "they import are bundled in)</span>": (
            '<span class="lit-note">'
            "（可在本仓库之外运行：所导入的项目模块已打包在内）</span>"
        ),
        '<span class="lit-note">(exercise mode: see <a href="#exercises">Exercises'
        "</a>)</span>": (
            '<span class="lit-note">（练习模式：见'
            '<a href="#exercises">练习</a>）</span>'
        ),
        '<span class="lit-note">(plain CUDA C; its Python driver is ': (
            '<span class="lit-note">（纯 CUDA C；它的 Python 驱动是 '
        ),
        '<p class="lit-results-title">What ': '<p class="lit-results-title">运行 ',
        " prints and draws</p>": " 所打印和绘制的内容</p>",
        "<th>group</th><th>what runs</th><th>mean time</th>"
        "<th>compared with the baseline</th>": (
            "<th>组</th><th>运行的内容</th><th>平均时间</th><th>与基线相比</th>"
        ),
        '<p class="lit-machine">measured with pytest-benchmark on ': (
            '<p class="lit-machine">由 pytest-benchmark 测量，机器：'
        ),
        "<td>the baseline</td>": "<td>基线</td>",
        "none: nothing in this lesson is timed against a library": (
            "无：本章没有与任何库对比计时的内容"
        ),
        "<th>measured</th><th>value</th>": "<th>测量项</th><th>数值</th>",
        '<p class="lit-machine">measured by the prepared GPU check on ': (
            '<p class="lit-machine">由预置的 GPU 检查测量，设备：'
        ),
        "not measured on a GPU yet: run <code>bash tools/gpu_check.sh</code> on a "
        "machine with a CUDA GPU, then ": (
            "尚未在 GPU 上测量：在有 CUDA GPU 的机器上运行 "
            "<code>bash tools/gpu_check.sh</code>，然后运行 "
        ),
        "measured on an older version of this lesson: run <code>bash "
        "tools/gpu_check.sh</code> on a machine with a CUDA GPU, then ": (
            "测于本章的旧版本：在有 CUDA GPU 的机器上运行 "
            "<code>bash tools/gpu_check.sh</code>，然后运行 "
        ),
        "the GPU check failed on ": "GPU 检查失败，设备：",
        "these results were measured on an older version of this lesson: run": (
            "这些结果测于本章的旧版本：请运行"
        ),
        "these figures were made from an older version of this lesson: run": (
            "这些图由本章的旧版本生成：请运行"
        ),
        "not measured yet: run": "尚未测量：请运行",
        "no figures yet: run": "尚无图：请运行",
        "Classes and what they hold, read from the code": (
            "各个类及其成员，从代码中读出"
        ),
        "Dataflow of the declared example, traced with torch.fx": (
            "声明的示例的数据流，由 torch.fx 追踪"
        ),
        "Dataflow of the declared example, as its dataflow() declares it": (
            "声明的示例的数据流，按其 dataflow() 的声明"
        ),
        "The lesson's public functions and the calls between them": (
            "本章的公开函数及其调用关系"
        ),
        "The kernels, their parameters, and the launches that run them, read from "
        "the code": "各个内核、它们的参数以及运行它们的启动，从代码中读出",
        "The memory levels each kernel moves data through, as the lesson declares "
        "them": "每个内核的数据所经过的各级存储，按本章的声明",
        " · needs a CUDA GPU (it compiles the file with nvcc and loads it); the test "
        "suite compiles it with <code>nvcc -arch=sm_90</code> on any machine": (
            " · 需要 CUDA GPU（它用 nvcc 编译该文件并加载）；测试套件在任何机器上都用 "
            "<code>nvcc -arch=sm_90</code> 编译它"
        ),
        'title="Link to this section"': 'title="链接到本节"',
        "✓ passed</span>": "✓ 通过</span>",
        "✗ failed</span>": "✗ 失败</span>",
        '<span class="lit-skip">skipped</span>': '<span class="lit-skip">跳过</span>',
        "</span>: shown by ": "</span>：由 ",
        '(the <a href="': '（见<a href="',
        "competency checklist</a>)": "能力清单</a>）",
    }
}
# The engine's words that carry numbers, names or dates: (pattern, replacement).
PATTERNS = {
    "zh": [
        # the Run row
        (
            r"took ([\d.]+) s on (.+?) \(declared: (.+?)\)",
            r"在 \2 上用时 \1 s（预计：\3）",
        ),
        (r"declared to take (.+?) on 2 CPU cores", r"预计在 2 个 CPU 核上用时 \1"),
        # the machine a run was made on, in the Run and Expected result rows
        (r"\b(\w+), (\d+) cores, (Linux|Darwin|Windows), ", r"\1，\2 核，\3，"),
        # the Expected result row
        (
            r"</code> (\S+) over (\d+) seeds, ([\d.]+) s a run on ([^<]+)",
            r"</code> 在 \2 个种子上为 \1，每次运行 \3 s，机器：\4",
        ),
        (
            r"the short run the test makes \((<code>.*?</code>)\): ",
            r"测试所做的短运行（\1）：",
        ),
        # the Benchmarks table
        (r"([\d.e+]+)× slower than ([^<]+)</td>", r"比 \2 慢 \1×</td>"),
        (r"([\d.e+]+)× faster than ([^<]+)</td>", r"比 \2 快 \1×</td>"),
        (
            r"as fast as ([^<]+) \(within 5 %\)</td>",
            r"与 \1 一样快（相差 5 % 以内）</td>",
        ),
        # the Demonstrates row: the plan's own words, without the English gloss
        (r'<em>[^<]*</em> (<span lang="zh-Hans">)', r"\1"),
        (
            r" \((<span class=\"lit-\w+\">.*?</span>) in the run of ([\d-]+)\)",
            r" 证明（\2 的运行：\1）",
        ),
        # the References: a work other lessons cite too
        (r'(class="lit-also" [^>]*>)cited in (\d+) lessons</a>', r"\1被 \2 课引用</a>"),
        (r" \(not in the stored run\)", " 证明（不在已存的运行中）"),
        (r" \(not run yet\)", " 证明（尚未运行）"),
    ]
}


def localise(body: str, language: str) -> str:
    """A rendered page body with the engine's labels in `language`."""
    return i18n.localise(body, language, LABELS, PATTERNS)


# The engine's and Markdown's words on the hand-written pages.
PAGE_LABELS = {
    "zh": {
        'title="Permanent link"': 'title="永久链接"',
        "Dataflow of the declared example, exported with torch.export and grouped by "
        "submodule": "声明的示例的数据流，用 torch.export 导出并按子模块分组",
    }
}
PAGE_PATTERNS = {
    "zh": [
        (
            r"Classes of (<code>[^<]+</code>), read from its source",
            r"\1 的各个类，从其源码中读出",
        ),
    ]
}


def localise_page(html: str, language: str) -> str:
    """A hand-written page's HTML with the engine's and Markdown's words in
    `language`: its heading links' titles, the reading pages' captions."""
    return i18n.localise(html, language, PAGE_LABELS, PAGE_PATTERNS)


# ---- sections ------------------------------------------------------------------------


def _breakable(name: str) -> str:
    """A long identifier as HTML that a narrow column wraps after `_` and `.`, not
    in the middle of a word."""
    return re.sub(r"([_.])", r"\1<wbr>", html.escape(name))


def _hint_html(hint: str) -> str:
    """A worksheet hint as HTML: escaped, with its `code spans` set as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(hint))


def _worksheet(facts: PageFacts) -> str:
    """Below the exercises: the worksheet, which regions it blanks, and the tests that
    grade each one."""
    if not facts.worksheet:
        return ""
    stem = facts.module.rsplit(".", 1)[1]
    rows = "".join(
        f"<tr><td><code>{_breakable(region.name)}</code></td>"
        f"<td>{_hint_html(region.hint)}</td>"
        f"<td>{'<br>'.join(f'<code>{_breakable(t)}</code>' for t in region.tests)}"
        "</td></tr>"
        for region in facts.regions
    )
    return (
        '<div class="lit-worksheet"><h3>Worksheet</h3>'
        f"<p>Write the lesson's core yourself: <a download href=\"{facts.root}"
        f'{facts.worksheet}">{stem}_worksheet.py</a> is this file with the bodies '
        "below replaced by <code>raise NotImplementedError</code> and a hint. Fill "
        "them in, then let the lesson's own tests grade your file from a clone of "
        "the repository:</p>"
        f"<pre><code>pytest --lesson {html.escape(facts.lesson_path)} "
        f"--worksheet {stem}_worksheet.py</code></pre>"
        '<div class="lit-worksheet-wrap"><table><thead><tr><th>Region</th><th>Hint</th>'
        f"<th>Graded by</th></tr></thead><tbody>{rows}</tbody></table></div></div>"
    )


def _section(section: Section, prose_html: str, highlighted: list[str]) -> str:
    code = list(section.code)
    # Blank lines at either end of a block carry nothing to read; the numbers show they
    # exist.
    while code and not code[0].text.strip():
        code.pop(0)
    while code and not code[-1].text.strip():
        code.pop()
    if section.kind == "intro":
        prose_html = ""  # shown full width above the diagrams
        if not code:
            return ""
    # Each line's number links to the line, for a mouse. It is no tab stop and hidden
    # from screen readers: a lesson has hundreds of lines, and the keyboard should
    # reach the next section's links, not step through every number on the way.
    lines = "".join(
        f'<span class="lit-line" id="L{line.number}">'
        f'<a class="lit-ln" href="#L{line.number}" data-ln="{line.number}" '
        'tabindex="-1" aria-hidden="true"></a>'
        f"{highlighted[line.number - 1]}\n</span>"
        for line in code
    )
    code_block = (
        f'<div class="highlight"><pre><code>{lines}</code></pre></div>' if code else ""
    )
    anchor = ""
    if prose_html:
        anchor = (
            f'<a class="lit-anchor" href="#{section.id}" '
            'title="Link to this section">¶</a>'
        )
    kind = "text" if section.kind == "intro" else section.kind
    return (
        f'<section class="lit-section lit-{kind}" id="{section.id}">'
        f'<div class="lit-prose">{anchor}{prose_html}</div>'
        f'<div class="lit-code" data-search-exclude>{code_block}</div></section>'
    )


def _bibliography(
    references: list[dict], citations: dict[str, str], facts: PageFacts
) -> str:
    items = []
    for reference in references:
        authors = ", ".join(str(author) for author in reference["authors"])
        title, venue = str(reference["title"]), str(reference["venue"])
        if reference.get("arxiv"):
            arxiv = str(reference["arxiv"])
            link = f'<a href="https://arxiv.org/abs/{html.escape(arxiv)}">arXiv:{html.escape(arxiv)}</a>'
        else:
            url = html.escape(str(reference["url"]))
            link = f'<a href="{url}">{url}</a>'
        items.append(
            f'<li id="ref-{html.escape(reference["key"])}">'
            '<span class="lit-cite-label">'
            f"{html.escape(citations[reference['key']])}</span> "
            f"{html.escape(authors)} ({reference['year']}). "
            f"<em>{html.escape(title)}</em>{full_stop(title)} "
            f"{html.escape(venue)}{full_stop(venue)} {link}"
            f"{_also(reference, facts)}</li>"
        )
    return (
        '<section class="lit-references" id="references"><h2>References</h2>'
        f"<ol>{''.join(items)}</ol></section>"
    )


def _also(reference: dict, facts: PageFacts) -> str:
    """After a reference that other lessons cite too: a link to its entry on the
    papers page, which names them."""
    count = facts.citing.get(reference["key"], 0)
    if facts.papers is None or count < 2:
        return ""
    key = html.escape(reference["key"])
    return (
        f' · <a class="lit-also" href="{facts.papers}#ref-{key}">'
        f"cited in {count} lessons</a>"
    )


def full_stop(text: str) -> str:
    """The full stop that ends a part of a reference: none after one ending in ".",
    "?" or "!" ("Steele Jr.", "Were RNNs All We Needed?")."""
    return "" if text.endswith((".", "?", "!")) else "."


def _pager(facts: PageFacts) -> str:
    links = []
    if facts.previous:
        links.append(
            f'<a class="lit-prev" href="{facts.previous.url}">'
            f"← {html.escape(facts.previous.title)}</a>"
        )
    if facts.next:
        links.append(
            f'<a class="lit-next" href="{facts.next.url}">'
            f"{html.escape(facts.next.title)} →</a>"
        )
    label = 'aria-label="The lessons before and after"'
    return f'<nav class="lit-pager" {label}>{"".join(links)}</nav>'


# ---- search --------------------------------------------------------------------------

_TAGS = re.compile(r"<[^>]+>")
# Tags that end a run of words: a paragraph, an item, a cell, and MathML's, whose
# symbols read better apart (`O ( n 2 )`, not `O(n2)`).
_BREAKS = re.compile(
    r"</?(?:p|div|li|ul|ol|h[1-6]|table|tr|td|th|pre|blockquote|br|hr|dt|dd|m[a-z]*)"
    r"\b[^>]*>"
)
_ANNOTATION = re.compile(r"<annotation[^>]*>.*?</annotation>", re.S)


def plain_text(fragment: str) -> str:
    """Readable text of rendered prose: tags dropped, math kept as its symbols without
    the TeX. An inline tag leaves nothing behind (`peft`'s reads "peft's"), a block's
    leaves a space."""
    text = _TAGS.sub("", _BREAKS.sub(" ", _ANNOTATION.sub("", fragment)))
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


def _search_entries(rendered, page_title: str) -> list[SearchEntry]:
    """One entry per section with prose, titled by the heading it falls under."""
    entries, heading = [], page_title
    for section, prose_html in rendered:
        heading = heading_of(section) or heading
        text = plain_text(prose_html)
        if not text:
            continue
        anchor = "" if section.kind == "intro" else section.id
        title = page_title if section.kind == "intro" else f"{page_title} · {heading}"
        entries.append(SearchEntry(anchor, plain_text(title), text))
    return entries


# ---- what a search engine and a link preview show of a page -------------------------


def open_graph(page_html: str, locale: str, homepage: bool = False) -> str:
    """The page with Open Graph tags at the end of its head, what a link preview in a
    chat or a feed shows: its title, description, address and first figure, read from
    the page itself. (The address and the figure's need the site's URL: the canonical
    link, which mkdocs writes when `site_url` is set.)"""
    end = page_html.find("</head>")
    if end < 0:
        return page_html
    head, body = page_html[:end], page_html[end:]
    title = re.search(r"<title>(.*?)</title>", head, re.S)
    description = re.search(r'<meta name="description" content="([^"]*)"', head)
    canonical = re.search(r'<link rel="canonical" href="([^"]*)"', head)
    figure = re.search(r'<img\b[^>]*\ssrc="([^"]+\.(?:png|jpe?g))"', body)
    tags = {"og:type": "website" if homepage else "article", "og:locale": locale}
    if title:
        tags["og:title"] = html.unescape(title.group(1).strip())
    if description:
        tags["og:description"] = html.unescape(description.group(1))
    if canonical:
        tags["og:url"] = canonical.group(1)
        if figure:
            image = html.unescape(figure.group(1))
            tags["og:image"] = urljoin(canonical.group(1), image)
    meta = "".join(
        f'<meta property="{name}" content="{html.escape(value)}">'
        for name, value in tags.items()
    )
    return head + meta + body


_WIDE = re.compile(r"[\u3000-\u9fff\uff00-\uffef]")  # CJK characters and punctuation


def page_description(page_html: str, limit: int = 200) -> str:
    """A hand-written page's <meta name="description">: the first sentences of its
    first paragraph as plain text, as many as fit in `limit` columns (one at least;
    a Chinese character takes two)."""
    paragraph = re.search(r"<p\b[^>]*>(.*?)</p>", page_html, re.S)
    if paragraph is None:
        return ""
    # A sentence ends at a full stop that a capital, a digit or a sign follows: the
    # stop in "e.g. a tensor" or "i.e. one" ends no sentence.
    sentences = re.findall(
        r".+?(?:[.!?](?=\s+[^\sa-z])|。|$)", plain_text(paragraph.group(1))
    )
    description = ""
    for sentence in sentences:
        width = len(description + sentence) + len(_WIDE.findall(description + sentence))
        if description and width > limit:
            break
        description += sentence
    return description.strip()
