"""Verified end to end on a miniature project: `mkdocs build --strict` makes a side-by-side page with both
diagrams, MathML and the header facts; each kind of bad lesson fails the build with `file:line` and the reason
and leaves no page written; stale figures are flagged on the page."""

import json
import re

import pytest

from conftest import build, make_project, FIXTURES

LESSON = "annotated/demo/tiny_model.py"


def test_fixture_project_builds_a_lesson_page(project):
    result = build(project)
    assert result.returncode == 0, result.stderr
    page = (project / "site/lessons/demo/tiny_model/index.html").read_text()
    assert page.count('class="lit-section') >= 5
    assert page.count('class="lit-prose"') == page.count('class="lit-code"')
    assert (
        page.count("<svg") >= 2
        and "lit-diagram-classes" in page
        and "lit-diagram-dataflow" in page
    )
    assert "<math" in page and "cdn" not in page.lower()
    assert (
        "python -m annotated.demo.tiny_model" in page
        and "about 1 s on 2 CPU cores" in page
    )
    assert "Verified against</dt><dd>torch.nn.Linear, to the bit." in page
    assert 'id="exercises"' in page
    notebook = json.loads(
        (project / "site/downloads/annotated/demo/tiny_model.ipynb").read_text()
    )
    assert notebook["nbformat"] == 4 and any(
        cell["cell_type"] == "markdown" for cell in notebook["cells"]
    )
    assert (project / "site/downloads/annotated/demo/tiny_model.py").read_text() == (
        project / LESSON
    ).read_text()
    home = (project / "site/index.html").read_text()
    assert (
        "A planned lesson" in home
        and "not yet written" in home
        and "lessons/demo/tiny_model/" in home
    )


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


def test_stale_figures_are_flagged_not_shown_silently(project):
    folder = project / "docs/figures/demo/tiny_model"
    folder.mkdir(parents=True)
    (folder / "line.png").write_bytes(
        (
            FIXTURES.parent.parent.parent / "tools/literate/assets/literate.css"
        ).read_bytes()[:0]
        or b"\x89PNG\r\n\x1a\n"
    )
    (folder / "figures.json").write_text(
        json.dumps(
            {
                "source": LESSON,
                "source_sha256": "0" * 64,
                "command": "python -m annotated.demo.tiny_model",
                "files": ["line.png"],
                "output": "output norm 1.0",
            }
        )
    )
    result = build(project)
    assert result.returncode == 0, result.stderr
    page = (project / "site/lessons/demo/tiny_model/index.html").read_text()
    assert "lit-stale" in page and "older version of this lesson" in page
    assert "output norm 1.0" in page


def test_mkdocs_serve_rerenders_a_lesson_when_it_is_saved(project):
    """`mkdocs serve` watches annotated/: saving a lesson changes its served page without a restart."""
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
        server.terminate()
        server.wait(timeout=10)
