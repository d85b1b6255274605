"""The mkdocs plugin: mkdocs events translated into pipeline calls, and nothing else.

- `on_config`: read every lesson once (`pipeline.read`), put the lessons in the nav in
  curriculum order (stage → weeks → lesson), and register the engine's stylesheet and
  script.
- `on_pre_build`, `on_env`: keep compiled templates on disk, so that `mkdocs serve`
  rebuilds quickly after a save.
- `on_files`: check every lesson (`pipeline.check`) and that their references agree
  (`rules.one_entry_per_work`), then render each (`pipeline.render_page`) and add its
  page, downloads and diagram files. All the work that can fail happens here, before
  mkdocs writes a single page, so a broken lesson leaves no half-built site.
- `on_page_markdown`: fill the placeholders of the hand-written pages: the learning
  path, the comparisons, the papers and the glossary.
- `on_page_content`: put each lesson's rendered body into its page.
- `on_post_page`: point the language switcher at the page's twin, and a translated
  edition's pages at that edition's search index.
- `on_post_build`: add one search entry per lesson section to the search index, and
  split the index into one per edition.
- `on_serve`: watch the lessons and their tests, so that saving one re-renders its page.
"""

from __future__ import annotations

import copy
import json
import logging
import posixpath
import shutil
from pathlib import Path

import jinja2
import nbformat
from mkdocs.config import config_options as c
from mkdocs.config.base import Config
from mkdocs.exceptions import PluginError
from mkdocs.plugins import BasePlugin, event_priority
from mkdocs.structure.files import File, Files
from mkdocs_jupyter.plugin import NotebookFile

from tools.literate import (
    LessonError,
    compare,
    glossary,
    i18n,
    learning_path,
    notebook,
    papers,
    pdf,
    pipeline,
    prose,
    reading,
    render,
    rules,
    test_results,
)
from tools.literate.files import atomic_write, discover, page_url
from tools.literate.prose import Links, rewrite_links

_BODY_PLACEHOLDER = "LITERATE-PAGE-BODY"
# The printable book's own words in a translated edition; the English ones are in
# mkdocs.yml.
BOOK = {"zh": {"print_page_title": "注解深度学习：全书", "toc_title": "目录"}}

ASSETS = Path(__file__).parent / "assets"
ASSET_URL = "assets/literate"


def _not_missing_alt(record: logging.LogRecord) -> bool:
    """nbconvert warns of a notebook's images without alternative text on every
    build; the plugin gives them one (`notebook.describe_figures`), so the warning is
    dropped."""
    return "Alternative text is missing" not in record.getMessage()


logging.getLogger("traitlets").addFilter(_not_missing_alt)


def built_alternates(alternate: list | None, editions) -> list | None:
    """mkdocs.yml's `extra.alternate` (the header's language switcher), less the
    editions the i18n plugin does not build (`serve --quick` builds English alone);
    empty, which hides the switcher, when fewer than two are left."""
    if alternate is None or editions is None:
        return copy.deepcopy(alternate)
    built = {
        language.locale for language in editions.config.languages if language.build
    }
    kept = [copy.deepcopy(entry) for entry in alternate if entry.get("lang") in built]
    return kept if len(kept) > 1 else []


class LiteratePluginConfig(Config):
    packages = c.ListOfItems(c.Type(str), default=["annotated"])
    curriculum = c.Type(str, default="annotated/curriculum.toml")
    cache_dir = c.Type(str, default=".cache/literate")


