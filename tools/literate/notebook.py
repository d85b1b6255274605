"""Notebooks: a lesson's downloadable `.ipynb` (a Markdown cell per section's prose, a
code cell per its code), and the executed notebooks under `docs/`, which
the site shows with stored outputs."""

from __future__ import annotations

import argparse
import ast
import html
import re
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tools.literate.files import atomic_write, project_sources
from tools.literate.parse import Lesson
from tools.literate.render import citation_labels, full_stop
from tools.literate.rules import CITATION

# A Markdown link's target: `](gpt2.md#x)`.
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def to_ipynb(
    lesson: Lesson, preamble: str = "", link=lambda target: None, language: str = "en"
) -> str:
    """The lesson as `.ipynb` JSON: a Markdown cell for each section's prose, a code
    cell for its code.

    The prose travels without the site around it: a citation `[@key]` becomes
    "(Kingma & Ba, 2015)" with the works listed in a last cell, and a link to another
    page becomes `link(target)`, its address on the site (kept as written where that
    is None).

    A cell must hold whole statements, so a section that starts inside a class or
    function (a method with its own docstring, a comment block in a loop) joins the cell
    of the statement around it, its prose kept in place as the comments and docstrings
    it was written as. The demo runs with its default flags: the kernel passes arguments
    of its own, which the demo's argparse would reject, so a first cell clears them. A
    `preamble` (the bundled project modules) is the next cell. Cells are numbered, not
    given random ids, so the same lesson always makes the same file.
    """
    references = lesson.front_matter.get("references") or []
    labels = citation_labels(references)

    def portable(markdown: str) -> str:
        markdown = CITATION.sub(
            lambda m: (
                "("
                + "; ".join(labels.get(k.strip()[1:], k) for k in m.group(1).split(";"))
                + ")"
            ),
            markdown,
        )
        return _LINK.sub(lambda m: f"]({link(m.group(1)) or m.group(1)})", markdown)

    title = lesson.front_matter.get("title", lesson.path.stem)
    source_lines = lesson.source.splitlines()
    summary = lesson.front_matter.get("summary", "")
    cells = [
        new_markdown_cell(f"# {title}\n\n{summary}"),
        new_code_cell(
            "import sys\n\n"
            "sys.argv = sys.argv[:1]  # the demo reads its flags from sys.argv"
        ),
    ]
    if preamble:
        cells.append(new_code_cell(preamble.strip("\n")))
    for group in _statement_groups(lesson):
        first = group[0]
        numbers = [line.number for line in first.code]
        numbers += [
            line.number
            for section in group[1:]
            for line in section.prose_lines + section.code
        ]
        prose, code = first.prose, _lines(source_lines, numbers)
        if code and not _parses(code):
            # A class or function whose whole body is its docstring (an exception
            # class) keeps it as code: without it the cell has a header and no body.
            numbers += [line.number for line in first.prose_lines]
            prose, code = "", _lines(source_lines, numbers)
        if prose:
            cells.append(new_markdown_cell(portable(prose)))
        if code:
            cells.append(new_code_cell(code))
    if references:
        works = "\n".join(_work(r, labels[r["key"]]) for r in references)
        heading = {"zh": "参考文献"}.get(language, "References")
        cells.append(new_markdown_cell(f"## {heading}\n\n{works}"))
    for number, cell in enumerate(cells, start=1):
        cell.id = f"cell-{number}"
    notebook = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {
                "name": "python3",
                "display_name": "Python 3",
                "language": "python",
            },
            "language_info": {"name": "python"},
        },
    )
    return nbformat.writes(notebook)


def _work(reference: dict, label: str) -> str:
    """A reference as a Markdown list item: "- Hu et al., 2022: Edward J. Hu, ...
    *LoRA: ...*. ICLR 2022. <https://arxiv.org/abs/2106.09685>"."""
    authors = ", ".join(str(author) for author in reference["authors"])
    title, venue = str(reference["title"]), _venue(reference)
    links = [reference["url"]] if reference.get("url") else []
    if reference.get("arxiv"):
        links.append(f"https://arxiv.org/abs/{reference['arxiv']}")
    return (
        f"- {label}: {authors}{full_stop(authors)} *{title}*{full_stop(title)} "
        f"{venue}{full_stop(venue)}" + "".join(f" <{link}>" for link in links)
    )


