"""Verified against scikit-learn: `digits` returns sklearn's bundled digits, split
without loss or overlap; `two_moons` is checked by its geometry (two labelled half
circles of the requested size and noise); `cached_weights` by
what it writes and when it trains again; `torch_device` against what torch reports
about this machine's devices; `integer` and `number` against Python's own `int` and
`float` parsing, at and just past every bound, and their comma-separated forms
(`integers`, `numbers`, `names_from`) value by value."""

import argparse
import runpy

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from annotated import data
from annotated.data import (
    cached_weights,
    code_sha256,
    digit_images,
    digits,
    integer,
    integers,
    names_from,
    number,
    numbers,
    torch_device,
    two_moons,
)


def test_two_moons_shapes_labels_and_geometry():
    x, y = two_moons(200, noise=0.0, seed=1)
    assert (
        x.shape == (200, 2)
        and y.shape == (200,)
        and np.bincount(y).tolist() == [100, 100]
    )
    top, bottom = x[y == 0], x[y == 1]
    assert np.allclose(np.hypot(top[:, 0], top[:, 1]), 1.0) and (top[:, 1] >= 0).all()
    assert (
        np.allclose(np.hypot(bottom[:, 0] - 1, bottom[:, 1] - 0.5), 1.0)
        and (bottom[:, 1] <= 0.5).all()
    )
    again, _ = two_moons(200, noise=0.0, seed=1)
    assert np.array_equal(x, again)


