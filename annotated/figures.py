r"""The figure helper every lesson draws with: one size per panel, one DPI, one set of
font sizes.

A figure on a lesson page is shown at its own pixel width (scaled down only when the
column is narrower), so the text a reader sees is `points × DPI / 72` pixels. With
`DPI = 100`, 9 pt body text is 12.5 px and 10 pt titles are 13.9 px: inside the 10–14 px
the site promises at 1400 px. Every panel is `PANEL` inches, so a three-panel figure is
three times as wide as a one-panel one, and its text is the same size.

    fig, (left, right) = figure(panels=2)
    left.plot(steps, loss)
    left.set_xlabel("step $k$")  # mathtext, not raw TeX
    save(
        fig,
        out / "loss.png",
        caption="Training loss of the MLP on two moons, per step.",
    )

`save` sets every text of the figure to the fixed sizes, so a lesson cannot drift from
them, stores the caption inside the PNG (a `Description` text chunk) where the site's
figure store reads it, and says where the file went (on stderr, beside the progress
bars: a demo's standard output is its result). Nothing here touches pyplot: the figure
is a plain `matplotlib.figure.Figure` drawn by Agg, so it works in a script, a notebook
or the site build without choosing a backend.
"""

import sys
from pathlib import Path

import matplotlib.text
from matplotlib.figure import Figure

DPI = 100
PANEL = (4.8, 3.4)  # inches per panel: 480 × 340 px
MAX_COLUMNS = 3  # 1,440 px: wider would be scaled below 10 px text in a 1,300 px column
BODY_PT = 9.0  # ticks, labels, legends, annotations
TITLE_PT = 10.0  # axes titles and the figure's suptitle


def figure(panels: int = 1, *, rows: int = 1, **subplot_kw) -> tuple[Figure, object]:
    """A figure of `panels` axes laid out in `rows` rows, each panel `PANEL` inches at
    `DPI`.

    Returns `(fig, axes)` like `plt.subplots`: one `Axes` for one panel, else an array
    of them. Extra keywords go to `Figure.subplots` (`sharex`, `gridspec_kw`,
    `subplot_kw`, ...).
    """
    if not isinstance(panels, int) or panels < 1:
        raise ValueError(f"panels must be a positive int, got {panels!r}")
    if not isinstance(rows, int) or rows < 1 or panels % rows:
        raise ValueError(
            f"rows must be a positive int dividing panels={panels}, got {rows!r}"
        )
    columns = panels // rows
    if columns > MAX_COLUMNS:
        raise ValueError(
            f"{columns} panels in a row would shrink the text below 10 px on the page; "
            f"use rows= so that each row has at most {MAX_COLUMNS}"
        )
    fig = Figure(
        figsize=(PANEL[0] * columns, PANEL[1] * rows), dpi=DPI, layout="constrained"
    )
    axes = fig.subplots(rows, columns, squeeze=True, **subplot_kw)
    return fig, axes


def save(fig: Figure, path: str | Path, *, caption: str) -> Path:
    """Fix every text's size, then write `fig` to the PNG `path` with `caption` stored
    inside it."""
    if not isinstance(caption, str) or len(caption.split()) < 3:
        raise ValueError(
            f"caption must be a sentence saying what the figure shows, got {caption!r}"
        )
    path = Path(path)
    if path.suffix != ".png":
        raise ValueError(f"path must end in .png, got {path.name!r}")
    # Titles are the Text objects matplotlib keeps for them: the suptitle and each axes'
    # three.
    titles = {id(fig._suptitle)} if fig._suptitle is not None else set()
    for axes in fig.axes:
        titles.update(id(t) for t in (axes.title, axes._left_title, axes._right_title))
    for text in fig.findobj(matplotlib.text.Text):
        text.set_fontsize(TITLE_PT if id(text) in titles else BODY_PT)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Description": caption, "FontSizes": f"{BODY_PT},{TITLE_PT}"}
    fig.savefig(path, dpi=DPI, metadata=metadata)
    print(f"figure saved: {path}", file=sys.stderr)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/figures")
    fig, axes = figure(panels=3)
    for index, axis in enumerate(axes):
        axis.plot([0, 1, 2], [0, index + 1, 0])
        axis.set_title(f"panel {index + 1}")
        axis.set_xlabel("step $k$")
    saved = save(
        fig, out / "sample.png", caption="Three sample panels at the fixed size."
    )
    width, height = fig.get_size_inches() * DPI
    print(f"{saved}: {width:.0f} × {height:.0f} px, text {BODY_PT * DPI / 72:.1f} px")
