"""Verified against scipy in float64: the Fréchet distance against an independent
`scipy.linalg.sqrtm` computation (to 1e-9 relative) and, for singular covariances,
against the exact SVD formula (to 1e-10), the Inception Score against
`scipy.stats.entropy` (to 1e-10 relative).

Also checked: the closed form for diagonal covariances, FID(A, A) = 0, symmetry,
translation by v adding ‖v‖², scaling by c multiplying by c², the limits of the IS (1
for uniform predictions, C for confident balanced ones), the standard implementation's
eps offset and imaginary-part patches, the judge's test accuracy (>= 95 %) and its
cached weights, and FID rising with noise and blur on real digits.
"""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st

import annotated.generative.metrics as metrics
from annotated.data import cache_folder, digit_images
from annotated.generative.metrics import (
    blur,
    add_noise,
    example,
    extract,
    extrapolate_fid,
    feature_extractor,
    fid,
    fid_against_sample_size,
    fid_from_features,
    frechet_distance,
    frechet_distance_sqrtm,
    inception_score,
    inception_score_from_probabilities,
    main,
)

torch.set_num_threads(1)
SHORT = 10  # epochs of the judge the tests train: 96.7 % on the test digits


def statistics(features):
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def reference_fid_sqrtm(a, b):
    """FID straight from the definition with scipy's general matrix square root."""
    (mu_a, sigma_a), (mu_b, sigma_b) = statistics(a), statistics(b)
    trace_sqrt = np.trace(scipy.linalg.sqrtm(sigma_a @ sigma_b)).real
    return (
        np.sum((mu_a - mu_b) ** 2)
        + np.trace(sigma_a)
        + np.trace(sigma_b)
        - 2 * trace_sqrt
    )


def reference_fid_svd(a, b):
    """Exact for any rank: Tr (Σ_a Σ_b)^½ is the sum of the singular values of the
    centred cross-Gram matrix A Bᵀ / sqrt((n_a - 1)(n_b - 1))."""
    centred_a, centred_b = a - a.mean(axis=0), b - b.mean(axis=0)
    trace_sqrt = scipy.linalg.svdvals(centred_a @ centred_b.T).sum() / np.sqrt(
        (len(a) - 1) * (len(b) - 1)
    )
    (mu_a, sigma_a), (mu_b, sigma_b) = statistics(a), statistics(b)
    return (
        np.sum((mu_a - mu_b) ** 2)
        + np.trace(sigma_a)
        + np.trace(sigma_b)
        - 2 * trace_sqrt
    )


def correlated(rng, n, d, shift=0.0):
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing + shift


# ## The Fréchet distance


@given(
    d=st.integers(1, 16),
    extra=st.integers(2, 100),
    seed=st.integers(0, 2**31 - 1),
)
def test_frechet_distance_matches_scipy_sqrtm(d, extra, seed):
    rng = np.random.default_rng(seed)
    a = correlated(rng, d + extra, d)
    b = correlated(rng, d + extra + 3, d, shift=rng.normal(size=d))
    want = reference_fid_sqrtm(a, b)
    got = fid_from_features(a, b)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert got == pytest.approx(reference_fid_svd(a, b), rel=1e-9, abs=1e-9)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
@pytest.mark.parametrize("n, d", [(3, 64), (20, 64), (63, 64), (65, 64), (10, 2)])
def test_singular_covariances_match_the_exact_svd_formula(n, d):
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=(n, d)), rng.normal(size=(n + 2, d)) + 0.5
    a[:, 1] = 0.25  # a constant feature: a dead ReLU unit
    b[:, 1] = 0.25
    want = reference_fid_svd(a, b)
    assert fid_from_features(a, b) == pytest.approx(want, rel=0, abs=1e-10)
    # The standard route agrees only to the noise of the null space under a root.
    (mu_a, sigma_a), (mu_b, sigma_b) = statistics(a), statistics(b)
    with np.errstate(all="ignore"):
        standard = frechet_distance_sqrtm(mu_a, sigma_a, mu_b, sigma_b)
    assert standard == pytest.approx(want, rel=0, abs=1e-4)


