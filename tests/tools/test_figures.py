"""Verified on the fixture project: the figures tool stores a demo's PNGs with the
source hash that made them and keeps the old set when a demo fails; the benchmarks tool
stores pytest-benchmark's results with ratios to the group's baseline; both notice when
the lesson changes."""

import json

import pytest

from conftest import REPO
from tools.literate import benchmarks, figures, render
from tools.literate.files import LessonFile

LESSON = "annotated/demo/tiny_model.py"


@pytest.fixture
def lesson(project, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{project}:{REPO}")
    return LessonFile(project, LESSON)


def test_figures_are_stored_with_the_source_hash_and_go_stale(lesson, project):
    stored = figures.regenerate(lesson, project / "docs")
    assert [f.name for f in stored.files] == ["line.png"] and stored.fresh
    assert "output norm" in stored.output and stored.seconds > 0
    line = stored.files[0]
    assert line.caption == "A straight line, drawn to test the store."
    assert (line.width, line.height, line.dpi) == (480, 340, 100.0)
    assert line.font_pt == (9.0, 10.0)
    manifest = json.loads(
        (project / "docs/figures/demo/tiny_model/figures.json").read_text()
    )
    assert manifest["source_sha256"] == lesson.source_sha256()
    # Prose changes no output; code does.
    lesson.path.write_text(lesson.path.read_text() + "\n# A closing remark.\n")
    assert figures.read(lesson, project / "docs").fresh
    lesson.path.write_text(lesson.path.read_text() + "\nEDITED = True\n")
    assert not figures.read(lesson, project / "docs").fresh


def test_the_tool_says_when_the_declared_time_is_off_by_more_than_2x(
    lesson, project, monkeypatch, capsys
):
    def took(seconds):
        def regenerate(lesson, docs_dir):
            return figures.Figures((), "", "", seconds, "here", True)

        return regenerate

    for seconds, warned in ((1.9, False), (0.6, False), (2.1, True), (0.4, True)):
        monkeypatch.setattr(figures, "regenerate", took(seconds))  # time: 1 s
        figures._report(lesson, project / "docs")
        said = capsys.readouterr().out
        assert ("the front matter says time: 1 s, but" in said) == warned, said


def test_a_failing_demo_keeps_the_old_figures(lesson, project):
    figures.regenerate(lesson, project / "docs")
    before = (project / "docs/figures/demo/tiny_model/figures.json").read_text()
    lesson.path.write_text(
        lesson.path.read_text().replace(
            '    print(f"output norm',
            '    raise SystemExit(3)\n    print(f"output norm',
        )
    )
    with pytest.raises(RuntimeError, match="the demo failed"):
        figures.regenerate(lesson, project / "docs")
    assert (project / "docs/figures/demo/tiny_model/figures.json").read_text() == before
    assert sorted(p.name for p in (project / "docs/figures/demo").iterdir()) == [
        "tiny_model"
    ]


def test_a_demo_that_saves_no_figure_is_named_and_keeps_the_old_ones(lesson, project):
    figures.regenerate(lesson, project / "docs")
    before = (project / "docs/figures/demo/tiny_model/figures.json").read_text()
    source = lesson.path.read_text()
    skip = "    (lambda *args, **kwargs: None)(\n"  # the call to save, made a no-op
    lesson.path.write_text(source.replace("    save(\n", skip, 1))
    with pytest.raises(RuntimeError, match="the demo saved no PNG figure in --out"):
        figures.regenerate(lesson, project / "docs")
    assert (project / "docs/figures/demo/tiny_model/figures.json").read_text() == before


def test_a_figure_saved_without_the_helper_has_no_caption_and_is_refused(tmp_path):
    from PIL import Image

    png = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(png)
    with pytest.raises(RuntimeError, match="plain.png has no caption: save figures"):
        figures.describe(png)


def test_expected_metric_is_stored_over_seeds_with_the_short_runs_band(lesson, project):
    source = lesson.path.read_text()
    source = source.replace(
        "time: 1 s\n",
        'time: 1 s\nexpected:\n  metric: score\n  short: ["--scale", "2"]\n',
    )
    source = source.replace(
        "    args = parser.parse_args(argv)\n",
        '    parser.add_argument("--seed", type=integer(at_least=0), default=0, '
        'help="seed")\n'
        '    parser.add_argument("--scale", type=number(), default=1.0, help="scale")\n'
        "    args = parser.parse_args(argv)\n",
    )
    source = source.replace(
        "from annotated.figures",
        "from annotated.data import integer, number\nfrom annotated.figures",
    ).replace("    return {}\n", '    return {"score": args.scale * (1 + args.seed)}\n')
    lesson.path.write_text(source)
    stored = figures.regenerate(lesson, project / "docs")
    expected = stored.expected
    assert expected["metric"] == "score" and expected["seeds"] == [0, 1, 2]
    assert expected["values"] == [1.0, 2.0, 3.0] and len(expected["seconds"]) == 3
    assert expected["short"] == {"args": ["--scale", "2"], "values": [2.0, 4.0, 6.0]}
    assert stored.band() == (1.0, 3.0)
    # The test's band: the short run's values widened by their range on each side.
    band = figures.short_band(LESSON, project)
    assert band == ("score", ["--scale", "2"], -2.0, 10.0)
    row = render._expected_row(stored)
    assert row[0][0] == "Expected result"
    assert "<code>score</code> 1–3 over 3 seeds" in row[0][1] and "2–6" in row[0][1]


def test_front_matter_edits_keep_results_fresh_but_a_new_expected_does_not(
    lesson, project
):
    source = (
        lesson.path.read_text()
        .replace(
            "    args = parser.parse_args(argv)\n",
            '    parser.add_argument("--seed", type=integer(at_least=0), default=0, '
            'help="seed")\n'
            "    args = parser.parse_args(argv)\n",
        )
        .replace(
            "from annotated.figures",
            "from annotated.data import integer\nfrom annotated.figures",
        )
        .replace("    return {}\n", '    return {"score": 1.0 + args.seed}\n')
    )
    assert "time: 1 s\n" in source and '"score"' in source
    lesson.path.write_text(source)
    before = figures.regenerate(lesson, project / "docs")
    # A new title or time changes no output: the stored figures stay fresh.
    lesson.path.write_text(source.replace("time: 1 s\n", "time: 2 s\n", 1))
    assert figures.read(lesson, project / "docs").fresh
    # A newly declared expected result has no stored record yet: stale.
    lesson.path.write_text(
        source.replace("time: 1 s\n", "time: 1 s\nexpected:\n  metric: score\n", 1)
    )
    assert not figures.read(lesson, project / "docs").fresh
    # --expected-only runs the seeds and keeps the figures and the demo's time.
    after = figures.add_expected(lesson, project / "docs")
    assert after.fresh and after.files == before.files
    assert after.seconds == before.seconds and after.band() == (1.0, 3.0)


def test_an_expected_metric_main_does_not_return_is_named(lesson, project):
    source = lesson.path.read_text().replace(
        "time: 1 s\n", "time: 1 s\nexpected:\n  metric: accuracy\n"
    )
    lesson.path.write_text(source)
    with pytest.raises(RuntimeError, match="expected.metric 'accuracy' is not in"):
        figures.regenerate(lesson, project / "docs")


def test_benchmarks_are_stored_with_ratios_to_the_baseline(
    lesson, project, monkeypatch
):
    # As CI runs it, from a pytest-xdist worker: the child must still measure.
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    (
        project / "tests/demo/test_tiny_model.py"
    ).write_text('''"""Verified against a sleep of known length."""
import time

import pytest


@pytest.mark.benchmark(group="sleep")
def test_bench_short(benchmark):
    benchmark(time.sleep, 0.001)


@pytest.mark.benchmark(group="sleep")
def test_bench_long(benchmark):
    benchmark.extra_info["baseline"] = True
    benchmark(time.sleep, 0.004)
''')
    assert benchmarks.has_benchmarks(
        (project / "tests/demo/test_tiny_model.py").read_text()
    )
    stored = benchmarks.measure(lesson, project / "docs")
    by_name = {result.name: result for result in stored.results}
    assert (
        by_name["test_bench_long"].baseline and by_name["test_bench_long"].ratio is None
    )
    assert 0.1 < by_name["test_bench_short"].ratio < 0.7
    assert stored.fresh and "cores" in stored.machine
    words = benchmarks.comparison(
        by_name["test_bench_short"], by_name["test_bench_long"]
    )
    assert words.endswith("faster than long") and "×" in words
    lesson.path.write_text(lesson.path.read_text() + "\nEDITED = True\n")
    assert not benchmarks.read(lesson, project / "docs").fresh


def test_prose_quoting_a_number_that_the_new_run_no_longer_prints_is_listed(tmp_path):
    lesson = tmp_path / "lesson.py"
    lesson.write_text(
        '"""Reaches 97.3 % accuracy."""\n'
        "# The loss ends at 0.412 after 1,725 steps.\n"
        "x = 0.412  # a code line is not prose\n"
        "# Two seeds; 12 layers.\n",
        encoding="utf-8",
    )
    chinese = tmp_path / "lesson.md"
    chinese.write_text("损失最终为 0.41。\n", encoding="utf-8")
    old = "accuracy 0.973\nloss 0.412 at step 1725\n12 layers"
    new = "accuracy 0.973\nloss 0.398 at step 1750\n12 layers"
    assert figures.stale_quotes(old, new, [lesson, chinese]) == [
        f"{lesson}:2: '0.412'",
        f"{lesson}:2: '1,725'",
        f"{chinese}:1: '0.41'",
    ]
    assert figures.stale_quotes(old, old, [lesson, chinese]) == []


def test_prose_quoting_an_old_benchmark_ratio_is_listed(tmp_path):
    def stored(ours_ms: float) -> benchmarks.Benchmarks:
        """A group of two: torch at 4 ms, the baseline, and ours at `ours_ms`."""
        torch, ours = (
            benchmarks.Result(
                group="step",
                name=f"test_bench_{label}",
                label=label,
                mean_s=ms / 1e3,
                stddev_s=1e-4,
                rounds=200,
                baseline=label == "torch",
                ratio=None if label == "torch" else ms / 4,
            )
            for label, ms in (("torch", 4), ("ours", ours_ms))
        )
        return benchmarks.Benchmarks((torch, ours), "a CPU", fresh=True)

    old, new = benchmarks._quoted(stored(9.6)), benchmarks._quoted(stored(6.1))
    assert "ours: 9.6 ms, 2.4× slower than torch" in old.splitlines()
    lesson = tmp_path / "lesson.py"
    lesson.write_text(
        "# Ours is 2.4× slower than torch's (9.6 ms a step).\nx = 1\n",
        encoding="utf-8",
    )
    assert figures.stale_quotes(old, new, [lesson]) == [
        f"{lesson}:1: '2.4'",
        f"{lesson}:1: '9.6'",
    ]
    # From 10 ms on, prose may give the time in seconds.
    slow = benchmarks._quoted(stored(54))
    assert "ours: 54 ms (0.054 s), 13.5× slower than torch" in slow.splitlines()
