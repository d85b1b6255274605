"""The glossary: every term of annotated/glossary.toml is used by the prose of the
lesson it names, in English, and by that lesson's Chinese translation, in Chinese; the
page lists the terms alphabetically, each linked to the section that first uses it; a
bad entry stops the build with the entry named."""

import functools
import re
from pathlib import Path

import pytest

from tools.literate import glossary, i18n, pipeline
from tools.literate.files import discover
from tools.literate.learning_path import WrittenLesson
from tools.literate.parse import parse

REPO = Path(__file__).resolve().parents[2]
TERMS = glossary.load(REPO / "annotated/glossary.toml")
LESSONS = {lesson.key: lesson for lesson in discover(REPO)}


@functools.cache
def english_and_chinese(key: str) -> tuple[str, str]:
    """A lesson's prose (its title, summary and sections) in English, and the whole of
    its up-to-date Chinese translation."""
    record = pipeline.read(LESSONS[key], REPO / "docs")
    units = i18n.lesson_units(record.lesson, record.figures, record.verified)
    stored = i18n.read(REPO / i18n.lesson_path("zh", LESSONS[key]))
    chinese = i18n.translated(units, stored)
    return (
        "\n".join(unit.english for unit in units),
        "\n".join(chinese.get(unit.id, "") for unit in units),
    )


def test_there_are_terms_in_alphabetical_order():
    assert len(TERMS) >= 80
    assert [t.en.lower() for t in TERMS] == sorted(t.en.lower() for t in TERMS)


@pytest.mark.parametrize("term", TERMS, ids=[t.en for t in TERMS])
def test_each_term_is_used_by_its_lesson_in_both_languages(term):
    assert term.lesson in LESSONS, f"{term.lesson} is not a lesson"
    english, chinese = english_and_chinese(term.lesson)
    assert glossary.uses(english, term.en), f"{term.lesson} never says {term.en!r}"
    assert term.zh in chinese, f"{term.lesson}'s translation never says {term.zh!r}"
    assert glossary.locate(term, parsed()[term.lesson]) is not None


def test_a_term_is_a_whole_word_in_any_case_and_number():
    assert glossary.uses("Two Tokenizers and a tokenizer.", "tokenizer")
    assert glossary.uses("the KV caches", "KV cache")
    assert not glossary.uses("a detokenizer", "tokenizer")
    assert not glossary.uses("tokenizer-free", "tokenizer")


def written() -> dict[str, WrittenLesson]:
    return {
        key: WrittenLesson(f"lessons/{key}.md", key.replace("_", " "), "")
        for key in LESSONS
    }


@functools.cache
def parsed() -> dict:
    return {
        key: parse(f.path.read_text(encoding="utf-8"), f.path)
        for key, f in LESSONS.items()
    }


def test_the_page_links_each_term_to_the_section_that_first_uses_it():
    lessons = parsed()
    page = glossary.render(
        "# Glossary\n\n" + glossary.GLOSSARY, TERMS, lessons, written(), "glossary.md"
    )
    rows = [line for line in page.splitlines() if line.startswith("| ")]
    assert rows[:2] == ["| English | 中文 | Introduced in |", "| --- | --- | --- |"]
    assert len(rows) == 2 + len(TERMS)
    for term, row in zip(TERMS, rows[2:]):
        section = glossary.locate(term, lessons[term.lesson])
        anchor = f"#{section}" if section else ""
        assert row == (
            f'| {term.en} | <span lang="zh-Hans">{term.zh}</span> '
            f"| [{term.lesson.replace('_', ' ')}](lessons/{term.lesson}.md{anchor}) |"
        )
    chinese = glossary.render(
        glossary.GLOSSARY, TERMS, lessons, written(), "g.md", "zh"
    )
    assert chinese.startswith("| 英文 | 中文 | 首次讲解 |")
    row = '| <span lang="en">KV cache</span> | <span lang="zh-Hans">KV 缓存</span> |'
    assert row in chinese


def test_a_term_its_lesson_never_uses_stops_the_build():
    term = glossary.Term("teleportation", "瞬移", "foundations/matrix")
    with pytest.raises(ValueError, match="foundations/matrix does not use"):
        glossary.render(glossary.GLOSSARY, (term,), parsed(), written(), "g.md")
    term = glossary.Term("matrix product", "矩阵乘法", "foundations/nowhere")
    with pytest.raises(ValueError, match="foundations/nowhere is not a written"):
        glossary.render(glossary.GLOSSARY, (term,), parsed(), written(), "g.md")


BAD = {
    "a key missing": ('{ en = "x", zh = "y" }', "needs exactly en, zh and lesson"),
    "an empty value": (
        '{ en = "", zh = "y", lesson = "a/b" }',
        "are non-empty strings",
    ),
    "a term twice": (
        '{ en = "X", zh = "y", lesson = "a/b" },\n'
        '{ en = "x", zh = "z", lesson = "a/b" }',
        r"terms\[1\]: 'x' is listed twice",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_entry_is_named(tmp_path, case):
    entries, message = BAD[case]
    path = tmp_path / "glossary.toml"
    path.write_text(f"terms = [\n{entries}\n]\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=re.compile("glossary.toml: " + ".*" + message)
    ):
        glossary.load(path)


def test_a_file_with_more_than_terms_is_named(tmp_path):
    path = tmp_path / "glossary.toml"
    path.write_text('title = "Glossary"\nterms = []\n', encoding="utf-8")
    with pytest.raises(ValueError, match="glossary.toml: expected only a list `terms`"):
        glossary.load(path)
