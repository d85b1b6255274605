"""The mkdocs plugin: every lesson becomes a page, in curriculum order, before anything is written.

Events, in the order mkdocs calls them:

- `on_config`: find the lessons, read their front matter, put them in the nav (stage → topic → lesson).
- `on_files`: parse and render every lesson, and add its page and downloads as generated files. All the work
  that can fail happens here, before mkdocs writes a single page, so a broken lesson leaves no half-built site.
- `on_page_markdown`: fill the home page's learning path.
- `on_page_content`: put each lesson's rendered body into its page.
- `on_serve`: watch the lessons and their tests, so that saving one re-renders its page.
"""

from __future__ import annotations

import ast
import posixpath
import re
from pathlib import Path

from mkdocs.config import config_options as c
from mkdocs.config.base import Config
from mkdocs.exceptions import PluginError
from mkdocs.plugins import BasePlugin, event_priority
from mkdocs.structure.files import File, Files

from tools.literate import (
    LessonError,
    benchmarks,
    diagrams,
    figures,
    notebook,
    parse,
    render,
)
from tools.literate.curriculum import (
    LessonFile,
    discover,
    load_curriculum,
    planned_lessons,
    project_sources,
)

_BODY_PLACEHOLDER = "LITERATE-PAGE-BODY"
_PATH_PLACEHOLDER = "<!-- learning-path -->"
_CSS = "assets/literate.css"


class LiteratePluginConfig(Config):
    packages = c.ListOfItems(c.Type(str), default=["annotated", "kernels"])
    curriculum = c.Type(str, default="annotated/curriculum.toml")
    cache_dir = c.Type(str, default=".cache/literate")


