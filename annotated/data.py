r"""The shared data module: every data set a lesson trains on, made in code or loaded
from an installed package.

Nothing here downloads. `two_moons` draws points from a formula; `digits` reads the 8×8
handwritten digits that ship inside scikit-learn, and `digit_images` enlarges them into
images for the generative lessons. Each returns plain NumPy arrays so
that a lesson decides for itself whether to wrap them in `Value`s, its own tensors or
`torch.Tensor`s. The language-model lessons read `python_docs`: the reference text that
ships with every Python interpreter. The vision lessons draw theirs: `shapes` renders
one or two coloured circles, squares and triangles with a caption that says exactly
what is where ("a small red circle above a large blue square"), and `moving_digits`
slides a digit across the frames of a clip in one of eight directions.

`cached_weights` keeps what one lesson trains for a later one (a feature extractor, a
diffusion model) as a safetensors file in the user's cache folder, named after the
code of the source file that trained it (`code_sha256`), so that a lesson whose code
changed trains again, and one whose prose changed does not.
"""

import argparse
import hashlib
import io
import math
import os
import re
import tempfile
import tokenize
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np


def two_moons(
    n: int = 200, noise: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles: `x` is `[n, 2]` float64, `y` is `[n]` with labels 0
    and 1."""
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    n_top = n // 2
    angle_top = rng.uniform(0.0, np.pi, n_top)
    angle_bottom = rng.uniform(0.0, np.pi, n - n_top)
    # The upper moon is the top half of the unit circle; the lower one is flipped and
    # shifted by (1, 0.5) so that each moon's tip reaches into the other's hollow.
    top = np.stack([np.cos(angle_top), np.sin(angle_top)], axis=1)
    bottom = np.stack([1.0 - np.cos(angle_bottom), 0.5 - np.sin(angle_bottom)], axis=1)
    x = np.concatenate([top, bottom]) + rng.normal(0.0, noise, (n, 2))
    y = np.concatenate(
        [np.zeros(n_top, dtype=np.int64), np.ones(n - n_top, dtype=np.int64)]
    )
    order = rng.permutation(n)
    return x[order], y[order]


def digits(
    test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits, split and scaled.

    Returns `x_train [n_train, 64]`, `y_train [n_train]`, `x_test [n_test, 64]`,
    `y_test [n_test]`. Pixels are divided by 16 (their maximum) so inputs lie in [0, 1];
    labels are int64 in 0..9.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float64) / 16.0
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def digit_images(
    size: int = 16, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The same digits as images for the generative lessons: `x_train [n_train, 1,
    size, size]` float32 in [0, 1], `y_train [n_train]`, and the test pair.

    The 8×8 originals are enlarged by linear interpolation (`scipy.ndimage.zoom`,
    order 1), so a 16×16 image is smooth rather than blocky, and clipped back to
    [0, 1]; the split is `digits`' split.
    """
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    from scipy.ndimage import zoom

    x_train, y_train, x_test, y_test = digits(test_fraction, seed)

    def enlarge(x: np.ndarray) -> np.ndarray:
        images = x.reshape(-1, 8, 8)
        images = zoom(
            images, (1, size / 8, size / 8), order=1, grid_mode=True, mode="nearest"
        )
        return np.clip(images, 0.0, 1.0).astype(np.float32)[:, None]

    return enlarge(x_train), y_train, enlarge(x_test), y_test


def python_docs(validation_fraction: float = 0.1) -> tuple[str, str]:
    """Python's own documentation as a text corpus for the language-model lessons:
    `(train, validation)` strings.

    The text is the `pydoc_data.topics` module that ships with CPython, the pages
    `help("assert")` or `help("FORMATTING")` print: about 80 topics of the language
    reference, some 465 kB of English prose with code. The topics are joined in sorted
    order, two blank lines apart; the topics after the first `1 - validation_fraction`
    of the characters are the validation text, so no topic is in both.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(
            f"validation_fraction must be in (0, 1), got {validation_fraction!r}"
        )
    from pydoc_data.topics import topics

    pages = [topics[name].strip() for name in sorted(topics)]
    total = sum(len(page) for page in pages)
    first_validation, seen = len(pages) - 1, 0
    for index, page in enumerate(pages):
        if seen >= total * (1 - validation_fraction):
            first_validation = index
            break
        seen += len(page)
    return (
        "\n\n\n".join(pages[:first_validation]),
        "\n\n\n".join(pages[first_validation:]),
    )


# The vision lessons draw their images. `shapes` renders scenes of one or two coloured
# shapes with a caption that describes them exactly, so a model can be trained to
# match images with text and tested on combinations it never saw; `moving_digits`
# slides a handwritten digit across a clip, so only the order of the frames tells the
# direction.

SHAPE_NAMES = ("circle", "square", "triangle")
COLOURS = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.62, 0.20, 0.82),
}
SIZE_NAMES = ("small", "large")
RELATIONS = ("above", "below", "left of", "right of")
DIRECTIONS = (
    "right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right"
)  # fmt: skip


class ShapesData(NamedTuple):
    """What `shapes` returns."""

    images: np.ndarray  # [count, 3, size, size] float32 in [0, 1]
    captions: list[str]
    attributes: np.ndarray  # [count, objects, 3] int64: size, colour, shape indices
    relations: np.ndarray  # [count] int64 index into RELATIONS, -1 for one object


def _shape_mask(
    shape: str, centre: tuple[float, float], radius: float, grid: np.ndarray
) -> np.ndarray:
    """Coverage in [0, 1] of each pixel of `grid [2, h, w]` (y, x at 4× resolution,
    averaged back) by a shape of half-width `radius` at `centre`."""
    y, x = grid[0] - centre[0], grid[1] - centre[1]
    if shape == "circle":
        inside = x**2 + y**2 <= radius**2
    elif shape == "square":
        inside = (np.abs(x) <= radius * 0.85) & (np.abs(y) <= radius * 0.85)
    else:  # an upward triangle: apex at the top, base at the bottom
        inside = (y <= radius * 0.8) & (2 * np.abs(x) <= (y + radius) * 1.15)
        inside &= y >= -radius
    h, w = inside.shape
    return inside.reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))


def shapes(count: int, size: int = 32, objects: int = 1, seed: int = 0) -> ShapesData:
    """`count` images of `objects` (1 or 2) coloured shapes on black, with captions.

    One object: "a small red circle" anywhere in the image. Two objects: "a small red
    circle above a large blue square"; the first object is placed in the half of the
    image the relation names and the second in the other half. Sizes, colours, shapes
    and relations are drawn uniformly; pixels are anti-aliased by rendering at four
    times the resolution and averaging.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an int >= 1, got {count!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16, got {size!r}")
    if objects not in (1, 2):
        raise ValueError(f"objects must be 1 or 2, got {objects!r}")
    rng = np.random.default_rng(seed)
    fine = (np.mgrid[0 : 4 * size, 0 : 4 * size] + 0.5) / 4  # [2, 4s, 4s] pixels
    colours = np.array(list(COLOURS.values()), dtype=np.float32)  # [5, 3]
    images = np.zeros((count, 3, size, size), dtype=np.float32)
    attributes = np.stack(
        [
            rng.integers(0, len(SIZE_NAMES), (count, objects)),
            rng.integers(0, len(COLOURS), (count, objects)),
            rng.integers(0, len(SHAPE_NAMES), (count, objects)),
        ],
        axis=-1,
    )  # [count, objects, 3]
    relations = (
        rng.integers(0, len(RELATIONS), count) if objects == 2 else np.full(count, -1)
    )
    captions = []
    for i in range(count):
        radii = [size * (0.14 if a[0] == 0 else 0.22) for a in attributes[i]]
        if objects == 1:
            lows, highs = [(radii[0], radii[0])], [(size - radii[0], size - radii[0])]
        else:
            # the first object in the named half, the second in the other half
            half = size / 2
            first = {
                0: ((0, 0), (half, size)),  # above: top half
                1: ((half, 0), (size, size)),  # below: bottom half
                2: ((0, 0), (size, half)),  # left of: left half
                3: ((0, half), (size, size)),  # right of: right half
            }[int(relations[i])]
            second = {
                0: ((half, 0), (size, size)),
                1: ((0, 0), (half, size)),
                2: ((0, half), (size, size)),
                3: ((0, 0), (size, half)),
            }[int(relations[i])]
            lows = [
                (first[0][0] + radii[0], first[0][1] + radii[0]),
                (second[0][0] + radii[1], second[0][1] + radii[1]),
            ]
            highs = [
                (first[1][0] - radii[0], first[1][1] - radii[0]),
                (second[1][0] - radii[1], second[1][1] - radii[1]),
            ]
        words = []
        for j, (size_index, colour, shape) in enumerate(attributes[i]):
            centre = tuple(rng.uniform(lows[j], np.maximum(highs[j], lows[j])))
            mask = _shape_mask(SHAPE_NAMES[shape], centre, radii[j], fine)
            images[i] = images[i] * (1 - mask) + colours[colour][:, None, None] * mask
            words.append(
                f"a {SIZE_NAMES[size_index]} {list(COLOURS)[colour]} "
                f"{SHAPE_NAMES[shape]}"
            )
        caption = words[0]
        if objects == 2:
            caption += f" {RELATIONS[int(relations[i])]} {words[1]}"
        captions.append(caption)
    return ShapesData(images, captions, attributes.astype(np.int64), relations)


def moving_digits(
    count: int, frames: int = 8, size: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips of one 12×12 handwritten digit moving 2 pixels a frame in a straight line.

    Returns `clips [count, frames, 1, size, size]` float32 in [0, 1], `directions
    [count]` (indices into `DIRECTIONS`; diagonals move 2 pixels along each axis) and
    `digits [count]` (the digit's class). The start is drawn so that the digit stays
    whole inside every frame; a single frame says nothing about the direction.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an int >= 1, got {count!r}")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise ValueError(f"frames must be an int >= 2, got {frames!r}")
    travel = 2 * (frames - 1)
    if isinstance(size, bool) or not isinstance(size, int) or size < 12 + travel:
        raise ValueError(
            f"size must be an int >= {12 + travel} for {frames} frames, got {size!r}"
        )
    rng = np.random.default_rng(seed)
    x_train, y_train, x_test, y_test = digit_images(size=12)
    pool = np.concatenate([x_train, x_test])[:, 0]  # [1797, 12, 12]
    labels = np.concatenate([y_train, y_test])
    steps = [(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)]
    clips = np.zeros((count, frames, 1, size, size), dtype=np.float32)
    directions = rng.integers(0, len(DIRECTIONS), count)
    chosen = rng.integers(0, len(pool), count)
    for i in range(count):
        dy, dx = steps[int(directions[i])]
        # the start range keeps the whole path inside the frame
        y0 = rng.integers(
            travel if dy < 0 else 0, size - 12 - (travel if dy > 0 else 0) + 1
        )
        x0 = rng.integers(
            travel if dx < 0 else 0, size - 12 - (travel if dx > 0 else 0) + 1
        )
        for t in range(frames):
            y, x = y0 + 2 * dy * t, x0 + 2 * dx * t
            clips[i, t, 0, y : y + 12, x : x + 12] = pool[chosen[i]]
    return clips, directions.astype(np.int64), labels[chosen]


def cache_folder() -> Path:
    """`$ANNOTATED_DL_CACHE`, else `$XDG_CACHE_HOME/annotated-dl`, else
    `~/.cache/annotated-dl`: the folder `cached_weights` writes to."""
    if os.environ.get("ANNOTATED_DL_CACHE"):
        return Path(os.environ["ANNOTATED_DL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "annotated-dl"


# A C or CUDA comment, or a string or character literal that may contain `//` or `/*`.
C_COMMENT_OR_LITERAL = re.compile(
    r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'", re.DOTALL
)


def code_sha256(source: str, suffix: str = ".py") -> str:
    """The SHA-256 of the code in a lesson's source, without its prose: what its results
    depend on. A lesson's prose is its comments and its docstrings (the module's holds
    the front matter and the introduction), so rewording a paragraph keeps the hash and
    changing a statement or a literal does not.

    Python (`suffix` ".py") is hashed token by token, without comments, blank lines or
    docstrings (a string that is a statement on its own, which Python only keeps as
    `__doc__`); C, C++ and CUDA (".cu", ".cpp", ".h") line by line, without comments,
    blank lines or indentation."""
    if suffix == ".py":
        tokens = [
            token
            for token in tokenize.generate_tokens(io.StringIO(source).readline)
            if token.type not in (tokenize.COMMENT, tokenize.NL)
        ]
        starts = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        docstrings = {
            i
            for i, token in enumerate(tokens)
            if token.type == tokenize.STRING
            and (i == 0 or tokens[i - 1].type in starts)
            and tokens[i + 1].type == tokenize.NEWLINE
        }
        code = "\n".join(
            f"{tokenize.tok_name[token.type]} {token.string}"
            for i, token in enumerate(tokens)
            if i not in docstrings and i - 1 not in docstrings  # nor its NEWLINE
        )
    elif suffix in (".cu", ".cpp", ".h"):
        code = C_COMMENT_OR_LITERAL.sub(
            lambda m: " " if m.group(0)[0] == "/" else m.group(0), source
        )
        code = "\n".join(line.strip() for line in code.splitlines() if line.strip())
    else:
        raise ValueError(f"suffix must be '.py', '.cu', '.cpp' or '.h', got {suffix!r}")
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def cached_weights(name: str, source: str | Path, train: Callable[[], dict]) -> dict:
    """The tensors `train()` returns, trained once and then read back.

    The file is `<cache_folder()>/<name>-<first 12 hex digits of code_sha256 of
    source>.safetensors`, where `source` is the lesson file that trains them (pass
    `__file__`): changing that lesson's code changes the name, so stale weights are
    never read, while editing its prose or front matter keeps them.
    `train` returns a `{name: torch.Tensor}` dict (a `state_dict()`); the file is
    written to a temporary name and renamed, so an interrupted run leaves nothing
    half-written behind.
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"name must be letters, digits, '-' or '_', got {name!r}")
    source = Path(source)
    if not source.is_file():
        raise ValueError(f"source must be the file that trains the weights: {source}")
    from safetensors.torch import load_file, save_file

    digest = code_sha256(source.read_text(encoding="utf-8"), source.suffix)[:12]
    path = cache_folder() / f"{name}-{digest}.safetensors"
    if path.is_file():
        return load_file(path)
    tensors = train()
    if not isinstance(tensors, dict) or not tensors:
        raise TypeError(
            f"train must return a non-empty dict of tensors, got {tensors!r}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(handle)
    try:
        # safetensors refuses tensors that share memory or are not contiguous.
        save_file(
            {k: v.detach().contiguous().clone() for k, v in tensors.items()}, temporary
        )
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return load_file(path)


def torch_device(name: str) -> str:
    """`name` ("cpu", "cuda", "cuda:1", "mps") if this machine has that device, else an
    `argparse.ArgumentTypeError` saying what is missing; argparse prints it as
    "argument --device: ..." and exits with status 2. Returns the name as torch writes
    it, so a lesson can keep comparing `args.device` with "cpu"."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(
            f"{name!r} is not a device: expected cpu, cuda, cuda:N or mps"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "was built without CUDA" if torch.version.cuda is None else "sees no GPU"
        raise argparse.ArgumentTypeError(
            f"{name!r} is not available: torch {torch.__version__} {why}; "
            "use --device cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"{name!r} is not available: this machine has "
            f"{torch.cuda.device_count()} CUDA device(s), cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(
            f"{name!r} is not available: MPS needs an Apple-silicon Mac; "
            "use --device cpu"
        )
    return str(device)


# A demo's numeric flags say their range in their `type=`: argparse calls it on the text
# the user typed, before anything runs, and turns the `ArgumentTypeError` it raises into
# one usage line ("argument --steps: expected a whole number >= 1, got '0'") and exit
# status 2. Without it `--steps -1` may run an empty loop and report nothing, or fail
# deep inside torch with an error that names neither the flag nor the value.


def integer(*, at_least: int, at_most: int | None = None) -> Callable[[str], int]:
    """An argparse `type=` for a whole number in [`at_least`, `at_most`]:
    `type=integer(at_least=1)` for a count, `integer(at_least=0)` for a seed."""
    if at_most is not None and at_most < at_least:
        raise ValueError(f"at_most ({at_most}) is below at_least ({at_least})")
    expected = f"a whole number >= {at_least}"
    if at_most is not None:
        expected = f"a whole number from {at_least} to {at_most}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if (
            value is None
            or value < at_least
            or (at_most is not None and value > at_most)
        ):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def number(
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
) -> Callable[[str], float]:
    """An argparse `type=` for a finite number within the bounds given:
    `type=number(above=0)` for a learning rate, `number(at_least=0, below=1)` for a
    dropout probability, `number()` for any finite number. `nan` and `inf` are always
    refused: `float` itself would take them."""
    if (above is not None and at_least is not None) or (
        below is not None and at_most is not None
    ):
        raise ValueError("give at most one lower bound (above, at_least) and one upper")
    says = [
        f"{sign} {bound:g}"
        for sign, bound in (
            (">", above),
            (">=", at_least),
            ("<", below),
            ("<=", at_most),
        )
        if bound is not None
    ]
    expected = "a finite number " + " and ".join(says) if says else "a finite number"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = (
            math.isfinite(value)
            and (above is None or value > above)
            and (at_least is None or value >= at_least)
            and (below is None or value < below)
            and (at_most is None or value <= at_most)
        )
        if not inside:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


# A flag that takes several values takes them comma-separated (`--lengths 64,128,256`),
# and its `type=` checks every one: `integers(at_least=1)` is `integer(at_least=1)` for
# each value, `numbers(...)` is `number(...)` for each, and `names_from(...)` allows
# only the names given. The usage line names the first bad value and the whole text.


def _each(parse: Callable, expected: str) -> Callable[[str], list]:
    """An argparse `type=` that applies `parse` to each comma-separated value."""

    def parse_all(text: str) -> list:
        values = []
        for part in text.split(","):
            try:
                values.append(parse(part.strip()))
            except argparse.ArgumentTypeError:
                where = "" if part == text else f" in {text!r}"
                raise argparse.ArgumentTypeError(
                    f"expected {expected}, got {part.strip()!r}{where}"
                ) from None
        return values

    return parse_all


def integers(*, at_least: int, at_most: int | None = None) -> Callable[[str], list]:
    """An argparse `type=` for comma-separated whole numbers, each in [`at_least`,
    `at_most`]: `type=integers(at_least=1)` for `--lengths 64,128,256`."""
    one = integer(at_least=at_least, at_most=at_most)
    bounds = f">= {at_least}" if at_most is None else f"from {at_least} to {at_most}"
    return _each(one, f"comma-separated whole numbers {bounds}")


def numbers(**bounds: float) -> Callable[[str], list]:
    """An argparse `type=` for comma-separated finite numbers, each within the bounds
    that `number` takes: `type=numbers(at_least=0)` for `--weight-decays 0,0.3,1`."""
    one = number(**bounds)
    says = " and ".join(
        f"{sign} {bounds[name]:g}"
        for name, sign in (
            ("above", ">"),
            ("at_least", ">="),
            ("below", "<"),
            ("at_most", "<="),
        )
        if name in bounds
    )
    return _each(one, f"comma-separated finite numbers {says}".strip())


def names_from(choices) -> Callable[[str], list]:
    """An argparse `type=` for comma-separated names, each one of `choices`:
    `type=names_from(ACTIVATIONS)` for `--activations relu,gelu`."""
    allowed = list(choices)

    def one(name: str) -> str:
        if name not in allowed:
            raise argparse.ArgumentTypeError(name)
        return name

    return _each(one, f"comma-separated names from {', '.join(allowed)}")


if __name__ == "__main__":
    x, y = two_moons()
    print(f"two_moons: x {x.shape}, y {y.shape}, classes {np.bincount(y)}")
    x_train, y_train, x_test, y_test = digits()
    print(f"digits: train {x_train.shape}, test {x_test.shape}")
    images, _, _, _ = digit_images()
    print(f"digit_images: train {images.shape}, range {images.min()}..{images.max()}")
