"""Verified by properties: the no-loss invariant (every source line in exactly one
column, code verbatim, no prose word dropped) over hypothesis-generated files and every
real lesson, and the split of known edge cases."""

import ast
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from tools.literate import LessonError
from tools.literate.files import discover
from tools.literate.parse import parse

REPO = Path(__file__).resolve().parents[2]


def assert_no_loss(source: str, lesson) -> None:
    lines = source.splitlines()
    seen = []
    for section in lesson.sections:
        for line in section.code:
            assert line.text == lines[line.number - 1], (
                f"code line {line.number} altered"
            )
            seen.append(line.number)
        for line in section.prose_lines:
            assert (
                line.text == lines[line.number - 1]
                or not lines[line.number - 1].strip()
            ), f"prose line {line.number} altered"
            seen.append(line.number)
    assert sorted(seen) == list(range(1, len(lines) + 1)), (
        "a line is missing or shown twice"
    )
    # Nothing said in the prose is dropped: every word of a prose source line reaches
    # the Markdown; the front matter's lines, which the header shows, parse to its
    # fields.
    front = set()
    if lesson.front_matter:
        opening = lesson.front_matter_line
        closing = next(
            n
            for n in range(opening + 1, len(lines) + 1)
            if lines[n - 1].strip() == "---"
        )
        front = set(range(opening, closing + 1))
        yaml_text = "\n".join(lines[opening : closing - 1])
        assert yaml.safe_load(yaml_text) == lesson.front_matter
    for section in lesson.sections:
        for line in section.prose_lines:
            if line.number in front:
                continue
            if lesson.language == "cuda":
                text = line.text.replace("/*", " ").replace("*/", " ").lstrip(" /")
            else:
                text = line.text.replace('"""', " ").replace("'''", " ").lstrip(" #rR")
            for word in text.split():
                assert word.strip("#") in section.prose or word in ('r"""', "r'''"), (
                    f"word {word!r} of line {line.number} lost"
                )


# ---- generated files -----------------------------------------------------------------

words = (
    st.text(alphabet="abcdefghij $*_`", min_size=1, max_size=12)
    .map(str.strip)
    .filter(bool)
)
sentence = st.lists(words, min_size=1, max_size=6).map(" ".join)


@st.composite
def comment_block(draw, indent=""):
    return [
        f"{indent}# {draw(sentence)}" if draw(st.booleans()) else f"{indent}#"
        for _ in range(draw(st.integers(1, 3)))
    ] + ([f"{indent}# end"])


@st.composite
def docstring(draw, indent):
    style = draw(
        st.sampled_from(["one", "multi", "closing-on-text", "raw", "single-quotes"])
    )
    text = draw(sentence)
    if style == "one":
        return [f'{indent}"""{text}"""']
    if style == "raw":
        return [f'{indent}r"""', f"{indent}{text} \\frac{{a}}{{b}}", f'{indent}"""']
    if style == "single-quotes":
        return [f"{indent}'''{text}", f"{indent}more {text}'''"]
    if style == "closing-on-text":
        return [f'{indent}"""{text}', f'{indent}{draw(sentence)}"""']
    return [f'{indent}"""{text}', "", f"{indent}{draw(sentence)}", f'{indent}"""']


@st.composite
def statement(draw, indent):
    kind = draw(
        st.sampled_from(["assign", "eol", "string-assign", "comment", "blank", "call"])
    )
    if kind == "assign":
        return [f"{indent}x = {draw(st.integers(0, 99))}"]
    if kind == "eol":
        return [f"{indent}y = x  # [batch, {draw(words)}]"]
    if kind == "string-assign":
        return [f'{indent}s = """{draw(sentence)}', f"{draw(sentence)}", '"""']
    if kind == "comment":
        return draw(comment_block(indent))
    if kind == "call":
        return [f"{indent}print(x)"]
    return [""]


@st.composite
def function(draw, indent="", name="f"):
    decorators = [f"{indent}@staticmethod"] if indent and draw(st.booleans()) else []
    header = [f"{indent}def {name}():"]
    if draw(st.booleans()):
        return decorators + [
            f'{indent}def {name}(): "doc on the header line"; return 1'
        ]
    doc = draw(docstring(indent + "    ")) if draw(st.booleans()) else []
    body = [
        line
        for _ in range(draw(st.integers(0, 3)))
        for line in draw(statement(indent + "    "))
    ]
    return decorators + header + doc + body + [f"{indent}    return 0"]