class LiteratePlugin(BasePlugin[LiteratePluginConfig]):
    """Renders `annotated/**.py` and `kernels/**.py` as side-by-side pages with generated diagrams."""

    def __init__(self):
        self._bodies: dict[
            str, str
        ] = {}  # page src_uri → rendered body, for on_page_content

    # ---- on_config: lessons into the nav ---------------------------------------------------------------

    def on_config(self, config):
        self.root = Path(config.config_file_path).resolve().parent
        self.cache_dir = self.root / self.config.cache_dir
        self.lessons = discover(self.root, tuple(self.config.packages))
        self.stages = load_curriculum(self.root / self.config.curriculum)
        self.front_matter = {
            lesson.key: self._load(lesson).front_matter for lesson in self.lessons
        }
        config.nav = self._nav(config.nav or [])
        if _CSS not in config.extra_css:
            config.extra_css.append(_CSS)
        return config

    def _load(self, lesson: LessonFile):
        try:
            return parse.load(lesson.path)
        except LessonError as error:
            raise PluginError(f"literate: {self._relative(error)}") from None

    def _relative(self, error: LessonError) -> str:
        path = Path(error.path)
        if path.is_absolute() and path.is_relative_to(self.root):
            return (
                f"{path.relative_to(self.root).as_posix()}:{error.line}: {error.reason}"
            )
        return str(error)

    def _nav(self, nav: list) -> list:
        order = {
            planned.module: index
            for index, planned in enumerate(planned_lessons(self.stages))
        }
        by_stage: dict[int, dict[str, list]] = {}
        for lesson in sorted(
            self.lessons, key=lambda item: (order.get(item.key, len(order)), item.key)
        ):
            meta = self.front_matter[lesson.key]
            by_stage.setdefault(meta["stage"], {}).setdefault(
                str(meta["topic"]), []
            ).append({meta["title"]: lesson.page})
        titles = {stage["number"]: stage["title"] for stage in self.stages}
        sections = [
            {
                f"Stage {number} · {titles.get(number, '')}": [
                    {topic.replace("_", " ").capitalize(): pages}
                    for topic, pages in topics.items()
                ]
            }
            for number, topics in sorted(by_stage.items())
        ]
        return nav[:1] + sections + nav[1:]

    # ---- on_files: render every lesson -----------------------------------------------------------------

    def on_files(self, files: Files, config):
        self._bodies = {}
        docs_dir = Path(config.docs_dir)
        files.append(
            File.generated(
                config,
                _CSS,
                abs_src_path=str(Path(__file__).parent / "assets" / "literate.css"),
            )
        )
        pages = {f.src_uri for f in files.documentation_pages()} | {
            lesson.page for lesson in self.lessons
        }
        for lesson in self.lessons:
            try:
                body, ipynb = render_page(
                    lesson, docs_dir, self.cache_dir, config.use_directory_urls, pages
                )
            except LessonError as error:
                raise PluginError(f"literate: {self._relative(error)}") from None
            meta = self.front_matter[lesson.key]
            page = f"---\ntitle: {_yaml_string(meta['title'])}\nhide:\n  - toc\n---\n\n# {meta['title']}\n\n{_BODY_PLACEHOLDER}\n"
            self._bodies[lesson.page] = body
            files.append(File.generated(config, lesson.page, content=page))
            files.append(
                File.generated(
                    config,
                    f"downloads/{lesson.relative}",
                    abs_src_path=str(lesson.path),
                )
            )
            files.append(
                File.generated(
                    config, f"downloads/{lesson.relative[:-3]}.ipynb", content=ipynb
                )
            )
            files.append(
                File.generated(
                    config,
                    f"downloads/{lesson.test}",
                    abs_src_path=str(self.root / lesson.test),
                )
            )
        return files

    # ---- pages ---------------------------------------------------------------------------------------------

    def on_page_markdown(self, markdown: str, page, config, files):
        if _PATH_PLACEHOLDER in markdown:
            markdown = markdown.replace(
                _PATH_PLACEHOLDER, self._learning_path(page.file.src_uri)
            )
        return markdown

    def _learning_path(self, from_page: str) -> str:
        written = {lesson.key: lesson for lesson in self.lessons}
        here = posixpath.dirname(from_page)
        out = []
        for stage in self.stages:
            out.append(
                f"## Stage {stage['number']} · {stage['title']}\n\n{stage.get('summary', '')}\n"
            )
            for week in stage["week"]:
                out.append(f"### Weeks {week['weeks']} · {week['title']}\n")
                for item in week["lessons"]:
                    lesson = written.get(item["module"])
                    if lesson:
                        link = posixpath.relpath(lesson.page, here or ".")
                        summary = self.front_matter[lesson.key]["summary"]
                        out.append(
                            f"- [{self.front_matter[lesson.key]['title']}]({link}) — {summary}"
                        )
                    else:
                        out.append(
                            f'- {item["title"]} <span class="lit-planned">not yet written</span>'
                        )
                out.append("")
        return "\n".join(out)

    # Before every other plugin (the search index reads the page content in this same event).
    @event_priority(100)
    def on_page_content(self, html: str, page, config, files):
        body = self._bodies.get(page.file.src_uri)
        if body is None:
            return html
        return html.replace(
            f"<p>{_BODY_PLACEHOLDER}</p>", f'<div class="lit-page">{body}</div>'
        )

    def on_serve(self, server, config, builder):
        for folder in [*self.config.packages, "tests"]:
            if (self.root / folder).is_dir():
                server.watch(str(self.root / folder))
        return server


# inputs hash → (body, ipynb). Module-level, so it outlives the plugin object that `mkdocs serve` recreates
# on every rebuild: an unchanged lesson is not parsed or rendered again.
_RENDERED: dict[str, tuple[str, str]] = {}


