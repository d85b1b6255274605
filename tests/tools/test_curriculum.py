"""The learning path against the study plan it implements: every item of the plan
(docs/plan.md, the original Chinese text) has exactly one entry in
annotated/curriculum.toml, every written lesson has its place, and the rendered pages
link only to what exists."""

import ast
import posixpath
import re
from collections import Counter
from pathlib import Path

import pytest
from mkdocs.utils.yaml import yaml_load

from tools.literate import learning_path
from tools.literate.learning_path import KINDS, WrittenLesson
from tools.literate.parse import parse

from tools.literate.files import discover

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
TOML = REPO / "annotated" / "curriculum.toml"
CURRICULUM = learning_path.load(TOML)
PAGES = {
    "index.md": learning_path.LEARNING_PATH,
    "method.md": learning_path.STUDY_METHOD,
    "schedule.md": learning_path.WEEKLY_SCHEDULE,
    "competencies.md": learning_path.COMPETENCIES,
}


# ---- the plan, read from docs/plan.md ------------------------------------------------


def plan_text() -> str:
    """The original plan: the fenced block of docs/plan.md."""
    page = (DOCS / "plan.md").read_text(encoding="utf-8")
    match = re.search(r"^```markdown\n(.*?)\n```$", page, flags=re.S | re.M)
    assert match, "docs/plan.md holds the plan in one ```markdown block"
    return match[1]


def parse_plan(text: str) -> dict:
    """The plan's stages, blocks, and every item as (context, label)."""
    stages, blocks, items = {}, [], []
    part = stage = block = kind = group = None
    for line in text.splitlines():
        if match := re.match(r"## ([一二三四五六])、", line):
            part, kind, group = match[1], None, None
        elif part == "一" and (
            m := re.match(r"### 阶段(\d)：(.+)（(\d+)-(\d+)个月）$", line)
        ):
            stages.setdefault(int(m[1]), {})["months"] = f"{m[3]}–{m[4]}"
        elif part == "二" and (
            m := re.match(r"### 阶段(\d)：(.+)（(\d+)-(\d+)周）$", line)
        ):
            stage = int(m[1])
            stages.setdefault(stage, {}).update(label=m[2], weeks=f"{m[3]}–{m[4]}")
        elif part == "二" and (m := re.match(r"#### 第(\d+)-(\d+)周：(.+)$", line)):
            block = f"{m[1]}–{m[2]}"
            blocks.append((stage, block, m[3]))
            kind = None
        elif part in ("二", "五") and (m := re.match(r"\*\*(.+)\*\*：$", line)):
            kind = group = m[1]
        elif part in ("四", "六") and (m := re.match(r"\d+\. \*\*(.+)\*\*：$", line)):
            group = m[1]
        elif m := re.match(r"\s*(?:-|\d+\.|\d+\))\s+(.+)$", line):
            if (
                part == "二" and kind != "资源"
            ):  # resources are reading lists, not items
                items.append(((stage, block, kind), m[1]))
            elif part in ("四", "五", "六") and group:
                items.append(((part, group), m[1]))
    return {"stages": stages, "blocks": blocks, "items": items}


PLAN = parse_plan(plan_text())


def curriculum_items() -> list[tuple[tuple, str]]:
    """The curriculum's items as (context, label), in the plan parser's terms."""
    found = []
    for stage in CURRICULUM.stages:
        for block in stage.blocks:
            for kind, items in block.items.items():
                context = (stage.number, block.weeks, KINDS[kind][0])
                found += [(context, item.label) for item in items]
    for part, groups in (
        ("四", CURRICULUM.method),
        ("五", CURRICULUM.schedule),
        ("六", CURRICULUM.competencies),
    ):
        for group in groups:
            found += [((part, group.label), item.label) for item in group.items]
    return found


def test_plan_page_holds_the_original_verbatim():
    page = (DOCS / "plan.md").read_text(encoding="utf-8")
    preface = page.split("\n\n", 1)[0]
    assert "\n" not in preface and preface.isascii(), "a one-line English preface"
    originals = sorted((REPO.parent / "shared" / "plan").glob("*.txt"))
    if not originals:
        pytest.skip("no ../shared/plan/*.txt beside this clone to compare with")
    assert plan_text() == originals[0].read_text(encoding="utf-8")


def test_the_plan_parser_finds_every_part_of_the_plan():
    assert len(PLAN["blocks"]) == 11
    assert Counter(context[0] for context, _ in PLAN["items"]) == {
        1: 21,
        2: 24,
        3: 26,
        "四": 13,
        "五": 9,
        "六": 9,
    }


