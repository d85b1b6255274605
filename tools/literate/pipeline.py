"""The pipeline, one way: read each lesson once into a `LessonRecord` of everything its
page needs, check it, and render its page from that record alone.

    files → read() → LessonRecord → rules.check() → render() → Page

A record holds the source, its parse, the test file, the stored figures and benchmark
results, and the sources of the project modules the lesson imports (its example and its
downloads run them). Its `fingerprint` hashes all of that once; a page is rendered again
only when the fingerprint, or what the site around it says (its neighbours, the set of
pages), changes. `mkdocs serve` creates a new plugin on every rebuild, so both caches
live here, at module level, keyed by content.
"""

from __future__ import annotations

import ast
import html
import posixpath
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from tools.literate import (
    LessonError,
    cache,
    diagrams,
    downloads,
    learning_path,
    notebook,
    i18n,
    papers,
    render,
    rules,
    worksheet,
)
from tools.literate.benchmarks import Benchmarks, has_benchmarks, parse_record
from tools.literate.figures import MANIFEST, Figures, parse_manifest
from tools.literate.gpu_results import GpuRecord, parse_gpu_record
from tools.literate.files import (
    LessonFile,
    imported_modules,
    page_url,
    project_files,
    relative_url,
    results_sha256,
)
from tools.literate.parse import Lesson, parse
from tools.literate.prose import Links


@dataclass(frozen=True)
class LessonRecord:
    """Everything a lesson's page is made from, read from disk once."""

    file: LessonFile
    source: str
    lesson: Lesson = field(repr=False)
    test_source: str | None
    figures: Figures | None
    benchmarks: Benchmarks | None
    gpu: GpuRecord | None  # what the prepared GPU check measured, for kernel lessons
    # "annotated.data" → its source, transitively
    imports: dict[str, str] = field(repr=False)
    fingerprint: str

    @property
    def title(self) -> str:
        return str(self.lesson.front_matter.get("title", self.file.stem))

    @cached_property
    def verified(self) -> str:
        """What the lesson is verified against: its test docstring's first sentence,
        the header's row and a unit of its translation."""
        return rules.first_sentence(self.test_source or "")


# content hash → parsed Lesson / rendered Page: survive the plugin object `mkdocs serve`
# recreates.
_PARSED: dict[str, Lesson] = {}
_PAGES: dict[str, "Page"] = {}
_CHECKED: dict[str, list[LessonError]] = {}


def read(file: LessonFile, docs_dir: Path) -> LessonRecord:
    """Read a lesson and everything beside it, and parse it (from memory when
    unchanged)."""
    source = file.path.read_text(encoding="utf-8")
    source_key = cache.content_hash(file.relative, source)
    if source_key not in _PARSED:
        _PARSED[source_key] = parse(source, file.path)
    lesson = _PARSED[source_key]
    sha256 = results_sha256(source, file.path.suffix)  # as file.source_sha256()
    test_path = file.root / file.test
    test_source = test_path.read_text(encoding="utf-8") if test_path.exists() else None
    manifest = _text(docs_dir / file.figures_folder / MANIFEST)
    record = _text(docs_dir / file.benchmarks_record)
    gpu = _text(docs_dir / file.gpu_record)
    imports = _imported_sources(lesson, file.root)
    return LessonRecord(
        file=file,
        source=source,
        lesson=lesson,
        test_source=test_source,
        figures=(
            parse_manifest(manifest, sha256, lesson.front_matter.get("expected"))
            if manifest
            else None
        ),
        benchmarks=parse_record(record, sha256) if record else None,
        gpu=parse_gpu_record(gpu, sha256) if gpu else None,
        imports=imports,
        fingerprint=cache.content_hash(
            file.relative,
            source,
            test_source or "",
            manifest or "",
            record or "",
            gpu or "",
            *(f"{name}\n{text}" for name, text in sorted(imports.items())),
        ),
    )


