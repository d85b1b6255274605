"""The book as a PDF: the site's print page (mkdocs-print-site's `print_page/`, every
page of an edition in reading order) printed by the same headless Chromium the browser
test drives.

    bash tools/setup.sh pdf                 # build the site, then print site/book.pdf
    bash tools/setup.sh pdf --language zh   # the Chinese edition: site/book-zh.pdf
    python -m tools.literate.pdf --site site --stage 1 --out stage1.pdf

Lessons keep their side-by-side sections (prose beside code) on landscape A4, with
their diagrams, figures and MathML. `--stage N` prints only stage N's lessons, with the
table of contents cut to match.
"""

from __future__ import annotations

import argparse
import functools
import html as markup
import http.server
import posixpath
import re
import shutil
import sys
import threading
from pathlib import Path

from tools.literate import learning_path
from tools.literate.files import discover

ROOT = Path(__file__).resolve().parents[2]

# The page's in-page links whose target is not on it (a page a one-stage print cut out):
# an entry of the table of contents, which print-site copies from the sidebar, goes;
# any other keeps its text and loses its link. Chromium's PDF printer searches for the
# target of every such link: 93 of them took a one-stage print from 30 s to 12 min.
UNLINK_DANGLING = """() => {
  for (const link of document.querySelectorAll('a[href^="#"]')) {
    const target = decodeURIComponent(link.getAttribute('href').slice(1));
    if (document.getElementById(target)) continue;
    const entry = link.closest('#print-page-toc li');
    if (entry) entry.remove(); else link.removeAttribute('href');
  }
}"""
SECTION_TAG = re.compile(r"<section\b[^>]*>|</section>")
PRINT_PAGE_ID = re.compile(r"""class=["']print-page[^"']*["'][^>]*\sid=["']([^"']+)""")


def keep_only(html: str, keep: list[str]) -> str:
    """The print page with only the page sections named in `keep` and the nav sections
    that hold them (print-site names each page's section after its URL,
    "lessons-foundations-matrix", and nests it in its nav's sections). Sections with no
    id, the table of contents, stay."""
    open_sections: list[list] = []  # [start, id (None for other sections), holds kept]
    cuts = []
    for tag in SECTION_TAG.finditer(html):
        if tag.group(0) != "</section>":
            named = PRINT_PAGE_ID.search(tag.group(0))
            open_sections.append([tag.start(), named and named.group(1), False])
            continue
        start, name, holds = open_sections.pop()
        holds = holds or name in keep
        if holds and open_sections:
            open_sections[-1][2] = True
        if name and not holds:
            cuts.append((start, tag.end()))
    pieces, position = [], 0
    for start, end in sorted(cuts):  # a cut inside an earlier one is already gone
        if start >= position:
            pieces.append(html[position:start])
            position = end
    return "".join([*pieces, html[position:]])


PRINT_SECTION = re.compile(r'<section class="print-page" id="([^"]*)"')
ID = re.compile(r'(\sid=")([^"]+)(")')
REFERENCE = re.compile(r'((?:xlink:href|href)="#|url\(#)([^")]+)')


def keep_anchor_ids(page_html: str, page_key: str) -> str:
    """Stands in for print-site's `update_anchor_ids`, which prefixes the ids of a
    page's headings with a regex that rescans each long line of a lesson page from
    every tag (90 s of each site build); `namespace_ids` prefixes every id of the
    page's section, headings included, in one pass after the build."""
    return page_html


LINK = re.compile(r'<a\s+([^>]*?\s+)?href="(.*?)"', re.IGNORECASE)


