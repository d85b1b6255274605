r"""The shared data module: every data set a lesson trains on, made in code or loaded
from an installed package.

Nothing here downloads. `two_moons` draws points from a formula; `digits` reads the 8×8
handwritten digits that ship inside scikit-learn. Each returns plain NumPy arrays so
that a lesson decides for itself whether to wrap them in `Value`s, its own tensors or
`torch.Tensor`s.
"""

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


if __name__ == "__main__":
    x, y = two_moons()
    print(f"two_moons: x {x.shape}, y {y.shape}, classes {np.bincount(y)}")
    x_train, y_train, x_test, y_test = digits()
    print(f"digits: train {x_train.shape}, test {x_test.shape}")
