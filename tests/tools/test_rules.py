"""Verified against hand-made lessons that break one rule each: `rules.check` reports
every broken rule of docs/contributing.md with the file and the line to fix, and passes
every real lesson."""

import textwrap
from pathlib import Path

import pytest

from tools.literate import rules
from tools.literate.files import LessonFile, discover
from tools.literate.learning_path import load as load_curriculum
from tools.literate.parse import parse

REPO = Path(__file__).resolve().parents[2]
ORDER = [
    entry.module
    for entry in load_curriculum(REPO / "annotated/curriculum.toml").lessons()
]

GOOD = textwrap.dedent(
    '''\
    r"""
    ---
    title: T
    summary: S.
    time: 2 s
    references:
      - key: a2020
        authors: [Ada Lovelace]
        title: Notes
        year: 2020
        venue: Somewhere
        url: https://example.org/notes
    ---

    Intro citing [@a2020].
    """

    import numpy as np

    x = np.ones(2)

    # ## Exercises
    #
    # 1. One.
    # 2. Two.
    '''
)
TEST = '"""Verified against numpy."""\n'


def problems(source: str, test: str | None = TEST, key: str = "foundations/autograd"):
    file = LessonFile(REPO, f"annotated/{key}.py")
    return [str(p) for p in rules.check(file, parse(source, file.path), test, ORDER)]


def test_a_lesson_that_keeps_every_rule_passes():
    assert problems(GOOD) == []


@pytest.mark.parametrize("lesson", discover(REPO), ids=lambda lesson: lesson.key)
def test_every_real_lesson_keeps_the_rules(lesson):
    source = lesson.path.read_text(encoding="utf-8")
    test = (REPO / lesson.test).read_text(encoding="utf-8")
    found = rules.check(lesson, parse(source, lesson.path), test, ORDER)
    assert not found, "\n".join(map(str, found))