def test_every_item_of_the_plan_has_exactly_one_entry():
    plan = Counter(PLAN["items"])
    ours = Counter(curriculum_items())
    missing = sorted(str(key) for key in plan - ours)
    extra = sorted(str(key) for key in ours - plan)
    assert not missing, f"items of the plan with no entry in curriculum.toml: {missing}"
    assert not extra, f"entries whose label is not an item of the plan: {extra}"
    assert max(ours.values()) == 1


def test_stages_and_blocks_follow_the_plan_in_its_order():
    for stage in CURRICULUM.stages:
        plan = PLAN["stages"][stage.number]
        assert (stage.label, stage.weeks, stage.months) == (
            plan["label"],
            plan["weeks"],
            plan["months"],
        )
    ours = [(s.number, b.weeks, b.label) for s in CURRICULUM.stages for b in s.blocks]
    assert ours == PLAN["blocks"]


def test_weeks_are_stage_relative_and_inside_the_stage():
    for stage in CURRICULUM.stages:
        end = 0
        for block in stage.blocks:
            first, last = block.span
            assert first == end + 1 and last >= first, f"stage {stage.number} {block}"
            end = last
        assert end == int(stage.weeks.split("–")[1])


# ---- the lessons ---------------------------------------------------------------------

LESSON_FILES = {lesson.key: lesson for lesson in discover(REPO)}


def _written() -> dict[str, WrittenLesson]:
    found = {}
    for key, file in LESSON_FILES.items():
        lesson = parse(file.path.read_text(encoding="utf-8"), file.path)
        meta = FRONT_MATTER[key] = lesson.front_matter
        found[key] = WrittenLesson(
            f"lessons/{key}.md",
            meta["title"],
            meta.get("summary", ""),
            frozenset(section.id for section in lesson.sections),
        )
    return found


FRONT_MATTER: dict[str, dict] = {}
WRITTEN = _written()


def test_every_written_lesson_is_in_the_curriculum_once():
    modules = [lesson.module for lesson in CURRICULUM.lessons()]
    assert len(modules) == len(set(modules))
    missing = sorted(set(LESSON_FILES) - set(modules))
    assert not missing, f"written lessons missing from curriculum.toml: {missing}"


@pytest.mark.parametrize("key", sorted(LESSON_FILES))
def test_written_lesson_title_and_stage_match_its_entry(key):
    entry, lesson = CURRICULUM.entry(key), WRITTEN[key]
    assert entry.title == lesson.title, "the curriculum's title is the lesson's own"
    if "stage" in FRONT_MATTER[key]:
        assert FRONT_MATTER[key]["stage"] == entry.stage


def test_the_path_opens_with_a_written_lesson_that_imports_no_other():
    first = CURRICULUM.lessons()[0]
    assert first.module in WRITTEN
    source = LESSON_FILES[first.module].path.read_text(encoding="utf-8")
    imports = [
        node.module or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom)
    ]
    shared = (
        "annotated.data",
        "annotated.figures",
    )  # not lessons: every lesson may use them
    lessons = [n for n in imports if n.startswith("annotated.") and n not in shared]
    assert not lessons


def test_named_tests_of_written_lessons_exist():
    functions: dict[str, set[str]] = {}
    for item in CURRICULUM.items():
        for test in item.tests:
            if test.module not in WRITTEN:
                continue
            path = REPO / test.file
            assert path.is_file(), f"{item.label}: {test.file} is missing"
            if test.file not in functions:
                tree = ast.parse(path.read_text(encoding="utf-8"))
                functions[test.file] = {
                    node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                }
            assert not test.name or test.name in functions[test.file], (
                f"{item.label}: no {test} in {test.file}"
            )


def test_competencies_all_name_tests():
    for group in CURRICULUM.competencies:
        for item in group.items:
            assert item.covered_by and item.tests, item.label


# ---- rendering -----------------------------------------------------------------------


def rendered(page: str, written=WRITTEN) -> str:
    markdown = (DOCS / page).read_text(encoding="utf-8")
    return learning_path.render(markdown, CURRICULUM, written, page)


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES)
def test_every_link_on_the_rendered_pages_exists(page):
    assert PAGES[page] in (DOCS / page).read_text(encoding="utf-8")
    text = rendered(page)
    assert "<!--" not in text
    pages = {lesson.page: lesson for lesson in WRITTEN.values()}
    for target in LINK.findall(text):
        if "://" in target:
            continue  # another site: not this checker's business
        path, _, anchor = posixpath.normpath(
            posixpath.join(posixpath.dirname(page), target)
        ).partition("#")
        if path in pages:
            assert not anchor or anchor in pages[path].sections, target
        elif path.startswith("downloads/tests/"):
            assert (REPO / path.removeprefix("downloads/")).is_file(), target
        else:
            assert (DOCS / path).is_file(), f"{page} links to {target}"


