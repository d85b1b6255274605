"""The study plan as the site's learning path: `annotated/curriculum.toml`, read,
checked and rendered.

The TOML mirrors the plan (`docs/plan.md`): three stages of stage-relative week blocks,
each with its lessons in reading order and the plan's items for those weeks (focus
topics, goals, projects, deeper topics, ...); then the study method, a typical week and
the competency checklist. Every item keeps the plan's own Chinese words as its `label`,
says in English what it asks for in `text`, and names the lessons (or sections of them)
that cover it in `covered_by`.

- `load(path)` reads the file and checks it: a bad entry raises `ValueError` naming it.
- `Curriculum.lessons()` is the reading order; `Curriculum.entry(module)` one lesson.
- `render(markdown, curriculum, written, page_src)` fills a page's placeholders
  (`<!-- learning-path -->`, `<!-- study-method -->`, `<!-- weekly-schedule -->`,
  `<!-- competencies -->`) with Markdown. A written lesson is a link relative to
  `page_src`; a planned one is its title marked "planned", never a link.
"""

from __future__ import annotations

import posixpath
import re
import tomllib
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path

from tools.literate import i18n

LEARNING_PATH = "<!-- learning-path -->"
STUDY_METHOD = "<!-- study-method -->"
WEEKLY_SCHEDULE = "<!-- weekly-schedule -->"
COMPETENCIES = "<!-- competencies -->"

# The kinds of item a block holds, in the order a block shows them: TOML key → (the
# plan's heading, ours). Stages 1 and 3 have focus topics and projects, stage 2 goals
# and deeper topics, and the own-project block directions and a process.
KINDS: dict[str, tuple[str, str]] = {
    "focus": ("重点内容", "Focus topics"),
    "goal": ("实现目标", "Implementation goals"),
    "project": ("实践项目", "Practice projects"),
    "deeper": ("深入课题", "Deeper topics"),
    "direction": ("建议方向", "Suggested directions"),
    "process": ("项目流程", "Project process"),
}
# The sections after the stages: TOML key → (their items' key, the plan's heading).
SECTIONS: dict[str, tuple[str, str]] = {
    "method": ("step", "深度学习方法建议"),
    "schedule": ("slot", "典型周计划示例"),
    "competencies": ("item", "能力评估标准"),
}

_MODULE = re.compile(r"[a-z][a-z0-9_]*/[a-z][a-z0-9_]*(\.cu)?")
_SECTION = re.compile(r"[a-z0-9][a-z0-9-]*")
_TEST = re.compile(r"test_\w+")
_WEEKS = re.compile(r"(\d+)(?:–(\d+))?")  # "1–2" with an en dash, or "3"
_PLANNED = '<span class="lit-planned">planned</span>'


# ---- the model ----------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenLesson:
    """What the renderer needs of a written lesson. `sections` holds the ids of its
    page's sections: a link to `module#id` is checked against them."""

    page: str  # "lessons/foundations/autograd.md"
    title: str
    summary: str
    sections: Set[str] = frozenset()
    # (section id, its heading or the name it defines), for links to sections
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LessonEntry:
    """A lesson's place: "foundations/autograd", stage 1, weeks "1–2" of that stage."""

    module: str
    title: str
    stage: int
    weeks: str  # stage-relative, as in the plan
    block: str  # the block's title


@dataclass(frozen=True)
class Ref:
    """A `covered_by` entry: a lesson, or one section of it."""

    module: str
    section: str | None = None

    def __str__(self) -> str:
        return f"{self.module}#{self.section}" if self.section else self.module


@dataclass(frozen=True)
class TestRef:
    """A `tests` entry: a lesson's test file, or one test function in it."""

    __test__ = False  # a name pytest would otherwise try to collect as a test class

    module: str
    name: str | None = None

    @property
    def file(self) -> str:
        """The mirrored test file, `tests/foundations/test_autograd.py`; a CUDA C
        lesson's has its suffix in the name (`softmax.cu` → `test_softmax_cu.py`)."""
        folder, _, topic = self.module.rpartition("/")
        return f"tests/{folder}/test_{topic.replace('.', '_')}.py"

    def __str__(self) -> str:
        return f"{self.module}::{self.name}" if self.name else self.module