@st.composite
def klass(draw):
    doc = draw(docstring("    ")) if draw(st.booleans()) else []
    methods = [
        line
        for i in range(draw(st.integers(1, 2)))
        for line in [""] + draw(function("    ", f"m{i}"))
    ]
    return ["class A:"] + doc + ["    z = 1"] + methods


@st.composite
def module(draw):
    lines = []
    if draw(st.booleans()):
        lines += draw(docstring(""))
    for i in range(draw(st.integers(1, 6))):
        kind = draw(
            st.sampled_from(["function", "class", "comment", "statement", "blank"])
        )
        if kind == "function":
            lines += draw(function("", f"f{i}"))
        elif kind == "class":
            lines += draw(klass())
        elif kind == "comment":
            lines += draw(comment_block())
        elif kind == "statement":
            lines += draw(statement(""))
        else:
            lines += ["", ""]
    return "\n".join(lines) + "\n"


@given(module())
@settings(max_examples=150)
def test_generated_files_lose_no_line(source):
    ast.parse(source)  # the generator only makes valid Python
    assert_no_loss(source, parse(source, "generated.py"))


# ---- generated CUDA C files ----------------------------------------------------------

CUDA_INTRO = """/*
---
title: Generated
summary: A generated CUDA C file.
---

The introduction.
*/
"""


@st.composite
def cuda_chunk(draw):
    """One piece of a CUDA C file: prose, code, a block comment (code, even holding
    `//` lines), a string holding comment markers, or blank lines."""
    kind = draw(
        st.sampled_from(["prose", "heading", "code", "block", "string", "blank"])
    )
    indent = draw(st.sampled_from(["", "    "]))
    if kind == "prose":
        return [f"{indent}// {draw(sentence)}" for _ in range(draw(st.integers(1, 3)))]
    if kind == "heading":
        return [f"// ## {draw(sentence)}", "//", f"// {draw(sentence)}"]
    if kind == "code":
        tail = draw(st.sampled_from(["", "  // [n] floats", "  /* inline */"]))
        return [f"{indent}int x = {draw(st.integers(0, 99))};{tail}"]
    if kind == "block":
        inner = [f"// {draw(sentence)}", draw(sentence), "  * star line"]
        return [f"{indent}/* {draw(sentence)}", *draw(st.permutations(inner)), "*/"]
    if kind == "string":
        return [f'{indent}const char* s = "// not /* a comment";']
    return [""] * draw(st.integers(1, 2))


@given(st.lists(cuda_chunk(), max_size=12))
@settings(max_examples=150)
def test_generated_cuda_files_lose_no_line(chunks):
    source = CUDA_INTRO + "\n".join(line for chunk in chunks for line in chunk) + "\n"
    lesson = parse(source, "generated.cu")
    assert lesson.language == "cuda" and lesson.front_matter["title"] == "Generated"
    assert_no_loss(source, lesson)
    # A `//` line is prose exactly when it is not inside a block comment.
    lines = source.splitlines()
    prose = {line.number for s in lesson.sections for line in s.prose_lines}
    inside = False
    for number, text in enumerate(lines, 1):
        if number > CUDA_INTRO.count("\n") and text.lstrip().startswith("//"):
            assert (number in prose) != inside, f"line {number}: {text!r}"
        if text.lstrip().startswith("/*") and "*/" not in text:
            inside = number > 1
        elif "*/" in text and not text.lstrip().startswith("//"):
            inside = False


# ---- every real lesson ---------------------------------------------------------------


@pytest.mark.parametrize("lesson", discover(REPO), ids=lambda lesson: lesson.key)
def test_every_lesson_loses_no_line(lesson):
    source = lesson.path.read_text(encoding="utf-8")
    assert_no_loss(source, parse(source, lesson.path))


# ---- edge cases that line-regex tools get wrong --------------------------------------


def split(source):
    source = textwrap.dedent(source).lstrip("\n")
    lesson = parse(source, "edge.py")
    assert_no_loss(source, lesson)
    return lesson, [
        (s.prose, [line.number for line in s.code if line.text.strip()])
        for s in lesson.sections
    ]


def test_one_line_docstring_is_prose_for_its_def():
    _, sections = split('''
        def f():
            """Add one."""
            return 1
    ''')
    assert sections == [("Add one.", [1, 3])]


def test_closing_quotes_on_a_text_line():
    _, sections = split('''
        def f():
            """First line
            and the last, closing here."""
            return 1
    ''')
    assert sections == [("First line\nand the last, closing here.", [1, 4])]