BROKEN = {
    "no front matter": (
        lambda s: s.replace("---\n", "", 2),
        r"autograd\.py:1: no front matter",
    ),
    "missing field": (
        lambda s: s.replace("time: 2 s\n", ""),
        r"autograd\.py:2: front matter lacks time",
    ),
    "stage kept": (
        lambda s: s.replace("time: 2 s\n", "time: 2 s\nstage: 1\n"),
        r"autograd\.py:2: front matter: remove stage",
    ),
    "week and area kept": (
        lambda s: s.replace("time: 2 s\n", "time: 2 s\nweek: 3\narea: foundations\n"),
        r"autograd\.py:2: front matter: remove week, area",
    ),
    "bad time": (
        lambda s: s.replace("time: 2 s", "time: quick"),
        r"time is like",
    ),
    "expected without a metric": (
        lambda s: s.replace("time: 2 s\n", "time: 2 s\nexpected: accuracy\n"),
        r"front matter: expected must map metric to a name",
    ),
    "expected over one seed": (
        lambda s: s.replace(
            "time: 2 s\n", "time: 2 s\nexpected:\n  metric: accuracy\n  seeds: 1\n"
        ),
        r"expected\.seeds must be an int >= 2",
    ),
    "expected without a --seed flag": (
        lambda s: s.replace("time: 2 s\n", "time: 2 s\nexpected:\n  metric: loss\n"),
        r"expected: the demo needs a --seed flag",
    ),
    "expected with an unknown key": (
        lambda s: s.replace(
            "time: 2 s\n", "time: 2 s\nexpected:\n  metric: loss\n  seed: 3\n"
        ),
        r"autograd\.py:2: front matter: expected: unknown keys seed",
    ),
    "expected short flags as one string": (
        lambda s: s.replace(
            "time: 2 s\n",
            "time: 2 s\nexpected:\n  metric: loss\n  short: --steps 3\n",
        ),
        r"expected\.short must be a list of flags",
    ),
    "references as one mapping": (
        lambda s: s.replace("references:\n  - key", "references:\n    key"),
        r"autograd\.py:2: front matter: references must be a non-empty list",
    ),
    "a reference that is a string": (
        lambda s: s.replace("references:\n", "references:\n  - Lovelace 2020\n"),
        r"references\[0\] must be a mapping",
    ),
    "authors as one string": (
        lambda s: s.replace("authors: [Ada Lovelace]", "authors: Ada Lovelace"),
        r"references\[0\]: authors must be a list",
    ),
    "one key twice": (
        lambda s: s.replace(
            "references:\n",
            "references:\n  - key: a2020\n    authors: [B]\n    title: U\n"
            "    year: 2020\n    venue: V\n    url: https://example.org/u\n",
        ),
        r"references\[1\]: key 'a2020' is used twice",
    ),
    "reference without link": (
        lambda s: s.replace("    url: https://example.org/notes\n", ""),
        r"references\[0\] lacks arxiv or url",
    ),
    "unknown citation": (
        lambda s: s.replace("[@a2020]", "[@b2021]"),
        r"autograd\.py:15: citation \[@b2021\] is not in the front matter",
    ),
    "citation with a locator": (
        lambda s: s.replace("[@a2020]", "[@a2020, p. 4]"),
        r"autograd\.py:15: citation \[@a2020, p\. 4\] is not rendered",
    ),
    "citation with a locator, wrapped": (
        lambda s: s.replace("[@a2020]", "[@a2020, chapter 4\non planning]"),
        r"autograd\.py:15: citation \[@a2020, chapter 4 on planning\] is not rendered",
    ),
    "a backslash in a plain docstring": (
        lambda s: s.replace(
            "x = np.ones(2)", 'def f():\n    """$\\\\sigma$."""\n\n\nx = np.ones(2)'
        ),
        r"autograd\.py:21: a docstring with a backslash is rendered as written",
    ),
    "a tab in the prose": (
        lambda s: s.replace("Intro citing", "Intro $5 \times 2$ citing"),
        r"autograd\.py:15: prose holds control character '\\t' at column 10",
    ),
    "escape in a plain string": (
        lambda s: s.replace("x = np.ones(2)", 'x = "\\d"'),
        r"autograd\.py:\d+: .*write the string as r",
    ),
    "escape lines below where a plain docstring opens": (
        lambda s: s.replace(
            "x = np.ones(2)",
            'def f():\n    """One.\n\n    Two $x \\in S$."""\n\n\nx = np.ones(2)',
        ),
        r"autograd\.py:23: invalid escape sequence '\\i'",
    ),
    "imports the engine": (
        lambda s: s.replace(
            "import numpy as np", "import numpy as np\nimport tools.literate"
        ),
        r"autograd\.py:19: a lesson never imports the engine",
    ),
    "imports a later lesson": (
        lambda s: s.replace(
            "import numpy as np",
            "import numpy as np\nfrom annotated.foundations import convex",
        ),
        (
            r"autograd\.py:19: imports annotated/foundations/convex\.py, "
            r"which is not an earlier"
        ),
    ),
    "imports pyplot": (
        lambda s: s.replace(
            "import numpy as np", "import matplotlib.pyplot as plt\nimport numpy as np"
        ),
        r"autograd\.py:18: a lesson draws with annotated\.figures .*not pyplot",
    ),
    "imports pyplot from matplotlib": (
        lambda s: s.replace(
            "import numpy as np", "from matplotlib import pyplot\nimport numpy as np"
        ),
        r"autograd\.py:18: .*not pyplot",
    ),
    "switches the backend": (
        lambda s: s.replace(
            "import numpy as np", "import matplotlib as mpl\nimport numpy as np"
        ).replace("x = np.ones(2)", "mpl.use('Agg')\nx = np.ones(2)"),
        r"autograd\.py:\d+: .*not matplotlib\.use",
    ),
    "a flag without help": (
        lambda s: s.replace(
            "x = np.ones(2)",
            "import argparse\n\nparser = argparse.ArgumentParser()\n"
            "parser.add_argument('--steps', type=int, default=3)\nx = np.ones(2)",
        ),
        r"autograd\.py:23: flag '--steps' has no help=",
    ),
    "a parser whose --help hides the defaults": (
        lambda s: s.replace(
            "x = np.ones(2)",
            "import argparse\n\nparser = argparse.ArgumentParser()\nx = np.ones(2)",
        ),
        r"autograd\.py:22: the demo's parser needs formatter_class=argparse\."
        r"ArgumentDefaultsHelpFormatter",
    ),
    "a --device flag taken as any string": (
        lambda s: s.replace(
            "x = np.ones(2)",
            "import argparse\n\nparser = argparse.ArgumentParser(\n"
            "    formatter_class=argparse.ArgumentDefaultsHelpFormatter\n)\n"
            "parser.add_argument('--device', default='cpu', help='where')\n"
            "x = np.ones(2)",
        ),
        r"autograd\.py:25: flag '--device' needs type=torch_device",
    ),
    "a count flag that takes any int": (
        lambda s: s.replace(
            "x = np.ones(2)",
            "import argparse\n\nparser = argparse.ArgumentParser(\n"
            "    formatter_class=argparse.ArgumentDefaultsHelpFormatter\n)\n"
            "parser.add_argument('--steps', type=int, default=3, help='steps')\n"
            "parser.add_argument('--bits', type=int, choices=[4, 8], help='bits')\n"
            "x = np.ones(2)",
        ),
        r"autograd\.py:25: flag '--steps' takes any int: give its range with "
        r"type=integer\(at_least=\.\.\.\)",
    ),
    "one exercise": (
        lambda s: s.replace("# 2. Two.\n", ""),
        r"1 exercises; write 2 to 4",
    ),
    "no exercises": (
        lambda s: s[: s.index("# ## Exercises")],
        r"must end with a `# ## Exercises`",
    ),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_each_broken_rule_is_reported_with_file_and_line(case):
    edit, pattern = BROKEN[case]
    found = problems(edit(GOOD))
    assert any(__import__("re").search(pattern, p) for p in found), found


def test_missing_test_file_and_docstring_are_reported():
    assert "no test file tests/foundations/test_autograd.py" in problems(GOOD, None)[0]
    assert "must start with a sentence" in problems(GOOD, "x = 1\n")[0]


def test_a_lesson_missing_from_the_curriculum_is_reported():
    assert (
        "is not in annotated/curriculum.toml"
        in problems(GOOD, key="foundations/nowhere")[0]
    )


def test_the_header_sentence_is_the_test_docstrings_first_whole_sentence():
    source = (
        '"""Verified against the direct sum of IMPALA\'s eq. 1 at sizes (32, 64, ...\n'
        '1024) to 1e-10. Also checked: odd shapes.\n\nMore."""\n'
    )
    assert rules.first_sentence(source) == (
        "the direct sum of IMPALA's eq. 1 at sizes (32, 64, ... 1024) to 1e-10."
    )
    assert rules.first_sentence('"""torch.sum, exactly"""') == "torch.sum, exactly"


def lessons_citing(*entries: tuple[str, str]) -> list:
    """(lesson key, a reference's YAML lines): each lesson is GOOD with that entry in
    place of its own."""
    own = GOOD[GOOD.index("  - key: a2020") : GOOD.index("---\n\nIntro")]
    found = []
    for key, entry in entries:
        file = LessonFile(REPO, f"annotated/{key}.py")
        source = GOOD.replace(own, entry)
        found.append((file, parse(source, file.path)))
    return found


ENTRY = (
    "  - key: a2020\n    authors: [Ada Lovelace]\n    title: Notes\n"
    "    year: 2020\n    venue: Somewhere\n    url: https://example.org/notes\n"
)


def test_one_work_cited_alike_by_two_lessons_passes():
    lessons = lessons_citing(
        ("foundations/matrix", ENTRY), ("foundations/autograd", ENTRY)
    )
    assert rules.one_entry_per_work(lessons) == []


def test_one_key_cited_differently_is_reported_at_the_second_entry():
    other = ENTRY.replace("year: 2020", "year: 2021").replace("Notes", "Notes, 2e")
    found = rules.one_entry_per_work(
        lessons_citing(("foundations/matrix", ENTRY), ("foundations/autograd", other))
    )
    assert [str(p) for p in found] == [
        f"{REPO / 'annotated/foundations/autograd.py'}:7: references: 'a2020' has "
        "another title, year in annotated/foundations/matrix.py: a key names one "
        "work, with one entry wherever it is cited"
    ]


def test_one_work_under_two_keys_is_reported():
    found = rules.one_entry_per_work(
        lessons_citing(
            ("foundations/matrix", ENTRY),
            ("foundations/autograd", ENTRY.replace("a2020", "lovelace2020notes")),
        )
    )
    assert len(found) == 1 and found[0].line == 7
    assert "'lovelace2020notes' is https://example.org/notes, which " in str(found[0])
    assert "annotated/foundations/matrix.py cites as 'a2020'" in str(found[0])


def test_every_real_lesson_cites_each_work_as_the_others_do():
    lessons = [
        (file, parse(file.path.read_text(), file.path)) for file in discover(REPO)
    ]
    assert rules.one_entry_per_work(lessons) == []
