"""The literate engine: annotated Python lessons in, side-by-side pages out.

Data flows one way: `files` (where everything is) → `pipeline.read` (each lesson read
once into a record: source, `parse`d sections, test, stored `figures` and `benchmarks`)
→ `rules.check` → `pipeline.render_page` (`prose` and `render` to HTML, with `diagrams`,
`downloads` and `notebook`) → `plugin`, which only translates mkdocs events. No module
reaches back upstream.
"""


class LessonError(Exception):
    """A lesson the engine cannot turn into a page, reported as `file:line: reason`."""

    def __init__(self, path, line: int, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{self.path}:{line}: {reason}")
