"""Verified for every lesson by the format's own rules (docs/contributing.md): front matter, place in the
curriculum, imports only of earlier lessons, a declared example that runs and draws, exercises, a test file
naming its reference, and figures and benchmark results made from the current source."""

import ast
import re
from pathlib import Path

import pytest

from tools.literate import benchmarks, figures
from tools.literate.curriculum import (
    discover,
    imported_modules,
    load_curriculum,
    planned_lessons,
    project_sources,
)
from tools.literate.diagrams import dataflow_diagram
from tools.literate.parse import load

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
LESSONS = discover(REPO)
ORDER = [
    planned.module
    for planned in planned_lessons(load_curriculum(REPO / "annotated/curriculum.toml"))
]
ids = [lesson.key for lesson in LESSONS]


def test_there_are_lessons():
    assert LESSONS, "discover() found no lesson under annotated/ or kernels/"


@pytest.mark.parametrize("lesson", LESSONS, ids=ids)
def test_front_matter_matches_the_file_and_the_curriculum(lesson):
    meta = load(lesson.path).front_matter
    assert str(meta["topic"]) == lesson.key.split("/")[0]
    assert lesson.key in ORDER, (
        f"{lesson.key} is missing from annotated/curriculum.toml"
    )
    assert re.fullmatch(r"\d+(\.\d+)? (s|min)", str(meta["time"])), (
        "time is like '20 s' or '2 min'"
    )


@pytest.mark.parametrize("lesson", LESSONS, ids=ids)
def test_imports_only_earlier_lessons(lesson):
    tree = ast.parse(lesson.path.read_text(encoding="utf-8"))
    for name in imported_modules(tree):
        assert name.split(".")[0] != "tools", (
            f"{lesson.relative} imports the engine ({name})"
        )
    for path in project_sources(tree, REPO):
        key = path[len("annotated/") : -len(".py")]
        if path != "annotated/data.py":
            assert key in ORDER and ORDER.index(key) < ORDER.index(lesson.key), (
                f"{path} is not an earlier lesson"
            )


@pytest.mark.parametrize("lesson", LESSONS, ids=ids)
def test_declared_example_runs_and_draws(lesson):
    dot = dataflow_diagram(lesson.path, lesson.module)
    assert dot.count("->") >= 1, "the dataflow diagram has no edge"


@pytest.mark.parametrize("lesson", LESSONS, ids=ids)
def test_ends_with_two_to_four_exercises(lesson):
    last = load(lesson.path).sections[-1]
    assert last.kind == "exercises", (
        "the file must end with a `# ## Exercises` comment block"
    )
    items = re.findall(r"^\d+\. ", last.prose, flags=re.M)
    assert 2 <= len(items) <= 4, f"{len(items)} exercises; write 2 to 4"


@pytest.mark.parametrize("lesson", LESSONS, ids=ids)
def test_has_a_test_file_naming_its_reference(lesson):
    test = REPO / lesson.test
    assert test.exists(), f"{lesson.test} is missing"
    docstring = ast.get_docstring(ast.parse(test.read_text(encoding="utf-8"))) or ""
    assert docstring.strip(), (
        f"{lesson.test} needs a module docstring naming its reference"
    )


@pytest.mark.parametrize("lesson", LESSONS, ids=ids)
def test_figures_are_present_and_fresh(lesson):
    stored = figures.read(lesson, DOCS)
    regenerate = f"python -m tools.literate.figures {lesson.relative}"
    assert stored is not None, f"no figures: run `{regenerate}`"
    assert stored.fresh, (
        f"figures were made from an older {lesson.relative}: run `{regenerate}`"
    )
    for name in stored.files:
        assert (DOCS / stored.folder / name).stat().st_size > 1000, (
            f"{name} is missing or empty"
        )


@pytest.mark.parametrize(
    "lesson", [l for l in LESSONS if benchmarks.has_benchmarks(l)], ids=lambda l: l.key
)
def test_benchmark_results_are_present_and_fresh(lesson):
    stored = benchmarks.read(lesson, DOCS)
    remeasure = f"python -m tools.literate.benchmarks {lesson.relative}"
    assert stored is not None, f"no benchmark results: run `{remeasure}`"
    assert stored.fresh, (
        f"benchmarks were measured on an older {lesson.relative}: run `{remeasure}`"
    )
    assert stored.results and stored.machine


def test_curriculum_lists_each_lesson_once():
    assert len(ORDER) == len(set(ORDER)), (
        "a lesson is listed twice in annotated/curriculum.toml"
    )