def test_digits_is_sklearns_data_split_without_overlap():
    x_train, y_train, x_test, y_test = digits(test_fraction=0.25, seed=3)
    reference = load_digits()
    assert len(x_train) + len(x_test) == len(reference.data) and len(x_test) == round(
        0.25 * len(reference.data)
    )
    together = np.concatenate([x_train, x_test]) * 16
    order = np.lexsort(together.T)
    ref_order = np.lexsort(reference.data.T)
    assert np.array_equal(together[order], reference.data[ref_order])
    assert (
        x_train.min() >= 0
        and x_train.max() <= 1
        and set(np.unique(y_test)) <= set(range(10))
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: two_moons(1), "n must be an int >= 2"),
        (lambda: two_moons(10, noise=-1), "noise must be >= 0"),
        (lambda: digits(test_fraction=1.5), "test_fraction must lie in"),
    ],
)
def test_bad_arguments_name_themselves(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_cached_weights_trains_once_per_source_version(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("ANNOTATED_DL_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "lesson.py"
    source.write_text("version = 1\n")
    calls = []

    def train():
        calls.append(1)
        weight = torch.arange(6.0).reshape(2, 3)
        return {
            "weight": weight.t(),
            "bias": torch.zeros(3),
        }  # non-contiguous on purpose

    first = cached_weights("extractor", source, train)
    again = cached_weights("extractor", source, train)
    assert len(calls) == 1
    assert torch.equal(first["weight"], torch.arange(6.0).reshape(2, 3).t())
    assert torch.equal(again["weight"], first["weight"])
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".safetensors"]

    # Reworded prose keeps the weights; changed code trains again.
    source.write_text('"""The extractor."""\n\n# Its version.\nversion = 1  # one\n')
    cached_weights("extractor", source, train)
    assert len(calls) == 1
    source.write_text("version = 2\n")
    cached_weights("extractor", source, train)
    assert len(calls) == 2
    assert len(list((tmp_path / "cache").iterdir())) == 2


PYTHON = '''r"""
---
title: A lesson
---
Its introduction.
"""

# Prose for the function below.
def f(x):
    """Its docstring is prose, rendered beside the code."""
    return x + 1  # [n]
'''
CUDA = """/*
---
title: A kernel
---
*/
// Prose for the kernel below.
__global__ void k(float *x) {
    x[0] = 1.0f;  // one write
    printf("// stays, /* too */");  /* block */
}
"""


@pytest.mark.parametrize(
    "source, suffix, prose_edit, code_edits",
    [
        (
            PYTHON,
            ".py",
            lambda s: (
                s.replace("Its introduction.", "Reworded.\n\n# More prose.")
                .replace("title: A lesson", "title: Renamed")
                .replace("# [n]", "# [n, d]")
                .replace("\ndef", "\n\n\ndef")
                .replace("is prose", "is prose too")
            ),
            [
                lambda s: s.replace("x + 1", "x + 2"),
                lambda s: s.replace("x + 1", 'x + 1 if "a" else "b"'),
                lambda s: s.replace("    return", "    y = 0\n    return"),
            ],
        ),
        (
            CUDA,
            ".cu",
            lambda s: (
                s.replace("title: A kernel", "title: Renamed")
                .replace("one write", "a single write")
                .replace("/* block */", "/* a\n   block */")
                .replace("// Prose", "//\n// Prose")
            ),
            [
                lambda s: s.replace("1.0f", "2.0f"),
                lambda s: s.replace("stays, /* too */", "stays"),
                lambda s: s.replace("x[0]", "x[1]"),
            ],
        ),
    ],
)
def test_code_sha256_changes_with_the_code_and_not_with_the_prose(
    source, suffix, prose_edit, code_edits
):
    digest = code_sha256(source, suffix)
    edited = prose_edit(source)
    assert edited != source
    assert code_sha256(edited, suffix) == digest
    for edit in code_edits:
        assert edit(source) != source
        assert code_sha256(edit(source), suffix) != digest, edit(source)
    with pytest.raises(ValueError, match="suffix must be"):
        code_sha256(source, ".rs")


def test_cached_weights_writes_nothing_when_training_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOTATED_DL_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "lesson.py"
    source.write_text("x = 1\n")
    with pytest.raises(TypeError, match="train must return"):
        cached_weights("model", source, lambda: [])
    with pytest.raises(ValueError, match="name must be"):
        cached_weights("../escape", source, dict)
    with pytest.raises(ValueError, match="source must be"):
        cached_weights("model", tmp_path / "missing.py", dict)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_cached_weights_removes_an_interrupted_write(tmp_path, monkeypatch):
    """A save cut off half-way leaves no partial file in the cache."""
    import safetensors.torch

    def interrupted(tensors, filename):
        with open(filename, "wb") as file:
            file.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setenv("ANNOTATED_DL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    source = tmp_path / "lesson.py"
    source.write_text("x = 1\n")
    with pytest.raises(KeyboardInterrupt):
        cached_weights("model", source, lambda: {"w": torch.ones(2)})
    assert list((tmp_path / "cache").iterdir()) == []


def test_digit_images_enlarge_the_same_split():
    x_train, y_train, x_test, y_test = digits()
    images, labels, test_images, test_labels = digit_images(16)
    assert images.shape == (len(x_train), 1, 16, 16) and images.dtype == np.float32
    assert test_images.shape == (len(x_test), 1, 16, 16)
    assert np.array_equal(labels, y_train) and np.array_equal(test_labels, y_test)
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Averaging each 2×2 block gives back the 8×8 original, up to interpolation blur.
    pooled = images[:, 0].reshape(-1, 8, 2, 8, 2).mean(axis=(2, 4))
    assert np.abs(pooled - x_train.reshape(-1, 8, 8)).mean() < 0.08
    with pytest.raises(ValueError, match="size must be"):
        digit_images(4)


def test_python_docs_is_the_pydoc_topics_split_at_a_topic_boundary():
    from pydoc_data.topics import topics

    train, validation = data.python_docs()
    assert 400_000 < len(train) and 20_000 < len(validation) < 100_000
    # Every topic lands whole on one side, none on both.
    pages = [topics[name].strip() for name in sorted(topics)]
    assert sum(page in train for page in pages) + sum(
        page in validation for page in pages
    ) == len(pages)
    assert train.startswith(pages[0]) and validation.endswith(pages[-1])
    assert data.python_docs() == (train, validation)
    with pytest.raises(ValueError, match="validation_fraction"):
        data.python_docs(1.0)


def test_shapes_captions_describe_the_pixels():
    from annotated.data import COLOURS, RELATIONS, SHAPE_NAMES, SIZE_NAMES, shapes

    data = shapes(60, objects=2, seed=3)
    assert data.images.shape == (60, 3, 32, 32) and data.images.dtype == np.float32
    assert 0 <= data.images.min() and data.images.max() <= 1
    colours = np.array(list(COLOURS.values()))
    for image, caption, objects, relation in zip(*data):
        first, second = objects
        words = [
            f"a {SIZE_NAMES[s]} {list(COLOURS)[c]} {SHAPE_NAMES[k]}"
            for s, c, k in objects
        ]
        assert caption == f"{words[0]} {RELATIONS[relation]} {words[1]}"
        # each object's colour covers pixels on its side of the relation
        centres = []
        for _, colour, _ in objects:
            close = np.abs(image.transpose(1, 2, 0) - colours[colour]).sum(-1) < 0.05
            assert close.sum() >= 9, caption
            centres.append(np.argwhere(close).mean(axis=0))  # (y, x)
        if first[1] == second[1]:
            continue  # same colour: the pixels cannot be told apart
        (y1, x1), (y2, x2) = centres
        assert {
            "above": y1 < y2,
            "below": y1 > y2,
            "left of": x1 < x2,
            "right of": x1 > x2,
        }[RELATIONS[relation]], caption
    again = shapes(60, objects=2, seed=3)
    assert np.array_equal(again.images, data.images) and again.captions == data.captions
    single = shapes(10, objects=1, seed=0)
    assert (single.relations == -1).all() and single.attributes.shape == (10, 1, 3)


def test_moving_digits_move_the_way_the_label_says():
    from annotated.data import DIRECTIONS, moving_digits

    clips, directions, labels = moving_digits(40, frames=6, size=24, seed=2)
    assert clips.shape == (40, 6, 1, 24, 24) and labels.max() <= 9
    expected = {"right": (0, 2), "down": (2, 0), "up-left": (-2, -2), "left": (0, -2)}
    for clip, direction in zip(clips, directions):
        mass = clip[:, 0].sum(axis=(1, 2))
        assert np.allclose(mass, mass[0], rtol=1e-5)  # the digit stays whole
        ys, xs = np.mgrid[0:24, 0:24]
        centre = np.array(
            [[(f * ys).sum() / f.sum(), (f * xs).sum() / f.sum()] for f in clip[:, 0]]
        )
        step = np.diff(centre, axis=0)  # [frames - 1, 2]
        assert np.allclose(step, step[0], atol=1e-4)
        name = DIRECTIONS[direction]
        if name in expected:
            assert np.allclose(step[0], expected[name], atol=1e-4)


def test_vision_data_rejects_bad_arguments():
    from annotated.data import moving_digits, shapes

    with pytest.raises(ValueError, match="objects must be 1 or 2"):
        shapes(4, objects=3)
    with pytest.raises(ValueError, match="count must be an int >= 1"):
        shapes(0)
    with pytest.raises(ValueError, match="size must be an int >= 26 for 8 frames"):
        moving_digits(4, frames=8, size=20)
    with pytest.raises(ValueError, match="size must be an int >= 16"):
        shapes(4, size=15)
    with pytest.raises(ValueError, match="count must be an int >= 1"):
        moving_digits(0)
    with pytest.raises(ValueError, match="frames must be an int >= 2"):
        moving_digits(4, frames=1)


def test_running_the_module_prints_each_data_sets_shape(capsys):
    runpy.run_path(data.__file__, run_name="__main__")
    out = capsys.readouterr().out
    assert "two_moons: x (200, 2), y (200,), classes [100 100]" in out
    assert "digits: train (1438, 64), test (359, 64)" in out
    assert "digit_images: train (1438, 1, 16, 16), range 0.0..1.0" in out


def test_torch_device_accepts_what_this_machine_has(monkeypatch):
    assert torch_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert torch_device("cuda") == "cuda"
    assert torch_device("cuda:1") == "cuda:1"


@pytest.mark.parametrize(
    "name, gpus, message",
    [
        ("cdua", 0, "'cdua' is not a device: expected cpu, cuda, cuda:N or mps"),
        ("meta", 0, "'meta' is not a device"),
        ("cuda", 0, "'cuda' is not available: torch .* use --device cpu"),
        ("cuda:2", 2, r"'cuda:2' is not available: .* 2 CUDA device\(s\), cuda:0 to "),
        ("mps", 0, "'mps' is not available: MPS needs an Apple-silicon Mac"),
    ],
)
def test_torch_device_refuses_a_device_this_machine_lacks(
    name, gpus, message, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        torch_device(name)


def test_torch_device_is_a_usage_error_naming_the_flag(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    parser = argparse.ArgumentParser(prog="demo")
    parser.add_argument("--device", type=torch_device, default="cpu", help="where")
    with pytest.raises(SystemExit) as exit:
        parser.parse_args(["--device", "cuda"])
    assert exit.value.code == 2
    assert "demo: error: argument --device: 'cuda' is not available" in (
        capsys.readouterr().err
    )


def test_integer_takes_what_int_takes_within_its_bounds():
    count = integer(at_least=1)
    assert [count(text) for text in ("1", "007", " 12 ", "1_000")] == [1, 7, 12, 1000]
    assert integer(at_least=-3, at_most=3)("-3") == -3
    assert integer(at_least=2, at_most=12)("12") == 12


@pytest.mark.parametrize(
    "parse, text, message",
    [
        (integer(at_least=1), "0", "expected a whole number >= 1, got '0'"),
        (integer(at_least=0), "-1", "expected a whole number >= 0, got '-1'"),
        (integer(at_least=1), "2.5", "got '2.5'"),  # int("2.5") fails: not rounded
        (integer(at_least=1), "ten", "got 'ten'"),
        (
            integer(at_least=2, at_most=12),
            "13",
            "a whole number from 2 to 12, got '13'",
        ),
    ],
)
def test_integer_refuses_text_outside_its_bounds(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_number_takes_what_float_takes_within_its_bounds():
    assert number(above=0)("3e-4") == 3e-4
    assert number(at_least=0, below=1)("0") == 0.0
    assert number(at_least=0, at_most=1)("1") == 1.0
    assert number()("-1.5") == -1.5


@pytest.mark.parametrize(
    "parse, text, message",
    [
        (number(above=0), "0", "expected a finite number > 0, got '0'"),
        (number(at_least=0, below=1), "1", "a finite number >= 0 and < 1, got '1'"),
        (number(at_least=0, at_most=1), "1.01", "<= 1, got '1.01'"),
        (number(), "nan", "expected a finite number, got 'nan'"),
        (number(above=0), "inf", "got 'inf'"),  # inf > 0, but not a learning rate
        (number(), "1,5", "got '1,5'"),
    ],
)
def test_number_refuses_text_outside_its_bounds_and_what_is_not_finite(
    parse, text, message
):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_list_flags_take_each_comma_separated_value_as_the_single_type_would():
    assert integers(at_least=1)("64,128, 256") == [64, 128, 256]
    assert integers(at_least=0, at_most=3)("3") == [3]
    assert numbers(at_least=0)("0,0.3,1,3") == [0.0, 0.3, 1.0, 3.0]
    assert names_from(["relu", "gelu"])("gelu,relu,gelu") == ["gelu", "relu", "gelu"]


@pytest.mark.parametrize(
    "parse, text, message",
    [
        (integers(at_least=1), "64,0", "whole numbers >= 1, got '0' in '64,0'"),
        (integers(at_least=1), "x", "whole numbers >= 1, got 'x'$"),
        (integers(at_least=1), "4,,8", "got '' in '4,,8'"),  # a doubled comma
        (integers(at_least=1, at_most=4), "5", "from 1 to 4, got '5'"),
        (numbers(at_least=0), "1,-1", "finite numbers >= 0, got '-1' in '1,-1'"),
        (numbers(), "1,nan", "finite numbers, got 'nan'"),
        (names_from(["relu"]), "relu,swish", "names from relu, got 'swish'"),
    ],
)
def test_list_flags_name_the_first_bad_value(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_bounds_that_contradict_themselves_are_refused_when_the_flag_is_declared():
    with pytest.raises(ValueError, match="at_most"):
        integer(at_least=3, at_most=2)
    with pytest.raises(ValueError, match="one lower bound"):
        number(above=0, at_least=1)


def test_a_value_out_of_range_is_a_usage_error_naming_the_flag(capsys):
    parser = argparse.ArgumentParser(prog="demo")
    parser.add_argument("--steps", type=integer(at_least=1), default=3, help="steps")
    parser.add_argument("--lr", type=number(above=0), default=0.1, help="rate")
    assert parser.parse_args(["--steps", "5", "--lr", "1e-3"]).steps == 5
    for argv, line in (
        (["--steps", "-1"], "argument --steps: expected a whole number >= 1, got '-1'"),
        (["--lr", "-0.1"], "argument --lr: expected a finite number > 0, got '-0.1'"),
    ):
        with pytest.raises(SystemExit) as exit:
            parser.parse_args(argv)
        assert exit.value.code == 2
        assert f"demo: error: {line}" in capsys.readouterr().err