def one_pass_links(page_html: str, page_key: str, page_url: str, directory_urls=False):
    """Stands in for print-site's `fix_href_links`, which rewrites each link of a page
    by replacing its text throughout the page: a lesson's ~440 line-number links made
    that ~14 s of every build, 10 s of the 32 s rebuild `mkdocs serve` does after a
    save. The same rewrite, each link once, in one pass: an external link stays; a file
    is reached from the print page's folder; an in-page anchor gets the page's key
    ("#L12" in the matrix lesson becomes "#lessons-foundations-matrix-L12"), and a
    link to another page becomes that page's anchor on the print page."""
    from mkdocs_print_site_plugin.urls import (
        get_page_key,
        get_url_from_root,
        is_attachment,
        is_external,
    )

    def rewrite(link: re.Match) -> str:
        attributes, url = link.group(1), markup.unescape(link.group(2))
        if is_external(url):
            return link.group(0)
        if is_attachment(url):
            url = get_url_from_root(url, page_url)
            url = posixpath.join("..", url) if directory_urls else url
        elif url.startswith("#"):
            url = f"#{page_key}-{url[1:]}"
        else:
            page, hash_sign, anchor = get_url_from_root(url, page_url).partition("#")
            url = f"#{get_page_key(page)}" + (f"-{anchor}" if hash_sign else "")
        if attributes is None:
            return f'<a href="{url}"'
        return f'<a {attributes.rstrip()} href="{url}"'

    return LINK.sub(rewrite, page_html)


def namespace_ids(html: str) -> str:
    """The print page with every id inside a page's section prefixed by the section's
    id, as print-site already prefixes the links to them: "L65" in the matrix lesson
    becomes "lessons-foundations-matrix-L65". print-site renames some headings' ids
    only, and a lesson's sections, lines and bibliography carry their own. The page's
    own elements after the book (the theme's `__config`, which its scripts look up by
    id) keep theirs."""
    starts = [(m.start(), m.end(), m.group(1)) for m in PRINT_SECTION.finditer(html)]
    if not starts:
        return html
    book_end = html.find("</article>", starts[-1][1])
    book_end = len(html) if book_end < 0 else book_end
    pieces = [html[: starts[0][0]]]
    for index, (start, after_tag, section) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else book_end
        body = html[after_tag:end]
        if section:
            prefix = f"{section}-"
            own = {m.group(2) for m in ID.finditer(body)}

            def rename(match, prefix=prefix):
                # print-site has prefixed a heading's id already, unless a link
                # wants it prefixed once more ("compare-implementations" in compare).
                name = match.group(2)
                if name.startswith(prefix) and f'"#{prefix}{name}"' not in html:
                    return match.group(0)
                return f"{match.group(1)}{prefix}{name}{match.group(3)}"

            def relink(match, own=own, prefix=prefix):
                name = match.group(2)
                if name in own and not name.startswith(prefix):
                    return f"{match.group(1)}{prefix}{name}"
                return match.group(0)

            body = REFERENCE.sub(relink, ID.sub(rename, body))
        pieces.append(html[start:after_tag] + body)
    return "".join(pieces) + html[book_end:]


def edition(language: str) -> str:
    """Where an edition lives in the built site: "" for English, "zh/" for Chinese."""
    return "" if language == "en" else f"{language}/"


def link_unprinted_pages(html: str, site: Path, language: str = "en") -> str:
    """The print page of the edition at `site` with its links to pages it does not
    hold (the tour notebook, the engine's API) pointing at those pages instead of at
    nothing. print-site names such a link after the page's URL: "#tour", or "#zh-tour"
    in the Chinese edition."""
    ids = set(re.findall(r"""\sid=["']([^"']+)["']""", html))
    prefix = edition(language).replace("/", "-")

    def relink(match):
        quote, name = match.group(1), match.group(2)
        page = name.removeprefix(prefix)
        if name in ids or not (site / page / "index.html").is_file():
            return match.group(0)
        return f"href={quote}../{page}/{quote}"

    return re.sub(r"""href=(["'])#([^"']+)\1""", relink, html)


SHARED = re.compile(r"""((?:src|href)=["'])\.\./([^"'#?]+)""")


def link_shared_files(html: str, edition_dir: Path, site: Path) -> str:
    """A translated edition's print page with its links to the files only the site's
    root holds (figures, downloads) reaching them: print-site makes them relative to the
    edition's root ("../figures/..." from zh/print_page/), one level short."""
    if edition_dir == site:
        return html

    def relink(match):
        path = match.group(2)
        if (edition_dir / path).exists() or not (site / path).exists():
            return match.group(0)
        return f"{match.group(1)}../../{path}"

    return SHARED.sub(relink, html)


