"""Verified in the built site and in a real browser (Debian's Chromium, headless, driven by Playwright):
the whole site builds with `--strict`, each lesson page carries its sections, diagrams, math and header,
and in Chromium the columns sit side by side at 1400 px and stack at 420 px, MathML is laid out, both
diagrams show, search finds a word of lesson prose, nothing is requested from beyond 127.0.0.1, and the
console stays free of errors."""

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tools.literate.curriculum import discover

REPO = Path(__file__).resolve().parents[2]
LESSONS = discover(REPO)
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The real site, built once with `mkdocs build --strict`."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_one_page_per_lesson_with_sections_diagrams_math_and_header(site):
    for lesson in LESSONS:
        page = (site / "lessons" / lesson.key / "index.html").read_text()
        assert page.count('class="lit-section') >= 3, lesson.key
        assert (
            "lit-diagram-classes" in page
            and "lit-diagram-dataflow" in page
            and page.count("<svg") >= 2
        )
        assert "<math" in page, f"{lesson.key} renders no math"
        for fact in (
            "Run</dt>",
            "Verified against</dt>",
            "Benchmarks</dt>",
            "Download</dt>",
        ):
            assert fact in page
        assert "lit-stale" not in page, (
            f"{lesson.key} shows stale or missing figures or benchmarks"
        )
        for image in re.findall(r'<img src="([^"]+)"', page):
            assert (site / "lessons" / lesson.key / image).resolve().exists(), image


def test_no_page_loads_anything_from_another_host(site):
    for page in site.rglob("*.html"):
        text = page.read_text()
        for url in re.findall(
            r'<(?:script|link|img|iframe)[^>]+(?:src|href)="((?:https?:)?//[^"]+)"',
            text,
        ):
            assert urlparse(url).hostname in ("127.0.0.1", "localhost"), (
                f"{page.relative_to(site)} loads {url}"
            )


@pytest.fixture(scope="session")
def server(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="session")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail(
            "Chromium is not installed: `bash tools/setup.sh test` installs it (Debian package chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_FLAGS
        )
        yield browser
        browser.close()


class Visit:
    """One page in a fresh browser context, recording every request and console error."""

    def __init__(self, browser, url, width):
        self.context = browser.new_context(viewport={"width": width, "height": 1000})
        self.page = self.context.new_page()
        self.requests, self.errors = [], []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on(
            "console",
            lambda message: (
                self.errors.append(message.text) if message.type == "error" else None
            ),
        )
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(url, wait_until="networkidle")

    def section_boxes(self):
        """[prose box, code box] of every section that has both."""
        return self.page.evaluate("""() => [...document.querySelectorAll('.lit-section')]
            .filter(s => s.querySelector('.lit-prose p') && s.querySelector('.lit-code pre'))
            .map(s => [s.querySelector('.lit-prose').getBoundingClientRect().toJSON(),
                       s.querySelector('.lit-code').getBoundingClientRect().toJSON()])""")

    def foreign_requests(self):
        return [
            url
            for url in self.requests
            if urlparse(url).scheme not in ("data", "blob")
            and urlparse(url).hostname != "127.0.0.1"
        ]


EXEMPLAR = "foundations/autograd"


@pytest.mark.browser
def test_prose_left_of_code_at_1400px(browser, server):
    visit = Visit(browser, f"{server}/lessons/{EXEMPLAR}/", 1400)
    pairs = visit.section_boxes()
    assert len(pairs) >= 5
    for prose, code in pairs:
        assert prose["right"] <= code["left"], (prose, code)
        assert abs(prose["top"] - code["top"]) < 2
    assert not visit.foreign_requests(), visit.foreign_requests()
    assert not visit.errors, visit.errors
    visit.context.close()


@pytest.mark.browser
def test_prose_and_code_stack_at_420px(browser, server):
    visit = Visit(browser, f"{server}/lessons/{EXEMPLAR}/", 420)
    pairs = visit.section_boxes()
    assert len(pairs) >= 5
    for prose, code in pairs:
        assert code["top"] >= prose["bottom"] - 1, (prose, code)
        assert code["width"] > 300
    assert not visit.errors, visit.errors
    visit.context.close()


