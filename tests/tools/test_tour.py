"""Verified by its stored execution: the tour notebook under docs/ has every code cell
run without error, and was run against the current source of every lesson it imports
(the site shows these outputs, never reruns). Its figures reach the page described by
the title and axis labels their cells draw."""

import logging
import re
import sys
from pathlib import Path

import nbformat
import pytest

from tools.literate import notebook
from tools.literate.notebook import imported_lessons

sys.path.insert(0, str(Path(__file__).parent))
from test_site import build_site  # noqa: E402  (one build per session, shared)

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


def test_each_figure_is_described_by_the_title_and_axes_its_cell_draws(tour):
    code = [cell for cell in tour.cells if cell.cell_type == "code"]
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    page = "".join(f"<p>{n}</p><img {notebook.NO_ALT} src=x>" for n in range(images))
    described = notebook.describe_figures(page, tour)
    alts = re.findall(r'alt="([^"]*)"', described)
    assert alts[0] == "Hilbert systems: error tracks the condition number (x: n)"
    assert alts[1] == (
        "Two-layer MLP on digits, tensor_autograd (x: epoch, y: test accuracy)"
    )
    assert notebook.NO_ALT not in described
    # Another page's images (not as many) are left as nbconvert made them.
    assert notebook.describe_figures(page + page, tour) == page + page


def test_the_built_tour_has_no_image_without_a_description(tmp_path_factory):
    site = build_site(tmp_path_factory)
    for edition in ("", "zh/"):
        page = (site / edition / "tour/index.html").read_text(encoding="utf-8")
        alts = re.findall(r'<img alt="([^"]*)"', page)
        assert len(alts) >= 2 and "No description" not in page, edition
        assert "Hilbert systems: error tracks the condition number (x: n)" in alts


def test_nbconverts_warning_of_images_without_alt_text_stays_out_of_the_log(caplog):
    import tools.literate.plugin  # noqa: F401  (it filters the warning)

    log = logging.getLogger("traitlets")
    with caplog.at_level(logging.WARNING, logger="traitlets"):
        log.warning("Alternative text is missing on %s image(s).", 2)
        log.warning("another warning")
    assert [record.getMessage() for record in caplog.records] == ["another warning"]
