"""The compare-implementations page: every level named in annotated/compare.toml is cut
from its lesson exactly (the definition's first to last line, decorators and CUDA C
kernels included), linked to a section its page has, and a bad entry stops the build
with the entry named."""

from pathlib import Path

import pytest

from tools.literate import compare
from tools.literate.learning_path import WrittenLesson
from tools.literate.parse import parse

REPO = Path(__file__).resolve().parents[2]
COMPARISONS = compare.load(REPO / "annotated/compare.toml")
LEVELS = [level for comparison in COMPARISONS for level in comparison.levels]


@pytest.mark.parametrize(
    "level", LEVELS, ids=[f"{lv.module}:{lv.name}" for lv in LEVELS]
)
def test_each_level_is_its_whole_definition_in_a_real_section(level):
    path = compare.lesson_path(REPO, level.module)
    found = compare.excerpt(REPO, level)
    lines = found.code.splitlines()
    source = path.read_text(encoding="utf-8").splitlines()
    assert source[found.line - 1 : found.line - 1 + len(lines)] == lines
    head = next(line for line in lines if level.name in line)
    if found.language == "python":
        assert head.lstrip().startswith(("def ", "class ")), head
        # It ends where the next top-level statement (or the file) begins.
        after = source[found.line - 1 + len(lines) :]
        assert not after or not after[0].startswith((" ", "\t"))
    else:
        assert lines[0].startswith("__global__") and lines[-1] == "}"
    sections = {s.id for s in parse("\n".join(source) + "\n", path).sections}
    assert found.section in sections


def written() -> dict[str, WrittenLesson]:
    modules = {level.module for level in LEVELS}
    return {m: WrittenLesson(f"lessons/{m}.md", m.title(), "") for m in modules}


def test_page_shows_every_level_with_its_link_and_code():
    text = compare.render(
        "# Compare\n\n" + compare.COMPARE, COMPARISONS, written(), REPO, "compare.md"
    )
    assert compare.COMPARE not in text
    for number, comparison in enumerate(COMPARISONS, 1):
        assert f"## {number}. {comparison.title}" in text
    for level in LEVELS:
        found = compare.excerpt(REPO, level)
        assert f"[`{level.name}`](lessons/{level.module}.md#{found.section})" in text
        assert found.code in text
    assert text.count('<div class="lit-level" markdown>') == len(LEVELS)


def test_the_chinese_edition_has_every_title_text_and_label_in_chinese():
    text = compare.render(
        compare.COMPARE, COMPARISONS, written(), REPO, "compare.md", "zh"
    )
    for number, comparison in enumerate(COMPARISONS, 1):
        assert comparison.title_zh and comparison.text_zh, comparison.title
        assert f"## {number}. {comparison.title_zh}\n\n{comparison.text_zh}" in text
    for level in LEVELS:
        assert level.label_zh and f"**{level.label_zh}**：[`{level.name}`]" in text
    assert " in [" not in text  # the English joint between a level and its lesson


def test_a_level_of_an_unwritten_lesson_stops_the_build():
    lessons = written()
    lessons.pop(LEVELS[0].module)
    with pytest.raises(ValueError, match=f"{LEVELS[0].module} is not a written"):
        compare.render(compare.COMPARE, COMPARISONS, lessons, REPO, "compare.md")


BAD = {
    "unknown name": (
        '"foundations/matrix:matmul_ikj"',
        '"foundations/matrix:matmul_kij"',
        None,
    ),
    "malformed": (
        '"foundations/matrix:matmul_ikj"',
        '"foundations/matrix.matmul_ikj"',
        "must look like",
    ),
    "one level": (
        '[[compare.level]]\n  label = "Blocked, in PyTorch"\n'
        '  zh = "分块，用 PyTorch"\n'
        '  function = "kernels/matmul:blocked_matmul"\n\n  [[compare.level]]\n'
        '  label = "Triton kernel"\n  zh = "Triton 内核"\n  function = '
        '"kernels/matmul:matmul_kernel"\n\n  [[compare.level]]\n  label = '
        '"CUDA C, 2-D register tiling"\n  zh = "CUDA C，二维寄存器分块"\n  '
        'function = "kernels/sgemm.cu:sgemm_blocktile_2d"\n',
        "",
        "at least two levels",
    ),
    "unknown key": ('label = "Plain Python"', 'labl = "Plain Python"', "exactly label"),
    "unknown Chinese key": (
        'zh = { title = "矩阵乘法"',
        'zh = { titel = "矩阵乘法"',
        "zh holds only a title and a text",
    ),
    "a key beside the comparisons": (
        "[[compare]]\n",
        'title = "Comparisons"\n[[compare]]\n',
        "compare.toml: expected only \\[\\[compare\\]\\] tables",
    ),
    "a comparison without its text": (
        'text = "',
        'txt = "',
        r"#1: needs exactly title, text and \[\[compare\.level\]\]",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_entry_is_named(tmp_path, case):
    old, new, message = BAD[case]
    source = (REPO / "annotated/compare.toml").read_text(encoding="utf-8")
    assert old in source
    path = tmp_path / "compare.toml"
    path.write_text(source.replace(old, new, 1), encoding="utf-8")
    if message is not None:
        with pytest.raises(ValueError, match=message):
            compare.load(path)
        return
    (level,) = [lv for lv in compare.load(path)[0].levels if lv.name == "matmul_kij"]
    with pytest.raises(ValueError, match="foundations/matrix defines no 'matmul_kij'"):
        compare.excerpt(REPO, level)


def test_a_level_whose_lesson_file_is_gone_is_named(tmp_path):
    level = compare.Level("Plain Python", "foundations/gone", "matmul", "")
    with pytest.raises(ValueError, match="foundations/gone has no lesson file gone.py"):
        compare.excerpt(tmp_path, level)
