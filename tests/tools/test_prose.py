"""Verified by properties of the output: math becomes MathML (checked against
latex2mathml's own rendering of the same formula), text around it is untouched, and bad
math fails with the lesson's file and line."""

import pytest
from latex2mathml.converter import convert

from tools.literate import LessonError
from tools.literate.prose import Links, render


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


PAGES = frozenset(
    {
        "index.md",
        "lessons/foundations/autograd.md",
        "lessons/foundations/tensor_autograd.md",
    }
)


@pytest.mark.parametrize(
    "directory_urls, expected",
    [
        (True, 'href="../autograd/#value-mul"'),
        (False, 'href="autograd.html#value-mul"'),
    ],
)
def test_links_to_other_lessons_point_at_their_pages(directory_urls, expected):
    links = Links("lessons/foundations/tensor_autograd.md", PAGES, directory_urls)
    html = render(
        lines("See [the scalar engine](autograd.md#value-mul)."), "l.py", links
    )
    assert expected in html


def test_display_math_inside_a_list_item_keeps_the_list_whole():
    html = render(
        lines(
            "The recipe:",
            "",
            "1. Write it.",
            "2. Differentiate it, summing over every entry:",
            "   $$",
            "   \\bar{X} = \\sum_j \\bar{Y}_j",
            "   $$",
            "   The deltas collapse the sums.",
            "3. Read it back.",
        ),
        "l.py",
    )
    assert html.count("<ol>") == 1 and html.count("<li>") == 3, html
    assert 'class="lit-math"' in html and "The deltas collapse" in html


def test_citations_link_to_the_bibliography():
    citations = {"kingma2015adam": "Kingma & Ba, 2015", "wengert1964": "Wengert, 1964"}
    html = render(
        lines("Adam [@kingma2015adam; @wengert1964] works."), "l.py", None, citations
    )
    assert (
        '(<a class="lit-cite" href="#ref-kingma2015adam">Kingma &amp; Ba, 2015</a>; '
        '<a class="lit-cite" href="#ref-wengert1964">Wengert, 1964</a>)'
    ) in html


def test_primes_stay_full_size_and_compound_operators_are_one():
    html = render(lines("$g'(x)$ and $a += b$ and $f''$"), "l.py")
    assert "<msup>" not in html, "a prime as a superscript is shrunk twice"
    assert '<mo lspace="0" rspace="0">&#x02032;</mo>' in html
    assert "<mo>&#x0002B;&#x0003D;</mo>" in html
    named = render(lines("$\\operatorname{relu}'(x)$ and $\\mathrm{relu}'(x)$"), "l.py")
    assert "<msup>" not in named


def test_absolute_value_bars_sit_close():
    html = render(lines("$\\tanh|x|$"), "l.py")
    assert html.count('lspace="0.05em" rspace="0.05em">&#x0007C;') == 2


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
    links = Links("lessons/foundations/tensor_autograd.md", frozenset(pages))
    render(lines("See [it](autograd.md)."), "l.py", links)
    with pytest.raises(
        LessonError,
        match=r"l\.py:11: link to autgrad\.md: no page lessons/foundations/autgrad\.md",
    ):
        render(lines("Fine.", "See [it](autgrad.md#x)."), "l.py", links)


def test_a_link_to_a_missing_section_names_its_line():
    links = Links(
        "lessons/foundations/tensor_autograd.md",
        PAGES,
        sections={"lessons/foundations/autograd.md": frozenset({"value", "value-mul"})},
    )
    render(
        lines("See [mul](autograd.md#value-mul), [a line](autograd.md#L12)."),
        "l.py",
        links,
    )
    with pytest.raises(
        LessonError, match=r"l\.py:11: link to autograd\.md#value-add: .* no section"
    ):
        render(lines("Fine.", "See [add](autograd.md#value-add)."), "l.py", links)


def test_arg_max_renders_as_one_operator_not_an_unknown_command():
    html = render(
        lines("Greedy: $\\arg\\max_y p(y)$; $\\arg\\min_x f$; $\\arg z$."), "l.py"
    )
    assert html.count("arg&#x02009;max") == 1 and html.count("arg&#x02009;min") == 1
    assert 'mathvariant="normal">a</mi><mi mathvariant="normal">r' in html  # bare arg
    assert "\\arg<" not in html


def test_a_command_that_merely_starts_like_arg_still_fails_with_its_line():
    with pytest.raises(LessonError, match=r"l\.py:10: .*unknown command \\argument"):
        render(lines("$\\argument$"), "l.py")