class LiteratePlugin(BasePlugin[LiteratePluginConfig]):
    """Renders `annotated/<area>/<topic>.py` as side-by-side pages."""

    def __init__(self):
        self.pages: dict[str, pipeline.Page] = {}  # lesson page src → rendered page
        # With the i18n plugin mkdocs builds once per edition, calling on_config again
        # on the same config: the nav as configured, before lessons were added to it,
        # and each edition's search entries, written together after the last build.
        self.configured_nav = None
        self.alternate = None  # mkdocs.yml's extra.alternate, before anyone edits it
        self.search: dict[str, list[dict]] = {}

    def on_config(self, config):
        self.root = Path(config.config_file_path).resolve().parent
        self.docs_dir = Path(config.docs_dir)
        # The edition this build makes: the i18n plugin's language ("en" before it has
        # configured itself, which it does after every other plugin).
        editions = config.plugins.get("i18n")
        self.editions = editions
        self.language = (
            (editions.current_language or editions.default_language)
            if editions is not None
            else "en"
        )
        self.prefix = "" if self.language == "en" else f"{self.language}/"
        # Each edition prints its own book (print-site, which reads these next).
        printable = config.plugins.get("print-site")
        if printable is not None:
            import mkdocs_print_site_plugin.urls

            mkdocs_print_site_plugin.urls.update_anchor_ids = pdf.keep_anchor_ids
            mkdocs_print_site_plugin.urls.fix_href_links = pdf.one_pass_links
            for option, value in BOOK.get(self.language, {}).items():
                printable.config[option] = value
        try:
            self.curriculum = learning_path.load(self.root / self.config.curriculum)
        except ValueError as error:
            raise PluginError(f"literate: {self.config.curriculum}: {error}") from None
        self.results = test_results.load(self.root)
        comparisons = self.root / "annotated/compare.toml"
        try:
            self.comparisons = (
                compare.load(comparisons) if comparisons.is_file() else ()
            )
        except ValueError as error:
            raise PluginError(f"literate: {error}") from None
        terms = self.root / "annotated/glossary.toml"
        try:
            self.terms = glossary.load(terms) if terms.is_file() else ()
        except ValueError as error:
            raise PluginError(f"literate: {error}") from None
        self.order = [entry.module for entry in self.curriculum.lessons()]
        rank = {key: index for index, key in enumerate(self.order)}
        found = discover(self.root, tuple(self.config.packages))
        found.sort(key=lambda file: (rank.get(file.key, len(rank)), file.key))
        try:
            self.records = [pipeline.read(file, self.docs_dir) for file in found]
        except LessonError as error:
            raise PluginError(f"literate: {self._where(error)}") from None
        self.translations = {}
        if self.language != "en":
            self.translations = {
                record.file.key: i18n.translated(
                    i18n.lesson_units(record.lesson, record.figures, record.verified),
                    i18n.read(self.root / i18n.lesson_path(self.language, record.file)),
                )
                for record in self.records
            }
        if self.configured_nav is None:
            self.configured_nav = list(config.nav or [])
            self.alternate = built_alternates(config.extra.get("alternate"), editions)
        config.nav = self._nav(self.configured_nav)
        for name, urls in (
            ("literate.css", config.extra_css),
            ("literate.js", config.extra_javascript),
        ):
            if (ASSETS / name).exists() and f"{ASSET_URL}/{name}" not in urls:
                urls.append(f"{ASSET_URL}/{name}")
        return config

    def _where(self, error: LessonError) -> str:
        path = Path(error.path)
        if path.is_absolute() and path.is_relative_to(self.root):
            return (
                f"{path.relative_to(self.root).as_posix()}:{error.line}: {error.reason}"
            )
        return str(error)

    def _nav(self, nav: list) -> list:
        """The configured nav up to its "Learning path" (or Home), then Stage → weeks →
        written lessons, then the rest of the configured nav."""
        written = {record.file.key: record for record in self.records}
        stages: dict[str, dict[str, list]] = {}
        for entry in self.curriculum.lessons():
            record = written.get(entry.module)
            if record is None:
                continue
            stage = f"Stage {entry.stage} · {self.curriculum.stage_title(entry.stage)}"
            block = f"Weeks {entry.weeks} · {entry.block}"
            if self.language == "zh":
                stage = (
                    f"第 {entry.stage} 阶段 · "
                    f"{self.curriculum.stage(entry.stage).label}"
                )
                block = f"第 {entry.weeks} 周 · {self._block_label(entry)}"
            title = self.translations.get(record.file.key, {}).get(
                "title", record.title
            )
            stages.setdefault(stage, {}).setdefault(block, []).append(
                {title: record.file.page}
            )
        lessons = [
            {stage: [{block: pages} for block, pages in blocks.items()]}
            for stage, blocks in stages.items()
        ]
        titles = [
            next(iter(entry)) if isinstance(entry, dict) else entry for entry in nav
        ]
        at = titles.index("Learning path") + 1 if "Learning path" in titles else 1
        return nav[:at] + lessons + nav[at:]

    def _block_label(self, entry) -> str:
        """The plan's Chinese name of the block a lesson belongs to."""
        for block in self.curriculum.stage(entry.stage).blocks:
            if block.weeks == entry.weeks and block.title == entry.block:
                return block.label
        return entry.block

    # `mkdocs serve` makes new template environments on every save: mkdocstrings for the
    # API page, then the theme's. Compiling their templates again was a third of a
    # rebuild, so the compiled templates are kept on disk. mkdocstrings renders while
    # pages are read, before on_env, so its environment gets the cache here.
    def on_pre_build(self, config):
        self.templates = jinja2.FileSystemBytecodeCache(str(self._jinja_cache()))
        mkdocstrings = config.plugins.get("mkdocstrings")
        if mkdocstrings is not None:
            handler = mkdocstrings.handlers.get_handler("python")
            handler.env.bytecode_cache = self.templates

    def on_env(self, env, config, files):
        env.bytecode_cache = self.templates
        return env

    def _jinja_cache(self) -> Path:
        folder = self.root / self.config.cache_dir / "jinja"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _into_edition(self, file: File, config) -> None:
        """Move a file the i18n plugin did not place under this edition's prefix
        ("zh/"), as it moves every other one; the English edition's stay put."""
        if self.prefix:
            file.dest_path = self.prefix + file.dest_path
            file.abs_dest_path = str(Path(config.site_dir) / file.dest_path)
            file.url = file._get_url(config.use_directory_urls)

    def _translate_notebook(self, file: File) -> None:
        """In a translated edition, point a notebook page at a copy of it with its
        Markdown cells translated (mkdocs-jupyter reads the file at `abs_src_path`,
        and offers it for download)."""
        if self.language == "en":
            return
        path = self.root / i18n.page_path(self.language, file.src_uri)
        english = Path(file.abs_src_path).read_text(encoding="utf-8")
        texts = i18n.translated(
            i18n.page_units(i18n.notebook_markdown(english)), i18n.read(path)
        )
        copy = self.root / self.config.cache_dir / self.language / file.src_uri
        copy.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(copy, i18n.translate_notebook(english, texts))
        file.abs_src_path = str(copy)

    # After the i18n plugin has chosen each language's files (it re-reads every file it
    # sees from disk, and these are generated).
    @event_priority(-110)
    def on_files(self, files: Files, config):
        notebooks = config.plugins.get("mkdocs-jupyter")
        if self.editions is not None and notebooks is not None:
            # The i18n plugin re-creates every file as a plain one, so a notebook page
            # would be copied as JSON (in a translated edition, over the English
            # page): make it a notebook page again, under the edition's prefix.
            files = notebooks.on_files(files, config)
            for file in files:
                if isinstance(file, NotebookFile):
                    self._into_edition(file, config)
                    self._translate_notebook(file)
        printable = config.plugins.get("print-site")
        if printable is not None and printable.config["enabled"]:
            # print-site placed its page when it read the config, before the i18n
            # plugin moved the edition's files under its prefix: move it too.
            self._into_edition(printable.print_file, config)
        for asset in sorted(p for p in ASSETS.rglob("*") if p.is_file()):
            url = f"{ASSET_URL}/{asset.relative_to(ASSETS).as_posix()}"
            files.append(File.generated(config, url, abs_src_path=str(asset)))
        # Every lesson keeps the rules, and the lessons' references agree (one entry
        # per work, so the papers page lists each work once), before any is rendered.
        try:
            for record in self.records:
                problems = pipeline.check(record, self.order)
                if problems:
                    raise problems[0]
            problems = rules.one_entry_per_work(
                [(record.file, record.lesson) for record in self.records]
            )
            if problems:
                raise problems[0]
        except LessonError as error:
            raise PluginError(f"literate: {self._where(error)}") from None
        self.works = papers.works(
            [
                (record.file.key, record.lesson.front_matter["references"])
                for record in self.records
            ]
        )
        pages = {f.src_uri for f in files.documentation_pages()}
        pages |= {record.file.page for record in self.records}
        neighbours = {
            record.file.key: (
                self.records[index - 1] if index > 0 else None,
                self.records[index + 1] if index + 1 < len(self.records) else None,
            )
            for index, record in enumerate(self.records)
        }
        site = pipeline.Site(
            cache_dir=self.root / self.config.cache_dir,
            use_directory_urls=config.use_directory_urls,
            pages=frozenset(pages),
            neighbours=neighbours,
            sections={
                record.file.page: frozenset(s.id for s in record.lesson.sections)
                for record in self.records
            },
            demonstrates=learning_path.demonstrations(self.curriculum, self.results),
            results_date=self.results.date if self.results else None,
            language=self.language,
            prefix=self.prefix,
            translations=self.translations,
            site_url=config.site_url or "",
            citing={work.key: len(work.cited_in) for work in self.works},
        )
        self.site = site
        self.written = None  # made for this build's first page (on_page_markdown)
        self.pages = {}
        for record in self.records:
            try:
                page = pipeline.render_page(record, site)
            except LessonError as error:
                raise PluginError(f"literate: {self._where(error)}") from None
            self.pages[record.file.page] = page
            file = record.file
            # The lesson's page: the engine's body goes in at on_page_content.
            # Material's search skips it (its HTML is large and one entry per page);
            # on_post_build indexes sections.
            heading = pipeline.title(record, site)
            title = json.dumps(heading, ensure_ascii=False)
            # The page's <meta name="description">, which search engines and link
            # previews show: the lesson's summary in this edition, as plain text.
            summary = self.translations.get(file.key, {}).get(
                "summary", str(record.lesson.front_matter.get("summary", ""))
            )
            description = json.dumps(
                render.plain_text(prose.render([(None, summary)], str(file.path))),
                ensure_ascii=False,
            )
            # The heading's id is fixed: the one Markdown would make from the title
            # ("gptq") can be a section's too, and a link to that section would land on
            # the heading. No section id has an underscore.
            markdown = (
                f"---\ntitle: {title}\ndescription: {description}\nhide:\n  - toc\n"
                "search:\n  exclude: true\n---\n\n"
                f"# {heading} {{#page_title}}\n\n{_BODY_PLACEHOLDER}\n"
            )
            # A translated edition's page goes under its prefix, and so do its
            # notebook and worksheet (their prose is the edition's); the other
            # downloads and the diagrams it links to are the same files, at the root.
            lesson_page = File.generated(config, file.page, content=markdown)
            lesson_page.dest_uri = self.prefix + lesson_page.dest_uri
            files.append(lesson_page)
            files.append(File.generated(config, file.download_py, content=page.script))
            ipynb = pipeline.notebook_path(file, site)
            if ipynb is not None:
                files.append(File.generated(config, ipynb, content=page.notebook))
            if page.worksheet is not None:
                files.append(
                    File.generated(
                        config,
                        pipeline.worksheet_path(file, site),
                        content=page.worksheet,
                    )
                )
            if record.test_source is not None:
                files.append(
                    File.generated(
                        config, file.download_test, content=record.test_source
                    )
                )
            for kind, svg in page.svgs.items():
                files.append(File.generated(config, file.diagram(kind), content=svg))
        # This edition's search entries, one per lesson section: kept until the last
        # edition is built (on_post_build), since building the next one resets the rest.
        self.search[self.language] = [
            {
                "location": f"{url}#{entry.anchor}" if entry.anchor else url,
                "title": i18n.segment(entry.title),
                "text": i18n.segment(entry.text),
            }
            for src, rendered in self.pages.items()
            for url in [self.prefix + page_url(src, config.use_directory_urls)]
            for entry in rendered.search
        ]
        return files

    def on_page_markdown(self, markdown: str, page, config, files):
        src = page.file.src_uri
        if self.language != "en" and src not in self.pages:
            # A hand-written page: its translated units in place of the English.
            markdown = i18n.translate_page(
                markdown,
                i18n.translated(
                    i18n.page_units(markdown),
                    i18n.read(self.root / i18n.page_path(self.language, src)),
                ),
            )
        # The same for every page of the build: made for the first.
        if self.written is None:
            self.written = self._written_lessons()
        written = self.written
        try:
            markdown = compare.render(
                markdown,
                self.comparisons,
                written,
                self.root,
                page.file.src_uri,
                self.language,
            )
            markdown = reading.render(
                markdown, self.root / self.config.cache_dir, page.file.src_uri
            )
            markdown = papers.render(
                markdown, self.works, written, page.file.src_uri, self.language
            )
            markdown = glossary.render(
                markdown,
                self.terms,
                {record.file.key: record.lesson for record in self.records},
                written,
                page.file.src_uri,
                self.language,
            )
            return learning_path.render(
                markdown,
                self.curriculum,
                written,
                page.file.src_uri,
                self.results,
                self.language,
            )
        except ValueError as error:
            raise PluginError(f"literate: {page.file.src_uri}: {error}") from None

    def _written_lessons(self) -> dict:
        """What the learning path and the comparisons need of each written lesson, in
        this edition."""
        return {
            record.file.key: learning_path.WrittenLesson(
                page=record.file.page,
                title=pipeline.title(record, self.site),
                summary=self.translations.get(record.file.key, {}).get(
                    "summary", str(record.lesson.front_matter.get("summary", ""))
                ),
                sections=frozenset(section.id for section in record.lesson.sections),
                labels=pipeline.section_labels(record, self.site),
            )
            for record in self.records
        }

    # Before every other plugin, so that they see the lesson's body.
    @event_priority(100)
    def on_page_content(self, html: str, page, config, files):
        rendered = self.pages.get(page.file.src_uri)
        if rendered is None:
            # A hand-written page describes itself by its opening, in its edition,
            # unless its front matter gives a description.
            description = render.page_description(html)
            if description and not page.meta.get("description"):
                page.meta["description"] = description
            if page.file.src_uri.endswith(".ipynb"):
                # A notebook's Markdown links to lessons by file, as lessons do; mkdocs
                # leaves them alone in notebook HTML, so they are resolved here.
                links = Links(
                    page.file.src_uri, self.site.pages, config.use_directory_urls
                )
                if self.language != "en":
                    html = i18n.notebook_anchors(
                        html,
                        list(page.toc),
                        i18n.page_markdown(self.docs_dir / page.file.src_uri),
                    )
                # nbconvert gives a figure no alternative text: its title and axes.
                html = notebook.describe_figures(
                    html,
                    nbformat.read(self.docs_dir / page.file.src_uri, as_version=4),
                )
                return rewrite_links(html, links)
            return render.localise_page(html, self.language)
        body = f'<div class="lit-page">{rendered.body}</div>'
        return html.replace(f"<p>{_BODY_PLACEHOLDER}</p>", body)

    # Material fetches `sitemap.xml` beside every alternate-language link to map the
    # page to its translation; the i18n plugin's links to the same page in the other
    # edition would make that a 404 on every page. The head's links stay the editions'
    # roots (as the i18n plugin computed them), each root has its sitemap
    # (on_post_build), and on_post_page points the header's links at the twin.
    @event_priority(0)
    def on_page_context(self, context, page, config, nav):
        if self.alternate is not None:
            # The i18n plugin sets both the attribute and the item; the theme reads
            # the attribute.
            config.extra.alternate = copy.deepcopy(self.alternate)
            config.extra["alternate"] = copy.deepcopy(self.alternate)
        return context

    # Each page's language switcher leads to its twin in the other edition, and a
    # translated edition's pages search that edition's index (i18n.py says why).
    def on_post_page(self, output: str, page, config):
        output = i18n.link_twins(output, page.url.removeprefix(self.prefix))
        locale = {"en": "en_US", "zh": "zh_CN"}.get(self.language, self.language)
        home = page.url.removeprefix(self.prefix) == ""  # each edition's own home
        output = render.open_graph(output, locale, homepage=home)
        if self.prefix:
            folder = posixpath.dirname(page.file.dest_uri)
            output = i18n.with_base(output, posixpath.relpath(self.prefix, folder))
        return output

    # After the search plugin has written its index, and after the i18n plugin has
    # built the other editions and merged their indexes into it.
    @event_priority(-110)
    def on_post_build(self, config):
        if self.editions is not None and self.editions.building:
            return  # an edition built inside the English build: its entries wait
        for language in self.search:
            edition = Path(config.site_dir) / pdf.edition(language)
            printable = edition / "print_page" / "index.html"
            if printable.exists():
                html = pdf.namespace_ids(printable.read_text(encoding="utf-8"))
                html = pdf.link_unprinted_pages(html, edition, language)
                html = pdf.link_shared_files(html, edition, Path(config.site_dir))
                # print-site renders it after every other page, with an absolute base.
                html = i18n.with_base(i18n.link_twins(html, "print_page/"), "..")
                printable.write_text(html, encoding="utf-8")
        sitemap = Path(config.site_dir) / "sitemap.xml"
        for language in self.search:
            if language != "en" and sitemap.exists():
                edition = Path(config.site_dir) / language
                shutil.copyfile(sitemap, edition / "sitemap.xml")
        index_path = Path(config.site_dir) / "search" / "search_index.json"
        if not index_path.exists():
            return
        index = json.loads(index_path.read_text(encoding="utf-8"))
        for entries in self.search.values():
            index["docs"].extend(entries)
        editions = [pdf.edition(language) for language in self.search]
        for prefix, part in i18n.split_search_index(index, editions).items():
            path = Path(config.site_dir) / prefix / "search" / "search_index.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                json.dumps(part, separators=(",", ":"), ensure_ascii=False),
                encoding="utf-8",
            )

    def on_serve(self, server, config, builder):
        for folder in [*self.config.packages, "tests"]:
            if (self.root / folder).is_dir():
                server.watch(str(self.root / folder))
        return server
