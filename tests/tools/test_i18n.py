"""Verified against the English source: a translation applies only to the unit whose
English it was made from (same id, same hash), code and math are untouched, and the
project's Chinese edition has no missing or stale unit in what it must cover."""

from pathlib import Path

import nbformat
import pytest
from mkdocs.structure.toc import AnchorLink

from conftest import REPO, make_project
from tools.literate import i18n, learning_path
from tools.literate.figures import Figure, Figures
from tools.literate.parse import parse

FIXTURE = (Path(__file__).parent / "fixtures/tiny_model.py").read_text()
LESSON = parse(FIXTURE, "annotated/demo/tiny_model.py")


def test_a_lesson_is_its_title_summary_and_every_section_with_prose():
    units = i18n.lesson_units(LESSON)
    assert [u.id for u in units[:3]] == ["title", "summary", "intro"]
    assert units[0].english == "A tiny model"
    assert {u.id for u in units[2:]} == {s.id for s in LESSON.sections if s.prose}
    assert i18n.source_hash("x\n") == i18n.source_hash("x") != i18n.source_hash("y")


def test_stored_units_round_trip_and_a_changed_english_is_stale(tmp_path):
    units = i18n.lesson_units(LESSON)
    path = tmp_path / "tiny_model.md"
    i18n.write(path, units, {})
    stored = i18n.read(path)
    assert {k: v[1] for k, v in stored.items()} == {u.id: u.english for u in units}
    # Still English: every unit is missing, none is shown.
    assert {s.state for s in i18n.statuses(units, stored, "f")} == {"missing"}
    assert i18n.translated(units, stored) == {}
    text = path.read_text().replace("A tiny model", "一个很小的模型", 1)
    path.write_text(text)
    stored = i18n.read(path)
    assert i18n.translated(units, stored) == {"title": "一个很小的模型"}
    # The English title changes: the translation is stale and no longer shown.
    changed = [
        i18n.Unit("title", "A small model") if u.id == "title" else u for u in units
    ]
    assert i18n.translated(changed, stored) == {}
    stale = [s for s in i18n.statuses(changed, stored, "f") if s.unit == "title"]
    assert stale[0].state == "stale"
    assert i18n.source_hash("A small model") in stale[0].hint
    # The skeleton keeps a stale translation, with its old hash, for the translator.
    i18n.write(path, changed, stored)
    assert i18n.read(path)["title"] == stored["title"]


def test_a_translation_that_loses_code_math_a_citation_a_link_or_a_marker_is_altered():
    english = (
        "Adam [@kingma2015adam; @loshchilov2019decoupled] divides by\n"
        "$\\sqrt{\\hat v} + \\epsilon$; see `torch.optim.Adam(lr,\n"
        "betas)` and [the optimisers](../foundations/optimizers.md#adam).\n\n"
        "$$\nm_t = \\beta_1 m_{t-1}\n$$\n\n<!-- compare -->"
    )
    faithful = (
        "Adam [@kingma2015adam; @loshchilov2019decoupled] 除以 $\\sqrt{\\hat v}\n"
        "+ \\epsilon$（$\\epsilon$ 防止除以零）；见 `torch.optim.Adam(lr, betas)` 和\n"
        "[优化器](../foundations/optimizers.md#adam)。\n\n"
        "$$\nm_t = \\beta_1 m_{t-1}\n$$\n\n<!-- compare -->"
    )
    assert i18n.dropped(english, faithful) == []  # rewrapped, one symbol repeated
    unit = i18n.Unit("adam", english)
    for lost, translation in [
        ("citation @loshchilov2019decoupled", faithful.replace("; @loshchilov", "")),
        ("link (../foundations/optimizers.md#adam)", faithful.replace("#adam)", ")")),
        ("code `torch.optim.Adam(lr, betas)`", faithful.replace("lr, betas", "lr")),
        ("math $m_t = \\beta_1 m_{t-1}$", faithful.replace("m_{t-1}", "m_t")),
        ("comment <!-- compare -->", faithful.replace("compare", "比较")),
    ]:
        stored = {"adam": (i18n.source_hash(english), translation)}
        (status,) = i18n.statuses([unit], stored, "f")
        assert (status.state, lost in status.hint) == ("altered", True), translation
        assert i18n.translated([unit], stored) == {}  # the page keeps the English
    stored = {"adam": (i18n.source_hash(english), faithful)}
    assert i18n.statuses([unit], stored, "f") == []
    assert i18n.translated([unit], stored) == {"adam": faithful}


