"""Verified for every lesson against what its page promises: the declared example runs
and draws, and the stored figures and benchmark results were made from the current
source, with captions, text of 10–14 px on the page, and a measured run time within 2×
of the declared one. (The format's rules themselves are checked in test_rules.py.)"""

import ast
import importlib
from pathlib import Path

import pytest

from tools.literate import pipeline, rules
from tools.literate.benchmarks import has_benchmarks
from tools.literate.diagrams import (
    cuda_kernel_diagram,
    dataflow_diagram,
    memory_diagram,
)
from tools.literate.files import discover

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
LESSONS = discover(REPO)
RECORDS = {lesson.key: pipeline.read(lesson, DOCS) for lesson in LESSONS}
ids = [lesson.key for lesson in LESSONS]
# A CUDA C lesson has no demo on a CPU: its numbers come from the prepared GPU check.
PYTHON = [lesson for lesson in LESSONS if lesson.language == "python"]
CUDA = [lesson for lesson in LESSONS if lesson.language == "cuda"]
python_ids = [lesson.key for lesson in PYTHON]
# The figures column at 1400 px is at least this wide; a wider PNG is scaled down to it.
FIGURE_COLUMN_PX = 1200


def test_there_are_lessons():
    assert LESSONS, "discover() found no lesson under annotated/"


@pytest.mark.parametrize("lesson", PYTHON, ids=python_ids)
def test_declared_example_runs_and_draws(lesson):
    dot = dataflow_diagram(lesson.path, lesson.module)
    assert dot.count("->") >= 1, "the dataflow diagram has no edge"


@pytest.mark.parametrize("lesson", CUDA, ids=[lesson.key for lesson in CUDA])
def test_cuda_lesson_draws_its_launches_and_declared_memory_moves(lesson):
    record = RECORDS[lesson.key]
    kernels = cuda_kernel_diagram(record.source)
    assert kernels.count("->") >= 1, "no kernel is launched with <<<...>>>"
    moves = memory_diagram(record.lesson.front_matter, lesson.path, 1)
    assert moves.count("->") >= 2, "declare at least the load and the store"


@pytest.mark.parametrize("lesson", PYTHON, ids=python_ids)
def test_figures_are_fresh_captioned_and_readable(lesson):
    stored = RECORDS[lesson.key].figures
    regenerate = f"python -m tools.literate.figures {lesson.relative}"
    assert stored is not None, f"no figures: run `{regenerate}`"
    assert stored.fresh, (
        f"figures were made from an older {lesson.relative}: run `{regenerate}`"
    )
    assert str(DOCS) not in stored.output, "the page shows the tool's scratch folder"
    for figure in stored.files:
        path = DOCS / lesson.figures_folder / figure.name
        assert path.stat().st_size > 1000, f"{figure.name} is missing or empty"
        stem = Path(figure.name).stem.replace("_", " ")
        assert (
            figure.caption.lower() != stem.lower() and len(figure.caption.split()) >= 5
        )
        scale = min(1.0, FIGURE_COLUMN_PX / figure.width)
        shown = [pt * figure.dpi / 72 * scale for pt in figure.font_pt]
        assert shown and all(10 <= px <= 14 for px in shown), (figure.name, shown)


@pytest.mark.parametrize("lesson", PYTHON, ids=python_ids)
def test_declared_time_is_within_2x_of_the_measured_one(lesson):
    record = RECORDS[lesson.key]
    declared = rules.seconds(record.lesson.front_matter["time"])
    measured = record.figures.seconds
    assert 0.5 <= measured / declared <= 2, (
        f"front matter says {declared:g} s, the demo took {measured:g} s on "
        f"{record.figures.machine}"
    )


WITH_BENCHMARKS = [
    lesson for lesson in LESSONS if has_benchmarks(RECORDS[lesson.key].test_source)
]