@pytest.mark.parametrize("page", PAGES)
def test_planned_lessons_are_marked_and_never_linked(page):
    text = rendered(page)
    planned = {e.title for e in CURRICULUM.lessons() if e.module not in WRITTEN}
    for title in re.findall(r"\[([^\]]*)\]\(", text):
        assert title.split(" § ")[0].replace("\\", "") not in planned, title
    named = {
        entry.title
        for entry in CURRICULUM.lessons()
        if entry.title in text or entry.module in text
    }
    if named & planned:  # a page naming a planned lesson marks it
        assert 'class="lit-planned">planned</span>' in text


def test_the_learning_path_opens_with_the_first_lesson_and_the_home_page_agrees():
    first = CURRICULUM.lessons()[0]
    text = rendered("index.md")
    placeholder_at = (DOCS / "index.md").read_text(encoding="utf-8").index("<!--")
    links = LINK.findall(text[placeholder_at:])
    assert links[0] == WRITTEN[first.module].page
    start = re.search(r"Start with \[[^\]]+\]\(([^)]+)\)", text)
    assert start and start[1] == WRITTEN[first.module].page


def test_links_are_relative_to_the_page_and_headings_nest_under_it():
    markdown = "# Plan\n\n## Path\n\n" + learning_path.LEARNING_PATH
    text = learning_path.render(markdown, CURRICULUM, WRITTEN, "guide/path.md")
    assert "](../lessons/foundations/matrix.md)" in text
    assert "\n### Stage 1 · " in text and "\n#### Weeks 1–2 · " in text


def test_the_chinese_edition_keeps_the_plans_own_names_and_counts_in_chinese():
    english = {page: rendered(page) for page in PAGES}
    chinese = {
        page: learning_path.render(
            (DOCS / page).read_text(encoding="utf-8"),
            CURRICULUM,
            WRITTEN,
            page,
            language="zh",
        )
        for page in PAGES
    }
    path = chinese["index.md"]
    assert "\n### 第 1 阶段 · <span" in path and "\n#### 第 1–2 周 · <span" in path
    assert "*4–8 周，1–2 个月。*" in path and "Stage 1" not in path
    # Our own English, the stages' summaries and the method's notes, is translated
    # (a changed one would show in English: the table must follow it).
    ours = [stage.summary for stage in CURRICULUM.stages]
    ours += [group.text for group in CURRICULUM.method if group.text]
    assert all(text in learning_path.LABELS["zh"] for text in ours)
    assert not any(text in chinese[page] for text in ours for page in chinese)
    item = CURRICULUM.stages[0].blocks[0].items["focus"][0]
    assert item.text in english["index.md"] and item.text not in path
    assert f'- <span lang="zh-Hans">{item.label}</span>：[' in path
    for page, text in chinese.items():
        headings = [line for line in text.splitlines() if line.startswith("#")]
        placeholder = (DOCS / page).read_text(encoding="utf-8").index("<!--")
        generated = [h for h in headings if h in text[placeholder:]]
        assert generated and all("zh-Hans" in h for h in generated[1:]), page
        assert len(text) > 0.5 * len(english[page])  # dropped words, not content


def test_a_link_to_a_missing_section_raises():
    written = dict(WRITTEN)
    lesson = written["foundations/convex"]
    written["foundations/convex"] = WrittenLesson(
        lesson.page, lesson.title, lesson.summary, lesson.sections - {"sgd-logistic"}
    )
    with pytest.raises(
        ValueError, match="foundations/convex has no section 'sgd-logistic'"
    ):
        rendered("index.md", written)