@dataclass(frozen=True)
class Item:
    """An item of the plan: its words (`label`), ours (`text`), the lessons doing it."""

    label: str
    text: str
    covered_by: tuple[Ref, ...]
    tests: tuple[TestRef, ...] = ()
    where: str = ""  # "stage 1, weeks 1–2, focus": for messages


@dataclass(frozen=True)
class Block:
    stage: int
    weeks: str
    label: str
    title: str
    lessons: tuple[LessonEntry, ...]
    items: Mapping[str, tuple[Item, ...]]  # kind → items, kinds in KINDS order

    @property
    def span(self) -> tuple[int, int]:
        return _span(self.weeks)


@dataclass(frozen=True)
class Stage:
    number: int
    label: str
    title: str
    months: str
    weeks: str  # the stage's length in weeks, "4–8"
    summary: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Group:
    """A group of items after the stages: a method and its steps, a part of the week,
    or an area of competencies."""

    label: str
    title: str
    text: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Curriculum:
    stages: tuple[Stage, ...]
    method: tuple[Group, ...] = ()
    schedule: tuple[Group, ...] = ()
    competencies: tuple[Group, ...] = ()
    _by_module: dict[str, LessonEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        index = {lesson.module: lesson for lesson in self.lessons()}
        object.__setattr__(self, "_by_module", index)

    def lessons(self) -> list[LessonEntry]:
        """Every lesson, written or planned, in reading order."""
        return [
            lesson
            for stage in self.stages
            for b in stage.blocks
            for lesson in b.lessons
        ]

    def entry(self, module: str) -> LessonEntry:
        """The lesson `module` ("foundations/autograd"); KeyError if there is none."""
        return self._by_module[module]

    def stage(self, number: int) -> Stage:
        """Stage `number` (1–3); KeyError if there is none."""
        for stage in self.stages:
            if stage.number == number:
                return stage
        raise KeyError(number)

    def stage_title(self, number: int) -> str:
        return self.stage(number).title

    def items(self) -> Iterator[Item]:
        """Every item: the blocks', then the method's, the week's, the checklist's."""
        for stage in self.stages:
            for block in stage.blocks:
                for items in block.items.values():
                    yield from items
        for groups in (self.method, self.schedule, self.competencies):
            for group in groups:
                yield from group.items


def demonstrations(curriculum: Curriculum, results=None) -> dict[str, tuple]:
    """{lesson: ((competency text, its label, test names, outcome), ...)}: for each
    lesson the checklist links to, the competencies it builds and the tests of its own
    that demonstrate them, with how they fared in the stored run (`results`, or None:
    then every outcome is None). A test name is a function, or the file's name when
    the item names the whole file."""
    found: dict[str, list] = {}
    for group in curriculum.competencies:
        for item in group.items:
            for module in dict.fromkeys(ref.module for ref in item.covered_by):
                refs = [ref for ref in item.tests if ref.module == module]
                names = tuple(ref.name or posixpath.basename(ref.file) for ref in refs)
                outcomes = [results.status(ref) if results else None for ref in refs]
                if None in outcomes:
                    outcome = None
                elif "failed" in outcomes:
                    outcome = "failed"
                else:
                    outcome = "passed" if "passed" in outcomes else "skipped"
                found.setdefault(module, []).append(
                    (item.text, item.label, names, outcome)
                )
    return {module: tuple(rows) for module, rows in found.items()}


# ---- reading and checking -----------------------------------------------------------


def load(path: str | Path) -> Curriculum:
    """Read and check a curriculum file. Raises ValueError naming the entry at fault."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path.name}: not valid TOML: {error}") from None
    return _Reader(path.name).curriculum(data)


class _Reader:
    def __init__(self, name: str):
        self.name = name

    def fail(self, where: str, message: str):
        raise ValueError(f"{self.name}: {where}: {message}")

    def table(self, value, where: str, required: set[str], optional: set[str]) -> dict:
        if not isinstance(value, dict):
            self.fail(where, "expected a table")
        unknown = sorted(value.keys() - required - optional)
        if unknown:
            allowed = ", ".join(sorted(required | optional))
            self.fail(where, f"unknown key {', '.join(unknown)} (allowed: {allowed})")
        missing = sorted(required - value.keys())
        if missing:
            self.fail(where, f"missing {', '.join(missing)}")
        return value

    def text(self, table: dict, key: str, where: str) -> str:
        value = table[key]
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"{key} must be a non-empty string")
        return value

    def weeks(self, table: dict, where: str) -> str:
        value = self.text(table, "weeks", where)
        match = _WEEKS.fullmatch(value)
        if not match or (match[2] and int(match[2]) <= int(match[1])):
            self.fail(
                where, f'weeks {value!r} must look like "1–2" (an en dash) or "3"'
            )
        return value

    def curriculum(self, data: dict) -> Curriculum:
        data = self.table(data, "top level", {"stage"}, set(SECTIONS))
        if not isinstance(data["stage"], list) or not data["stage"]:
            self.fail("top level", "no [[stage]]")
        stages = tuple(self.stage(s, i) for i, s in enumerate(data["stage"]))
        modules: set[str] = set()
        for stage in stages:
            for block in stage.blocks:
                for lesson in block.lessons:
                    if lesson.module in modules:
                        where = f"stage {stage.number}, weeks {block.weeks}"
                        self.fail(where, f"lesson {lesson.module} is listed twice")
                    modules.add(lesson.module)
        groups = {key: self.groups(data.get(key, []), key) for key in SECTIONS}
        curriculum = Curriculum(stages, **groups)
        for item in curriculum.items():
            for ref in [*item.covered_by, *item.tests]:
                if ref.module not in modules:
                    self.fail(
                        f"{item.where} {item.label!r}",
                        f"{ref} names a lesson that is not in the curriculum",
                    )
        # A lesson page names the test that shows each competency it builds, so every
        # lesson of a competency needs one of its tests among the item's.
        for group in curriculum.competencies:
            for item in group.items:
                tested = {ref.module for ref in item.tests}
                for ref in item.covered_by:
                    if ref.module not in tested:
                        self.fail(
                            f"{item.where} {item.label!r}",
                            f"{ref.module} builds this competency but none of its "
                            "tests is in the item's tests",
                        )
        return curriculum

    def stage(self, value, index: int) -> Stage:
        where = f"stage #{index + 1}"
        table = self.table(
            value,
            where,
            {"number", "label", "title", "weeks", "block"},
            {"months", "summary"},
        )
        number = table["number"]
        if number != index + 1:
            self.fail(
                where, f"number is {number!r}; stages are numbered 1, 2, 3 in order"
            )
        where = f"stage {number}"
        label, title = (
            self.text(table, "label", where),
            self.text(table, "title", where),
        )
        weeks = self.weeks(table, where)
        if not isinstance(table["block"], list) or not table["block"]:
            self.fail(where, "no [[stage.block]]")
        blocks = tuple(self.block(b, number) for b in table["block"])
        last = 0
        for block in blocks:
            first, end = block.span
            if first != last + 1:
                self.fail(
                    f"{where}, weeks {block.weeks}",
                    f"starts at week {first}; the previous block ended at week {last}",
                )
            last = end
        if last > _span(weeks)[1]:
            self.fail(where, f"its blocks run to week {last}, past its {weeks} weeks")
        return Stage(
            number,
            label,
            title,
            str(table.get("months", "")),
            weeks,
            str(table.get("summary", "")),
            blocks,
        )

    def block(self, value, stage: int) -> Block:
        where = f"stage {stage}, a block"
        table = self.table(
            value, where, {"weeks", "label", "title"}, {"lessons", *KINDS}
        )
        weeks = self.weeks(table, where)
        where = f"stage {stage}, weeks {weeks}"
        label, title = (
            self.text(table, "label", where),
            self.text(table, "title", where),
        )
        lessons = []
        for lesson in table.get("lessons", []):
            lesson = self.table(
                lesson, f"{where}, a lesson", {"module", "title"}, set()
            )
            module = self.text(lesson, "module", f"{where}, a lesson")
            if not _MODULE.fullmatch(module):
                self.fail(
                    f"{where}, lesson {module!r}", 'module must look like "area/topic"'
                )
            lesson_title = self.text(lesson, "title", f"{where}, lesson {module}")
            lessons.append(LessonEntry(module, lesson_title, stage, weeks, title))
        items = {
            kind: self.items(table[kind], f"{where}, {kind}")
            for kind in KINDS
            if kind in table
        }
        return Block(stage, weeks, label, title, tuple(lessons), items)

    def groups(self, value, key: str) -> tuple[Group, ...]:
        item_key = SECTIONS[key][0]
        if not isinstance(value, list):
            self.fail(key, f"expected [[{key}]] tables")
        groups = []
        for index, group in enumerate(value):
            where = f"{key} #{index + 1}"
            group = self.table(group, where, {"label", "title", item_key}, {"text"})
            label = self.text(group, "label", where)
            where = f"{key} {label!r}"
            text = self.text(group, "text", where) if "text" in group else ""
            items = self.items(group[item_key], f"{where}, {item_key}")
            groups.append(Group(label, self.text(group, "title", where), text, items))
        self.unique([g.label for g in groups], key)
        return tuple(groups)

    def items(self, value, where: str) -> tuple[Item, ...]:
        if not isinstance(value, list) or not value:
            self.fail(where, "expected one or more tables")
        items = []
        for index, item in enumerate(value):
            label = item.get("label") if isinstance(item, dict) else None
            at = f"{where} {label!r}" if label else f"{where} #{index + 1}"
            item = self.table(item, at, {"label", "text", "covered_by"}, {"tests"})
            label = self.text(item, "label", at)
            text = self.text(item, "text", at)
            covered = [
                self.ref(ref, at) for ref in self.strings(item, "covered_by", at)
            ]
            tests = [self.test_ref(ref, at) for ref in self.strings(item, "tests", at)]
            self.unique([str(ref) for ref in covered], f"{at} covered_by")
            self.unique([str(ref) for ref in tests], f"{at} tests")
            items.append(Item(label, text, tuple(covered), tuple(tests), where))
        self.unique([item.label for item in items], where)
        return tuple(items)

    def strings(self, table: dict, key: str, where: str) -> list[str]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(where, f"{key} must be a list of strings")
        return value

    def ref(self, text: str, where: str) -> Ref:
        module, hash_, section = text.partition("#")
        if not _MODULE.fullmatch(module) or (hash_ and not _SECTION.fullmatch(section)):
            self.fail(
                where,
                f'covered_by {text!r} must be "area/topic" or "area/topic#section-id"',
            )
        return Ref(module, section or None)

    def test_ref(self, text: str, where: str) -> TestRef:
        module, colons, name = text.partition("::")
        if not _MODULE.fullmatch(module) or (colons and not _TEST.fullmatch(name)):
            self.fail(
                where, f'tests {text!r} must be "area/topic" or "area/topic::test_name"'
            )
        return TestRef(module, name or None)

    def unique(self, names: list[str], where: str) -> None:
        seen = set()
        for name in names:
            if name in seen:
                self.fail(where, f"{name!r} appears twice")
            seen.add(name)


def _span(weeks: str) -> tuple[int, int]:
    first, _, last = weeks.partition("–")
    return int(first), int(last or first)


# ---- rendering ----------------------------------------------------------------------


# The fixed words of the generated learning path in the editions that translate them;
# the plan's own words are already Chinese (each item's `label`).
LABELS = {
    "zh": {
        "Lessons, in reading order:": "课程（按阅读顺序）：",
        "    - Tests: ": "    - 测试：",
        "    - Lessons: ": "    - 课程：",
        "✓ passed": "✓ 通过",
        "✗ failed": "✗ 失败",
        ">skipped<": ">跳过<",
        "not in the stored run": "不在已存储的运行结果中",
        ">planned</span>": ">计划中</span>",
        # The stages' summaries and the study method's notes: ours, in English in
        # curriculum.toml (a changed one shows in English until it is changed here).
        "The mathematics under every model, neural networks from first principles, and "
        "how PyTorch really runs.": (
            "每个模型背后的数学，从第一性原理出发的神经网络，"
            "以及 PyTorch 实际上如何运行。"
        ),
        "The models that made deep learning work, each built from its paper and "
        "checked against a library.": (
            "成就了深度学习的那些模型，每一个都照着论文实现，并与一个库对照检验。"
        ),
        "Language models from tokenizer to serving engine, multimodal models, "
        "reinforcement learning, and a paper reproduced end to end.": (
            "从分词器到推理服务引擎的语言模型、多模态模型、强化学习，"
            "以及一篇从头到尾复现的论文。"
        ),
        "Read one key module of a real library each week, and draw it. Every lesson "
        "page here draws its own class diagram and dataflow diagram from its code.": (
            "每周读一个真实库中的关键模块，并把它画出来。"
            "本站每一课的页面都从自己的代码画出类图和数据流图。"
        ),
        "Write the same thing at several levels, from the library call down to the "
        "kernel, and compare them.": (
            "在几个层次上写同一个东西，从库调用一直到内核，然后加以比较。"
        ),
        "Measure where the time and the memory go before changing anything.": (
            "在改动任何东西之前，先测量时间和内存花在了哪里。"
        ),
        "The plan's recipe for a reproduction; the paper-reproduction lesson is laid "
        "out in these four parts.": (
            "计划中复现论文的做法；论文复现一课就按这四个部分编排。"
        ),
        "*No stored run of these tests yet: `python -m tools.literate.test_results` "
        "runs them and records the outcome here.*": (
            "*这些测试还没有已存储的运行结果：`python -m tools.literate.test_results` "
            "会运行它们并把结果记录在这里。*"
        ),
    }
}
# Where the plan's own Chinese name stands beside our English one, the Chinese edition
# keeps the plan's alone; the lengths and counts around them in Chinese: (pattern,
# replacement), applied line by line.
ZH = '<span lang="zh-Hans">'
PATTERNS = {
    "zh": [
        (rf"^(#+) Stage (\d+) · [^<]* ({ZH})", r"\1 第 \2 阶段 · \3"),
        (rf"^(#+) Weeks? ([\d–]+) · [^<]* ({ZH})", r"\1 第 \2 周 · \3"),
        (rf"^(#+ (?:\d+\. )?)[A-Za-z][^<]* ({ZH})", r"\1\2"),  # an English title
        (r"^\*([\d–]+) weeks?, ([\d–]+) months?\.\*", r"*\1 周，\2 个月。*"),
        (r"^\*([\d–]+) weeks?\.\*", r"*\1 周。*"),
        (rf"^\*\*[^*]+\*\* ({ZH}[^<]*</span>)$", r"**\1**"),
        (rf"^- \*\*.*?\*\* ({ZH}.*?</span>)$", r"- **\1**"),
        (rf"^- .*? \(({ZH}.*?</span>)\): ", r"- \1："),
        (
            r"^\*The stored run of (\S+) on (.+?) \(commit `(\w+)`\): (\d+) of (\d+) "
            r"competencies with written tests have every one of them passing\. "
            r"`python -m tools\.literate\.test_results` runs them again\.\*$",
            r"*\1 在 \2 上的已存储运行（提交 `\3`）：在有测试的 \5 项能力中，"
            r"\4 项的测试全部通过。`python -m tools.literate.test_results` "
            r"会再次运行它们。*",
        ),
    ]
}


def render(
    markdown: str,
    curriculum: Curriculum,
    written: Mapping[str, WrittenLesson],
    page_src: str,
    results=None,
    language: str = "en",
) -> str:
    """Fill the placeholders in a docs page's Markdown. `written` maps module keys to
    the written lessons; `page_src` is the page's path in the docs tree ("index.md"),
    which links are made relative to; `results` is the stored run of the checklist's
    tests (`tools.literate.test_results.TestResults`), or None. Headings nest under the
    last one above the placeholder.

    Raises ValueError for a link to a section that a written lesson does not have."""
    placeholders = {
        LEARNING_PATH: _learning_path,
        STUDY_METHOD: _method,
        WEEKLY_SCHEDULE: _schedule,
        COMPETENCIES: _competencies,
    }
    present = [p for p in placeholders if p in markdown]
    if not present:
        return markdown
    check(curriculum, written)
    links = _Links(curriculum, written, posixpath.dirname(page_src), results)
    for placeholder in present:
        level = _heading_level(markdown[: markdown.index(placeholder)]) + 1
        text = placeholders[placeholder](curriculum, links, min(level, 5))
        text = i18n.localise(text, language, LABELS, PATTERNS)
        markdown = markdown.replace(placeholder, text)
    return markdown


def _heading_level(markdown: str) -> int:
    """The level of the last ATX heading of `markdown` outside fenced code, or 1."""
    level, fence = 1, None
    for line in markdown.splitlines():
        stripped = line.lstrip()
        if fence:
            if stripped.startswith(fence):
                fence = None
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
        elif match := re.match(r"(#{1,6})\s", line):
            level = len(match[1])
    return level


def check(curriculum: Curriculum, written: Mapping[str, WrittenLesson]) -> None:
    """Raise ValueError for a `covered_by` section its written lesson does not have."""
    for item in curriculum.items():
        for ref in item.covered_by:
            lesson = written.get(ref.module)
            if (
                lesson is not None
                and ref.section
                and ref.section not in lesson.sections
            ):
                raise ValueError(
                    f"curriculum.toml: {item.where} {item.label!r}: {ref.module} "
                    f"has no section {ref.section!r} (its page is {lesson.page})"
                )


class _Links:
    def __init__(self, curriculum, written, here: str, results=None):
        self.curriculum, self.written, self.here = curriculum, written, here or "."
        self.results = results

    def url(self, target: str) -> str:
        return posixpath.relpath(target, self.here)

    def lesson(self, module: str, summary: bool = False) -> str:
        lesson = self.written.get(module)
        if lesson is None:
            return f"{_escape(self.curriculum.entry(module).title)} {_PLANNED}"
        link = f"[{_escape(lesson.title)}]({self.url(lesson.page)})"
        return f"{link}: {lesson.summary}" if summary and lesson.summary else link

    def refs(self, module: str, sections: list[str]) -> str:
        """A lesson, then its sections named: `[Title](page) § [a b](page#a-b), …`."""
        lesson = self.written.get(module)
        if lesson is None or not sections:
            return self.lesson(module)
        page = self.url(lesson.page)
        labels = dict(lesson.labels)
        anchors = [
            f"[{labels.get(s, s.replace('-', ' '))}]({page}#{s})" for s in sections
        ]
        return f"[{_escape(lesson.title)}]({page}) § {', '.join(anchors)}"

    def test(self, ref: TestRef) -> str:
        name = f"`{ref.name}`" if ref.name else f"`{posixpath.basename(ref.file)}`"
        if ref.module not in self.written:
            return f"{name} {_PLANNED}"
        link = f"[{name}]({self.url('downloads/' + ref.file)})"
        if self.results is None:
            return link
        return f"{link} {STATUS[self.results.status(ref)]}"

    def coverage(self, item: Item) -> str:
        """The lessons covering `item`, a lesson's sections together; or "planned"."""
        if not item.covered_by:
            return _PLANNED
        sections: dict[str, list[str]] = {}
        for ref in item.covered_by:
            sections.setdefault(ref.module, [])
            if ref.section:
                sections[ref.module].append(ref.section)
        return "; ".join(self.refs(module, names) for module, names in sections.items())


# How a test fared in the stored run, as the checklist shows it.
STATUS = {
    "passed": '<span class="lit-pass">✓ passed</span>',
    "failed": '<span class="lit-fail">✗ failed</span>',
    "skipped": '<span class="lit-skip">skipped</span>',
    None: '<span class="lit-skip">not in the stored run</span>',
}


def _escape(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>])", r"\\\1", text)


