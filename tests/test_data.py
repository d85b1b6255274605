"""Verified against scikit-learn: `digits` returns sklearn's bundled digits, split
without loss or overlap; `two_moons` is checked by its geometry (two labelled half
circles of the requested size and noise)."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from annotated.data import digits, two_moons


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