def _text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def _imported_sources(lesson: Lesson, root: Path) -> dict[str, str]:
    """{module name: source} of every project module the lesson imports, and what they
    import. (A CUDA C lesson imports none: its Python loader is a module of its own.)"""
    found: dict[str, str] = {}
    if lesson.language != "python":
        return found
    pending = project_files(_imported_modules(lesson.source), root)
    while pending:
        path = pending.pop()
        name = path[: -len(".py")].replace("/", ".")
        if name in found:
            continue
        found[name] = (root / path).read_text(encoding="utf-8")
        pending.extend(project_files(_imported_modules(found[name]), root))
    return found


@lru_cache(maxsize=1024)
def _imported_modules(source: str) -> tuple[str, ...]:
    """`files.imported_modules` of a module's source, remembered by content: a build
    reads gpt2.py for every lesson that builds on it, in both editions."""
    return tuple(imported_modules(ast.parse(source)))


def check(record: LessonRecord, order: list[str]) -> list[LessonError]:
    """The lesson rules (`rules.check`) applied to a record; from memory when neither
    the record nor the curriculum's order changed (compiling the lesson is the cost)."""
    key = cache.content_hash(record.fingerprint, *order)
    if key not in _CHECKED:
        _CHECKED[key] = rules.check(
            record.file, record.lesson, record.test_source, order
        )
    return _CHECKED[key]


@dataclass(frozen=True)
class Site:
    """What a page needs to know about the site around it."""

    cache_dir: Path
    use_directory_urls: bool
    pages: frozenset[str]  # every page's docs path, for checking links
    neighbours: dict  # lesson key → (previous record or None, next record or None)
    # lesson page → its section ids, for checking links to sections
    sections: dict = field(default_factory=dict)
    # lesson key → the competencies it demonstrates (learning_path.demonstrations)
    demonstrates: dict = field(default_factory=dict)
    results_date: str | None = None  # the stored test run's date, if there is one
    # The edition: "en", or a translation's language, whose pages live under
    # `prefix` ("zh/") and show `translations[lesson key]` ({unit id: text}) in place of
    # the English prose.
    language: str = "en"
    prefix: str = ""
    translations: dict = field(default_factory=dict)
    # The site's address (mkdocs' `site_url`): a downloaded notebook links to its pages
    # there. "" leaves its links as the lesson writes them.
    site_url: str = ""
    # The works the lessons cite (`papers.works`): key → how many lessons cite it.
    citing: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Page:
    body: str
    notebook: str  # the .ipynb download
    script: str  # the .py download
    svgs: dict  # kind → svg text, also published as files for the lightbox
    search: list  # render.SearchEntry per section
    worksheet: str | None = None  # the exercise-mode download, when regions are marked


def render_page(record: LessonRecord, site: Site) -> Page:
    """The page of a lesson; from memory when neither it nor its place in the site
    changed."""
    previous, following = site.neighbours.get(record.file.key, (None, None))
    key = cache.content_hash(
        record.fingerprint,
        str(site.use_directory_urls),
        *sorted(site.pages),
        *(
            f"{page}#{' '.join(sorted(ids))}"
            for page, ids in sorted(site.sections.items())
        ),
        *(f"{r.file.key}:{r.title}" if r else "-" for r in (previous, following)),
        repr(site.demonstrates.get(record.file.key)),
        str(site.results_date),
        site.language,
        site.site_url,
        repr(sorted(site.citing.items())),
        repr(sorted(site.translations.get(record.file.key, {}).items())),
        *(
            repr(sorted(site.translations.get(r.file.key, {}).items())) if r else "-"
            for r in (previous, following)
        ),
    )
    if key not in _PAGES:
        _PAGES[key] = _render(record, site, previous, following)
    return _PAGES[key]


def _demonstrates(site: Site, key: str, root: str) -> str:
    """The header's "Demonstrates" entry: each competency of the plan's checklist this
    lesson builds, the tests of its own that show it, and how they fared in the stored
    run; "" for a lesson the checklist does not name."""
    rows = site.demonstrates.get(key)
    if not rows:
        return ""
    checklist = root + site.prefix  # this edition's checklist
    checklist += "competencies/" if site.use_directory_urls else "competencies.html"
    entries = []
    for text, label, names, outcome in rows:
        tests = ", ".join(
            f'<code class="lit-long">{html.escape(name)}</code>' for name in names
        )
        if outcome is None:
            fared = "not in the stored run" if site.results_date else "not run yet"
        else:
            fared = f"{learning_path.STATUS[outcome]} in the run of {site.results_date}"
        entries.append(
            f'<em>{html.escape(text)}</em> <span lang="zh-Hans">{html.escape(label)}'
            f"</span>: shown by {tests} ({fared})"
        )
    return (
        "<br>".join(entries)
        + f' <span class="lit-note">(the <a href="{checklist}">competency '
        "checklist</a>)</span>"
    )


