"""Verified end to end on a miniature project: `mkdocs build --strict` makes a
side-by-side page with both diagrams, MathML and the header facts; each kind of bad
lesson fails the build with `file:line` and the reason and leaves no page written; stale
figures are flagged on the page."""

import json
import re

import pytest

import os

from conftest import FIXTURES, REPO, build, make_project
from tools.literate import figures, prose, render
from tools.literate.files import LessonFile

LESSON = "annotated/demo/tiny_model.py"


def test_fixture_project_builds_a_lesson_page(project):
    result = build(project)
    assert result.returncode == 0, result.stderr
    site = project / "site"
    page = (site / "lessons/demo/tiny_model/index.html").read_text()
    assert page.count('class="lit-section') >= 5
    assert page.count('class="lit-prose"') == page.count('class="lit-code"')
    assert page.count("<svg") >= 2 and "lit-diagram-classes" in page
    for kind in ("classes", "dataflow"):
        assert (
            (site / f"diagrams/demo/tiny_model/{kind}.svg")
            .read_text()
            .startswith("<svg")
        )
    assert "<math" in page and "cdn" not in page.lower()
    assert (
        "python -m annotated.demo.tiny_model" in page and "declared to take 1 s" in page
    )
    assert "Verified against</dt><dd>torch.nn.Linear, to the bit." in page
    assert 'id="exercises"' in page and 'class="lit-intro"' in page
    # The citation links to its bibliography entry.
    assert '<a class="lit-cite" href="#ref-he2016residual">He et al., 2016</a>' in page
    assert '<li id="ref-he2016residual">' in page and "arXiv:1512.03385" in page
    # Every line number is an anchor, for the mouse: no tab stop, no screen reader.
    assert 'id="L1"' not in page  # the front matter is not code
    assert re.search(
        r'<span class="lit-line" id="L(\d+)"><a class="lit-ln" href="#L\1" '
        r'data-ln="\1" tabindex="-1" aria-hidden="true"></a>',
        page,
    )
    notebook = json.loads((site / "downloads/demo/tiny_model.ipynb").read_text())
    assert notebook["nbformat"] == 4 and any(
        cell["cell_type"] == "markdown" for cell in notebook["cells"]
    )
    script = (site / "downloads/demo/tiny_model.py").read_text()
    assert "_BUNDLED" in script and "'annotated.figures'" in script
    home = (site / "index.html").read_text()
    assert "A planned lesson" in home and "planned" in home
    assert "lessons/demo/tiny_model/" in home
    # Search: one entry per section of prose, each with its anchor, no raw TeX.
    index = json.loads((site / "search/search_index.json").read_text())
    lesson_entries = [
        d for d in index["docs"] if d["location"].startswith("lessons/demo")
    ]
    assert len(lesson_entries) >= 4
    assert sum("#" in d["location"] for d in lesson_entries) == len(lesson_entries) - 1
    assert any("quetzalcoatlus" in d["text"] for d in lesson_entries)
    assert not any("\\mathrm" in d["text"] for d in lesson_entries)


def test_plain_text_joins_inline_markup_and_spaces_blocks_and_math():
    # What the search index and a page's description hold of rendered prose.
    fragment = prose.render(
        [(None, "Equal to `peft`'s adapters, *exactly*; $O(n^2)$ time."), (None, "")]
        + [(None, "- one"), (None, "- two")],
        "x.py",
    )
    assert render.plain_text(fragment) == (
        "Equal to peft's adapters, exactly; O ( n 2 ) time. one two"
    )


def test_a_page_is_described_by_the_sentences_of_its_opening_that_fit():
    opening = "<h1>T</h1><p>First sentence here. The second one is longer. Third.</p>"
    assert render.page_description(opening, limit=40) == "First sentence here."
    assert render.page_description(opening, limit=10) == "First sentence here."
    assert render.page_description(opening).endswith("Third.")
    abbreviated = "<p>Any format, e.g. safetensors, i.e. a file. Then more words.</p>"
    assert render.page_description(abbreviated, limit=45) == (
        "Any format, e.g. safetensors, i.e. a file."
    )
    # A Chinese character takes two columns: the 12 below take 24.
    chinese = "<p>一二三四五。六七八九十。</p>"
    assert render.page_description(chinese, limit=20) == "一二三四五。"
    assert render.page_description("<div>no paragraph</div>") == ""