def _plural(count: str, unit: str) -> str:
    return f"{count} {unit}" if count == "1" else f"{count} {unit}s"


def _zh(label: str) -> str:
    return f'<span lang="zh-Hans">{label}</span>'


def _item_lines(item: Item, links: _Links) -> list[str]:
    lines = [f"- {item.text} ({_zh(item.label)}): {links.coverage(item)}"]
    if item.tests:
        lines.append(f"    - Tests: {', '.join(links.test(t) for t in item.tests)}")
    return lines


def _learning_path(curriculum: Curriculum, links: _Links, level: int) -> str:
    out, h = [], "#" * level
    for stage in curriculum.stages:
        length = _plural(stage.weeks, "week") + (
            f", {_plural(stage.months, 'month')}" if stage.months else ""
        )
        out += [f"{h} Stage {stage.number} · {stage.title} {_zh(stage.label)}", ""]
        out += [f"*{length}.* {stage.summary}".rstrip(), ""]
        for block in stage.blocks:
            weeks = "Week" if "–" not in block.weeks else "Weeks"
            out += [
                f"{h}# {weeks} {block.weeks} · {block.title} {_zh(block.label)}",
                "",
            ]
            if block.lessons:
                out += ["Lessons, in reading order:", ""]
                out += [
                    f"- {links.lesson(e.module, summary=True)}" for e in block.lessons
                ]
                out.append("")
            for kind, items in block.items.items():
                zh, english = KINDS[kind]
                out += [f"**{english}** {_zh(zh)}", ""]
                for item in items:
                    out += _item_lines(item, links)
                out.append("")
    return "\n".join(out)