def title(record: LessonRecord, site: Site) -> str:
    """A lesson's title in the site's edition."""
    return site.translations.get(record.file.key, {}).get("title", record.title)


def section_labels(record: LessonRecord, site: Site) -> tuple[tuple[str, str], ...]:
    """(section id, what a link to it says) in the site's edition: its heading, or the
    name it defines when the heading has math (the pages that list sections render no
    math) or it has none."""
    texts = site.translations.get(record.file.key, {})
    labels = []
    for section in record.lesson.sections:
        prose = texts.get(section.id, section.prose).strip()
        first = prose.splitlines()[0] if prose else ""
        defined = next(
            (
                match.group(1)
                for line in section.code
                if (match := _DEFINES.match(line.text))
            ),
            None,
        )
        if first.startswith("#") and "$" not in first:
            labels.append((section.id, first.lstrip("#").strip()))
        elif defined:
            labels.append((section.id, f"`{defined}`"))
    return tuple(labels)


_DEFINES = re.compile(r"\s*(?:async\s+)?(?:def|class)\s+(\w+)")


def notebook_path(file: LessonFile, site: Site) -> str | None:
    """Where the edition's notebook download goes, from the site's root:
    `downloads/<area>/<topic>.ipynb`, under the edition's prefix (`zh/downloads/…`)."""
    return site.prefix + file.download_ipynb if file.download_ipynb else None


def worksheet_path(file: LessonFile, site: Site) -> str:
    """Where the edition's worksheet goes, from the site's root:
    `downloads/<area>/<topic>_worksheet.py`, under the edition's prefix, since its
    hints are the edition's."""
    return site.prefix + file.download_worksheet


def _render(record, site: Site, previous, following) -> Page:
    file, lesson = record.file, record.lesson
    here = page_url(file.page, site.use_directory_urls)
    # Downloads, figures and diagrams are the English edition's, at the site's root;
    # only the notebook, whose Markdown cells are the edition's prose, and the
    # worksheet, whose hints are, are the edition's own, under its prefix.
    root = relative_url("", site.prefix + here)
    texts = site.translations.get(file.key, {})
    if texts:
        lesson = i18n.translate_lesson(lesson, texts)

    def neighbour(other):
        if other is None:
            return None
        url = relative_url(page_url(other.file.page, site.use_directory_urls), here)
        return render.Neighbour(title(other, site), url)

    regions = (
        worksheet.regions(file, lesson.front_matter)
        if lesson.language == "python"
        else []
    )
    facts = render.PageFacts(
        module=file.module,
        lesson_path=file.relative,
        test_path=file.test,
        verified=texts.get("verified", record.verified),
        root=root,
        links=Links(file.page, site.pages, site.use_directory_urls, site.sections),
        downloads=(file.download_py, notebook_path(file, site), file.download_test),
        diagram_files={kind: file.diagram(kind) for kind in ("classes", "dataflow")},
        figures_folder=file.figures_folder,
        previous=neighbour(previous),
        next=neighbour(following),
        language=lesson.language,
        on_gpu=file.area == "kernels",
        demonstrates=_demonstrates(site, file.key, root),
        worksheet=worksheet_path(file, site) if regions else None,
        regions=tuple(regions),
        papers=(
            relative_url(page_url(papers.PAGE, site.use_directory_urls), here)
            if papers.PAGE in site.pages
            else None
        ),
        citing=site.citing,
    )
    svgs = _diagrams(record, site.cache_dir)
    body, search = render.render_lesson(
        lesson,
        facts,
        svgs,
        i18n.translate_figures(record.figures, texts),
        record.benchmarks,
        has_benchmarks(record.test_source),
        record.gpu,
    )
    body = render.localise(body, site.language)
    if lesson.language == "cuda":
        # The .cu file itself is the download; a notebook cannot run CUDA C.
        return Page(
            body=body,
            notebook="",
            script=record.source,
            svgs={kind: svg for kind, (_, svg) in svgs.items()},
            search=search,
        )
    preamble = downloads.bundle(record.imports)
    return Page(
        body=body,
        notebook=notebook.to_ipynb(
            lesson, preamble, _site_link(file, site), site.language
        ),
        script=downloads.script(record.source, lesson.tree, record.imports),
        svgs={kind: svg for kind, (_, svg) in svgs.items()},
        search=search,
        worksheet=worksheet.blank(file, record.source, regions) if regions else None,
    )


