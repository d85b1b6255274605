"""The papers page: every work the lessons cite, once, oldest first, with the lessons
that cite it.

Each lesson lists its references in its front matter, and the rules
(`rules.one_entry_per_work`) keep those lists agreeing across lessons: a key names one
work, with the same entry wherever it is cited, and a work has one key. So the works
can be gathered into one list. A docs page holding `<!-- papers -->` gets them grouped
by decade, each with its citation label, authors, title, venue and link, and a link to
the references section of every lesson that cites it (`#ref-<key>`, the id the lesson
page gives the entry). Each entry has the same id on this page, so a work can be
linked to as `papers.md#ref-<key>`.
"""

from __future__ import annotations

import html
import posixpath
import re
from dataclasses import dataclass

from tools.literate.render import citation_labels, full_stop

PAPERS = "<!-- papers -->"
# The docs page that holds it: each lesson's references link there (`render._also`).
PAGE = "papers.md"


@dataclass(frozen=True)
class Work:
    reference: dict  # the front matter's entry: key, authors, title, year, venue, ...
    cited_in: tuple[str, ...]  # the lessons citing it, in reading order: "llm/gpt2"

    @property
    def key(self) -> str:
        return str(self.reference["key"])

    @property
    def year(self) -> int:
        return int(self.reference["year"])


def works(lessons: list[tuple[str, list[dict]]]) -> list[Work]:
    """Each cited work once, oldest first (then by label), from (lesson key, its
    references) in reading order. The first lesson's entry stands for the work: the
    rules have made every other lesson's the same."""
    entries: dict[str, dict] = {}
    citing: dict[str, list[str]] = {}
    for lesson, references in lessons:
        for reference in references:
            entries.setdefault(reference["key"], reference)
            citing.setdefault(reference["key"], []).append(lesson)
    labels = citation_labels(list(entries.values()))
    found = [Work(entry, tuple(citing[key])) for key, entry in entries.items()]
    return sorted(found, key=lambda work: (work.year, labels[work.key], work.key))


def render(
    markdown: str,
    found: list[Work],
    written: dict,
    page_src: str,
    language: str = "en",
) -> str:
    """Fill `<!-- papers -->` in a docs page's Markdown, in the edition's `language`.
    `written` maps lesson keys to `learning_path.WrittenLesson`s (their pages and
    titles in this edition)."""
    if PAPERS not in markdown:
        return markdown
    chinese = language == "zh"
    here = posixpath.dirname(page_src) or "."
    labels = citation_labels([work.reference for work in found])
    citations = sum(len(work.cited_in) for work in found)
    lessons = len({lesson for work in found for lesson in work.cited_in})
    preprints = sum(1 for work in found if work.reference.get("arxiv"))
    if chinese:
        out = [
            f"共 {len(found)} 篇文献，被 {lessons} 课引用 {citations} 次，"
            f"其中 {preprints} 篇可在 arXiv 上读到。",
            "",
        ]
    else:
        out = [
            f"{len(found)} works, cited {citations} times by {lessons} lessons; "
            f"{preprints} of them can be read on arXiv.",
            "",
        ]
    decades: dict[int, list[Work]] = {}
    for work in found:
        decades.setdefault(work.year // 10 * 10, []).append(work)
    for decade, listed in decades.items():
        out += [f"## {decade} 年代" if chinese else f"## {decade}s", ""]
        out += ['<div class="lit-papers" markdown>', ""]
        for work in listed:
            out += _entry(work, labels[work.key], written, here, chinese)
        out += ["", "</div>", ""]
    return markdown.replace(PAPERS, "\n".join(out))


def _entry(
    work: Work, label: str, written: dict, here: str, chinese: bool
) -> list[str]:
    """One work as a list item: its label, authors, title, venue and link, then the
    lessons citing it; the item's id is the lessons' `ref-<key>`."""
    reference = work.reference
    authors = ", ".join(str(author) for author in reference["authors"])
    if reference.get("arxiv"):
        arxiv = str(reference["arxiv"])
        link = f"[arXiv:{arxiv}](https://arxiv.org/abs/{arxiv})"
    else:
        url = str(reference["url"])
        link = f"[{_escape(re.sub(r'^https?://', '', url))}]({url})"
    lessons = []
    for key in work.cited_in:
        lesson = written[key]
        page = posixpath.relpath(lesson.page, here)
        lessons.append(f"[{_escape(lesson.title)}]({page}#ref-{work.key})")
    # Lesson titles hold commas ("SGD, RMSProp, Adam and AdamW"): semicolons part them.
    if chinese:
        cited = f"引用于：{'；'.join(lessons)}。"
    else:
        cited = f"Cited in {'; '.join(lessons)}."
    title, venue = str(reference["title"]), str(reference["venue"])
    return [
        f"- **{_escape(label)}.** {_escape(authors)}{full_stop(authors)} "
        f"*{_escape(title)}*{full_stop(title)} "
        f"{_escape(venue)}{full_stop(venue)} {link}  ",
        f"  {cited}",
        f"  {{ #ref-{work.key} }}",
    ]


def _escape(text: str) -> str:
    """Text that Markdown shows as written: its punctuation escaped, `<` and `&` as
    entities."""
    text = html.escape(text, quote=False)
    return re.sub(r"([\\`*_\[\]])", r"\\\1", text)
