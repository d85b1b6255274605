"""Verified by its stored execution: the tour notebook under docs/ has every code cell
run without error, and was run against the current source of every lesson it imports
(the site shows these outputs, never reruns)."""

from pathlib import Path

import nbformat
import pytest

from tools.literate.notebook import imported_lessons

REPO = Path(__file__).resolve().parents[2]
TOUR = REPO / "docs/tour.ipynb"


@pytest.fixture(scope="module")
def tour():
    return nbformat.read(TOUR, as_version=4)


def test_every_code_cell_ran_without_error(tour):
    code = [cell for cell in tour.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count for cell in code), (
        "run: python -m tools.literate.notebook docs/tour.ipynb"
    )
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    images = [
        o for cell in code for o in cell.outputs if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 2, "the tour plots the results of two lessons"


def test_outputs_were_made_from_the_current_lessons(tour):
    stored = tour.metadata.get("literate", {}).get("lessons", {})
    current = imported_lessons(tour, REPO)
    assert (
        len([path for path in current if path.startswith("annotated/foundations/")])
        >= 2
    )
    assert stored == current, (
        "a lesson changed since the tour ran: "
        "python -m tools.literate.notebook docs/tour.ipynb"
    )