def test_a_translated_lesson_keeps_its_code_and_the_untranslated_prose():
    intro = next(s for s in LESSON.sections if s.kind == "intro")
    block = next(s for s in LESSON.sections if s.id != intro.id and s.prose)
    texts = {"title": "一个很小的模型", block.id: "一个线性层和 ReLU：$y = x$。"}
    translated = i18n.translate_lesson(LESSON, texts)
    assert translated.front_matter["title"] == "一个很小的模型"
    by_id = {s.id: s for s in translated.sections}
    assert by_id[block.id].prose == texts[block.id]
    assert by_id[intro.id].prose == intro.prose
    assert [s.code for s in translated.sections] == [s.code for s in LESSON.sections]
    assert LESSON.front_matter["title"] == "A tiny model"  # the original is unchanged


def test_captions_and_the_verified_sentence_are_units_and_replace_their_english():
    loss = Figure("loss.png", "Loss per step.", 640, 480, (9.0,), 100.0)
    grid = Figure("grid.png", "Left: the grid.", 640, 480, (9.0,), 100.0)
    figures = Figures((loss, grid), "", "python -m demo", 1.0, "cpu", True)
    units = i18n.lesson_units(LESSON, figures)
    assert units[: len(i18n.lesson_units(LESSON))] == i18n.lesson_units(LESSON)
    # The header's "Verified against" sentence follows the summary.
    verified = i18n.lesson_units(LESSON, None, "torch.relu in float64.")
    assert verified[2] == i18n.Unit("verified", "torch.relu in float64.")
    assert units[-2:] == [
        i18n.Unit("figure.loss", "Loss per step."),
        i18n.Unit("figure.grid", "Left: the grid."),
    ]
    stored = {"figure.loss": (i18n.source_hash("Loss per step."), "每一步的损失。")}
    texts = i18n.translated(units, stored)
    shown = i18n.translate_figures(figures, texts)
    assert [f.caption for f in shown.files] == ["每一步的损失。", "Left: the grid."]
    assert [f.name for f in shown.files] == ["loss.png", "grid.png"]
    assert i18n.translate_figures(None, texts) is None
    # A demo re-run that changes a caption leaves its translation stale, not shown.
    renamed = Figure("loss.png", "Loss per epoch.", 640, 480, (9.0,), 100.0)
    changed = i18n.lesson_units(LESSON, Figures((renamed,), "", "", 1.0, "", True))
    assert "figure.loss" not in i18n.translated(changed, stored)


def test_worksheet_hints_are_units_before_the_captions_and_replace_their_english():
    region = {"region": "TinyModel.forward", "hint": "Chain `embed`.", "tests": ["t"]}
    lesson = parse(
        FIXTURE.replace(
            "time: 1 s\n",
            "time: 1 s\nworksheet:\n  - region: TinyModel.forward\n"
            "    hint: Chain `embed`.\n    tests: [t]\n",
        ),
        "annotated/demo/tiny_model.py",
    )
    loss = Figure("loss.png", "Loss per step.", 640, 480, (9.0,), 100.0)
    units = i18n.lesson_units(lesson, Figures((loss,), "", "", 1.0, "", True))
    assert units[-2:] == [
        i18n.Unit("worksheet.TinyModel.forward", "Chain `embed`."),
        i18n.Unit("figure.loss", "Loss per step."),
    ]
    made_from = i18n.source_hash("Chain `embed`.")
    stored = {"worksheet.TinyModel.forward": (made_from, "串起 `embed`。")}
    shown = i18n.translate_lesson(lesson, i18n.translated(units, stored))
    assert shown.front_matter["worksheet"] == [{**region, "hint": "串起 `embed`。"}]
    assert lesson.front_matter["worksheet"] == [region]  # the original is unchanged
    # A hint that loses its code span is altered, and the page keeps the English.
    stored["worksheet.TinyModel.forward"] = (made_from, "串起嵌入。")
    assert "worksheet.TinyModel.forward" not in i18n.translated(units, stored)


