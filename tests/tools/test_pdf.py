"""Verified by reading the PDF back with pypdf: the miniature project's book, printed
by headless Chromium from mkdocs-print-site's page, has the fixture lesson's prose and
code on its pages, and printing one stage keeps that stage's lessons."""

import importlib.util
import shutil

import pytest

from conftest import MKDOCS_YML, build
from tools.literate import pdf

PRINTABLE = (
    MKDOCS_YML
    + """\
  - print-site:
      add_to_navigation: false
      add_cover_page: false
"""
)


@pytest.mark.browser
def test_one_stage_prints_with_the_lessons_prose_and_code(project, tmp_path):
    if shutil.which("chromium") is None:
        pytest.fail("Chromium is not installed: `bash tools/setup.sh test` installs it")
    from pypdf import PdfReader

    (project / "mkdocs.yml").write_text(PRINTABLE)
    done = build(project)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "stage1.pdf"
    kept = pdf.print_book(project / "site", out, stage=1, root=project)
    assert kept == 1  # the stage's one written lesson
    reader = PdfReader(out)
    assert 2 <= len(reader.pages) <= 12
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert "quetzalcoatlus" in text  # the lesson's prose
    assert "torch.relu(self.linear(x))" in text  # and its code
    assert "1 / " in text  # the page-number footer
    assert "Table of Contents" in text  # kept, with the stage's entries only
    with pytest.raises(ValueError, match="stage 2 has no written lessons"):
        pdf.print_book(project / "site", tmp_path / "none.pdf", stage=2, root=project)


