"""Translations of the site's prose, kept beside the English and checked for staleness.

The Chinese edition (`/zh/`, built by the `i18n` plugin as a second pass) shows the same
pages with their prose and figure captions translated. Code, math and the figures
themselves are the English edition's. A translation is stored per unit of prose, keyed
by the unit's id and a hash of the English it was made from:

    translations/zh/lessons/foundations/matrix.md   a lesson: its title, summary,
                                                    each section of prose, by its id,
                                                    each worksheet hint and each
                                                    figure's caption
    translations/zh/pages/index.md                  a hand-written page, by heading
    translations/zh/pages/tour.ipynb.md             a notebook page: its Markdown
                                                    cells, by heading

Each file is Markdown with one marker line per unit:

    <!-- unit: intro · source: 3f2a9c0b1d4e -->
    每一层神经网络都是一次矩阵乘法……

When the English of a unit changes its hash changes, and the unit is *stale*: the page
shows the English until the translation is brought up to date. A unit is *altered*
when its translation lost or changed a code span, math, a citation or a link target of
the English: those are carried over verbatim, and the page shows the English until they
are.

    python -m tools.literate.i18n check            # every missing, stale, altered unit
    python -m tools.literate.i18n check FILE ...   # only these files' units
    python -m tools.literate.i18n skeleton FILE    # a file to translate: each new
                                                   # unit's English, its hash filled in
    python -m tools.literate.i18n translated FILE  # once stale units' Chinese is up to
                                                   # date: record their new hash

FILE is a lesson (`annotated/<area>/<topic>.py`), a page (`docs/<page>.md`) or its
translation (`translations/zh/...`). The test suite runs `check`.

Terms follow the Chinese edition of *Dive into Deep Learning* (d2l.ai/zh): 张量,
自动微分, 反向传播, 梯度下降, 损失函数, 注意力机制, 卷积神经网络...
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from tools.literate import rules
from tools.literate.figures import Figures
from tools.literate.figures import read as read_figures
from tools.literate.files import LessonFile, atomic_write, discover
from tools.literate.parse import Lesson, parse

LANGUAGES = ("zh",)
FOLDER = "translations"
MARKER = re.compile(
    r"^<!-- unit: (?P<id>[\w.-]+) · source: (?P<hash>[0-9a-f]{12}) -->$"
)
CJK = re.compile(r"[\u4e00-\u9fff]")
HAN = re.compile(r"[\u4e00-\u9fff]+")
# A line break between two Chinese characters or punctuation marks: Markdown keeps it,
# and a browser shows it as a space, which Chinese does not put between words.
WIDE = "\u3000-\u303f\u4e00-\u9fff\uff00-\uffef"
CJK_BREAK = re.compile(rf"(?<=[{WIDE}])\n(?=[{WIDE}])")
FENCED = re.compile(r"^(?:```|~~~).*?^(?:```|~~~)[^\n]*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# What a translation must carry over from its English unchanged: code spans, math,
# citation keys and link targets (`marks`).
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
MATH_BLOCK = re.compile(r"\$\$(.+?)\$\$", re.S)
MATH_INLINE = re.compile(r"(?<!\\)\$(.+?)(?<!\\)\$", re.S)
CITATION = re.compile(r"\[@[^\]]*\]")
LINK_TARGET = re.compile(r"\]\(([^)\s]+)")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)  # where the engine puts a table or code


def source_hash(english: str) -> str:
    """The hash a translation records of the English it translates."""
    return hashlib.sha256(english.strip().encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Unit:
    """One piece of prose to translate: its id and its English Markdown."""

    id: str
    english: str


@dataclass(frozen=True)
class Status:
    path: str  # the translation file, from the project root
    unit: str
    state: str  # "missing", "stale" or "altered"
    hint: str = ""  # for a stale unit, the hash of its English now


# ---- units: what a lesson or a page is made of ---------------------------------------


def lesson_units(
    lesson: Lesson, figures: Figures | None = None, verified: str = ""
) -> list[Unit]:
    """A lesson's title, summary, what its test verifies it against (the header's
    sentence) and every section that has prose, in page order, then the hint of each
    worksheet region (`worksheet.<region>`) and the caption of each figure its demo
    stored (`figure.<file name>`)."""
    meta = lesson.front_matter
    units = [
        Unit("title", str(meta.get("title", ""))),
        Unit("summary", str(meta.get("summary", ""))),
        Unit("verified", verified),
    ]
    units += [Unit(s.id, s.prose) for s in lesson.sections if s.prose.strip()]
    units += [
        Unit(worksheet_unit(entry["region"]), str(entry["hint"]))
        for entry in meta.get("worksheet", [])
        if isinstance(entry, dict) and "region" in entry and "hint" in entry
    ]
    if figures is not None:
        units += [Unit(figure_unit(f.name), f.caption) for f in figures.files]
    return [unit for unit in units if unit.english.strip()]


def file_units(file: LessonFile, docs: Path) -> list[Unit]:
    """The units of a lesson file's page: its prose, its test's first sentence and the
    captions of the figures stored under `docs`."""
    lesson = parse(file.path.read_text(encoding="utf-8"), file.path)
    test = file.root / file.test
    test_source = test.read_text(encoding="utf-8") if test.is_file() else ""
    return lesson_units(
        lesson, read_figures(file, docs), rules.first_sentence(test_source)
    )


def worksheet_unit(region: str) -> str:
    """The unit id of a worksheet region's hint ("Matrix.matmul" →
    "worksheet.Matrix.matmul")."""
    return f"worksheet.{region}"


def figure_unit(name: str) -> str:
    """The unit id of the caption of the figure `name` ("loss.png" → "figure.loss")."""
    return "figure." + Path(name).stem


def page_markdown(path: Path) -> str:
    """A hand-written page's Markdown as the build translates it: without its YAML front
    matter (`hide:` and the like), which mkdocs reads off first. A notebook page's is
    its Markdown cells, one after another."""
    if path.suffix == ".ipynb":
        return notebook_markdown(path.read_text(encoding="utf-8"))
    from mkdocs.utils.meta import get_data

    return get_data(path.read_text(encoding="utf-8"))[0]


def notebook_markdown(notebook: str) -> str:
    """A notebook's (its JSON's) Markdown cells, one after another."""
    return "\n\n".join(
        "".join(cell["source"]).strip("\n")
        for cell in json.loads(notebook)["cells"]
        if cell["cell_type"] == "markdown"
    )


def translate_notebook(notebook: str, texts: dict[str, str]) -> str:
    """A notebook page (its JSON) with each Markdown cell translated as a page is, unit
    by unit; its code and stored outputs stay as they are. Each Markdown cell opens with
    a heading, so that its units are whole (`page_units` of all the cells together)."""
    data = json.loads(notebook)
    for cell in data["cells"]:
        if cell["cell_type"] == "markdown":
            english = "".join(cell["source"]).strip("\n")
            cell["source"] = translate_page(english, texts).rstrip("\n")
    return json.dumps(data, ensure_ascii=False, indent=1) + "\n"


def lines_and_headings(markdown: str):
    """Each line of `markdown` with its `HEADING` match, or None (also inside code
    fences, where a `#` line is code)."""
    fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        yield line, None if fence else HEADING.match(line)


def page_units(markdown: str) -> list[Unit]:
    """A hand-written page split at its headings (outside code fences): "top" before
    the first one, then one unit per heading, named by its words."""
    units: list[tuple[str, list[str]]] = [("top", [])]
    seen: dict[str, int] = {}
    for line, heading in lines_and_headings(markdown):
        if heading:
            base = "-".join(re.findall(r"[a-z0-9]+", heading.group(2).lower())[:6])
            base = base or "section"
            seen[base] = seen.get(base, 0) + 1
            units.append((base if seen[base] == 1 else f"{base}-{seen[base]}", []))
        units[-1][1].append(line)
    return [
        Unit(i, "\n".join(lines).strip("\n"))
        for i, lines in units
        if "".join(lines).strip()
    ]


def marks(markdown: str) -> Counter[str]:
    """What must survive translation verbatim, counted: every HTML comment (the engine
    replaces some with a table or code), code span, piece of math, cited key and link
    target (whitespace inside them normalised, since the translation wraps its lines
    elsewhere)."""
    found: Counter[str] = Counter()
    for comment in HTML_COMMENT.finditer(markdown):
        found["comment " + " ".join(comment.group(0).split())] += 1
    for span in CODE_SPAN.finditer(markdown):
        found["code `" + " ".join(span.group(2).split()) + "`"] += 1
    text = CODE_SPAN.sub(" ", markdown)
    for pattern in (MATH_BLOCK, MATH_INLINE):
        for math in pattern.finditer(text):
            found["math $" + " ".join(math.group(1).split()) + "$"] += 1
        text = pattern.sub(" ", text)
    for citation in CITATION.finditer(text):
        for key in re.findall(r"@([\w:-]+)", citation.group(0)):
            found["citation @" + key] += 1
    for target in LINK_TARGET.finditer(text):
        found["link (" + target.group(1) + ")"] += 1
    return found


def dropped(english: str, translation: str) -> list[str]:
    """The marks of the English that the translation lacks (it may repeat one, as when
    it gives a term in both languages, but it may not lose or change one)."""
    return sorted((marks(english) - marks(translation)).elements())


# ---- the stored files ----------------------------------------------------------------


def lesson_path(language: str, file: LessonFile) -> str:
    return f"{FOLDER}/{language}/lessons/{file.key}.md"


def page_path(language: str, src: str) -> str:
    """The translation file of the page `src` (under docs/): Markdown, also for a
    notebook page ("tour.ipynb" → "pages/tour.ipynb.md")."""
    return f"{FOLDER}/{language}/pages/{src}" + (
        ".md" if src.endswith(".ipynb") else ""
    )


def read(path: Path) -> dict[str, tuple[str, str]]:
    """{unit id: (source hash, translated Markdown)} of a translation file; empty when
    there is none."""
    if not path.is_file():
        return {}
    found: dict[str, tuple[str, str]] = {}
    current, lines = None, []
    for line in [*path.read_text(encoding="utf-8").splitlines(), None]:
        marker = MARKER.match(line) if line is not None else None
        if line is None or marker:
            if current is not None:
                found[current[0]] = (current[1], "\n".join(lines).strip("\n"))
            if marker:
                current, lines = (marker["id"], marker["hash"]), []
            continue
        if current is not None:
            lines.append(line)
    return found


def write(path: Path, units: list[Unit], stored: dict[str, tuple[str, str]]) -> None:
    """A translation file for `units`: each unit's stored (hash, text) where there is
    one, kept stale if it is; its English and current hash where there is none."""
    blocks = []
    for unit in units:
        hash_, text = stored.get(unit.id, (source_hash(unit.english), unit.english))
        blocks.append(f"<!-- unit: {unit.id} · source: {hash_} -->\n\n{text.strip()}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "\n".join(blocks))


def unwrapped(markdown: str) -> str:
    """Translated Markdown with the line breaks inside its Chinese sentences taken out
    (outside fenced code), so that the page shows no space where the translator
    wrapped a line."""
    pieces, start = [], 0
    for fence in FENCED.finditer(markdown):
        pieces += [CJK_BREAK.sub("", markdown[start : fence.start()]), fence.group(0)]
        start = fence.end()
    return "".join([*pieces, CJK_BREAK.sub("", markdown[start:])])


def translated(units: list[Unit], stored: dict[str, tuple[str, str]]) -> dict[str, str]:
    """{unit id: translation} for the units whose translation is up to date and keeps
    the English's code, math, citations and links, unwrapped for the page."""
    return {
        unit.id: unwrapped(stored[unit.id][1])
        for unit in units
        if unit.id in stored
        and stored[unit.id][0] == source_hash(unit.english)
        and CJK.search(stored[unit.id][1])
        and not dropped(unit.english, stored[unit.id][1])
    }


