"""Verified by round trip through nbformat (reading and validating against its schema):
a lesson's `.ipynb` holds every code line in order and every section's prose, each of
its code cells compiles on its own (an exception class whose body is its docstring
keeps it), and the
fixture lesson's notebook runs top to bottom in a Jupyter kernel, demo included. The
same lesson makes the same file byte for byte, and prose that looks like a cell marker
or a shell escape stays prose."""

import re
from pathlib import Path

import nbformat
import pytest

from conftest import FIXTURES
from tools.literate import pipeline
from tools.literate.files import discover
from tools.literate.notebook import to_ipynb
from tools.literate.parse import parse

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "lesson",
    [lesson for lesson in discover(REPO) if lesson.language == "python"],
    ids=lambda lesson: lesson.key,
)
def test_notebook_keeps_all_code_and_prose(lesson):
    parsed = parse(lesson.path.read_text(encoding="utf-8"), lesson.path)
    nb = nbformat.reads(to_ipynb(parsed), as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:  # each cell runs on its own: whole statements only
        if cell.cell_type == "code":
            compile(cell.source, f"{lesson.key} {cell.id}", "exec")
    code = [
        line
        for cell in nb.cells[2:]
        if cell.cell_type == "code"
        for line in cell.source.splitlines()
    ]
    expected = [
        line.text
        for section in parsed.sections
        for line in section.code
        if line.text.strip()
    ]
    remaining = iter(code)
    assert all(line in remaining for line in expected), (
        "a code line is missing or out of order"
    )
    text = "\n".join(cell.source for cell in nb.cells)
    for section in parsed.sections:
        # Around its citations and link targets, which the notebook rewrites.
        for piece in re.split(r"\[@[^\]]*\]|\]\([^)]*\)", section.prose):
            for line in piece.splitlines():
                assert line.strip() in text
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "[@" not in markdown  # citations read "(Hu et al., 2022)"


def test_the_prose_travels_with_its_citations_and_links_to_the_site(tmp_path):
    lesson = discover(REPO)
    lora = next(f for f in lesson if f.key == "llm/lora")
    parsed = parse(lora.path.read_text(encoding="utf-8"), lora.path)
    site = pipeline.Site(
        tmp_path, True, frozenset(), {}, site_url="https://example.org/book/"
    )
    nb = nbformat.reads(
        to_ipynb(parsed, "", pipeline._site_link(lora, site)), as_version=4
    )
    text = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    assert "(Hu et al., 2022)" in text and "[@hu2022lora]" not in text
    assert "](https://example.org/book/lessons/llm/gpt2/)" in text
    assert "](gpt2.md" not in text
    assert nb.cells[-1].source.startswith("## References\n\n- Hu et al., 2022: ")
    chinese = pipeline.Site(
        tmp_path, True, frozenset(), {}, prefix="zh/", site_url="https://example.org/"
    )
    assert pipeline._site_link(lora, chinese)("../sequence/attention.md#x") == (
        "https://example.org/zh/lessons/sequence/attention/#x"
    )
    assert pipeline._site_link(lora, chinese)("figure.png") is None


def test_the_same_lesson_makes_the_same_file_with_numbered_cells():
    parsed = parse((FIXTURES / "tiny_model.py").read_text(), "tiny_model.py")
    first, second = to_ipynb(parsed, "import x"), to_ipynb(parsed, "import x")
    assert first == second  # no random cell ids: a rebuild changes no download
    nb = nbformat.reads(first, as_version=4)
    nbformat.validate(nb)
    assert [cell.id for cell in nb.cells] == [
        f"cell-{n}" for n in range(1, len(nb.cells) + 1)
    ]
    assert nb.cells[2].source == "import x"  # the preamble, after the argv cell
    assert nb.metadata.kernelspec.name == "python3"


def test_prose_that_looks_like_a_cell_marker_or_a_magic_stays_prose():
    # Written as a percent-format script and read back, these comment lines would
    # start a new cell and become a shell command (`!rm`) in a code cell.
    source = '"""\n---\ntitle: T\nsummary: S\n---\nIntro.\n"""\n\n' + (
        "x = 1\n# %% not a cell marker\n# !rm -rf out is a sentence\ny = 2\n"
    )
    nb = nbformat.reads(to_ipynb(parse(source, "t.py")), as_version=4)
    code = [cell.source for cell in nb.cells[2:] if cell.cell_type == "code"]
    prose = [cell.source for cell in nb.cells if cell.cell_type == "markdown"]
    assert code == ["x = 1", "y = 2"]
    assert "%% not a cell marker\n!rm -rf out is a sentence" in prose


def test_fixture_notebook_runs_in_a_kernel(tmp_path, monkeypatch):
    import nbclient

    monkeypatch.chdir(tmp_path)
    nb = nbformat.reads(
        to_ipynb(parse((FIXTURES / "tiny_model.py").read_text(), "tiny_model.py")),
        as_version=4,
    )
    nbclient.NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    printed = "".join(
        o.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )
    assert "output norm" in printed
    assert (tmp_path / "out/tiny/line.png").exists()