def test_a_notebook_page_is_its_markdown_cells_and_keeps_its_code_and_outputs(
    tmp_path,
):
    notebook = nbformat.v4.new_notebook()
    output = nbformat.v4.new_output("stream", text="42\n")
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# A tour\n\nLessons are `modules`."),
        nbformat.v4.new_code_cell("print(42)", outputs=[output], execution_count=1),
        nbformat.v4.new_markdown_cell("## Digits\n\nTrain on them."),
    ]
    path = tmp_path / "tour.ipynb"
    nbformat.write(notebook, path)
    units = i18n.page_units(i18n.page_markdown(path))
    assert [u.id for u in units] == ["a-tour", "digits"]
    assert i18n.page_path("zh", "tour.ipynb") == "translations/zh/pages/tour.ipynb.md"
    texts = {"a-tour": "# 导览\n\n每一课都是 `modules`。"}
    shown = nbformat.reads(
        i18n.translate_notebook(path.read_text(), texts), as_version=4
    )
    nbformat.validate(shown)
    assert [c.source for c in shown.cells] == [
        "# 导览\n\n每一课都是 `modules`。",
        "print(42)",
        "## Digits\n\nTrain on them.",  # untranslated: the English stays
    ]
    assert shown.cells[1].outputs == notebook.cells[1].outputs


def test_a_translated_notebooks_headings_and_contents_get_the_english_ids():
    # What the notebook converter makes of Chinese headings: ASCII-only ids, so none.
    html = (
        '<h1 id="">导览<a class="anchor-link" href="#">¶</a></h1><p>x</p>'
        '<h2 id="">求解 <code>H x = b</code><a class="anchor-link" href="#">¶</a></h2>'
    )
    top = AnchorLink("导览", "_1", 1)
    top.children.append(AnchorLink("求解", "_2", 2))
    english = (
        "# A tour: lessons\n\nText.\n\n```\n# not a heading\n```\n\n## Solving `H`"
    )
    fixed = i18n.notebook_anchors(html, [top], english)
    assert fixed == (
        '<h1 id="a-tour-lessons">导览<a class="anchor-link" href="#a-tour-lessons">¶'
        '</a></h1><p>x</p><h2 id="solving-h">求解 <code>H x = b</code>'
        '<a class="anchor-link" href="#solving-h">¶</a></h2>'
    )
    assert [top.id, top.children[0].id] == ["a-tour-lessons", "solving-h"]
    # Headings that do not pair up are left alone.
    assert i18n.notebook_anchors(html, [top], "# One") == html


def test_the_tour_notebook_is_a_page_of_the_chinese_edition():
    units, path = i18n.units_of(REPO, str(REPO / "docs/tour.ipynb"), "zh")
    assert path == "translations/zh/pages/tour.ipynb.md"
    assert i18n.units_of(REPO, str(REPO / path), "zh") == (units, path)
    texts = i18n.translated(units, i18n.read(REPO / path))
    assert set(texts) == {unit.id for unit in units}


def test_a_page_splits_at_headings_outside_code_and_joins_back():
    page = "# Title\n\nIntro.\n\n## Install\n\n```bash\n# no heading\n```\n\n## Use\n"
    units = i18n.page_units(page)
    assert [u.id for u in units] == ["title", "install", "use"]
    assert i18n.translate_page(page, {}) == page
    assert i18n.translate_page(page, {"use": "## 使用"}).endswith("## 使用\n")


def test_a_line_break_inside_a_chinese_sentence_is_taken_out_but_not_in_code():
    # A browser shows a kept break as a space, which Chinese does not write.
    text = "它启动内核，\n在 PyTorch 上统计，读五遍、\n写三遍。\n\n- 一项\n- 另一项\n"
    code = "```python\n# 注释\n# 第二行\n```\n"
    assert i18n.unwrapped(text + code) == (
        "它启动内核，在 PyTorch 上统计，读五遍、写三遍。\n\n- 一项\n- 另一项\n" + code
    )
    unit = i18n.Unit("intro", "It launches five kernels.")
    stored = {"intro": (i18n.source_hash(unit.english), "它启动\n五个内核。")}
    assert i18n.translated([unit], stored) == {"intro": "它启动五个内核。"}


def test_a_pages_front_matter_is_not_a_unit(tmp_path):
    # mkdocs reads the front matter off before the plugin translates the page.
    path = tmp_path / "compare.md"
    path.write_text("---\nhide:\n  - toc\n---\n\n# Compare\n\nText.\n")
    assert [u.id for u in i18n.page_units(i18n.page_markdown(path))] == ["compare"]


def test_the_chinese_edition_has_no_missing_stale_or_altered_unit():
    curriculum = learning_path.load(REPO / "annotated/curriculum.toml")
    pages, lessons = i18n.required(REPO, curriculum)
    assert len(lessons) == len(curriculum.lessons()) > 70  # every lesson
    assert "index.md" in pages and "competencies.md" in pages
    problems = i18n.check(REPO, "zh", curriculum)
    assert not problems, (
        "\n".join(f"{p.state} {p.path} · {p.unit}{p.hint}" for p in problems)
        + "\n(python -m tools.literate.i18n skeleton FILE, then translate; a stale"
        " unit: bring its Chinese up to date, then `i18n translated FILE`)"
    )