def _method(curriculum: Curriculum, links: _Links, level: int) -> str:
    return _groups(curriculum.method, links, level, numbered=True)


def _schedule(curriculum: Curriculum, links: _Links, level: int) -> str:
    return _groups(curriculum.schedule, links, level, numbered=False)


def _groups(groups, links: _Links, level: int, numbered: bool) -> str:
    out = []
    for number, group in enumerate(groups, 1):
        title = f"{number}. {group.title}" if numbered else group.title
        out += [f"{'#' * level} {title} {_zh(group.label)}", ""]
        if group.text:
            out += [group.text, ""]
        for item in group.items:
            out += _item_lines(item, links)
        out.append("")
    return "\n".join(out)


def _competencies(curriculum: Curriculum, links: _Links, level: int) -> str:
    out, h = [], "#" * level
    results = links.results
    if results is None:
        out += [
            "*No stored run of these tests yet: `python -m "
            "tools.literate.test_results` runs them and records the outcome here.*",
            "",
        ]
    else:
        refs = [
            (item, ref)
            for group in curriculum.competencies
            for item in group.items
            for ref in item.tests
            if ref.module in links.written
        ]
        shown = {
            item.text
            for item, _ in refs
            if all(
                results.status(ref) == "passed"
                for ref in item.tests
                if ref.module in links.written
            )
        }
        items = {item.text for item, _ in refs}
        out += [
            f"*The stored run of {results.date} on {results.machine} (commit "
            f"`{results.commit}`): {len(shown)} of {len(items)} competencies with "
            "written tests have every one of them passing. `python -m "
            "tools.literate.test_results` runs them again.*",
            "",
        ]
    for group in curriculum.competencies:
        out += [f"{h} {group.title} {_zh(group.label)}", ""]
        if group.text:
            out += [group.text, ""]
        for item in group.items:
            out.append(f"- **{item.text}** {_zh(item.label)}")
            out.append(f"    - Lessons: {links.coverage(item)}")
            if item.tests:
                out.append(
                    f"    - Tests: {', '.join(links.test(t) for t in item.tests)}"
                )
        out.append("")
    return "\n".join(out)