def test_diagonal_covariances_match_the_closed_form():
    rng = np.random.default_rng(0)
    variances_1, variances_2 = rng.uniform(0, 3, 50), rng.uniform(0, 3, 50)
    variances_2[:5] = 0.0  # zero variances: singular, still exact
    mu1, mu2 = rng.normal(size=50), rng.normal(size=50)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(
        (np.sqrt(variances_1) - np.sqrt(variances_2)) ** 2
    )
    got = frechet_distance(mu1, np.diag(variances_1), mu2, np.diag(variances_2))
    assert got == pytest.approx(want, rel=1e-12)


def test_one_dimensional_gaussians():
    # (μ1 − μ2)² + (σ1 − σ2)²: means 1 and 4, standard deviations 2 and 5 → 9 + 9.
    got = frechet_distance(np.array([1.0]), np.array([[4.0]]), [4.0], [[25.0]])
    assert got == pytest.approx(18.0, rel=1e-14)


@pytest.mark.parametrize("n, d", [(5, 64), (40, 64), (500, 64)])
def test_identical_sets_give_zero_even_when_singular(n, d):
    rng = np.random.default_rng(d + n)
    features = rng.normal(size=(n, d)) * rng.uniform(0, 10, d)
    features[:, :3] = 1.0  # constant features
    scale = np.trace(np.cov(features, rowvar=False))
    assert fid_from_features(features, features) <= 1e-12 * scale


@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 16))
def test_symmetric_in_its_two_arguments(seed, d):
    rng = np.random.default_rng(seed)
    a, b = correlated(rng, 3 * d + 2, d), correlated(rng, 2 * d + 5, d, shift=1.0)
    assert fid_from_features(a, b) == pytest.approx(
        fid_from_features(b, a), rel=1e-10, abs=1e-12
    )


def test_translation_by_v_adds_the_squared_norm_of_v():
    rng = np.random.default_rng(1)
    a, b = correlated(rng, 300, 16), correlated(rng, 200, 16, shift=0.3)
    v = rng.normal(size=16)
    assert fid_from_features(a, a + v) == pytest.approx(v @ v, rel=1e-10)
    # For two different sets: exactly ‖v‖² more when v ⟂ (μ_a − μ_b).
    gap = a.mean(axis=0) - b.mean(axis=0)
    v_orthogonal = v - (v @ gap) / (gap @ gap) * gap
    base = fid_from_features(a, b)
    assert fid_from_features(a, b + v_orthogonal) == pytest.approx(
        base + v_orthogonal @ v_orthogonal, rel=1e-10
    )


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_scaling_features_by_c_scales_fid_by_c_squared(scale):
    rng = np.random.default_rng(2)
    a, b = correlated(rng, 100, 32), correlated(rng, 80, 32, shift=0.2)
    assert fid_from_features(scale * a, scale * b) == pytest.approx(
        scale**2 * fid_from_features(a, b), rel=1e-9
    )


def test_tiny_negative_eigenvalues_are_treated_as_zero():
    rng = np.random.default_rng(3)
    vectors, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    values = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1, 0.0, 0.0])
    tiny = values.copy()
    tiny[-2:] = [-1e-17, -3e-17]  # what rounding leaves of a zero eigenvalue
    sigma = (vectors * values) @ vectors.T
    noisy = (vectors * tiny) @ vectors.T
    noisy = (noisy + noisy.T) / 2
    assert np.linalg.eigvalsh(noisy)[0] < 0
    other = np.diag(rng.uniform(0.5, 2.0, 8))
    mu = np.zeros(8)
    got = frechet_distance(mu, noisy, mu, other)
    assert np.isfinite(got)
    assert got == pytest.approx(frechet_distance(mu, sigma, mu, other), rel=1e-12)
    assert frechet_distance(mu, noisy, mu, noisy) <= 1e-12