def _venue(reference: dict) -> str:
    """ "ICLR 2022", or "Communications of the ACM 7(8), 1964": the year once."""
    venue, year = str(reference.get("venue", "")), str(reference["year"])
    return venue if year in venue else f"{venue}, {year}".lstrip(", ")


def _lines(source_lines: list[str], numbers: list[int]) -> str:
    return "\n".join(source_lines[n - 1] for n in sorted(numbers)).strip("\n")


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def _statement_groups(lesson: Lesson) -> list[list]:
    """Sections grouped so that each group starts at a top-level statement (code at
    column 0)."""
    groups: list[list] = []
    for section in lesson.sections:
        code = [line.text for line in section.code if line.text.strip()]
        continues = bool(groups) and bool(code) and code[0][:1].isspace()
        if continues:
            groups[-1].append(section)
        else:
            groups.append([section])
    return groups


# ---- executed notebooks under docs/ --------------------------------------------------
#
# The site shows notebooks with their stored outputs and never runs them. `python -m
# tools.literate.notebook docs/tour.ipynb` executes one in place and records the hash of
# each lesson its cells import, so a test can tell when a lesson changed under it.


def imported_lessons(nb, root: Path) -> dict[str, str]:
    """{lesson path: sha256} for every `annotated.*` / `kernels.*` module the notebook's
    code imports."""
    found = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            found.update(project_sources(ast.parse(cell.source), root))
    return dict(sorted(found.items()))


# nbconvert's words for an image whose output gives no alternative text.
NO_ALT = 'alt="No description has been provided for this image"'
_LABELS = {"set_title": "", "suptitle": "", "set_xlabel": "x: ", "set_ylabel": "y: "}


def describe_figures(page_html: str, nb) -> str:
    """A notebook page's figures with alternative text: each image's title and axis
    labels, read from the matplotlib calls of the cell that drew it (nbconvert gives
    every image the same placeholder). Images are matched to cells in order."""
    descriptions = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        images = sum("image/png" in output.get("data", {}) for output in cell.outputs)
        descriptions += [_figure_description(cell.source)] * images
    parts = page_html.split(NO_ALT)
    if len(parts) - 1 != len(descriptions):
        return page_html  # not the images of this notebook: leave them as they are
    out = [parts[0]]
    for description, rest in zip(descriptions, parts[1:]):
        out += [f'alt="{html.escape(description)}"', rest]
    return "".join(out)


def _figure_description(source: str) -> str:
    """ "Title (x: epoch, y: test accuracy)", from the string literals a cell passes to
    `set_title`, `suptitle`, `set_xlabel` and `set_ylabel`."""
    found = {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return "A figure drawn by the code above"
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _LABELS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.setdefault(node.func.attr, node.args[0].value)
    title = found.get("set_title") or found.get("suptitle")
    axes = ", ".join(
        _LABELS[name] + found[name]
        for name in ("set_xlabel", "set_ylabel")
        if name in found
    )
    if title and axes:
        return f"{title} ({axes})"
    return title or (
        f"A figure ({axes})" if axes else "A figure drawn by the code above"
    )


def execute(path: Path, root: Path, timeout: int = 600) -> None:
    """Run every cell of the notebook at `path` and write it back with its outputs,
    atomically."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(root)}},
    ).execute()
    nb.metadata["literate"] = {"lessons": imported_lessons(nb, root)}
    atomic_write(path, nbformat.writes(nb) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Execute notebooks under docs/ in place and record the lessons they import."
        )
    )
    parser.add_argument("notebooks", nargs="+", help="e.g. docs/tour.ipynb")
    parser.add_argument(
        "--root", default=".", help="the project root (the notebook runs there)"
    )
    args = parser.parse_args(argv)
    for name in args.notebooks:
        print(f"{name}: executing ...", flush=True)
        execute(Path(name).resolve(), Path(args.root).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