def statuses(units: list[Unit], stored: dict, path: str) -> list[Status]:
    """The units of one file that are missing (absent, or still English), stale, or
    altered (a code span, math, citation or link target of the English lost)."""
    found = []
    for unit in units:
        if unit.id not in stored or not CJK.search(stored[unit.id][1]):
            found.append(Status(path, unit.id, "missing"))
        elif stored[unit.id][0] != source_hash(unit.english):
            now = source_hash(unit.english)
            found.append(Status(path, unit.id, "stale", f" (English now: {now})"))
        elif lost := dropped(unit.english, stored[unit.id][1]):
            more = f" and {len(lost) - 3} more" if lost[3:] else ""
            shown = ", ".join(lost[:3]) + more
            found.append(Status(path, unit.id, "altered", f" (lost: {shown})"))
    return found


# ---- what the edition covers ---------------------------------------------------------


def required(root: Path, curriculum) -> tuple[list[str], list[LessonFile]]:
    """The hand-written pages and the lessons the Chinese edition must translate: every
    page under docs/ (Markdown or notebook) and every lesson of the curriculum."""
    modules = {entry.module for entry in curriculum.lessons()}
    lessons = [f for f in discover(root) if f.key in modules]
    docs = root / "docs"
    pages = sorted(
        path.relative_to(docs).as_posix()
        for pattern in ("*.md", "*.ipynb")
        for path in docs.rglob(pattern)
    )
    return pages, lessons


