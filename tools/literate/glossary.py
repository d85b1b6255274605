"""The glossary page: the field's terms in English and in Chinese, each linked to the
lesson that introduces it.

The site is written for Chinese-speaking programmers, who read the Chinese edition and
the papers in English; the glossary maps one to the other. `annotated/glossary.toml`
names each term as the lessons write it (`en`), as the Chinese edition writes it (`zh`)
and the lesson that introduces it:

    terms = [
      { en = "KV cache", zh = "KV 缓存", lesson = "transformers/kv_cache" },
    ]

A docs page holding `<!-- glossary -->` gets a table of the terms in English
alphabetical order, each linked to the first section of its lesson whose prose uses
it (`locate`, with `uses`). A term its lesson's prose does not use, or a lesson that is
not written, stops the build; tests/tools/test_glossary.py checks the Chinese side, that
the lesson's translation says `zh`.
"""

from __future__ import annotations

import posixpath
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tools.literate.parse import Lesson

GLOSSARY = "<!-- glossary -->"


@dataclass(frozen=True)
class Term:
    en: str  # "KV cache"
    zh: str  # "KV 缓存"
    lesson: str  # "transformers/kv_cache"


def load(path: str | Path) -> tuple[Term, ...]:
    """Read `glossary.toml`. Raises ValueError naming the entry at fault."""
    path = Path(path)
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    if set(data) != {"terms"} or not isinstance(data["terms"], list):
        raise ValueError(f"{path.name}: expected only a list `terms`")
    terms, seen = [], set()
    for index, entry in enumerate(data["terms"]):
        where = f"{path.name}: terms[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"en", "zh", "lesson"}:
            raise ValueError(f"{where}: needs exactly en, zh and lesson")
        if not all(isinstance(value, str) and value for value in entry.values()):
            raise ValueError(f"{where}: en, zh and lesson are non-empty strings")
        if entry["en"].lower() in seen:
            raise ValueError(f"{where}: {entry['en']!r} is listed twice")
        seen.add(entry["en"].lower())
        terms.append(Term(entry["en"], entry["zh"], entry["lesson"]))
    return tuple(sorted(terms, key=lambda term: term.en.lower()))


def uses(text: str, term: str) -> bool:
    """Whether prose uses an English term, in any case, singular or plural, as a
    whole word: "tokenizers" uses "tokenizer", "detokenizer" does not."""
    pattern = rf"(?<![\w-]){re.escape(term)}(s|es)?(?![\w-])"
    return re.search(pattern, text, re.IGNORECASE) is not None


def locate(term: Term, lesson: Lesson) -> str | None:
    """The id of the first section of `lesson` whose prose uses the term; "" for the
    introduction, or the title and summary, which have no anchor of their own; None
    when none of them does."""
    for section in lesson.sections:
        if uses("\n".join(text for _, text in section.markdown), term.en):
            return "" if section.kind == "intro" else section.id
    meta = lesson.front_matter
    if uses(f"{meta.get('title', '')}\n{meta.get('summary', '')}", term.en):
        return ""
    return None


def render(
    markdown: str,
    terms: tuple[Term, ...],
    lessons: dict[str, Lesson],
    written: dict,
    page_src: str,
    language: str = "en",
) -> str:
    """Fill `<!-- glossary -->` in a docs page's Markdown, in the edition's `language`.
    `lessons` maps lesson keys to their parsed (English) source, `written` to their
    `learning_path.WrittenLesson`s in this edition. Raises ValueError for a term whose
    lesson is not written or does not use it."""
    if GLOSSARY not in markdown:
        return markdown
    here = posixpath.dirname(page_src) or "."
    chinese = language == "zh"
    header = (
        "| 英文 | 中文 | 首次讲解 |"
        if chinese
        else "| English | 中文 | Introduced in |"
    )
    rows = [header, "| --- | --- | --- |"]
    for term in terms:
        lesson = written.get(term.lesson)
        if lesson is None or term.lesson not in lessons:
            raise ValueError(f"glossary: {term.lesson} is not a written lesson")
        section = locate(term, lessons[term.lesson])
        if section is None:
            raise ValueError(
                f"glossary: {term.lesson} does not use {term.en!r} in its prose"
            )
        page = posixpath.relpath(lesson.page, here)
        target = f"{page}#{section}" if section else page
        # Each term marked with its language, for a screen reader's voice.
        english = _cell(term.en)
        if chinese:
            english = f'<span lang="en">{english}</span>'
        rows.append(
            f'| {english} | <span lang="zh-Hans">{_cell(term.zh)}</span> '
            f"| [{_cell(lesson.title)}]({target}) |"
        )
    return markdown.replace(GLOSSARY, "\n".join(rows))


def _cell(text: str) -> str:
    """Text that a Markdown table cell shows as written."""
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", text)
