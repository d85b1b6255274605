"""Verified by properties of the output: math becomes MathML (checked against latex2mathml's own rendering
of the same formula), text around it is untouched, and bad math fails with the lesson's file and line."""

import pytest
from latex2mathml.converter import convert

from tools.literate import LessonError
from tools.literate.prose import render


def lines(*texts):
    return list(enumerate(texts, start=10))


def test_inline_and_display_math_become_mathml():
    html = render(
        lines(
            "The loss $L = \\sum_i \\ell_i$ is a sum.",
            "",
            "$$",
            "\\frac{\\partial L}{\\partial w}",
            "$$",
        ),
        "l.py",
    )
    assert html.count("<math") == 2
    assert 'display="block"' in html and 'display="inline"' in html
    assert (
        convert("L = \\sum_i \\ell_i").split(">", 1)[1][:40] in html
    )  # the same MathML latex2mathml makes
    assert '<div class="lit-math">' in html and "<p><div" not in html
    assert "$" not in html.replace("application/x-tex", "")


def test_markdown_does_not_eat_math():
    html = render(lines("$a_i * b_j * c_k$"), "l.py")
    assert "<em>" not in html and "<msub>" in html


def test_dollars_that_are_not_math_stay_text():
    html = render(
        lines("It costs $5 or $10, and `$HOME` is code; \\$ is a dollar."), "l.py"
    )
    assert "<math" not in html
    assert "$5 or $10" in html and "<code>$HOME</code>" in html and "\\$" not in html


def test_fenced_code_is_left_alone():
    html = render(lines("```", "x = '$a$'", "```"), "l.py")
    assert "<math" not in html


def test_aligned_environment_lays_out_as_a_table():
    html = render(
        lines("$$", "\\begin{aligned} a &= b \\\\ c &= d \\end{aligned}", "$$"), "l.py"
    )
    assert (
        "<mtable" in html and "<mi>&amp;</mi>" not in html and "<mi>&</mi>" not in html
    )


def test_unclosed_display_math_names_the_line_it_opened():
    with pytest.raises(LessonError, match=r"lesson\.py:11: unclosed \$\$"):
        render(lines("Text.", "$$", "x^2", "more text"), "lesson.py")


@pytest.mark.parametrize("latex", ["\\frac{a", "a^", "\\left( a", "\\notacommand x"])
def test_bad_latex_names_the_line(latex):
    with pytest.raises(LessonError, match=r"lesson\.py:10: cannot render math"):
        render(lines(f"${latex}$"), "lesson.py")


def test_links_to_other_lessons_point_at_their_pages():
    html = render(
        lines("See [the scalar engine](autograd.md#value-mul)."),
        "l.py",
        "lessons/foundations/tensor_autograd.md",
    )
    assert 'href="../autograd/#value-mul"' in html


def test_inline_math_may_wrap_onto_the_next_comment_line_but_not_past_a_paragraph():
    html = render(
        lines(
            "the table $p(X_i \\mid",
            "X_{pa})$ with parents",
            "",
            "costs $5",
            "",
            "and $6",
        ),
        "l.py",
    )
    assert html.count("<math") == 1 and "$5" in html and "$6" in html


def test_a_link_to_a_missing_page_names_its_line():
    pages = {
        "lessons/foundations/autograd.md",
        "lessons/foundations/tensor_autograd.md",
    }
    render(
        lines("See [it](autograd.md)."),
        "l.py",
        "lessons/foundations/tensor_autograd.md",
        pages,
    )
    with pytest.raises(
        LessonError,
        match=r"l\.py:11: link to autgrad\.md: no page lessons/foundations/autgrad\.md",
    ):
        render(
            lines("Fine.", "See [it](autgrad.md#x)."),
            "l.py",
            "lessons/foundations/tensor_autograd.md",
            pages,
        )