@pytest.mark.parametrize("lesson", WITH_BENCHMARKS, ids=lambda lesson: lesson.key)
def test_benchmark_results_are_present_and_fresh(lesson):
    stored = RECORDS[lesson.key].benchmarks
    remeasure = f"python -m tools.literate.benchmarks {lesson.relative}"
    assert stored is not None, f"no benchmark results: run `{remeasure}`"
    assert stored.fresh, (
        f"benchmarks were measured on an older {lesson.relative}: run `{remeasure}`"
    )
    assert stored.results and stored.machine
    for result in stored.results:
        assert result.baseline or stored.baseline_of(result.group), (
            f"group {result.group!r} has no baseline: mark the library's entry with "
            'benchmark.extra_info["baseline"] = True'
        )


def parse_flags(lesson, argv: list[str], capsys) -> tuple[int, str, str]:
    """The demo's exit status and output for `argv`, which argparse answers before
    the demo starts. (Not a demo run: the test below never calls a demo's main
    itself, so the fake-GPU pass, which keeps the tests that do, leaves it out.)"""
    module = importlib.import_module(lesson.module)
    with pytest.raises(SystemExit) as exit:
        module.main(argv)
    out, err = capsys.readouterr()
    return exit.value.code, out, err


@pytest.mark.parametrize("lesson", PYTHON, ids=python_ids)
def test_help_shows_defaults_and_a_missing_device_is_a_usage_error(lesson, capsys):
    source = RECORDS[lesson.key].source
    if "ArgumentParser(" not in source:
        pytest.skip("no flags")
    status, out, _ = parse_flags(lesson, ["--help"], capsys)
    assert status == 0 and "(default: " in out, out
    if '"--device"' not in source:
        return
    status, _, err = parse_flags(lesson, ["--device", "cdua"], capsys)
    assert status == 2, err
    assert "argument --device: 'cdua' is not a device" in err, err


def out_of_range(call: ast.Call) -> str:
    """A value just outside the range that `integer(...)` or `number(...)` declares;
    a lower bound computed in the demo (`at_least=rollout`) gets a value far below
    any."""
    bounds = {k.arg: k.value for k in call.keywords}
    if "at_least" in bounds and not isinstance(bounds["at_least"], ast.Constant):
        return str(-(10**9))
    bounds = {name: ast.literal_eval(value) for name, value in bounds.items()}
    if "at_least" in bounds:
        return str(bounds["at_least"] - 1)
    if "above" in bounds:
        return str(bounds["above"])
    if "below" in bounds:
        return str(bounds["below"])
    if "at_most" in bounds:
        return str(bounds["at_most"] + 1)
    return "nan"  # number(): any finite number


@pytest.mark.parametrize("lesson", PYTHON, ids=python_ids)
def test_a_numeric_flag_outside_its_range_is_a_usage_error(lesson, capsys):
    """Each numeric flag's declared range is enforced by argparse: one value just
    outside it (0 for `integer(at_least=1)`) stops the demo with status 2 and a
    line naming the flag, before anything runs. So does one bad value among a list
    flag's comma-separated ones (`integers`, `numbers`, `names_from`)."""
    checked = 0
    for node in ast.walk(ast.parse(RECORDS[lesson.key].source)):
        keywords = {k.arg: k.value for k in getattr(node, "keywords", [])}
        kind = keywords.get("type")
        if not (
            ast.unparse(getattr(node, "func", node)).endswith("add_argument")
            and isinstance(kind, ast.Call)
            and ast.unparse(kind.func)
            in ("integer", "number", "integers", "numbers", "names_from")
        ):
            continue
        flag = ast.literal_eval(node.args[0])
        name = ast.unparse(kind.func)
        value = "no-such-name" if name == "names_from" else out_of_range(kind)
        typed = value
        default = keywords.get("default")
        if name in ("integers", "numbers") and isinstance(default, ast.Constant):
            typed = f"{default.value},{value}"  # the bad value after good ones
        status, _, err = parse_flags(lesson, [flag, typed], capsys)
        assert status == 2 and f"argument {flag}: expected " in err, (flag, err)
        assert f"got {value!r}" in err, err
        checked += 1
    if checked == 0:
        pytest.skip("no numeric flags")