def print_sites_own_fix_href_links():
    """print-site's `fix_href_links` as it ships: loaded afresh, since a build in this
    process puts `one_pass_links` in its place."""
    import mkdocs_print_site_plugin.urls

    spec = importlib.util.spec_from_file_location(
        "print_site_urls", mkdocs_print_site_plugin.urls.__file__
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fix_href_links


LINKS = (
    '<p><a href="https://doi.org/10.1/x">paper</a> <a class="lit-ln" href="#L12">12</a>'
    '<a class="lit-ln" href="#L12">12 again</a> <A HREF="#Up">up</A>'
    '<a href="../../../competencies/">competencies</a> <a href="../matrix/#exercises">'
    'matrix</a> <a href="../matrix/#">top</a> <a download="" '
    'href="../../../downloads/foundations/autograd.py">script</a>'
    '<a title="a &amp; b" href="#a&amp;b">escaped</a> <a name="plain">no link</a>'
    '<a\n  class="md-nav__link"\n  href="./">itself</a> <a href="mailto:x@y">mail</a>'
    '<img src="../figure.png"> <a href="../../../figures/x.svg#view">figure</a></p>'
)


@pytest.mark.parametrize("directory_urls", [True, False])
def test_links_are_rewritten_in_one_pass_exactly_as_print_site_rewrites_them(
    directory_urls,
):
    # print-site replaces each link's text throughout the page, once per link: the
    # ~440 line-number links of a lesson page made that 14 s of every build.
    page_url = (
        "lessons/foundations/autograd/"
        if directory_urls
        else "lessons/foundations/autograd.html"
    )
    key = "lessons-foundations-autograd"
    theirs = print_sites_own_fix_href_links()
    ours = pdf.one_pass_links(LINKS, key, page_url, directory_urls)
    assert ours == theirs(LINKS, key, page_url, directory_urls)
    assert ours.count(f'href="#{key}-L12"') == 2
    if directory_urls:  # the fixture's relative links are written for folder URLs
        assert 'href="#lessons-foundations-matrix-exercises"' in ours
    big = LINKS * 200  # a lesson page's size, with its repeated links
    assert pdf.one_pass_links(big, key, page_url, directory_urls) == theirs(
        big, key, page_url, directory_urls
    )


def test_one_stage_is_cut_from_the_print_page_before_the_browser_reads_it():
    page = (
        '<div id="print-site-page"><section class="print-page">'
        '<div id="print-page-toc"></div></section>'
        '<section class="print-page" id="index" heading-number="1">home</section>'
        "<section class='print-page md-section' id='section-3'><h1>Stage 1</h1>"
        "<section class='print-page md-section' id='section-3-1'><h1>Weeks 1–2</h1>"
        '<section class="print-page" id="lessons-a-matrix"><p>matrix</p>'
        '<section class="lit-references" id="lessons-a-matrix-references">refs'
        "</section></section>"
        '<section class="print-page" id="lessons-a-autograd">autograd</section>'
        "</section></section>"
        "<section class='print-page md-section' id='section-4'><h1>Stage 2</h1>"
        '<section class="print-page" id="lessons-b-cnn">cnn</section></section>'
        "</div>"
    )
    kept = pdf.keep_only(page, ["lessons-a-matrix"])
    assert kept == (
        '<div id="print-site-page"><section class="print-page">'
        '<div id="print-page-toc"></div></section>'
        "<section class='print-page md-section' id='section-3'><h1>Stage 1</h1>"
        "<section class='print-page md-section' id='section-3-1'><h1>Weeks 1–2</h1>"
        '<section class="print-page" id="lessons-a-matrix"><p>matrix</p>'
        '<section class="lit-references" id="lessons-a-matrix-references">refs'
        "</section></section>"
        "</section></section>"
        "</div>"
    )
    assert pdf.keep_only(page, []).count("<section") == 1  # the table of contents


def test_a_translated_editions_print_page_reaches_the_shared_files(tmp_path):
    # print-site writes links from zh/print_page/ as if it stood at the root.
    site = tmp_path / "site"
    (site / "figures/matrix").mkdir(parents=True)
    (site / "figures/matrix/time.png").write_bytes(b"png")
    (site / "zh/lessons/matrix").mkdir(parents=True)
    html = (
        '<img src="../figures/matrix/time.png"><a href="../lessons/matrix/">m</a>'
        '<a href="../missing/">x</a>'
    )
    fixed = pdf.link_shared_files(html, site / "zh", site)
    assert '<img src="../../figures/matrix/time.png">' in fixed  # only the root has it
    assert '<a href="../lessons/matrix/">' in fixed  # the edition has its own
    assert '<a href="../missing/">' in fixed  # nobody has it: left for the link check
    assert pdf.link_shared_files(html, site, site) == html  # the English edition
    assert pdf.section_id("lessons/foundations/matrix.md", "zh") == (
        "zh-lessons-foundations-matrix"
    )


def test_links_to_pages_the_book_leaves_out_go_to_the_site_in_each_edition(tmp_path):
    site = tmp_path / "site"
    for folder in ("tour", "zh/tour"):
        (site / folder).mkdir(parents=True)
        (site / folder / "index.html").write_text("<html></html>")
    html = '<a href="#tour">t</a><a href="#kept">k</a><p id="kept"></p>'
    english = pdf.link_unprinted_pages(html, site)
    assert '<a href="../tour/">' in english and '<a href="#kept">' in english
    zh_html = html.replace("#tour", "#zh-tour")
    chinese = pdf.link_unprinted_pages(zh_html, site / "zh", "zh")
    assert '<a href="../tour/">' in chinese  # from zh/print_page/ to zh/tour/


def test_ids_are_namespaced_by_section_and_the_pages_own_ids_are_left_alone():
    html = (
        '<div id="header"></div><article>'
        '<section class="print-page" id="lessons-matrix"><h2 id="L65"></h2>'
        '<a href="#L65">line</a></section>'
        '<section class="print-page" id="contributing"><p id="tests"></p>'
        '<a href="#tests">t</a></section>'
        '</article><script id="__config" type="application/json">{}</script>'
    )
    printed = pdf.namespace_ids(html)
    assert '<h2 id="lessons-matrix-L65">' in printed
    assert '<a href="#lessons-matrix-L65">' in printed
    assert '<p id="contributing-tests">' in printed
    # The theme's scripts look up their configuration by this id.
    assert '<script id="__config"' in printed and '<div id="header">' in printed
