"""Verified against the source it renders: every code line of the page equals its source
line after highlighting and unescaping (markup in code stays text), each lesson is read
and parsed once per build, the dataflow diagram follows an edit of `example()` on a warm
cache, and the downloads run in an empty folder with the project hidden."""

import html
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO
from tools.literate import downloads, pipeline
from tools.literate.files import LessonFile, discover

LESSON = "annotated/demo/tiny_model.py"


def site(project, pages=()) -> pipeline.Site:
    return pipeline.Site(
        cache_dir=project / ".cache",
        use_directory_urls=True,
        pages=frozenset({"index.md", "lessons/demo/tiny_model.md", *pages}),
        neighbours={},
    )


def render(project):
    record = pipeline.read(LessonFile(project, LESSON), project / "docs")
    return record, pipeline.render_page(record, site(project))


def code_lines(body: str) -> dict[int, str]:
    """{line number: the text a reader sees} for every code line on the page."""
    found = {}
    for number, inner in re.findall(
        r'<span class="lit-line" id="L(\d+)">(.*?)\n</span>', body, flags=re.S
    ):
        found[int(number)] = html.unescape(re.sub(r"<[^>]+>", "", inner))
    return found


def test_every_code_line_on_the_page_is_its_source_line(project):
    path = project / LESSON
    path.write_text(
        path.read_text().replace(
            "def example():",
            'MARKUP = "<b>bold</b> & <script>alert(1)</script>"  # <i>text</i>\n\n\n'
            "def example():",
        )
    )
    record, page = render(project)
    source = path.read_text().splitlines()
    shown = code_lines(page.body)
    code = [
        line for s in record.lesson.sections for line in s.code if line.text.strip()
    ]
    assert code and {line.number for line in code} <= set(shown)
    for number, text in shown.items():
        assert text == source[number - 1], (number, text)
    assert "<b>bold</b>" not in page.body and "&lt;b&gt;bold&lt;/b&gt;" in page.body
    assert "<script>alert" not in page.body


def run_hidden(script: Path, *args: str) -> subprocess.CompletedProcess:
    """Run a downloaded file in its folder with the project hidden: any `annotated` or
    `tools` module that the download does not bundle fails to import."""
    code = (
        HIDE_PROJECT
        + "import runpy\n"
        + f"sys.argv = [{script.name!r}, *{list(args)!r}]\n"
        + f"runpy.run_path({script.name!r}, run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=script.parent,
        capture_output=True,
        text=True,
        env=env,
    )


def test_the_downloads_bundle_what_they_import_and_run_alone(project, tmp_path):
    _, page = render(project)
    script = tmp_path / "tiny_model.py"
    script.write_text(page.script)
    result = run_hidden(script, "--out", "figs")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "output norm" in result.stdout and (tmp_path / "figs/line.png").exists()
    # Without the bundle the same run fails: the check above can fail.
    script.write_text((project / LESSON).read_text())
    result = run_hidden(script, "--out", "figs")
    assert result.returncode != 0 and "the project is hidden" in result.stderr


PYTHON_LESSONS = [lesson for lesson in discover(REPO) if lesson.language == "python"]
HELP_TEST = "test_each_lessons_download_answers_help_outside_the_repository"


@pytest.fixture(scope="session")
def help_runs(request, tmp_path_factory):
    """`--help` of each selected lesson's download, two runs at a time: a run is a
    Python process importing torch and the lesson's libraries on one core, and 76 of
    them one after another took three minutes. {lesson key: future of its result}."""
    selected = [
        item.callspec.params["lesson"]
        for item in request.session.items
        if getattr(item, "originalname", None) == HELP_TEST
    ]
    folder = tmp_path_factory.mktemp("help")
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {}
        for lesson in selected:
            record = pipeline.read(lesson, folder / "no-stored-results")
            script = folder / lesson.key.replace("/", "-") / "lesson.py"
            script.parent.mkdir()
            script.write_text(
                downloads.script(record.source, record.lesson.tree, record.imports)
            )
            runs[lesson.key] = pool.submit(run_hidden, script, "--help")
        yield runs
        for run in runs.values():
            run.cancel()


@pytest.mark.parametrize("lesson", PYTHON_LESSONS, ids=lambda lesson: lesson.key)
def test_each_lessons_download_answers_help_outside_the_repository(lesson, help_runs):
    result = help_runs[lesson.key].result()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def test_editing_only_example_redraws_the_dataflow_on_a_warm_cache(project):
    _, before = render(project)
    path = project / LESSON
    path.write_text(path.read_text().replace("torch.randn(4, 3)", "torch.randn(7, 3)"))
    _, after = render(project)
    assert "[4, 3]" in before.svgs["dataflow"] and "[7, 3]" in after.svgs["dataflow"]


COUNT_READS_AND_PARSES = """
import pathlib, sys
from mkdocs.commands.build import build
from mkdocs.config import load_config
from tools.literate import downloads, pipeline

reads, parses = [], []
read_text, parse = pathlib.Path.read_text, pipeline.parse


def counting_read(self, *args, **kwargs):
    if self.name == "tiny_model.py":
        reads.append(str(self))
    return read_text(self, *args, **kwargs)


def counting_parse(source, path):
    parses.append(str(path))
    return parse(source, path)


pathlib.Path.read_text = counting_read
pipeline.parse = counting_parse
build(load_config("mkdocs.yml"))
print(len(reads), len(parses))
"""


def test_a_lesson_is_read_and_parsed_once_per_build(project):
    result = subprocess.run(
        [sys.executable, "-c", COUNT_READS_AND_PARSES],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{project}{os.pathsep}{REPO}"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["1", "1"], result.stdout


def test_the_notebook_download_runs_in_a_kernel_with_the_project_hidden(
    project, tmp_path
):
    import nbclient
    import nbformat

    _, page = render(project)
    notebook = nbformat.reads(page.notebook, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(HIDE_PROJECT))
    nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "output norm" in printed and (tmp_path / "out/tiny/line.png").exists()


HIDE_PROJECT = """\
import sys


class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("annotated", "tools"):
            raise ImportError("the project is hidden: " + name)


sys.meta_path.insert(0, Hide())
"""


def test_long_names_in_the_header_break_only_after_punctuation():
    from tools.literate.render import breakable

    text = breakable("against torch.fake_quantize_per_tensor_affine & <b>, in short")
    assert text.startswith("against torch.<wbr>fake_<wbr>quantize_<wbr>per_<wbr>")
    assert (
        "&amp; &lt;b&gt;, in short" in text
    )  # short words and markup stay as they were
