"""The literate engine: annotated Python lessons in, side-by-side pages out.

Data flows one way: `files` (where everything is) → `pipeline.read` (each lesson read
once into a record: source, `parse`d sections, test, stored `figures` and `benchmarks`)
→ `rules.check` → `pipeline.render_page` (`prose` and `render` to HTML, with `diagrams`,
`downloads` and `notebook`) → `plugin`, which only translates mkdocs events. No module
reaches back upstream.
"""

import os

# The engine imports lessons and runs their `example()` in its own process. A kernel
# lesson's example runs in Triton's interpreter where no GPU can run it, and Triton
# reads this setting once, when it is first imported (often by another lesson's
# import of torch's compiler), so it is settled here, before any lesson is imported.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"


class LessonError(Exception):
    """A lesson the engine cannot turn into a page, reported as `file:line: reason`."""

    def __init__(self, path, line: int, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{self.path}:{line}: {reason}")
