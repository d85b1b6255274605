"""Every link inside the built site leads somewhere: each internal `href`/`src` of every
HTML page resolves to a file of the site, and each `#anchor` to an element id on the
page it points at. The search index's locations are checked the same way. No browser:
the HTML is read as written.

Links to other hosts are not followed (the site must not depend on them); a link to the
site's own address (`site_url`, as the canonical links spell it) counts as internal.
"""

import json
import re
import sys
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_site import build_site  # noqa: E402  (one build per session, shared)

LOCAL = (
    "http://127.0.0.1:8000/"  # stands for the site's address when it has no site_url
)
LINK_ATTRIBUTES = {"href", "src", "xlink:href", "poster", "data-src"}
NOT_FOLLOWED = ("mailto:", "tel:", "data:", "javascript:", "blob:")


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    return build_site(tmp_path_factory)


class _Page(HTMLParser):
    """The ids a page defines and its links, as (tag, attribute, value, line)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str, str, int]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (name == "name" and tag == "a"):
                self.ids.add(value)
            elif name in LINK_ATTRIBUTES:
                self.links.append((tag, name, value.strip(), self.getpos()[0]))
            elif name == "srcset":
                for candidate in value.split(","):
                    if candidate.strip():
                        url = candidate.split()[0]
                        self.links.append((tag, name, url, self.getpos()[0]))

    handle_startendtag = handle_starttag


def target_file(site: Path, path: str) -> Path | None:
    """The file of the site that serves `path` (a URL path from the site root), as a
    static server would: a folder serves its index.html."""
    candidate = site / unquote(path).lstrip("/")
    if path.endswith("/") or candidate.is_dir():
        candidate = candidate / "index.html"
    return candidate if candidate.is_file() else None


@cache
def parsed(file: Path) -> _Page:
    page = _Page()
    page.feed(file.read_text(encoding="utf-8", errors="replace"))
    page.close()
    return page


def site_address(site: Path) -> str:
    """The address the site is built for (`site_url`): its home's canonical link."""
    home = (
        (site / "index.html").read_text(encoding="utf-8")
        if (site / "index.html").is_file()
        else ""
    )
    found = re.search(r'<link rel="canonical" href="([^"]+)"', home)
    return found.group(1) if found else LOCAL


def check_site(site: Path) -> list[str]:
    """Every broken internal link of the site, as 'page:line: link (why)'."""
    base = site_address(site)
    broken = []
    for file in sorted(site.rglob("*.html")):
        page_url = base + file.relative_to(site).as_posix()
        for tag, attribute, value, line in parsed(file).links:
            problem = check_link(site, base, page_url, value)
            if problem:
                where = f"{file.relative_to(site)}:{line}"
                broken.append(f"{where}: <{tag} {attribute}={value!r}> ({problem})")
    return broken


def check_link(site: Path, base: str, page_url: str, value: str) -> str | None:
    """Why `value`, found on the page at `page_url`, is broken; None if it resolves.
    `base` is the site's address: what lies under it is a file of the site."""
    if not value or value.lower().startswith(NOT_FOLLOWED):
        return None
    url = urlsplit(urljoin(page_url, value))
    root = urlsplit(base)
    if (url.scheme, url.netloc) != (root.scheme, root.netloc):
        return None  # another host: not followed
    if not url.path.startswith(root.path):
        return f"outside the site ({root.path})"
    file = target_file(site, url.path[len(root.path) :])
    if file is None:
        return f"no file {url.path}"
    if url.fragment and file.suffix == ".html":
        ids = parsed(file).ids
        if url.fragment not in ids and unquote(url.fragment) not in ids:
            return f"no id {url.fragment!r} on {file.relative_to(site)}"
    return None


def test_every_internal_link_of_every_page_resolves(site):
    broken = check_site(site)
    shown = "\n  ".join(broken[:80])
    more = f"\n  … and {len(broken) - 80} more" if len(broken) > 80 else ""
    assert not broken, f"{len(broken)} broken links:\n  {shown}{more}"


def test_every_search_result_leads_to_a_page_and_an_anchor_on_it(site):
    # Each edition has its own index, its locations relative to the edition's root.
    broken = []
    for edition in ("", "zh/"):
        path = site / edition / "search" / "search_index.json"
        index = json.loads(path.read_text(encoding="utf-8"))
        base = site_address(site) + edition
        assert len(index["docs"]) > 1000, edition
        for entry in index["docs"]:
            problem = check_link(site, site_address(site), base, entry["location"])
            if problem:
                where = f"{edition}{entry['location']!r} ({entry['title']})"
                broken.append(f"{where}: {problem}")
    assert not broken, f"{len(broken)} search results lead nowhere:\n  " + "\n  ".join(
        broken[:60]
    )


def test_the_checker_finds_a_missing_page_and_a_missing_anchor(tmp_path):
    """The checker itself: good links pass; a missing file or id is reported."""
    (tmp_path / "a").mkdir()
    (tmp_path / "index.html").write_text(
        '<a href="a/">ok</a><a href="a/#here">ok</a><a href="#top" id="top">ok</a>'
        '<a href="https://example.org/x">other host</a><a href="mailto:x@y">mail</a>'
        '<a href="b/">missing page</a><a href="a/#nowhere">missing anchor</a>'
        '<img src="http://127.0.0.1:8000/img.png">'
    )
    (tmp_path / "a" / "index.html").write_text(
        '<h2 id="here">Here</h2><a href="..">up</a>'
    )
    broken = check_site(tmp_path)
    assert len(broken) == 3, broken
    assert "no file /b/" in broken[0]
    assert "no id 'nowhere'" in broken[1]
    assert "no file /img.png" in broken[2]
    # Built for a sub-path (site_url https://example.org/book/): links leave it or not.
    (tmp_path / "index.html").write_text(
        '<link rel="canonical" href="https://example.org/book/">'
        '<a href="/book/a/#here">ok</a><a href="https://example.org/book/a/">ok</a>'
        '<a href="/a/">outside the site</a>'
    )
    parsed.cache_clear()
    broken = check_site(tmp_path)
    assert len(broken) == 1 and "outside the site" in broken[0], broken