def test_open_graph_tags_come_from_the_page_itself():
    page = (
        '<html><head><title>Q &amp; "A" - Site</title>'
        '<meta name="description" content="What it is.">'
        '<link rel="canonical" href="https://x.org/site/lessons/a/b/">'
        "</head><body><svg><title>node</title></svg>"
        '<img alt="" src="../../../figures/a/b/loss.png"></body></html>'
    )
    tagged = render.open_graph(page, "zh_CN")
    head = tagged[: tagged.index("</head>")]
    tags = dict(re.findall(r'<meta property="(og:\w+)" content="([^"]*)"', head))
    assert tags == {
        "og:type": "article",
        "og:locale": "zh_CN",
        "og:title": "Q &amp; &quot;A&quot; - Site",
        "og:description": "What it is.",
        "og:url": "https://x.org/site/lessons/a/b/",
        "og:image": "https://x.org/site/figures/a/b/loss.png",
    }
    # Without the site's address a preview gets no address and no image.
    bare = render.open_graph(page.replace("<link rel", "<link data-rel"), "en_US")
    assert "og:url" not in bare and "og:image" not in bare and "og:title" in bare
    assert render.open_graph("<p>a fragment</p>", "en_US") == "<p>a fragment</p>"


BAD_LESSONS = {
    "syntax error": (
        lambda s: s.replace("def example():", "def example(:"),
        r":\d+: syntax error",
    ),
    "unclosed $$": (
        lambda s: s.replace(
            "        # h = \\mathrm{block}(W_e x)\n        # $$",
            "        # h = \\mathrm{block}(W_e x)",
        ),
        r":\d+: unclosed \$\$",
    ),
    "no front matter": (
        lambda s: re.sub(r'r"""\n---\n.*?---\n', 'r"""\n', s, count=1, flags=re.S),
        r":1: no front matter",
    ),
    "a reference without its year": (
        lambda s: s.replace("    year: 2016\n", "", 1),
        r":\d+: front matter: references\[0\] lacks year",
    ),
    "example raises": (
        lambda s: s.replace(
            "    torch.manual_seed(0)\n",
            "    torch.manual_seed(0)\n    raise RuntimeError('broken example')\n",
        ),
        r":\d+: example\(\) or dataflow\(\) raised RuntimeError: broken example",
    ),
}


@pytest.mark.parametrize("case", BAD_LESSONS, ids=list(BAD_LESSONS))
def test_bad_lesson_fails_the_build_with_file_line_and_reason(tmp_path, case):
    edit, message = BAD_LESSONS[case]
    source = edit((FIXTURES / "tiny_model.py").read_text())
    project = make_project(tmp_path / "project", lesson_source=source)
    result = build(project)
    assert result.returncode != 0
    assert re.search(re.escape(LESSON) + message, result.stderr + result.stdout), (
        result.stderr[-2000:]
    )
    assert (
        not (project / "site/index.html").exists()
        and not (project / "site/lessons").exists()
    )
    assert (
        not list((project / ".cache").rglob("*.part"))
        if (project / ".cache").exists()
        else True
    )


def test_example_error_points_at_the_raising_line(tmp_path):
    source = (
        (FIXTURES / "tiny_model.py")
        .read_text()
        .replace(
            "    torch.manual_seed(0)\n",
            "    torch.manual_seed(0)\n    raise RuntimeError('here')\n",
        )
    )
    project = make_project(tmp_path / "project", lesson_source=source)
    line = source.splitlines().index("    raise RuntimeError('here')") + 1
    result = build(project)
    assert (
        f"literate: {LESSON}:{line}: example() or dataflow() raised RuntimeError: here"
        in result.stderr
    )


