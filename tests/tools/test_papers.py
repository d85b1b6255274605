"""The papers page: every work the lessons cite appears once, oldest first, with a link
to the references of each lesson citing it, and each lesson's reference that other
lessons cite too links back to it. Checked on hand-made references and on the built
site, whose every cited key is compared with the lessons' front matter."""

import re
import sys
from functools import cache
from pathlib import Path

import pytest

from tools.literate import notebook, papers
from tools.literate.files import discover
from tools.literate.learning_path import WrittenLesson
from tools.literate.parse import parse
from tools.literate.render import citation_labels, full_stop, surname

sys.path.insert(0, str(Path(__file__).parent))
from test_site import build_site  # noqa: E402  (one build per session, shared)

REPO = Path(__file__).resolve().parents[2]


def reference(key: str, year: int, authors: list[str], **more) -> dict:
    entry = {"key": key, "authors": authors, "title": f"On {key}", "year": year}
    return {"venue": "Somewhere", "url": f"https://example.org/{key}", **entry, **more}


OLD = reference("old1986", 1986, ["Ada Lovelace"])
NEW = reference("new2017", 2017, ["Ann Adams", "Bo Berg", "Cy Chu"], arxiv="1706.0")
ALSO = reference("also2017", 2017, ["Zed Zhu"])
WRITTEN = {
    "a/one": WrittenLesson("lessons/a/one.md", "One, the first", ""),
    "b/two": WrittenLesson("lessons/b/two.md", "Two_*", ""),
}


def test_each_work_once_oldest_first_with_the_lessons_citing_it_in_reading_order():
    found = papers.works([("a/one", [NEW, OLD]), ("b/two", [NEW, ALSO])])
    assert [(w.key, w.cited_in) for w in found] == [
        ("old1986", ("a/one",)),
        ("new2017", ("a/one", "b/two")),  # "Adams et al." before "Zhu"
        ("also2017", ("b/two",)),
    ]


def test_the_page_groups_by_decade_and_links_each_citing_lessons_reference():
    found = papers.works([("a/one", [NEW, OLD]), ("b/two", [NEW, ALSO])])
    text = papers.render("# Papers\n\n" + papers.PAPERS, found, WRITTEN, "papers.md")
    assert papers.PAPERS not in text
    assert (
        "3 works, cited 4 times by 2 lessons; 1 of them can be read on arXiv." in text
    )
    assert text.index("## 1980s") < text.index("old1986") < text.index("## 2010s")
    assert text.count("## 2010s") == 1 and "## 1990s" not in text
    assert (
        "- **Adams et al., 2017.** Ann Adams, Bo Berg, Cy Chu. *On new2017*. "
        "Somewhere. [arXiv:1706.0](https://arxiv.org/abs/1706.0)  \n"
        "  Cited in [One, the first](lessons/a/one.md#ref-new2017); "
        "[Two\\_\\*](lessons/b/two.md#ref-new2017).\n"
        "  { #ref-new2017 }"
    ) in text
    assert "[example.org/old1986](https://example.org/old1986)" in text


def test_the_chinese_edition_words_its_count_decades_and_citing_lessons():
    found = papers.works([("a/one", [NEW, OLD]), ("b/two", [NEW])])
    text = papers.render(papers.PAPERS, found, WRITTEN, "papers.md", "zh")
    assert "共 2 篇文献，被 2 课引用 3 次，其中 1 篇可在 arXiv 上读到。" in text
    assert "## 1980 年代" in text and "## 2010 年代" in text
    assert "引用于：[One, the first](lessons/a/one.md#ref-new2017)；[Two" in text
    assert "Cited in" not in text


def test_a_page_without_the_placeholder_is_left_alone():
    assert papers.render("# Other\n", [], {}, "other.md") == "# Other\n"