def check(root: Path, language: str, curriculum) -> list[Status]:
    """Every missing or stale unit: of the required pages and lessons, and of any
    other file already translated."""
    pages, lessons = required(root, curriculum)
    docs = root / "docs"
    page_names = set(pages) | {
        p.relative_to(root / page_path(language, "")).as_posix().removesuffix(".md")
        if p.name.endswith(".ipynb.md")
        else p.relative_to(root / page_path(language, "")).as_posix()
        for p in (root / page_path(language, "")).rglob("*.md")
    }
    lesson_keys = {f.key for f in lessons}
    all_lessons = {f.key: f for f in discover(root)}
    for stored in (root / FOLDER / language / "lessons").rglob("*.md"):
        key = stored.relative_to(root / FOLDER / language / "lessons").as_posix()[:-3]
        lesson_keys.add(key)
    found = []
    for src in sorted(page_names):
        path = page_path(language, src)
        if not (docs / src).is_file():
            found.append(Status(path, "*", "orphaned: no docs/" + src))
            continue
        units = page_units(page_markdown(docs / src))
        found += statuses(units, read(root / path), path)
    for key in sorted(lesson_keys):
        file = all_lessons.get(key)
        path = f"{FOLDER}/{language}/lessons/{key}.md"
        if file is None:
            found.append(Status(path, "*", "orphaned: no such lesson"))
            continue
        found += statuses(file_units(file, docs), read(root / path), path)
    return found