def test_stale_figures_are_flagged_not_shown_silently(project, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{project}{os.pathsep}{REPO}")
    figures.regenerate(LessonFile(project, LESSON), project / "docs")
    fresh = build(project)
    assert fresh.returncode == 0, fresh.stderr
    page = (project / "site/lessons/demo/tiny_model/index.html").read_text()
    assert (
        "lit-stale" not in page and "A straight line, drawn to test the store." in page
    )
    lesson = project / LESSON
    lesson.write_text(lesson.read_text() + "\nEDITED = True\n")  # code, not prose
    stale = build(project)
    assert stale.returncode == 0, stale.stderr
    page = (project / "site/lessons/demo/tiny_model/index.html").read_text()
    assert "lit-stale" in page and "older version of this lesson" in page
    assert "output norm" in page


def test_mkdocs_serve_rerenders_a_lesson_when_it_is_saved(project):
    """`mkdocs serve` watches annotated/: saving a lesson changes its served page
    without a restart."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from conftest import _env

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mkdocs", "serve", "--dev-addr", f"127.0.0.1:{port}"],
        cwd=project,
        env=_env(project),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/lessons/demo/tiny_model/"

    def page_text():
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            return ""

    def wait_for(word, seconds=60):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if word in page_text():
                return True
            time.sleep(0.3)
        return False

    try:
        assert wait_for("quetzalcoatlus"), "mkdocs serve never served the lesson"
        lesson = project / LESSON
        lesson.write_text(lesson.read_text().replace("quetzalcoatlus", "archaeopteryx"))
        assert wait_for("archaeopteryx"), (
            "the page was not re-rendered after the lesson changed"
        )
    finally:
        # Ctrl-C, as a user stops it: on SIGTERM mkdocs would leave its temporary
        # site folder (3 MB) behind in /tmp.
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)


# ---- a CUDA C lesson -----------------------------------------------------------------

CUDA_LESSON = "annotated/demo/vector_add.cu"


def cuda_project(root, source=None):
    """The fixture project with the CUDA C fixture lesson beside the Python one."""
    project = make_project(root)
    source = source if source is not None else (FIXTURES / "vector_add.cu").read_text()
    (project / CUDA_LESSON).write_text(source)
    curriculum = project / "annotated/curriculum.toml"
    curriculum.write_text(
        curriculum.read_text().replace(
            '{ module = "demo/not_written"',
            '{ module = "demo/vector_add.cu", title = "Adding vectors in CUDA C" },\n'
            '    { module = "demo/not_written"',
        )
    )
    (project / "tests/demo/test_vector_add_cu.py").write_text(
        '"""Verified against torch.add on a GPU, exactly."""\n'
    )
    return project


def test_a_cuda_c_lesson_renders_as_a_page_with_its_kernels_and_memory(tmp_path):
    project = cuda_project(tmp_path / "project")
    result = build(project)
    assert result.returncode == 0, result.stderr[-2000:]
    site = project / "site"
    page = (site / "lessons/demo/vector_add.cu/index.html").read_text()
    assert page.count('class="lit-section') >= 3 and "<math" in page
    assert 'id="exercises"' in page and 'class="lit-intro"' in page
    # Highlighted as CUDA C: `__global__` is a keyword, not a plain name.
    assert re.search(r'<span class="k[a-z]*">__global__</span>', page)
    # The `//` run is prose; a `//` line inside a later /* block stays code.
    assert "this is prose, not a block" in page
    assert "// even with a line like this in it" in page
    assert "python -m annotated.demo.cuda.vector_add --device cuda" in page
    classes = (site / "diagrams/demo/vector_add.cu/classes.svg").read_text()
    dataflow = (site / "diagrams/demo/vector_add.cu/dataflow.svg").read_text()
    assert "launch_add()" in classes and "&lt;&lt;&lt;" in classes
    assert "registers" in dataflow and "c[i]" in dataflow and ">add<" in dataflow
    download = (site / "downloads/demo/vector_add.cu").read_text()
    assert download == (project / CUDA_LESSON).read_text()
    assert not (site / "downloads/demo/vector_add.cu.ipynb").exists()
    # A lesson outside kernels/ makes no claim about a GPU.
    assert "On a GPU</dt>" not in page


BAD_CUDA_LESSONS = {
    "no opening block": (
        lambda s: s.replace("/*\n---", "// ---", 1),
        r":1: a CUDA C lesson opens with a /\* \.\.\. \*/ block",
    ),
    "opening block never closed": (
        lambda s: s[: s.index("*/\n")],
        r":1: the opening /\* block is never closed",
    ),
    "a later block never closed": (
        lambda s: s.replace("    */\n    if (i < n)", "    if (i < n)", 1),
        r":29: this /\* comment is never closed",
    ),
    "no declared memory": (
        lambda s: re.sub(r"memory:\n(  - .*\n)+", "", s),
        r":2: front matter: a CUDA C lesson declares `memory`",
    ),
    "no exercises": (
        lambda s: s[: s.index("// ## Exercises")],
        r":\d+: the file must end with a `// ## Exercises` comment block",
    ),
}


@pytest.mark.parametrize("case", BAD_CUDA_LESSONS, ids=list(BAD_CUDA_LESSONS))
def test_bad_cuda_lesson_fails_the_build_with_file_line_and_reason(tmp_path, case):
    edit, message = BAD_CUDA_LESSONS[case]
    source = edit((FIXTURES / "vector_add.cu").read_text())
    project = cuda_project(tmp_path / "project", source)
    result = build(project)
    assert result.returncode != 0
    found = re.search(re.escape(CUDA_LESSON) + message, result.stderr + result.stdout)
    assert found, result.stderr[-2000:]
    assert not (project / "site/lessons").exists()


def test_a_cuda_c_lesson_page_asks_for_no_cpu_figures(tmp_path):
    project = cuda_project(tmp_path / "project")
    assert build(project).returncode == 0
    page = (project / "site/lessons/demo/vector_add.cu/index.html").read_text()
    assert "no figures yet" not in page and "lit-stale" not in page


# ---- the quick preview ---------------------------------------------------------------

TWO_EDITIONS = """\
extra:
  alternate:
    - {name: English, link: ./, lang: en}
    - {name: 中文, link: zh/, lang: zh}
plugins:
  - search
  - literate
  - i18n:
      docs_structure: suffix
      fallback_to_default: true
      reconfigure_search: false
      languages:
        - {locale: en, default: true, name: English, build: true}
        - {locale: zh, name: 中文, build: !ENV [SITE_CHINESE, true]}
  - print-site:
      enabled: !ENV [SITE_PRINT_PAGE, true]
      add_to_navigation: false
"""


def test_a_quick_build_leaves_out_the_second_edition_its_switcher_and_the_book(
    tmp_path, monkeypatch
):
    """`serve --quick` sets SITE_CHINESE and SITE_PRINT_PAGE to false: the English
    edition alone, whose header then offers no language to switch to (a link to an
    edition that was not built would be a 404)."""
    project = make_project(tmp_path / "project")
    config = project / "mkdocs.yml"
    config.write_text(config.read_text().split("plugins:")[0] + TWO_EDITIONS)
    lesson = "lessons/demo/tiny_model/index.html"
    for quick, site in ((False, tmp_path / "whole"), (True, tmp_path / "quick")):
        if quick:
            monkeypatch.setenv("SITE_CHINESE", "false")
            monkeypatch.setenv("SITE_PRINT_PAGE", "false")
        result = build(project, site)
        assert result.returncode == 0, result.stderr
        page = (site / lesson).read_text(encoding="utf-8")
        assert (site / "zh" / lesson).is_file() is not quick
        assert (site / "print_page/index.html").is_file() is not quick
        assert ('hreflang="zh"' in page) is not quick


def test_the_sites_quick_switches_turn_off_its_chinese_edition_and_print_page(
    monkeypatch,
):
    from mkdocs.config import load_config

    def switches():
        config = load_config(str(REPO / "mkdocs.yml"))
        (zh,) = [e for e in config.plugins["i18n"].config.languages if e.locale == "zh"]
        return zh.build, config.plugins["print-site"].config["enabled"]

    assert switches() == (True, True)
    monkeypatch.setenv("SITE_CHINESE", "false")
    monkeypatch.setenv("SITE_PRINT_PAGE", "false")
    assert switches() == (False, False)
    setup = (REPO / "tools/setup.sh").read_text()
    assert "export SITE_CHINESE=false SITE_PRINT_PAGE=false" in setup