def render_page(
    lesson: LessonFile,
    docs_dir: Path,
    cache_dir: Path,
    use_directory_urls: bool = True,
    pages: set[str] | None = None,
) -> tuple[str, str]:
    """The page body and the notebook of one lesson; from memory when none of its inputs changed.

    Inputs: the lesson's source, its test file, its stored figures and benchmark results, and the source of
    every project module it imports (its example runs their code too).
    """
    test_path = lesson.root / lesson.test
    if not test_path.exists():
        raise LessonError(
            lesson.path,
            1,
            f"no test file {lesson.test}: every lesson is verified against a reference there",
        )
    source = lesson.path.read_text(encoding="utf-8")
    test_source = test_path.read_text(encoding="utf-8")
    stored = [
        path.read_text(encoding="utf-8") if path.exists() else ""
        for path in (
            docs_dir / figures.folder_for(lesson) / figures.MANIFEST,
            benchmarks.record_path(lesson, docs_dir),
        )
    ]
    imported = _imported_sources(lesson)
    pages = pages if pages is not None else {lesson.page}
    key = diagrams.source_hash(
        source, test_source, *stored, imported, str(use_directory_urls), *sorted(pages)
    )
    if key not in _RENDERED:
        _RENDERED[key] = _render_fresh(
            lesson,
            docs_dir,
            cache_dir,
            use_directory_urls,
            pages,
            source,
            test_source,
            imported,
        )
    return _RENDERED[key]


def _render_fresh(
    lesson: LessonFile,
    docs_dir: Path,
    cache_dir: Path,
    use_directory_urls: bool,
    pages: set[str],
    source: str,
    test_source: str,
    imported: str,
) -> tuple[str, str]:
    parsed = parse.load(lesson.path)
    page_url = lesson.page[: -len(".md")] + ("/" if use_directory_urls else ".html")
    facts = render.PageFacts(
        module=lesson.module,
        test_path=lesson.test,
        verified=_verified_sentence(test_source, lesson),
        root="../" * page_url.count("/"),
        page_src=lesson.page,
        pages=pages,
        download_py=f"downloads/{lesson.relative}",
        download_ipynb=f"downloads/{lesson.relative[:-3]}.ipynb",
        download_test=f"downloads/{lesson.test}",
    )
    class_dot = diagrams.class_diagram(source, str(lesson.path))
    dataflow_dot = diagrams.cached_text(
        cache_dir,
        "dataflow",
        diagrams.source_hash("dataflow", source, imported),
        lambda: diagrams.dataflow_diagram(lesson.path, lesson.module),
    )
    class_caption = (
        "Classes and what they hold"
        if class_dot.startswith("digraph classes")
        else "Functions and the calls between them"
    )
    svgs = {
        "classes": (
            class_caption,
            diagrams.to_svg(class_dot, cache_dir, str(lesson.path), "class"),
        ),
        "dataflow": (
            "Dataflow of the declared example",
            diagrams.to_svg(dataflow_dot, cache_dir, str(lesson.path), "dataflow"),
        ),
    }
    body = render.render_lesson(
        parsed,
        facts,
        svgs,
        figures.read(lesson, docs_dir),
        benchmarks.read(lesson, docs_dir),
        benchmarks.has_benchmarks(lesson),
    )
    return body, notebook.to_ipynb(parsed)


def _yaml_string(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _verified_sentence(test_source: str, lesson: LessonFile) -> str:
    """The first sentence of the test module's docstring: what the lesson is verified against."""
    docstring = ast.get_docstring(ast.parse(test_source)) or ""
    if not docstring.strip():
        raise LessonError(
            lesson.root / lesson.test,
            1,
            "the test module's docstring must start with a sentence naming the reference it checks against",
        )
    paragraph = docstring.strip().split("\n\n")[0].replace("\n", " ")
    end = paragraph.find(". ")
    sentence = paragraph if end < 0 else paragraph[: end + 1]
    # The header's label already says "Verified against"; the sentence usually opens with the same words.
    return re.sub(r"^verified against\s+", "", sentence, flags=re.IGNORECASE)


def _imported_sources(lesson: LessonFile) -> str:
    """The hashes of the project modules a lesson imports: its example runs their code too."""
    sources = project_sources(parse.load(lesson.path).tree, lesson.root)
    return "\n".join(f"{path}:{digest}" for path, digest in sources.items())