# ---- applying a translation ----------------------------------------------------------


@functools.lru_cache(maxsize=16384)
def segment(text: str) -> str:
    """Text for the search index with its Chinese split into words, as Material's search
    plugin splits a page's: jieba's words between zero-width spaces, which the site's
    search separator breaks at. Remembered by content: a rebuild segments the ~8,000
    section texts again, and jieba takes 2 s."""
    jieba = _quiet_jieba()
    return HAN.sub(
        lambda run: "\u200b" + "\u200b".join(jieba.cut(run.group(0))) + "\u200b", text
    ).strip("\u200b")


@functools.cache
def _quiet_jieba():
    """jieba, imported once, without the DEBUG lines it logs while loading its
    dictionary (to its own handler, and again through the root logger mkdocs sets up).
    Its import sets that level, so it is changed after."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def translate_lesson(lesson: Lesson, texts: dict[str, str]) -> Lesson:
    """The lesson with the prose of each translated unit replaced; code, line numbers
    and everything untranslated stay as they are."""
    sections = [
        replace(s, markdown=[(None, line) for line in texts[s.id].splitlines()])
        if s.id in texts
        else s
        for s in lesson.sections
    ]
    meta = dict(lesson.front_matter)
    for field in ("title", "summary"):
        if field in texts:
            meta[field] = texts[field]
    if "worksheet" in meta:  # its hints; `worksheet.regions` checks the entries' shape
        meta["worksheet"] = [
            {**entry, "hint": texts[worksheet_unit(entry["region"])]}
            if isinstance(entry, dict)
            and worksheet_unit(str(entry.get("region"))) in texts
            else entry
            for entry in meta["worksheet"]
        ]
    return replace(lesson, sections=sections, front_matter=meta)


def translate_figures(figures: Figures | None, texts: dict[str, str]) -> Figures | None:
    """The stored figures with each translated caption in place of its English."""
    if figures is None:
        return None
    files = tuple(
        replace(f, caption=texts.get(figure_unit(f.name), f.caption))
        for f in figures.files
    )
    return replace(figures, files=files)


def localise(
    text: str,
    language: str,
    labels: dict[str, dict[str, str]],
    patterns: dict[str, list[tuple[str, str]]],
) -> str:
    """Text the engine generated with its own words in `language`: each fixed phrase of
    `labels[language]` replaced, then each `(pattern, replacement)` of
    `patterns[language]` for the words that carry numbers, names or dates (`^` and `$`
    match at every line)."""
    for english, translated in labels.get(language, {}).items():
        text = text.replace(english, translated)
    for pattern, replacement in patterns.get(language, []):
        text = re.sub(pattern, replacement, text, flags=re.MULTILINE)
    return text


def translate_page(markdown: str, texts: dict[str, str]) -> str:
    """A hand-written page with each translated unit put in place of its English."""
    return (
        "\n\n".join(texts.get(unit.id, unit.english) for unit in page_units(markdown))
        + "\n"
    )


NOTEBOOK_HEADING = re.compile(r'<h([1-6]) id="([^"]*)">(.*?)</h\1>', re.S)


def notebook_anchors(html: str, toc: list, english_markdown: str) -> str:
    """A translated notebook page's HTML with each heading's id, and each entry of its
    table of contents `toc` (mkdocs `AnchorLink`s, changed in place), set to the English
    page's, in order. The notebook converter makes ids of ASCII only, so a Chinese
    heading got none and its contents entry pointed nowhere. Left as it is when the
    headings do not pair up one to one."""
    from mkdocs_jupyter.utils import slugify
    from nbconvert.filters.strings import _convert_header_id

    ids = [
        _convert_header_id(
            slugify(re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(2)))
        )
        for _, heading in lines_and_headings(english_markdown)
        if heading
    ]
    entries, stack = [], list(reversed(toc))
    while stack:
        entry = stack.pop()
        entries.append(entry)
        stack += reversed(entry.children)
    if not (len(ids) == len(entries) == len(NOTEBOOK_HEADING.findall(html))):
        return html
    for entry, anchor in zip(entries, ids):
        entry.id = anchor
    found = iter(ids)

    def renamed(match: re.Match) -> str:
        anchor = next(found)
        inner = match[3].replace(f'href="#{match[2]}"', f'href="#{anchor}"', 1)
        return f'<h{match[1]} id="{anchor}">{inner}</h{match[1]}>'

    return NOTEBOOK_HEADING.sub(renamed, html)


# ---- the editions in the built site --------------------------------------------------
#
# The English edition is the site's root and the Chinese one lives under `zh/`, inside
# it. Material's language switcher maps a page to its translation only where editions
# are sibling folders (`/en/`, `/zh/`): from any page here it led to the other
# edition's home page. And Material loads one search index, at `<base>/search/`, with
# `base` the site's root on every page: a Chinese reader's search listed English pages
# and an English reader's listed Chinese ones. Each page is therefore given links to
# its twins, and each edition a base and a search index of its own.

SWITCHER_LINK = re.compile(
    r'(<a href=")([^"]*)(" hreflang="[^"]+" class="md-select__link">)'
)
THEME_CONFIG = re.compile(
    r'(<script id="__config" type="application/json">)(.*?)(</script>)', re.S
)


def link_twins(html: str, path: str) -> str:
    """A page's HTML whose language switcher leads to the same page in each edition.

    `path` is the page's URL within its edition ("" for the home page,
    "lessons/foundations/matrix/"); each switcher link arrives as its edition's root,
    relative to the page. Every page has a twin: an untranslated page falls back to
    the English text in the other edition."""

    def twin(match: re.Match) -> str:
        root = match[2] if match[2].endswith("/") else f"{match[2]}/"
        return f"{match[1]}{root}{path}{match[3]}"

    return SWITCHER_LINK.sub(twin, html)


def with_base(html: str, base: str) -> str:
    """A page's HTML with the theme's `base` (where its scripts find the search index
    and resolve search results) set to `base`, relative to the page."""

    def rebased(match: re.Match) -> str:
        config = json.loads(match[2])
        config["base"] = base
        # Escaped as the theme's `tojson` escapes it: no "</script>" can end it early.
        text = json.dumps(config)
        for character in "<>&'":
            text = text.replace(character, f"\\u{ord(character):04x}")
        return f"{match[1]}{text}{match[3]}"

    return THEME_CONFIG.sub(rebased, html, count=1)


def split_search_index(index: dict, prefixes: list[str]) -> dict[str, dict]:
    """The site's one search index as one per edition, keyed by the edition's folder
    ("" for the root): each holds the entries of its pages, with locations relative to
    its folder, under the same search configuration."""
    parts: dict[str, list[dict]] = {"": []}
    parts.update({prefix: [] for prefix in prefixes if prefix})
    for entry in index["docs"]:
        prefix = next((p for p in parts if p and entry["location"].startswith(p)), "")
        parts[prefix].append({**entry, "location": entry["location"][len(prefix) :]})
    return {prefix: {**index, "docs": entries} for prefix, entries in parts.items()}


def units_of(root: Path, name: str, language: str) -> tuple[list[Unit], str]:
    """The units of the lesson or page that `name` names, and its translation file
    (from the project root). `name` is the lesson, the page under docs/, or the
    translation file, from the current folder. Raises ValueError saying what it is
    not, and LessonError for a lesson the engine cannot read."""
    full = Path(name).resolve()
    translations = root / FOLDER / language
    lessons = {file.path.resolve(): file for file in discover(root)}
    if full.is_relative_to(translations / "lessons"):
        key = full.relative_to(translations / "lessons").with_suffix("").as_posix()
        full = next((p for p, f in lessons.items() if f.key == key), full)
    elif full.is_relative_to(translations / "pages"):
        full = root / "docs" / full.relative_to(translations / "pages")
        if full.name.endswith(".ipynb.md"):
            full = full.with_suffix("")
    if full in lessons:
        file = lessons[full]
        return file_units(file, root / "docs"), lesson_path(language, file)
    if (
        full.is_relative_to(root / "docs")
        and full.suffix in (".md", ".ipynb")
        and full.is_file()
    ):
        src = full.relative_to(root / "docs").as_posix()
        return page_units(page_markdown(full)), page_path(language, src)
    raise ValueError(
        f"{name}: not a lesson (annotated/<area>/<topic>.py), a page (docs/*.md, "
        "docs/*.ipynb) or "
        f"the translation of one under {FOLDER}/{language}/"
    )


def mark_translated(path: Path, units: list[Unit], only: set[str]) -> list[str]:
    """Record the English's current hash for the stale units of the translation file
    at `path` (those in `only`, if given); return their ids. A unit still in English
    is left missing."""
    stored = read(path)
    done = []
    for unit in units:
        if unit.id not in stored or (only and unit.id not in only):
            continue
        hash_, text = stored[unit.id]
        if hash_ != source_hash(unit.english) and CJK.search(text):
            stored[unit.id] = (source_hash(unit.english), text)
            done.append(unit.id)
    if done:
        write(path, units, stored)
    return done


def main(argv: list[str] | None = None) -> int:
    from tools.literate import LessonError, learning_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser(
        "check", help="list missing, stale and altered units"
    )
    check_parser.add_argument(
        "files", nargs="*", help="only these lessons, pages or translations"
    )
    check_parser.add_argument("--language", default="zh", choices=LANGUAGES)
    skeleton = commands.add_parser(
        "skeleton",
        help="write a file to translate (its units in English, hashes filled in); "
        "units already translated and up to date are kept",
    )
    skeleton.add_argument("files", nargs="+", help="annotated/... or docs/*.md")
    skeleton.add_argument("--language", default="zh", choices=LANGUAGES)
    translated = commands.add_parser(
        "translated",
        help="record the English's current hash for the stale units of these files, "
        "once their translation says what the English now says",
    )
    translated.add_argument("files", nargs="+", help="lessons, pages or translations")
    translated.add_argument(
        "--unit", action="append", default=[], help="only this unit (repeatable)"
    )
    translated.add_argument("--language", default="zh", choices=LANGUAGES)
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[2]
    try:
        named = [units_of(root, name, args.language) for name in args.files]
    except (ValueError, LessonError) as problem:
        parser.error(str(problem))
    if args.command == "check":
        if named:
            found = [
                status
                for units, path in named
                for status in statuses(units, read(root / path), path)
            ]
        else:
            curriculum = learning_path.load(root / "annotated/curriculum.toml")
            found = check(root, args.language, curriculum)
        for status in found:
            print(f"{status.state:8} {status.path} · {status.unit}{status.hint}")
        print(f"{len(found)} unit(s) missing, stale or altered")
        return 1 if found else 0
    for units, path in named:
        target = root / path
        if args.command == "translated":
            unknown = set(args.unit) - {unit.id for unit in units}
            if unknown:
                names = ", ".join(sorted(unknown))
                parser.error(f"--unit {names}: not a unit of {path}")
            done = mark_translated(target, units, set(args.unit))
            print(f"{path}: {len(done)} stale unit(s) marked translated", *done)
            continue
        stored = read(target)
        write(target, units, stored)
        kept = sum(unit.id in stored for unit in units)
        print(f"{path}: {len(units)} units, {kept} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
