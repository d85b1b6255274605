"""Speed of the engine, measured with pytest-benchmark (run
`pytest --benchmark-only tests/tools`): parsing and rendering a 1,000-line lesson with
warm diagrams, a warm `mkdocs build --strict` of the whole site, and the rebuild
`mkdocs serve` does after one lesson is saved. In the default run the 1,000-line lesson
runs once, as a test; the two whole-site ones are measured only: their bodies, a build
and a rebuild of the whole site (100 s together), are what test_site.py's build and
test_build.py's `mkdocs serve` test check already."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO, make_project
from tools.literate import pipeline
from tools.literate.files import LessonFile

WHOLE_SITE = "measured with --benchmark-only; test_site.py and test_build.py check it"


def thousand_line_lesson() -> str:
    """The tiny fixture lesson grown to 1,000 lines with prose, math, docstrings and
    code in lesson proportions."""
    source = (FIXTURES / "tiny_model.py").read_text()
    head, exercises = source.split("# ## Exercises")
    chunks = [head]
    index = 0
    while "".join(chunks).count("\n") < 1000:
        chunks.append(
            textwrap.dedent(f'''
            # Step {index} of the long derivation. The gradient of the loss with \
respect to $w_{{{index}}}$
            # follows from the chain rule, summed over every path:
            #
            # $$
            # \\frac{{\\partial L}}{{\\partial w_{{{index}}}}} = \
\\sum_j \\frac{{\\partial L}}{{\\partial y_j}} \
\\frac{{\\partial y_j}}{{\\partial w_{{{index}}}}}
            # $$
            def step_{index}(x, weight=0.5):
                """Scale `x` by $w$ and add a bias `[batch, width]`."""
                scaled = x * weight  # [batch, width]
                shifted = scaled + {index}
                return shifted

        ''')
        )
        index += 1
    return "".join(chunks) + "# ## Exercises" + exercises


def test_bench_parse_and_render_1000_line_lesson(benchmark, tmp_path):
    project = make_project(tmp_path / "project", lesson_source=thousand_line_lesson())
    lesson = LessonFile(project, "annotated/demo/tiny_model.py")
    original = lesson.path.read_text()
    assert original.count("\n") >= 1000
    site = pipeline.Site(
        cache_dir=project / ".cache",
        use_directory_urls=True,
        pages=frozenset({"index.md", lesson.page}),
        neighbours={},
    )
    # Warms the diagrams.
    pipeline.render_page(pipeline.read(lesson, project / "docs"), site)
    edits = iter(range(10**6))

    def edit_prose():
        # A new word of prose: the page must be parsed and rendered again, the diagrams
        # not.
        lesson.path.write_text(original + f"\n# Edit {next(edits)}.\n")
        return (), {}

    def read_and_render():
        return pipeline.render_page(pipeline.read(lesson, project / "docs"), site)

    page = benchmark.pedantic(read_and_render, setup=edit_prose, rounds=5, iterations=1)
    assert page.body.count('class="lit-section') > 60


def copy_of_repo(target: Path) -> Path:
    ignore = shutil.ignore_patterns(
        "__pycache__", ".hypothesis", ".pytest_cache", ".benchmarks", "site", "out"
    )
    for name in ("annotated", "docs", "tests", "tools", ".cache"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, target / name, ignore=ignore)
    shutil.copy(REPO / "mkdocs.yml", target / "mkdocs.yml")
    return target


@pytest.mark.slow
def test_bench_warm_mkdocs_build_of_the_whole_site(benchmark, tmp_path):
    if benchmark.disabled:
        pytest.skip(WHOLE_SITE)
    project = copy_of_repo(tmp_path / "repo")
    command = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        str(tmp_path / "site"),
    ]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(project)}
    # Warms the caches for the measured builds.
    subprocess.run(command, cwd=project, env=env, check=True, capture_output=True)

    def build():
        return subprocess.run(
            command, cwd=project, env=env, capture_output=True, text=True
        )

    result = benchmark.pedantic(build, rounds=3, iterations=1)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_bench_serve_rebuild_after_saving_one_lesson(benchmark, tmp_path):
    """What `mkdocs serve` does when a lesson is saved: reload the config, rebuild in
    the same process."""
    if benchmark.disabled:
        pytest.skip(WHOLE_SITE)
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    project = copy_of_repo(tmp_path / "repo")
    lesson = project / "annotated/foundations/autograd.py"
    original = lesson.read_text()
    site = tmp_path / "site"
    cwd = os.getcwd()
    os.chdir(project)
    sys.path.insert(0, str(project))
    try:
        build(load_config(str(project / "mkdocs.yml"), site_dir=str(site)))
        saves = iter(range(10**6))

        def save_lesson():
            lesson.write_text(original + f"\n# saved {next(saves)}\n")
            return (), {}

        def rebuild():
            build(load_config(str(project / "mkdocs.yml"), site_dir=str(site)))

        benchmark.pedantic(rebuild, setup=save_lesson, rounds=3, iterations=1)
    finally:
        os.chdir(cwd)
        sys.path.remove(str(project))
    assert "saved" in (site / "downloads/foundations/autograd.py").read_text()