def _site_link(file: LessonFile, site: Site):
    """For a lesson's downloaded notebook: a link target as the lesson writes it
    (`gpt2.md#x`, relative to its page) → the page's address on the site, in the
    edition; None when the site has no address or the target is not a page."""
    if not site.site_url:
        return lambda target: None

    def link(target: str) -> str | None:
        path, hash_sign, anchor = target.partition("#")
        if "://" in path or not path.endswith(".md"):
            return None
        src = posixpath.normpath(posixpath.join(posixpath.dirname(file.page), path))
        if src.startswith(".."):
            return None
        url = site.site_url.rstrip("/") + "/" + site.prefix
        return url + page_url(src, site.use_directory_urls) + hash_sign + anchor

    return link


def _diagrams(record: LessonRecord, cache_dir: Path) -> dict[str, tuple[str, str]]:
    """{kind: (caption, svg)}: the class diagram (or call graph) and the dataflow."""
    file = record.file
    if record.lesson.language == "cuda":
        return _cuda_diagrams(record, cache_dir)
    class_dot = diagrams.class_diagram(record.lesson.tree)
    # The dataflow runs the lesson's example: keyed by its code (an edit of the prose
    # alone cannot change it) and by everything it imports.
    code = "\n".join(line.text for s in record.lesson.sections for line in s.code)
    dataflow_key = cache.content_hash(
        "dataflow", code, *sorted(record.imports.values())
    )
    dataflow_dot = cache.cached_text(
        cache_dir,
        "dataflow",
        dataflow_key,
        lambda: diagrams.dataflow_diagram(file.path, file.module),
    )
    if class_dot.startswith("digraph classes"):
        class_caption = "Classes and what they hold, read from the code"
    else:
        class_caption = "The lesson's public functions and the calls between them"
    if dataflow_dot.startswith("digraph fx_dataflow"):
        dataflow_caption = "Dataflow of the declared example, traced with torch.fx"
    else:
        dataflow_caption = (
            "Dataflow of the declared example, as its dataflow() declares it"
        )
    return {
        "classes": (
            class_caption,
            diagrams.to_svg(class_dot, cache_dir, str(file.path), "class"),
        ),
        "dataflow": (
            dataflow_caption,
            diagrams.to_svg(dataflow_dot, cache_dir, str(file.path), "dataflow"),
        ),
    }


def _cuda_diagrams(record: LessonRecord, cache_dir: Path) -> dict[str, tuple[str, str]]:
    """A CUDA C lesson's diagrams: its kernels with their launches, read from the
    source, and the memory levels its front matter declares the data moves through."""
    file, lesson = record.file, record.lesson
    kernels = diagrams.cuda_kernel_diagram(lesson.source)
    if not kernels:
        raise LessonError(
            file.path, 1, "no __global__ kernel found: a CUDA C lesson defines one"
        )
    memory = diagrams.memory_diagram(
        lesson.front_matter, file.path, lesson.front_matter_line
    )
    return {
        "classes": (
            "The kernels, their parameters, and the launches that run them, "
            "read from the code",
            diagrams.to_svg(kernels, cache_dir, str(file.path), "class"),
        ),
        "dataflow": (
            "The memory levels each kernel moves data through, as the lesson "
            "declares them",
            diagrams.to_svg(memory, cache_dir, str(file.path), "dataflow"),
        ),
    }