def test_string_assignment_is_code_not_prose():
    _, sections = split('''
        s = """looks like
        a docstring"""
        t = 2
    ''')
    assert sections == [("", [1, 2, 3])]


def test_docstring_sharing_a_line_with_code_stays_code():
    _, sections = split("""
        def f(): "doc"; return 1
    """)
    assert sections == [("", [1])]


def test_comment_block_above_def_joins_its_docstring():
    _, sections = split('''
        x = 0

        # Why f exists.
        @staticmethod
        def f():
            """What f does."""
            # A step inside f.
            return x  # end-of-line comments stay in the code
    ''')
    assert sections == [
        ("", [1]),
        ("Why f exists.\n\nWhat f does.", [4, 5]),
        ("A step inside f.", [8]),
    ]


def test_method_docstring_starts_a_new_section_at_its_decorator():
    lesson, sections = split('''
        class A:
            """An A."""
            z = 1

            @property
            def b(self):
                """A b."""
                return 2
    ''')
    assert sections == [("An A.", [1, 3]), ("A b.", [5, 6, 8])]
    assert [s.id for s in lesson.sections] == ["a", "a-b"]


def test_front_matter_is_read_and_kept_out_of_the_intro():
    lesson, sections = split('''
        r"""
        ---
        title: T
        summary: S
        stage: 1
        topic: foundations
        time: 1 s
        ---

        Intro $x$.
        """
        import math
    ''')
    assert lesson.front_matter == {
        "title": "T",
        "summary": "S",
        "stage": 1,
        "topic": "foundations",
        "time": "1 s",
    }
    assert sections[0] == ("Intro $x$.", [12])
    assert lesson.sections[0].kind == "intro"


def test_exercises_section_is_marked():
    lesson, _ = split("""
        x = 1

        # ## Exercises
        #
        # 1. One.
        # 2. Two.
    """)
    assert (
        lesson.sections[-1].kind == "exercises"
        and lesson.sections[-1].id == "exercises"
    )


def test_section_ids_survive_edits_elsewhere():
    before, _ = split('''
        def f():
            """F."""
            # Step one.
            return 1
    ''')
    after, _ = split('''
        import math

        def g():
            return 2

        def f():
            """F, reworded."""
            # Step one.
            return 1
    ''')
    assert [s.id for s in before.sections] == ["f", "f--step-one"]
    assert {"f", "f--step-one"} <= {s.id for s in after.sections}


def test_syntax_error_names_file_and_line():
    with pytest.raises(LessonError, match=r"broken\.py:2: syntax error"):
        parse("x = 1\ndef f(:\n", "broken.py")


# Each file the engine cannot read names itself, the line to look at and what is wrong,
# in Python and in CUDA C: the build prints this and stops.
UNREADABLE = {
    "front matter never closed (py)": (
        'r"""\n---\ntitle: T\n\nIntro.\n"""\nx = 1\n',
        r"f\.py:2: front matter opened with '---' is never closed",
    ),
    "front matter not YAML (py)": (
        'r"""\n---\ntitle: T\nsummary: [S\nstage: 1\n---\n"""\nx = 1\n',
        r"f\.py:5: front matter is not valid YAML: expected ',' or '\]'",
    ),
    "front matter a list (py)": (
        'r"""\n---\n- a\n- b\n---\n"""\nx = 1\n',
        r"f\.py:2: front matter must be a YAML mapping",
    ),
    "front matter never closed (cu)": (
        "/*\n---\ntitle: T\n\nIntro.\n*/\nint x;\n",
        r"f\.cu:2: front matter opened with '---' is never closed",
    ),
    "front matter not YAML (cu)": (
        "/*\n---\ntitle: T\nsummary: [S\nstage: 1\n---\n*/\nint x;\n",
        r"f\.cu:5: front matter is not valid YAML: expected ',' or '\]'",
    ),
    "front matter a list (cu)": (
        "/*\n---\n- a\n---\n*/\nint x;\n",
        r"f\.cu:2: front matter must be a YAML mapping",
    ),
    "code after the opening block (cu)": (
        "/*\n---\ntitle: T\n---\nIntro.\n*/ int x;\n",
        r"f\.cu:6: code after the opening block's \*/: start it on the next line",
    ),
}


@pytest.mark.parametrize("case", UNREADABLE, ids=list(UNREADABLE))
def test_unreadable_front_matter_names_file_and_line(case):
    source, message = UNREADABLE[case]
    name = "f.cu" if case.endswith("(cu)") else "f.py"
    with pytest.raises(LessonError, match=message):
        parse(source, name)
