"""The literate engine: annotated Python lessons in, side-by-side pages out.

Data flows one way: `parse` (source → `Lesson` of `Section`s) → `prose` and `render`
(sections → HTML), with `diagrams`, `figures`, `benchmarks` and `notebook` hanging off
the parsed lesson, and `plugin` wiring it all into mkdocs. No module reaches back
upstream.
"""


class LessonError(Exception):
    """A lesson the engine cannot turn into a page, reported as `file:line: reason`."""

    def __init__(self, path, line: int, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{self.path}:{line}: {reason}")
