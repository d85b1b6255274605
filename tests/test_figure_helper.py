"""Verified against what matplotlib and Pillow read back: `annotated.figures` makes
panels of a fixed pixel size at its DPI, sets every text to its fixed sizes whatever the
lesson asked for, stores the caption and the sizes in the PNG, says where it saved it
(on stderr), and refuses layouts and captions it cannot honour."""

import pytest
from PIL import Image

from annotated.figures import BODY_PT, DPI, PANEL, TITLE_PT, figure, save


def test_panels_have_a_fixed_size_and_text_a_fixed_size(tmp_path, capsys):
    fig, axes = figure(panels=2)
    axes[0].plot([0, 1], [1, 0])
    axes[0].set_title("left", fontsize=30)
    axes[1].set_xlabel("step $k$", fontsize=3)
    axes[1].legend(["curve"], fontsize=25)
    path = save(fig, tmp_path / "two.png", caption="Two panels drawn for the test.")
    printed = capsys.readouterr()
    assert printed.err == f"figure saved: {path}\n" and printed.out == ""
    sizes = {
        text.get_text(): text.get_fontsize()
        for text in fig.texts
        + [t for axis in fig.axes for t in (axis.title, axis.xaxis.label)]
    }
    assert sizes["left"] == TITLE_PT and sizes["step $k$"] == BODY_PT
    assert all(t.get_fontsize() == BODY_PT for t in axes[1].get_legend().get_texts())
    with Image.open(path) as image:
        assert image.size == (round(2 * PANEL[0] * DPI), round(PANEL[1] * DPI))
        assert image.text["Description"] == "Two panels drawn for the test."
        assert image.text["FontSizes"] == f"{BODY_PT},{TITLE_PT}"
    # On the page a figure is shown at its own width: 9 pt at 100 DPI is 12.5 px.
    assert 10 <= BODY_PT * DPI / 72 <= 14 and 10 <= TITLE_PT * DPI / 72 <= 14


def test_rows_stack_panels(tmp_path):
    fig, axes = figure(panels=4, rows=2)
    assert axes.shape == (2, 2)
    path = save(fig, tmp_path / "grid.png", caption="Four panels in two rows.")
    with Image.open(path) as image:
        assert image.size == (round(2 * PANEL[0] * DPI), round(2 * PANEL[1] * DPI))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"panels": 0}, "panels must be a positive int"),
        ({"panels": 4}, "use rows="),
        ({"panels": 3, "rows": 2}, "rows must be a positive int dividing"),
    ],
)
def test_layouts_it_cannot_honour_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        figure(**kwargs)


@pytest.mark.parametrize(
    "name, caption, message",
    [
        ("a.png", "Loss", "caption must be a sentence"),
        ("a.jpg", "A caption of enough words.", "must end in .png"),
    ],
)
def test_bad_captions_and_paths_are_refused_before_writing(
    tmp_path, name, caption, message
):
    fig, _ = figure()
    with pytest.raises(ValueError, match=message):
        save(fig, tmp_path / name, caption=caption)
    assert not list(tmp_path.iterdir())
