"""Sections → notebook: a Markdown cell for each section's prose and a code cell for its code, via jupytext."""

from __future__ import annotations

import jupytext

from tools.literate.parse import Lesson


def to_ipynb(lesson: Lesson) -> str:
    """The lesson as `.ipynb` JSON. The demo runs with its default flags: the notebook's kernel passes
    arguments of its own, which the demo's argparse would reject, so a first cell clears them."""
    title = lesson.front_matter.get("title", lesson.path.stem)
    cells = [f"# %% [markdown]\n# # {title}\n#\n# {lesson.front_matter.get('summary', '')}", "# %%\nimport sys\n\nsys.argv = sys.argv[:1]  # the demo reads its flags from sys.argv"]
    for section in lesson.sections:
        if section.prose:
            cells.append("# %% [markdown]\n" + "\n".join(f"# {line}".rstrip() for line in section.prose.splitlines()))
        code = "\n".join(line.text for line in section.code).strip("\n")
        if code:
            cells.append("# %%\n" + code)
    notebook = jupytext.reads("\n\n".join(cells) + "\n", fmt="py:percent")
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return jupytext.writes(notebook, fmt="ipynb")