def test_a_file_is_named_by_its_lesson_page_or_translation_and_nothing_else(
    tmp_path, monkeypatch
):
    root = make_project(tmp_path / "project")
    monkeypatch.chdir(root / "annotated")  # names are read from where the command runs
    units, path = i18n.units_of(root, "demo/tiny_model.py", "zh")
    assert path == "translations/zh/lessons/demo/tiny_model.md"
    assert [u.id for u in units][:4] == ["title", "summary", "verified", "intro"]
    assert i18n.units_of(root, f"../{path}", "zh") == (units, path)
    assert i18n.units_of(root, "../docs/index.md", "zh")[1] == (
        "translations/zh/pages/index.md"
    )
    for name in ("demo/tiny_modle.py", "../README.md", "../docs/nowhere.md"):
        with pytest.raises(ValueError, match=f"{name}: not a lesson"):
            i18n.units_of(root, name, "zh")


def test_translated_records_the_new_hash_of_stale_units_only(tmp_path):
    units = i18n.lesson_units(LESSON)
    path = tmp_path / "tiny_model.md"
    chinese = {u.id: (i18n.source_hash(u.english), f"中文 {u.english}") for u in units}
    chinese["summary"] = (i18n.source_hash("old"), "still English")
    i18n.write(path, units, chinese)
    changed = [
        i18n.Unit(u.id, u.english + " Changed.") if u.id in ("title", "intro") else u
        for u in units
    ]
    assert i18n.mark_translated(path, changed, {"intro"}) == ["intro"]
    assert i18n.mark_translated(path, changed, set()) == ["title"]
    stored = i18n.read(path)
    states = {s.unit: s.state for s in i18n.statuses(changed, stored, "f")}
    assert states == {"summary": "missing"}  # a unit still in English stays missing
    assert stored["title"] == (
        i18n.source_hash("A tiny model Changed."),
        "中文 A tiny model",
    )


def test_the_command_line_answers_a_wrong_name_in_one_line(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(REPO)
    assert i18n.main(["check", "annotated/foundations/matrix.py"]) == 0
    assert capsys.readouterr().out == "0 unit(s) missing, stale or altered\n"
    for command in ("skeleton", "translated", "check"):
        with pytest.raises(SystemExit) as exit:
            i18n.main([command, "annotated/foundations/matrx.py"])
        assert exit.value.code == 2
        assert "matrx.py: not a lesson" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        i18n.main(["translated", "annotated/foundations/matrix.py", "--unit", "nope"])
    assert "--unit nope: not a unit of" in capsys.readouterr().err


def test_search_text_splits_chinese_into_words_for_the_index():
    segmented = i18n.segment("反向传播 backward 计算梯度")
    assert "backward" in segmented and "\u200b" in segmented
    assert segmented.replace("\u200b", "") == "反向传播 backward 计算梯度"


def test_each_edition_gets_twin_links_its_own_base_and_its_own_search_entries():
    switcher = (
        '<a href="../../../" hreflang="en" class="md-select__link">'
        '<a href="../../" hreflang="zh" class="md-select__link">'
    )
    assert i18n.link_twins(switcher, "lessons/foundations/matrix/") == (
        '<a href="../../../lessons/foundations/matrix/" hreflang="en" '
        'class="md-select__link">'
        '<a href="../../lessons/foundations/matrix/" hreflang="zh" '
        'class="md-select__link">'
    )
    config = (
        '<script id="__config" type="application/json">'
        '{"base": "../../..", "note": "a \\u003c/script\\u003e b"}</script>'
    )
    rebased = i18n.with_base(config, "../..")
    assert '"base": "../.."' in rebased and "</script>" not in rebased[:-9]
    index = {
        "config": {"lang": ["en", "zh"]},
        "docs": [
            {"location": "lessons/a/#x", "title": "A", "text": "a"},
            {"location": "zh/lessons/a/#x", "title": "甲", "text": "甲"},
            {"location": "zh/", "title": "首页", "text": ""},
        ],
    }
    parts = i18n.split_search_index(index, ["", "zh/"])
    assert [d["location"] for d in parts[""]["docs"]] == ["lessons/a/#x"]
    assert [d["location"] for d in parts["zh/"]["docs"]] == ["lessons/a/#x", ""]
    assert parts["zh/"]["config"] == index["config"]
