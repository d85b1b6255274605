"""The stored run of the competency tests: pytest's JUnit XML read back function by
function, outcomes folded over parametrised cases, and what the checklist page and the
lesson pages say about each competency."""

import json
from pathlib import Path

from tools.literate import learning_path, test_results
from tools.literate.learning_path import TestRef, WrittenLesson

REPO = Path(__file__).resolve().parents[2]
CURRICULUM = learning_path.load(REPO / "annotated/curriculum.toml")

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="6">
  <testcase classname="tests.rl.test_ppo" name="test_gae[0]" time="0.1"/>
  <testcase classname="tests.rl.test_ppo" name="test_gae[1]" time="0.1">
    <failure message="assert 1 == 2">trace</failure>
  </testcase>
  <testcase classname="tests.rl.test_ppo" name="test_clip" time="0.1"/>
  <testcase classname="tests.rl.test_ppo" name="test_gpu" time="0.0">
    <skipped message="no GPU"/>
  </testcase>
  <testcase classname="tests.kernels.test_softmax.TestGrid" name="test_rows" time="0.1">
    <error message="fixture broke"/>
  </testcase>
  <testcase classname="tests.foundations.test_matrix" name="test_ikj" time="0.1"/>
</testsuite></testsuites>
"""


def stored(outcomes) -> test_results.TestResults:
    return test_results.TestResults("2026-12-05", "2 CPU cores", "abc1234", outcomes)


def test_junit_is_read_back_per_file_and_function_with_cases_folded():
    outcomes = test_results.parse_junit(JUNIT)
    assert outcomes == {
        "tests/rl/test_ppo.py": {
            "test_gae": "failed",  # one failing case fails the function
            "test_clip": "passed",
            "test_gpu": "skipped",
        },
        "tests/kernels/test_softmax.py": {"test_rows": "failed"},  # errors fail
        "tests/foundations/test_matrix.py": {"test_ikj": "passed"},
    }


def test_status_of_a_file_or_a_function_and_of_what_the_run_lacks():
    results = stored(test_results.parse_junit(JUNIT))
    assert results.status(TestRef("rl/ppo")) == "failed"
    assert results.status(TestRef("rl/ppo", "test_clip")) == "passed"
    assert results.status(TestRef("rl/ppo", "test_gpu")) == "skipped"
    assert results.status(TestRef("foundations/matrix")) == "passed"
    assert results.status(TestRef("rl/ppo", "test_new")) is None
    assert results.status(TestRef("rl/imitation")) is None


def test_stored_file_loads_back(tmp_path):
    results = stored({"tests/rl/test_ppo.py": {"test_gae": "passed"}})
    path = tmp_path / test_results.RESULTS
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results.__dict__))
    assert test_results.load(tmp_path) == results
    assert test_results.load(tmp_path / "elsewhere") is None


def test_competency_tests_are_every_named_test_once():
    refs = test_results.competency_tests(CURRICULUM)
    assert len(refs) == len(set(refs))
    named = {ref for g in CURRICULUM.competencies for i in g.items for ref in i.tests}
    assert set(refs) == named


def written() -> dict[str, WrittenLesson]:
    """Every lesson written, with the sections the curriculum links to."""
    sections: dict[str, set] = {}
    for item in CURRICULUM.items():
        for ref in item.covered_by:
            sections.setdefault(ref.module, set()).add(ref.section)
    return {
        entry.module: WrittenLesson(
            f"lessons/{entry.module}.md",
            entry.title,
            "",
            frozenset(sections.get(entry.module, set()) - {None}),
        )
        for entry in CURRICULUM.lessons()
    }


def test_checklist_marks_each_test_and_counts_the_competencies_shown():
    refs = test_results.competency_tests(CURRICULUM)
    failing = TestRef("kernels/matmul")
    outcomes: dict = {}
    for ref in refs:
        outcome = "failed" if ref == failing else "passed"
        outcomes.setdefault(ref.file, {})[ref.name or "test_all"] = outcome
    text = learning_path.render(
        learning_path.COMPETENCIES,
        CURRICULUM,
        written(),
        "competencies.md",
        stored(outcomes),
    )
    items = [item for group in CURRICULUM.competencies for item in group.items]
    assert f"{len(items) - 1} of {len(items)} competencies" in text
    marks = [ref for item in items for ref in item.tests]  # a test may show twice
    assert text.count("✗ failed") == marks.count(failing) == 1
    assert text.count("✓ passed") == len(marks) - 1
    assert "2026-12-05" in text and "abc1234" in text


def test_checklist_without_a_stored_run_says_how_to_make_one():
    text = learning_path.render(
        learning_path.COMPETENCIES, CURRICULUM, written(), "competencies.md"
    )
    assert "No stored run" in text and "python -m tools.literate.test_results" in text
    assert "✓" not in text


def test_a_lesson_page_names_its_competencies_tests_and_their_outcome():
    results = stored({"tests/rl/test_distributed_rollouts.py": {"test_v": "passed"}})
    rows = learning_path.demonstrations(CURRICULUM, results)
    (row,) = rows["rl/distributed_rollouts"]
    text, label, names, outcome = row
    assert label == "能设计分布式训练方案"
    assert names == ("test_distributed_rollouts.py",) and outcome == "passed"
    # A function named by the item is named on the page; not run yet is None.
    (row,) = [r for r in rows["foundations/matrix"] if "bottleneck" in r[0]]
    assert row[2] == ("test_loop_orders_are_bitwise_identical",) and row[3] is None
    assert "rl/ppo" not in rows  # the checklist does not name it