@pytest.mark.browser
def test_math_is_laid_out_and_both_diagrams_are_visible(browser, server):
    visit = Visit(browser, f"{server}/lessons/{EXEMPLAR}/", 1400)
    page = visit.page
    math = page.evaluate("""() => [...document.querySelectorAll('.lit-prose math')].map(m => {
        const r = m.getBoundingClientRect(); return {display: getComputedStyle(m).display, w: r.width, h: r.height}; })""")
    assert len(math) >= 10
    # Chromium lays out MathML itself: its math elements get the `math` display types and real extent.
    assert all("math" in m["display"] for m in math), {m["display"] for m in math}
    assert all(m["w"] > 0 and m["h"] > 0 for m in math)
    for kind in ("classes", "dataflow"):
        svg = page.locator(f".lit-diagram-{kind} svg")
        svg.scroll_into_view_if_needed()
        assert svg.is_visible()
        box = svg.bounding_box()
        assert box["width"] > 50 and box["height"] > 50, (kind, box)
    assert not visit.foreign_requests(), visit.foreign_requests()
    assert not visit.errors, visit.errors
    visit.context.close()


@pytest.mark.browser
def test_dark_scheme_is_applied_and_readable(browser, server):
    context = browser.new_context(
        viewport={"width": 1400, "height": 1000}, color_scheme="dark"
    )
    page = context.new_page()
    page.goto(f"{server}/lessons/{EXEMPLAR}/", wait_until="networkidle")
    assert (
        page.evaluate("document.body.getAttribute('data-md-color-scheme')") == "slate"
    )
    colours = page.evaluate("""() => {
        const luminance = c => { const [r, g, b] = c.match(/\\d+/g).map(Number); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
        const prose = document.querySelector('.lit-prose p');
        const code = document.querySelector('.lit-code pre');
        return {text: luminance(getComputedStyle(prose).color), page: luminance(getComputedStyle(document.body).backgroundColor),
                code: luminance(getComputedStyle(code).backgroundColor)}; }""")
    assert colours["text"] > 150 and colours["page"] < 80 and colours["code"] < 80, (
        colours
    )
    context.close()


@pytest.mark.browser
def test_search_finds_a_word_that_only_lesson_prose_has(browser, server):
    word = "Wengert"
    # The word must appear in the exemplar's prose and nowhere else a reader could search.
    prose = " ".join(
        section.prose
        for section in __import__("tools.literate.parse", fromlist=["load"])
        .load(REPO / f"annotated/{EXEMPLAR}.py")
        .sections
    )
    assert word in prose
    for other in [p for p in (REPO / "docs").rglob("*.md")] + [
        l.path for l in LESSONS if l.key != EXEMPLAR
    ]:
        assert word not in other.read_text(), other
    visit = Visit(browser, f"{server}/", 1400)
    page = visit.page
    search = page.locator("input.md-search__input")
    search.click()
    # The search worker builds its index after the page loads; a query typed before that is dropped.
    # Type key by key, as a reader does: the theme searches on key events.
    page.wait_for_function(
        "!document.querySelector('.md-search-result__meta').textContent.includes('Initializing')",
        timeout=30000,
    )
    search.press_sequentially(word, delay=30)
    result = page.locator(".md-search-result__item a").first
    result.wait_for(timeout=15000)
    assert f"lessons/{EXEMPLAR}" in result.get_attribute("href")
    assert not visit.foreign_requests(), visit.foreign_requests()
    assert not visit.errors, visit.errors
    visit.context.close()


@pytest.mark.browser
def test_every_page_stays_on_127_0_0_1_without_console_errors(browser, server):
    pages = ["", "tour/", "contributing/", "reference/"] + [
        f"lessons/{lesson.key}/" for lesson in LESSONS
    ]
    for path in pages:
        visit = Visit(browser, f"{server}/{path}", 1400)
        assert not visit.foreign_requests(), (path, visit.foreign_requests())
        assert not visit.errors, (path, visit.errors)
        visit.context.close()