def test_a_section_is_named_by_its_heading_or_the_name_it_defines(tmp_path):
    from tools.literate import pipeline

    convex = LESSON_FILES["foundations/convex"]
    record = pipeline.read(convex, REPO / "docs")
    english = pipeline.Site(tmp_path, True, frozenset(), {})
    labels = dict(pipeline.section_labels(record, english))
    assert labels["sgd-logistic"].startswith("SGD: a noise ball")
    assert labels["gradient-descent"] == "`gradient_descent`"  # its heading has math
    chinese = pipeline.Site(
        tmp_path,
        True,
        frozenset(),
        {},
        language="zh",
        prefix="zh/",
        translations={
            "foundations/convex": {"sgd-logistic": "## 随机梯度下降\n\n正文"}
        },
    )
    assert dict(pipeline.section_labels(record, chinese))["sgd-logistic"] == (
        "随机梯度下降"
    )
    written = dict(WRITTEN)
    written["foundations/convex"] = WrittenLesson(
        *list(vars(written["foundations/convex"]).values())[:4], tuple(labels.items())
    )
    page = rendered("index.md", written)  # the learning path's plan items
    assert "§ [`gradient_descent`](" in page and "[SGD: a noise ball" in page


def test_pages_are_in_the_nav_after_home():
    with open(REPO / "mkdocs.yml", encoding="utf-8") as handle:
        nav = yaml_load(handle)["nav"]  # mkdocs' own loader: it knows !ENV
    assert nav[0] == {"Home": "index.md"}
    assert nav[1] == {
        "Learning path": [
            {"Study plan": "plan.md"},
            {"Method": "method.md"},
            {"Weekly schedule": "schedule.md"},
            {"Competencies": "competencies.md"},
            {"Compare implementations": "compare.md"},
            {"Papers": "papers.md"},
            {"Glossary": "glossary.md"},
        ]
    }


# ---- a bad curriculum fails with the entry named -------------------------------------

BAD = {
    "unknown lesson": (
        '["foundations/matrix", "foundations/autograd", "foundations/tensor_autograd"]',
        '["foundations/matrx"]',
        "矩阵计算与自动微分.*foundations/matrx names a lesson that is not in the",
    ),
    "duplicate module": (
        'module = "networks/activations", title',
        'module = "foundations/matrix", title',
        "lesson foundations/matrix is listed twice",
    ),
    "missing label": (
        'label = "概率图模型"\n',
        "",
        r"stage 1, weeks 1–2, focus #2: missing label",
    ),
    "unknown key": (
        'text = "The forward pass and the backward pass"\n    covered_by',
        'text = "The forward pass and the backward pass"\n    coverd_by',
        "unknown key coverd_by",
    ),
    "weeks with a hyphen": ('weeks = "3–4"', 'weeks = "3-4"', "must look like"),
    "weeks past the stage": ('weeks = "5–8"', 'weeks = "5–9"', "past its 4–8 weeks"),
    "competency lesson without a test": (
        ', "rl/distributed_rollouts"]\n\n',  # the tests line: a blank line follows
        "]\n\n",
        "rl/distributed_rollouts builds this competency but none of its tests",
    ),
    "bad section id": (
        '"foundations/convex#sgd-logistic"',
        '"foundations/convex#SGD"',
        "section-id",
    ),
    "not TOML": ("number = 1\n", "number = 1 1\n", "curriculum.toml: not valid TOML"),
    "stages out of order": ("number = 2\n", "number = 3\n", "stage #2: number is 3"),
    "a gap between blocks": (
        'weeks = "1–2"\n  label = "数学强化"',
        'weeks = "1"\n  label = "数学强化"',
        r"stage 1, weeks 3–4: starts at week 3; the previous block ended at week 1",
    ),
    "module not area/topic": (
        '{ module = "foundations/matrix", title',
        '{ module = "matrix", title',
        "lesson 'matrix'.*must look like \"area/topic\"",
    ),
    "malformed test name": (
        'tests = ["foundations/autograd"]',
        'tests = ["foundations/autograd::autograd works"]',
        'must be "area/topic" or "area/topic::test_name"',
    ),
    "tests not a list": (
        'tests = ["foundations/autograd"]',
        'tests = "foundations/autograd"',
        "tests must be a list of strings",
    ),
    "an empty text": (
        'text = "A matrix library written without NumPy"',
        'text = " "',
        "实现矩阵运算库.*text must be a non-empty string",
    ),
    "a label twice": (
        'label = "手动实现自动微分系统"',
        'label = "实现矩阵运算库（不使用NumPy）"',
        "project: '实现矩阵运算库（不使用NumPy）' appears twice",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_entry_raises_naming_it(tmp_path, case):
    old, new, message = BAD[case]
    source = TOML.read_text(encoding="utf-8")
    assert old in source
    (tmp_path / "curriculum.toml").write_text(
        source.replace(old, new, 1), encoding="utf-8"
    )
    with pytest.raises(ValueError, match=message):
        learning_path.load(tmp_path / "curriculum.toml")