def section_id(page: str, language: str = "en") -> str:
    """print-site's id for a page's section: "lessons/foundations/matrix.md" →
    "lessons-foundations-matrix" ("zh-lessons-foundations-matrix" in Chinese)."""
    return (edition(language) + page.removesuffix(".md")).replace("/", "-")


def stage_pages(stage: int, root: Path = ROOT, language: str = "en") -> list[str]:
    """The print-page section ids of a stage's written lessons, in reading order, in
    the project at `root`."""
    curriculum = learning_path.load(root / "annotated/curriculum.toml")
    written = {file.key: file for file in discover(root)}
    return [
        section_id(written[entry.module].page, language)
        for entry in curriculum.lessons()
        if entry.stage == stage and entry.module in written
    ]


def print_book(
    site: Path,
    out: Path,
    stage: int | None = None,
    root: Path = ROOT,
    language: str = "en",
) -> int:
    """Print the print page of `site`'s edition in `language` (built from the project
    at `root`) to `out`; the number of print-page sections kept."""
    page_file = site / edition(language) / "print_page" / "index.html"
    if not page_file.is_file():
        raise FileNotFoundError(
            f"{page_file}: no print page; build the site first (bash tools/setup.sh "
            "build), with the print-site plugin in mkdocs.yml"
        )
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError(
            "Chromium is not installed: `bash tools/setup.sh pdf` installs it "
            "(Debian package chromium)"
        )
    from playwright.sync_api import sync_playwright

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            address = (
                f"http://127.0.0.1:{httpd.server_address[1]}/"
                f"{edition(language)}print_page/"
            )
            if stage is not None:
                wanted = stage_pages(stage, root, language)
                if not wanted:
                    raise ValueError(f"stage {stage} has no written lessons")
                html = keep_only(page_file.read_text(encoding="utf-8"), wanted)
                page.route(
                    address,
                    lambda route: route.fulfill(
                        body=html, content_type="text/html; charset=utf-8"
                    ),
                )
            page.goto(address, wait_until="load", timeout=300_000)
            page.evaluate(UNLINK_DANGLING)
            kept = page.evaluate(
                "[...document.querySelectorAll('section.print-page[id]')]"
                ".filter(s => !s.classList.contains('md-section')).length"
            )
            page.emulate_media(media="print")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.pdf(
                path=str(out),
                format="A4",
                landscape=True,
                scale=0.9,  # an 88-character code line fits its column unwrapped
                print_background=True,
                margin={
                    "top": "12mm",
                    "bottom": "12mm",
                    "left": "10mm",
                    "right": "10mm",
                },
                display_header_footer=True,
                header_template="<span></span>",
                footer_template=(
                    '<div style="font-size:8px;width:100%;text-align:center">'
                    '<span class="pageNumber"></span> / '
                    '<span class="totalPages"></span>'
                    "</div>"
                ),
            )
            browser.close()
    finally:
        httpd.shutdown()
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site", help="built site")
    parser.add_argument("--out", type=Path, default=None, help="the PDF to write")
    parser.add_argument("--stage", type=int, default=None, help="print one stage only")
    parser.add_argument(
        "--language", choices=("en", "zh"), default="en", help="the edition to print"
    )
    args = parser.parse_args(argv)
    if args.stage is not None and args.stage not in (1, 2, 3):
        parser.error(f"--stage must be 1, 2 or 3, got {args.stage}")
    name = "book" + ("" if args.stage is None else f"-stage{args.stage}")
    name += "" if args.language == "en" else f"-{args.language}"
    out = args.out or args.site / f"{name}.pdf"
    kept = print_book(args.site, out, args.stage, language=args.language)
    size = out.stat().st_size / 1e6
    print(f"{out}: {kept} pages of the site, {size:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
