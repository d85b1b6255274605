"""Verified on a lesson of two functions whose every mutant is known: the tool makes
exactly those mutants, grades each in the lesson's place as the exercise mode grades
a worksheet, reports the one its tests let through (and only that one), leaves the
lesson on disk as it was, and refuses a lesson whose tests fail as they are.
"""

import textwrap

import pytest

from conftest import REPO, make_project
from tools.literate import mutants

LESSON = textwrap.dedent('''\
    """A lesson of two functions."""


    def double(x: float = 2.0) -> float:
        if x is None:
            raise ValueError(f"x must be a number, got {x - 1}")
        return 2 * x


    def is_positive(x: float) -> bool:
        print(f"checking {x + 1}")
        return x > 0


    def main():
        return double(-3)
    ''')

# is_positive is never asked about 0, so `x >= 0` goes unnoticed.
TESTS = textwrap.dedent("""\
    from annotated.demo.small import double, is_positive


    def test_double():
        assert double(3) == 6


    def test_sign():
        assert is_positive(1) and not is_positive(-1)
    """)


def small_project(root, tests=TESTS):
    """The fixture project with the lesson above, its tests, and the project's
    conftest.py (whose `--lesson` and `--worksheet` the tool grades mutants with)."""
    project = make_project(root)
    (project / "conftest.py").write_text((REPO / "conftest.py").read_text())
    (project / "annotated/demo/small.py").write_text(LESSON)
    (project / "tests/demo/test_small.py").write_text(tests)
    return project


def test_the_mutants_of_a_lesson_are_its_operators_comparisons_and_numbers():
    made = [mutant.apply(LESSON) for mutant in mutants.mutants(LESSON)]
    changed = [
        next(
            new
            for old, new in zip(LESSON.splitlines(), text.splitlines())
            if old != new
        )
        for text in made
    ]
    # Not the default 2.0, the message, the print, the guard of a raise, nor main.
    assert [line.strip() for line in changed] == [
        "return 3 * x",
        "return 2 / x",
        "return x >= 0",
        "return x > 1",
    ]


def test_a_survivor_is_reported_and_the_lesson_is_left_as_it_was(tmp_path, capsys):
    project = small_project(tmp_path / "project")
    lesson = project / "annotated/demo/small.py"
    # Seed 7 draws `3 * x`, which the tests notice, and `x >= 0`, which they miss
    # (each pytest run takes seconds: two mutants show both outcomes).
    code = mutants.main([str(lesson), "--count", "2", "--seed", "7"], root=project)
    printed = capsys.readouterr().out
    assert code == 0
    assert "4 possible mutants, trying 2" in printed
    assert "1 of 2 mutants noticed" in printed
    assert "annotated/demo/small.py:12 in is_positive()" in printed
    assert "- return x > 0\n    + return x >= 0" in printed
    assert lesson.read_text() == LESSON


def test_tests_that_fail_on_the_lesson_as_it_is_are_refused(tmp_path, capsys):
    failing = TESTS.replace("double(3) == 6", "double(3) == 7")
    project = small_project(tmp_path / "project", failing)
    lesson = project / "annotated/demo/small.py"
    assert mutants.main([str(lesson), "--count", "1"], root=project) == 1
    assert "do not pass on the lesson as it is" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["README.md"], "expected annotated/<area>/<topic>.py"),
        (["annotated/demo/missing.py"], "need annotated/demo/missing.py and its tests"),
        (["annotated/demo/small.py", "--count", "0"], "--count must be at least 1"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path, capsys, monkeypatch, argv, message):
    project = small_project(tmp_path / "project")
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as exit:
        mutants.main(argv, root=project)
    assert exit.value.code == 2 and message in capsys.readouterr().err