@pytest.mark.parametrize(
    "author, name",
    [
        ("Kaiming He", "He"),
        ("R. E. Wengert", "Wengert"),
        ("Aaron van den Oord", "van den Oord"),
        ("Guy L. Steele Jr.", "Steele"),
        ("David Bau III", "Bau"),
        ("The Triton authors", "Triton authors"),
        ("ONNX Runtime developers", "ONNX Runtime developers"),
        ("NVIDIA", "NVIDIA"),
    ],
)
def test_a_label_names_the_surname_with_its_particle_and_a_group_whole(author, name):
    assert surname(author) == name


def test_a_list_cut_short_by_et_al_is_labelled_et_al():
    labels = citation_labels(
        [
            reference("a", 2023, ["Georgi Gerganov", "et al."]),
            reference("b", 1986, ["W. Daniel Hillis", "Guy L. Steele Jr."]),
            reference("c", 2020, ["Ann Adams", "Bo Berg", "et al."]),
        ]
    )
    assert labels == {
        "a": "Gerganov et al., 2023",
        "b": "Hillis & Steele, 1986",
        "c": "Adams et al., 2020",
    }


def test_works_that_would_share_a_label_get_letters_in_list_order():
    labels = citation_labels(
        [
            reference("he2016deep", 2016, ["Kaiming He", "X Zhang", "S Ren"]),
            reference("lecun1998", 1998, ["Yann LeCun"]),
            reference("he2016identity", 2016, ["Kaiming He", "X Zhang", "S Ren"]),
            reference("he2016alone", 2016, ["Kaiming He"]),
        ]
    )
    assert labels == {
        "he2016deep": "He et al., 2016a",
        "lecun1998": "LeCun, 1998",
        "he2016identity": "He et al., 2016b",
        "he2016alone": "He, 2016",
    }


def test_a_part_ending_in_its_own_stop_gets_no_second_one():
    assert [full_stop(t) for t in ("Notes", "Steele Jr.", "All We Needed?")] == [
        ".",
        "",
        "",
    ]
    # The downloaded notebook's references too.
    entry = reference("s1986", 1986, ["Guy L. Steele Jr."], title="All We Needed?")
    assert notebook._work(entry, "Steele, 1986") == (
        "- Steele, 1986: Guy L. Steele Jr. *All We Needed?* Somewhere, 1986. "
        "<https://example.org/s1986>"
    )


@cache
def cited_keys() -> dict[str, set[str]]:
    """Each key any lesson cites → the lessons' pages, from their front matter."""
    keys: dict[str, set[str]] = {}
    for file in discover(REPO):
        lesson = parse(file.path.read_text(encoding="utf-8"), file.path)
        for entry in lesson.front_matter.get("references") or []:
            keys.setdefault(entry["key"], set()).add(f"lessons/{file.key}/")
    return keys


@cache
def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("edition", ["", "zh/"])
def test_the_built_page_lists_every_cited_work_once_and_lessons_link_back(
    tmp_path_factory, edition
):
    site = build_site(tmp_path_factory)
    page = read(site / edition / "papers/index.html")
    keys = cited_keys()
    items = re.findall(r'<li id="ref-([^"]+)">(.*?)</li>', page, re.S)
    assert sorted(key for key, _ in items) == sorted(keys)
    label = re.compile(r", (\d{4})[a-z]?\.</strong>")  # "He et al., 2016a."
    years = [int(label.search(body).group(1)) for _, body in items]
    assert years == sorted(years)
    for key, body in items:
        citing = set(re.findall(rf'href="\.\./(lessons/[^"#]+)#ref-{key}"', body))
        assert citing == keys[key], key
        for lesson in keys[key]:
            # The lesson's own entry says how many cite it, and links here.
            entry = re.search(
                rf'<li id="ref-{re.escape(key)}">(.*?)</li>',
                read(site / edition / lesson / "index.html"),
            ).group(1)
            back = re.search(r'class="lit-also" href="([^"]+)">([^<]+)</a>', entry)
            if len(keys[key]) == 1:
                assert back is None, (lesson, key)
                continue
            assert back.group(1).endswith(f"papers/#ref-{key}"), (lesson, key)
            count = str(len(keys[key]))
            words = f"被 {count} 课引用" if edition else f"cited in {count} lessons"
            assert back.group(2) == words, (lesson, key)