# ## The standard implementation's patches


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_standard_implementation_drops_small_imaginary_parts():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64))
    (mu_a, sigma_a), (mu_b, sigma_b) = statistics(a), statistics(b)
    with np.errstate(all="ignore"):
        root = scipy.linalg.sqrtm(sigma_a @ sigma_b)
        got = frechet_distance_sqrtm(mu_a, sigma_a, mu_b, sigma_b)
    assert np.iscomplexobj(root) and np.abs(root.imag).max() > 0  # the branch ran
    assert isinstance(got, float)
    assert got == pytest.approx(reference_fid_svd(a, b), rel=1e-6)


def test_standard_implementation_raises_on_large_imaginary_parts():
    not_a_covariance = np.diag([-1.0, 1.0])
    with pytest.raises(ValueError, match="Imaginary component"):
        frechet_distance_sqrtm(np.zeros(2), not_a_covariance, np.zeros(2), np.eye(2))


def test_standard_implementation_offsets_by_eps_when_the_root_is_not_finite(
    monkeypatch,
):
    calls = []

    def sqrtm(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else np.eye(3)

    monkeypatch.setattr(metrics.scipy.linalg, "sqrtm", sqrtm)
    sigma1, sigma2 = np.diag([1.0, 2.0, 0.0]), np.diag([3.0, 0.0, 1.0])
    got = frechet_distance_sqrtm(np.zeros(3), sigma1, np.zeros(3), sigma2, eps=1e-3)
    offset = 1e-3 * np.eye(3)
    np.testing.assert_allclose(calls[1], (sigma1 + offset) @ (sigma2 + offset))
    assert got == pytest.approx(3.0 + 4.0 - 2 * 3.0)


# ## The Inception Score


def reference_inception_score(probabilities, splits):
    scores = []
    # The folds of the original code: rows i·n//k to (i+1)·n//k.
    bounds = [index * len(probabilities) // splits for index in range(1, splits)]
    for fold in np.split(probabilities, bounds):
        marginal = fold.mean(axis=0)
        kl = [scipy.stats.entropy(row, marginal) for row in fold]
        scores.append(np.exp(np.mean(kl)))
    return np.mean(scores), np.std(scores)


@pytest.mark.parametrize("classes", [2, 10, 1000])
def test_uniform_predictions_score_one(classes):
    probabilities = np.full((50, classes), 1.0 / classes)
    mean, std = inception_score_from_probabilities(probabilities, splits=5)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("classes, splits", [(10, 1), (10, 4), (3, 2)])
def test_confident_balanced_predictions_score_the_number_of_classes(classes, splits):
    per_fold = np.eye(classes)
    probabilities = np.concatenate([per_fold] * (splits * 5))  # balanced in each fold
    mean, std = inception_score_from_probabilities(probabilities, splits=splits)
    assert mean == pytest.approx(classes, rel=1e-12)
    assert std == pytest.approx(0, abs=1e-9)


@given(
    n=st.integers(4, 60),
    classes=st.integers(2, 12),
    splits=st.integers(1, 4),
    concentration=st.floats(0.05, 5.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_inception_score_matches_scipy_entropy(n, classes, splits, concentration, seed):
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.full(classes, concentration), size=n)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    got = inception_score_from_probabilities(probabilities, splits)
    want = reference_inception_score(probabilities, splits)
    assert got == pytest.approx(want, rel=1e-10, abs=1e-12)
    assert 1 - 1e-12 <= got[0] <= classes + 1e-9


# ## Bad input


def test_features_may_be_tensors_with_gradients():
    """A tensor that requires grad is detached, not refused; the FID is the same."""
    rng = np.random.default_rng(0)
    a, b = correlated(rng, 20, 3), correlated(rng, 30, 3, shift=1.0)
    tensor_a = torch.tensor(a, requires_grad=True)
    assert fid_from_features(tensor_a, torch.tensor(b)) == fid_from_features(a, b)


def test_bad_inputs_raise_naming_the_argument():
    eye = np.eye(3)
    with pytest.raises(ValueError, match="sigma1 a \\[d, d\\] matrix"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), eye)
    with pytest.raises(ValueError, match="3 and 2 dimensions"):
        frechet_distance(np.zeros(3), eye, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="sigma2 must be symmetric"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), [[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="sigma1 must be positive semi-definite"):
        frechet_distance(np.zeros(2), np.diag([1.0, -0.1]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="must be finite"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(
        ValueError, match="features_a has 3 features per row but features_b has 4"
    ):
        fid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="features_a must be a matrix"):
        fid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="features_b must be finite"):
        fid_from_features(np.zeros((5, 3)), np.full((5, 3), np.inf))
    with pytest.raises(ValueError, match="rows that sum to 1"):
        inception_score_from_probabilities(np.full((4, 3), 0.5))
    with pytest.raises(ValueError, match="splits must be an int between 1 and the 4"):
        inception_score_from_probabilities(np.full((4, 2), 0.5), splits=5)
    images = torch.rand(4, 1, 16, 16)
    with pytest.raises(ValueError, match="images_b must lie in \\[0, 1\\]"):
        fid(images, images * 2 - 1)
    with pytest.raises(ValueError, match="images_a must be \\[n, 1, 16, 16\\]"):
        fid(torch.rand(4, 16, 16), images)
    with pytest.raises(TypeError, match="images must be a float tensor"):
        inception_score(torch.ones(4, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 2 images"):
        inception_score(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        feature_extractor(epochs=0)


# ## The judge and the API, on the digits


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """A judge trained for 10 of the default 30 epochs, into a temporary cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANNOTATED_DL_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield feature_extractor(epochs=SHORT)


@pytest.fixture(scope="module")
def digits():
    return tuple(torch.from_numpy(a) for a in digit_images(size=16))


def test_judge_is_cached_as_safetensors_and_reloads_identically(judge, digits):
    files = [path.name for path in cache_folder().glob("*.safetensors")]
    # Cached under its own name: a short training never replaces the real judge.
    assert len(files) == 1 and files[0].startswith(f"digits-features-{SHORT}-epochs-")
    again = feature_extractor(epochs=SHORT)
    x = digits[2][:50]
    with torch.no_grad():
        torch.testing.assert_close(again.features(x), judge.features(x), rtol=0, atol=0)


def test_api_on_images_matches_the_feature_route(judge, digits):
    x_train, _, x_test, _ = digits
    features_a, _ = extract(x_train[:300], judge)
    features_b, probabilities = extract(x_test[:200], judge)
    assert features_a.shape == (300, 64) and probabilities.shape == (200, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    assert fid(x_train[:300], x_test[:200], judge) == pytest.approx(
        fid_from_features(features_a, features_b), rel=1e-12
    )
    same = fid(x_test[:200], x_test[:200].numpy(), model=judge)
    assert same == pytest.approx(0.0, abs=1e-9)
    assert inception_score(x_test[:200], splits=2, model=judge) == pytest.approx(
        inception_score_from_probabilities(probabilities, 2), rel=1e-12
    )


def test_fid_rises_with_noise_and_blur(judge, digits):
    x_train, _, x_test, _ = digits
    reference, _ = extract(x_train, judge)
    for corrupt, levels in ((add_noise, [0.0, 0.2, 0.4]), (blur, [0.0, 1.0, 2.0])):
        values = [
            fid_from_features(reference, extract(corrupt(x_test, s), judge)[0])
            for s in levels
        ]
        assert values[0] < values[1] < values[2], (corrupt.__name__, values)


def test_fid_between_real_samples_falls_like_one_over_n(judge, digits):
    features = np.concatenate(
        [extract(digits[0], judge)[0], extract(digits[2], judge)[0]]
    )
    sizes = [25, 100, 400]
    values = fid_against_sample_size(features, sizes, repeats=4)
    means = values.mean(axis=1)
    assert (values > 0).all()
    assert means[0] > means[1] > means[2]
    # 16 times more samples: the bias shrinks by roughly 16 (within a factor of 2).
    assert 8 < means[0] / means[2] < 32
    with pytest.raises(ValueError, match="sizes up to 1000 need 2000"):
        fid_against_sample_size(features, [1000], repeats=1)


def test_fid_against_sample_size_compares_two_disjoint_samples_of_n(monkeypatch):
    pairs = []

    def record(a, b):
        pairs.append((a[:, 0].tolist(), b[:, 0].tolist()))
        return 0.0

    monkeypatch.setattr(metrics, "fid_from_features", record)
    features = np.arange(40.0)[:, None].repeat(3, axis=1)  # row i holds i
    values = fid_against_sample_size(features, [5, 20], repeats=3)
    assert values.shape == (2, 3) and len(pairs) == 6
    for (a, b), n in zip(pairs, [5, 5, 5, 20, 20, 20]):
        assert len(a) == len(b) == n and not set(a) & set(b)


def test_extrapolation_recovers_an_exact_line():
    sizes = [50, 100, 200, 400]
    values = np.array([[2.5 + 300 / n, 2.5 + 300 / n] for n in sizes])
    intercept, slope = extrapolate_fid(sizes, values)
    assert intercept == pytest.approx(2.5, rel=1e-10)
    assert slope == pytest.approx(300, rel=1e-10)


def test_demo_reaches_its_numbers(judge, tmp_path):
    flags = ["--epochs", str(SHORT), "--repeats", "2", "--sizes", "50", "400"]
    result = main([*flags, "--out", str(tmp_path)])
    assert result["accuracy"] >= 0.95
    assert result["inception_score"] > 6.5
    assert result["fid_smallest_n"] > 4 * result["fid_largest_n"] > 0
    assert result["corruption_monotone"] == 1.0
    assert (tmp_path / "bias.png").exists() and (tmp_path / "corruptions.png").exists()


def test_example_runs():
    fn, args = example()
    value = fn(*args)
    assert value == pytest.approx(reference_fid_sqrtm(*args), rel=1e-9)
    nodes, edges = metrics.dataflow(value)
    names = {node for node, _ in nodes}
    assert all(src in names and dst in names for src, dst, _ in edges)


# ## Benchmarks: our eigen route against pytorch-fid's sqrtm route


def gaussians(d):
    if d == 64:
        _, (a, b) = example()
    else:
        rng = np.random.default_rng(0)
        a, b = correlated(rng, 2 * d, d), correlated(rng, 2 * d, d, shift=0.1)
    return (*statistics(a), *statistics(b))


@pytest.mark.benchmark(group="Fréchet distance, d = 64")
def test_bench_frechet_eigh_64(benchmark):
    benchmark.extra_info["label"] = "ours: eigh of Σ₁^½ Σ₂ Σ₁^½"
    benchmark(frechet_distance, *gaussians(64))


@pytest.mark.benchmark(group="Fréchet distance, d = 64")
def test_bench_frechet_sqrtm_64(benchmark):
    benchmark.extra_info["label"] = "scipy.linalg.sqrtm (pytorch-fid)"
    benchmark.extra_info["baseline"] = True
    benchmark(frechet_distance_sqrtm, *gaussians(64))


@pytest.mark.benchmark(group="Fréchet distance, d = 128")
def test_bench_frechet_eigh_128(benchmark):
    benchmark.extra_info["label"] = "ours: eigh of Σ₁^½ Σ₂ Σ₁^½"
    benchmark(frechet_distance, *gaussians(128))


@pytest.mark.benchmark(group="Fréchet distance, d = 128")
def test_bench_frechet_sqrtm_128(benchmark):
    benchmark.extra_info["label"] = "scipy.linalg.sqrtm (pytorch-fid)"
    benchmark.extra_info["baseline"] = True
    benchmark(frechet_distance_sqrtm, *gaussians(128))
