"""Verified against scipy.optimize.minimize for the logistic-regression optimum (to
1e-7, with gradient norm below 1e-8, float64) and, where the theory is the reference,
against the convergence bounds themselves: every iterate under its bound to a relative
1e-9, wherever the bound is still at least 1e-10.

Also checked: every eigenvalue of the generated quadratics, a Newton loss that falls at
every step (and reaches the optimum where rounding hides the last decrease), the data
generator's logistic model, and that no method changes its inputs.
"""

import math

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings, strategies as st

from annotated.foundations import convex
from annotated.foundations.convex import (
    gradient_descent,
    heavy_ball,
    iterations_to,
    logistic_data,
    logistic_gradient,
    logistic_hessian,
    logistic_loss,
    measured_contraction,
    nesterov,
    nesterov_parameters,
    newton_logistic,
    polyak_parameters,
    random_spd,
    sgd_logistic,
    spd_spectrum,
)

# Iterates are checked while the bound is above this fraction of the start: below it
# float64 round-off, amplified by the double roots of the accelerated recurrences, is
# larger than the bound's own margin.
CHECK_DOWN_TO = 1e-10
SLACK = 1 + 1e-9


def reference_loss(w, features, labels, lam):
    """The regularised logistic loss, written independently (for moderate margins)."""
    margins = labels * (features @ w)
    return np.mean(np.log1p(np.exp(-margins))) + 0.5 * lam * w @ w


def reference_gradient(w, features, labels, lam):
    margins = labels * (features @ w)
    return -(features.T @ (labels / (1 + np.exp(margins)))) / len(labels) + lam * w


def problem(kappa, dim=30, seed=0):
    A = random_spd(dim, kappa, seed)
    mu, L = spd_spectrum(A)
    x0 = np.random.default_rng(seed + 7).normal(size=dim)
    return A, mu, L, x0


def steps_until(rate_bound, floor=CHECK_DOWN_TO, limit=200_000):
    """Smallest k with rate_bound(k) below floor: a run long enough to check it."""
    k = 1
    while rate_bound(k) > floor and k < limit:
        k = math.ceil(k * 1.1) + 1
    return k


def assert_below(measured, bound):
    """Every value under SLACK times the bound, wherever that is >= CHECK_DOWN_TO."""
    checked = bound >= CHECK_DOWN_TO
    assert checked.sum() > 5
    worst = np.max(measured[checked] / bound[checked])
    assert worst <= SLACK, f"an iterate exceeds its bound by a factor {worst:.6f}"


# ---- the problem and the plain iteration ----


@settings(max_examples=20)
@given(dim=st.integers(2, 12), kappa=st.floats(1.0, 1e4), seed=st.integers(0, 2**16))
def test_random_spd_has_the_requested_spectrum_numpy_eigvalsh(dim, kappa, seed):
    A = random_spd(dim, kappa, seed)
    mu, L = spd_spectrum(A)
    eigenvalues = np.linalg.eigvalsh(A)
    assert mu == pytest.approx(eigenvalues[0], rel=1e-12) and L == pytest.approx(
        eigenvalues[-1], rel=1e-12
    )
    assert mu == pytest.approx(1.0, rel=1e-8) and L == pytest.approx(kappa, rel=1e-8)
    # Every eigenvalue, not only the ends: geometrically spaced, kappa^(i / (d - 1)).
    np.testing.assert_allclose(
        eigenvalues, kappa ** (np.arange(dim) / (dim - 1)), rtol=1e-9
    )


def test_gradient_descent_matches_matrix_power_closed_form():
    A, mu, L, x0 = problem(50.0, dim=8)
    step = 1.5 / L
    history = gradient_descent(A, x0, step, 40)
    for k in (0, 1, 7, 40):
        expected = np.linalg.matrix_power(np.eye(8) - step * A, k) @ x0
        np.testing.assert_allclose(history[k], expected, rtol=1e-11, atol=1e-14)


def test_momentum_methods_with_zero_momentum_are_gradient_descent():
    A, mu, L, x0 = problem(20.0, dim=6)
    plain = gradient_descent(A, x0, 1 / L, 30)
    np.testing.assert_allclose(
        heavy_ball(A, x0, 1 / L, 0.0, 30), plain, rtol=1e-13, atol=1e-15
    )
    np.testing.assert_allclose(
        nesterov(A, x0, 1 / L, 0.0, 30), plain, rtol=1e-13, atol=1e-15
    )


# ---- every iterate under its bound ----


@pytest.mark.parametrize("kappa", [10.0, 100.0, 1000.0])
def test_gradient_descent_every_iterate_below_bound_and_bound_is_tight(kappa):
    A, mu, L, x0 = problem(kappa)
    steps = steps_until(lambda k: (1 - 1 / kappa) ** k)
    history = gradient_descent(A, x0, 1 / L, steps)
    k = np.arange(steps + 1)
    distances = np.linalg.norm(history, axis=1)
    suboptimality = convex.quadratic_values(A, history)
    # ||x_k - x*|| <= (1 - 1/kappa)^k ||x_0 - x*||  and
    # f(x_k) - f* <= (1 - 1/kappa)^k (f(x_0) - f*).
    assert_below(distances, (1 - 1 / kappa) ** k * distances[0])
    assert_below(suboptimality, (1 - 1 / kappa) ** k * suboptimality[0])
    # Tight: the slowest eigen-coordinate contracts by exactly 1 - 1/kappa, so the
    # measured rate is close.
    contraction = measured_contraction(distances, 1e-8)
    assert 1 - 1.1 / kappa <= contraction <= 1 - 1 / kappa + 1e-12


@pytest.mark.parametrize("kappa", [10.0, 100.0, 1000.0])
def test_gradient_descent_best_step_rate(kappa):
    A, mu, L, x0 = problem(kappa)
    rate = (kappa - 1) / (kappa + 1)
    steps = steps_until(lambda k: rate**k)
    distances = np.linalg.norm(gradient_descent(A, x0, 2 / (mu + L), steps), axis=1)
    assert_below(distances, rate ** np.arange(steps + 1) * distances[0])
    assert measured_contraction(distances, 1e-8) >= rate - 0.1 / kappa


@pytest.mark.parametrize("kappa", [10.0, 100.0, 1000.0])
def test_heavy_ball_every_iterate_below_bound(kappa):
    A, mu, L, x0 = problem(kappa)
    rho = (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)

    # ||x_k - x*|| <= (1 + (1 + rho) k) rho^k ||x_0 - x*||,
    # rho = (sqrt(kappa) - 1) / (sqrt(kappa) + 1).
    def bound(k):
        return (1 + (1 + rho) * k) * rho**k

    steps = steps_until(bound)
    step, momentum = polyak_parameters(mu, L)
    assert momentum == pytest.approx(rho**2, rel=1e-12)
    distances = np.linalg.norm(heavy_ball(A, x0, step, momentum, steps), axis=1)
    assert_below(distances, bound(np.arange(steps + 1)) * distances[0])


@pytest.mark.parametrize("kappa", [10.0, 100.0, 1000.0])
def test_nesterov_every_iterate_below_bound(kappa):
    A, mu, L, x0 = problem(kappa)
    # f(x_k) - f* <= (1 - 1/sqrt(kappa))^k (f(x_0) - f* + mu/2 ||x_0 - x*||^2).
    steps = steps_until(lambda k: (1 - 1 / math.sqrt(kappa)) ** k)
    history = nesterov(A, x0, *nesterov_parameters(mu, L), steps)
    suboptimality = convex.quadratic_values(A, history)
    start = suboptimality[0] + 0.5 * mu * x0 @ x0
    assert_below(
        suboptimality, (1 - 1 / math.sqrt(kappa)) ** np.arange(steps + 1) * start
    )


def test_nesterov_three_sequence_form_and_its_potential_contract_by_one_minus_tau():
    # The proof sketch in the lesson: with tau = 1/sqrt(kappa), y = (x + tau z)/(1 +
    # tau), x+ = y - grad/L, z+ = (1 - tau) z + tau y - (tau/mu) grad reproduces the
    # momentum form, and Phi = f(x) - f* + mu/2 ||z - x*||^2 shrinks by at least 1 - tau
    # per step.
    A, mu, L, x0 = problem(300.0, dim=10, seed=1)
    tau = math.sqrt(mu / L)
    momentum_form = nesterov(A, x0, *nesterov_parameters(mu, L), 150)
    x, z = x0.copy(), x0.copy()
    potential = 0.5 * x @ A @ x + 0.5 * mu * z @ z
    for k in range(150):
        y = (x + tau * z) / (1 + tau)
        gradient = A @ y
        x, z = y - gradient / L, (1 - tau) * z + tau * y - (tau / mu) * gradient
        np.testing.assert_allclose(
            x, momentum_form[k + 1], rtol=1e-9, atol=1e-12 * np.abs(x0).max()
        )
        next_potential = 0.5 * x @ A @ x + 0.5 * mu * z @ z
        assert next_potential <= (1 - tau) * potential * SLACK
        potential = next_potential


@settings(max_examples=15)
@given(kappa=st.floats(1.5, 300.0), dim=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_all_bounds_hold_on_random_quadratics(kappa, dim, seed):
    A, mu, L, x0 = problem(kappa, dim, seed)
    kappa = L / mu  # the exact condition number of the matrix as built
    norm0 = np.linalg.norm(x0)

    def k(steps):
        return np.arange(steps + 1)

    steps = steps_until(lambda j: (1 - 1 / kappa) ** j)
    distances = np.linalg.norm(gradient_descent(A, x0, 1 / L, steps), axis=1)
    assert_below(distances, (1 - 1 / kappa) ** k(steps) * norm0)

    rho = (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)
    steps = steps_until(lambda j: (1 + (1 + rho) * j) * rho**j)
    distances = np.linalg.norm(
        heavy_ball(A, x0, *polyak_parameters(mu, L), steps), axis=1
    )
    assert_below(distances, (1 + (1 + rho) * k(steps)) * rho ** k(steps) * norm0)

    steps = steps_until(lambda j: (1 - 1 / math.sqrt(kappa)) ** j)
    suboptimality = convex.quadratic_values(
        A, nesterov(A, x0, *nesterov_parameters(mu, L), steps)
    )
    start = suboptimality[0] + 0.5 * mu * norm0**2
    assert_below(suboptimality, (1 - 1 / math.sqrt(kappa)) ** k(steps) * start)


def test_iterations_to_counts_steps_to_a_fraction_of_the_first_distance():
    # tol is relative to distances[0]: the same run at any scale reaches 1e-3 of its
    # start at step 3, by hand.
    for scale in (1e2, 1.0, 1e-2):
        distances = scale * np.array([1.0, 0.1, 0.01, 1e-3, 1e-4])
        assert iterations_to(distances, 1e-3) == 3


def test_acceleration_needs_order_sqrt_kappa_iterations_instead_of_kappa():
    kappas = np.array([10.0, 100.0, 1000.0])
    iterations = {"gd": [], "heavy_ball": [], "nesterov": []}
    for kappa in kappas:
        A, mu, L, x0 = problem(kappa)
        steps = math.ceil(math.log(1e-6) / math.log(1 - 1 / kappa))
        runs = {
            "gd": gradient_descent(A, x0, 1 / L, steps),
            "heavy_ball": heavy_ball(A, x0, *polyak_parameters(mu, L), steps),
            "nesterov": nesterov(A, x0, *nesterov_parameters(mu, L), steps),
        }
        for name, history in runs.items():
            iterations[name].append(
                iterations_to(np.linalg.norm(history, axis=1), 1e-6)
            )
    # Slope of log(iterations to 1e-6) against log(kappa): 1 for gradient descent, 1/2
    # with acceleration.
    slopes = {
        name: np.polyfit(np.log(kappas), np.log(counts), 1)[0]
        for name, counts in iterations.items()
    }
    assert 0.9 <= slopes["gd"] <= 1.1, slopes
    assert 0.4 <= slopes["heavy_ball"] <= 0.6, slopes
    assert 0.4 <= slopes["nesterov"] <= 0.6, slopes
    assert iterations["nesterov"][-1] * 10 < iterations["gd"][-1]


# ---- logistic regression: derivatives, Newton against scipy ----


@pytest.fixture(scope="module")
def logistic():
    features, labels = logistic_data(1000, 5, seed=3)
    return features, labels, 0.1


def test_logistic_loss_gradient_hessian_match_independent_formula_and_differences(
    logistic,
):
    features, labels, lam = logistic
    rng = np.random.default_rng(0)
    for _ in range(3):
        w = rng.normal(size=5)
        assert logistic_loss(w, features, labels, lam) == pytest.approx(
            reference_loss(w, features, labels, lam), rel=1e-12
        )
        np.testing.assert_allclose(
            logistic_gradient(w, features, labels, lam),
            reference_gradient(w, features, labels, lam),
            rtol=1e-10,
            atol=1e-13,
        )
        numeric = scipy.optimize.approx_fprime(
            w, logistic_loss, 1e-7, features, labels, lam
        )
        np.testing.assert_allclose(
            logistic_gradient(w, features, labels, lam), numeric, atol=2e-6
        )
        # Central differences of the gradient, column by column.
        eps = 1e-5
        numeric_hessian = np.stack(
            [
                (
                    logistic_gradient(w + eps * e, features, labels, lam)
                    - logistic_gradient(w - eps * e, features, labels, lam)
                )
                / (2 * eps)
                for e in np.eye(5)
            ]
        )
        np.testing.assert_allclose(
            logistic_hessian(w, features, labels, lam), numeric_hessian, atol=1e-8
        )


def test_newton_optimum_matches_scipy_minimize(logistic):
    features, labels, lam = logistic
    ours = newton_logistic(features, labels, lam)[-1]
    reference = scipy.optimize.minimize(
        reference_loss,
        np.zeros(5),
        args=(features, labels, lam),
        jac=reference_gradient,
        method="BFGS",
        options={"gtol": 1e-9},
    )
    assert np.linalg.norm(reference_gradient(reference.x, features, labels, lam)) < 1e-8
    assert np.linalg.norm(reference_gradient(ours, features, labels, lam)) < 1e-8
    np.testing.assert_allclose(ours, reference.x, atol=1e-7)


def scipy_optimum(features, labels, lam):
    reference = scipy.optimize.minimize(
        reference_loss,
        np.zeros(features.shape[1]),
        args=(features, labels, lam),
        jac=reference_gradient,
        hess=lambda w, *args: logistic_hessian(w, *args),
        method="trust-exact",
        options={"gtol": 1e-11},
    )
    return reference.x


def test_newton_reaches_the_optimum_where_rounding_hides_the_last_decrease():
    # Features of size ~10: near the optimum a full Newton step lowers F by ~1e-19,
    # far below F's rounding (~1e-16), and a strict "F must fall" line search stalls
    # with the gradient near 4e-10.
    features, labels = logistic_data(200, 5, seed=0)
    features = 10 * features
    history = newton_logistic(features, labels, 0.1)
    ours = history[-1]
    assert np.linalg.norm(logistic_gradient(ours, features, labels, 0.1)) <= 1e-12
    # scipy stops with a gradient near 1e-9; with mu >= 0.1 its w is within 1e-8 of w*.
    reference = scipy_optimum(features, labels, 0.1)
    assert np.linalg.norm(reference_gradient(reference, features, labels, 0.1)) < 1e-8
    np.testing.assert_allclose(ours, reference, atol=1e-7)


def test_far_from_the_optimum_the_line_search_shortens_the_step():
    # From w = 2 the full Newton step overshoots: F rises from 5.7 to 18.7. From w = 0
    # it never did, in 3,300 random problems, so only a start far away tests damping.
    features, labels = logistic_data(300, 4, seed=0)
    features = 3.0 * features
    start = np.full(4, 2.0)
    gradient = logistic_gradient(start, features, labels, 0.1)  # [d]
    full = start - np.linalg.solve(
        logistic_hessian(start, features, labels, 0.1), gradient
    )
    loss = logistic_loss(start, features, labels, 0.1)
    assert logistic_loss(full, features, labels, 0.1) > 3 * loss
    history = newton_logistic(features, labels, 0.1, start=start)
    np.testing.assert_array_equal(history[0], start)
    assert logistic_loss(history[1], features, labels, 0.1) < loss
    np.testing.assert_allclose(
        history[-1], newton_logistic(features, labels, 0.1)[-1], atol=1e-10
    )


def test_a_line_search_that_never_finds_a_decrease_stops(logistic, monkeypatch):
    """With a loss that no step can lower (here a constant), the halving gives up."""
    features, labels, lam = logistic
    monkeypatch.setattr(convex, "logistic_loss", lambda *args: 1.0)
    with pytest.raises(RuntimeError, match="line search found no decrease"):
        newton_logistic(features, labels, lam)


@pytest.mark.parametrize(
    "scale, seed, start", [(1.0, 3, 0.0), (10.0, 0, 0.0), (30.0, 5, 0.0), (3.0, 0, 2.0)]
)
def test_newton_loss_falls_at_every_step(scale, seed, start):
    features, labels = logistic_data(300, 4, seed=seed)
    features = scale * features
    history = newton_logistic(features, labels, 0.1, start=np.full(4, start))
    losses = np.array([logistic_loss(w, features, labels, 0.1) for w in history])
    steps = np.diff(losses)
    # Every step lowers F, except where the decrease is below F's own rounding.
    noise = 64 * np.finfo(np.float64).eps * np.abs(losses[:-1])
    assert np.all(steps <= noise), steps
    # While the decrease is visible, it is at least a quarter of the step length t times
    # the Newton decrement g^T H^-1 g (the line search's sufficient-decrease rule).
    for w, next_w, loss, step in zip(history, history[1:], losses, steps):
        gradient = logistic_gradient(w, features, labels, 0.1)  # [d]
        direction = np.linalg.solve(
            logistic_hessian(w, features, labels, 0.1), gradient
        )  # [d]
        decrement = gradient @ direction
        t = (w - next_w) @ direction / (direction @ direction)
        if decrement / 2 > 64 * np.finfo(np.float64).eps * abs(loss):
            assert step <= -0.25 * t * decrement, (step, t, decrement)
    # Gradients fall quadratically: |g_k+1| <= 2 |g_k|^2 (|g_k+1| / |g_k|^2 is 0.02 to
    # 1.02 in these runs), down to the rounding of the gradient itself, below 1e-14.
    norms = [
        np.linalg.norm(logistic_gradient(w, features, labels, 0.1)) for w in history
    ]
    assert all(later < earlier for earlier, later in zip(norms, norms[1:]))
    assert all(
        later <= 2 * earlier**2 + 1e-14 for earlier, later in zip(norms, norms[1:])
    ), norms
    assert steps[0] < -0.01 and len(history) <= 12


def test_logistic_data_follows_its_logistic_model():
    samples, dim, seed = 40_000, 3, 7
    features, labels = logistic_data(samples, dim, seed)
    # The documented draw: features, then the true weights, from one generator.
    rng = np.random.default_rng(seed)
    np.testing.assert_array_equal(features, rng.normal(size=(samples, dim)))
    true_weights = rng.normal(size=dim)
    probability = 1 / (1 + np.exp(-features @ true_weights))  # P(y = 1 | a)
    assert set(np.unique(labels)) == {-1.0, 1.0}
    # Calibration in ten bins of the true probability: the fraction of +1 labels in each
    # bin matches the bin's mean probability within 4 standard errors.
    bins = np.minimum((probability * 10).astype(int), 9)
    for b in range(10):
        inside = bins == b
        p = probability[inside].mean()
        standard_error = np.sqrt(p * (1 - p) / inside.sum())
        assert abs((labels[inside] == 1).mean() - p) <= 4 * standard_error + 1e-12


def test_methods_leave_their_inputs_unchanged(logistic):
    A, mu, L, x0 = problem(30.0, dim=6)
    A_copy, x0_copy = A.copy(), x0.copy()
    gradient_descent(A, x0, 1 / L, 10)
    heavy_ball(A, x0, *polyak_parameters(mu, L), 10)
    nesterov(A, x0, *nesterov_parameters(mu, L), 10)
    np.testing.assert_array_equal(A, A_copy)
    np.testing.assert_array_equal(x0, x0_copy)
    features, labels, lam = logistic
    kept = features.copy(), labels.copy()
    step_sizes = np.full(20, 0.1)
    newton_logistic(features, labels, lam)
    sgd_logistic(features, labels, lam, step_sizes)
    np.testing.assert_array_equal(features, kept[0])
    np.testing.assert_array_equal(labels, kept[1])
    np.testing.assert_array_equal(step_sizes, np.full(20, 0.1))


def test_numpy_integers_are_accepted_as_sizes():
    A = random_spd(np.int64(4), np.float64(10.0), seed=np.int64(1))
    assert A.shape == (4, 4)
    features, labels = logistic_data(np.int32(50), np.int64(2))
    assert features.shape == (50, 2)
    assert gradient_descent(A, np.ones(4), 0.01, np.int64(3)).shape == (4, 4)


def test_sgd_on_one_example_is_gradient_descent(logistic):
    features, labels, lam = logistic
    one_features, one_labels = (
        features[:1] * 3.0,
        labels[:1],
    )  # a large margin exercises the tanh form
    step_sizes = np.full(25, 0.05)
    history = sgd_logistic(one_features, one_labels, lam, step_sizes, seed=0)
    w = np.zeros(5)
    for k, step in enumerate(step_sizes):
        w = w - step * logistic_gradient(w, one_features, one_labels, lam)
        np.testing.assert_allclose(history[k + 1], w, rtol=1e-12, atol=1e-15)


# ---- SGD: noise floor with a constant step, convergence with a decaying one ----


@pytest.fixture(scope="module")
def sgd_runs(logistic):
    """Mean over 8 seeds of ||w_k - w*||^2 for steps 0.2, 0.1 and a / (b + k).

    The decaying step has a = 1/lam and b = a / 0.2.
    """
    features, labels, lam = logistic
    optimum = newton_logistic(features, labels, lam)[-1]
    steps, a = 6000, 1 / lam
    schedules = {
        "step": np.full(steps, 0.2),
        "half_step": np.full(steps, 0.1),
        "decaying": a / (a / 0.2 + np.arange(steps)),
    }
    return {
        name: np.mean(
            [
                np.sum(
                    (
                        sgd_logistic(features, labels, lam, sizes, seed=100 + seed)
                        - optimum
                    )
                    ** 2,
                    axis=1,
                )
                for seed in range(8)
            ],
            axis=0,
        )
        for name, sizes in schedules.items()
    }


def test_constant_step_sgd_stalls_at_a_floor_that_halves_with_the_step(sgd_runs):
    steps = sgd_runs["step"].size - 1
    third_quarter = slice(steps // 2, 3 * steps // 4)
    fourth_quarter = slice(3 * steps // 4, steps + 1)
    for name in ("step", "half_step"):
        # Stalled: the last two quarters sit at the same level instead of falling like
        # 1/k.
        level_ratio = (
            sgd_runs[name][fourth_quarter].mean() / sgd_runs[name][third_quarter].mean()
        )
        assert 0.75 < level_ratio < 1.33, (name, level_ratio)
    floor = sgd_runs["step"][steps // 2 :].mean()
    half_floor = sgd_runs["half_step"][steps // 2 :].mean()
    # Theory: the floor on E||w - w*||^2 is proportional to the step, so halving the
    # step halves it.
    assert 0.3 < half_floor / floor < 0.7, half_floor / floor


def test_decaying_step_sgd_keeps_decreasing_below_the_floor(sgd_runs):
    values = sgd_runs["decaying"]
    steps = values.size - 1
    # Theory: E||w_k - w*||^2 <= nu / (b + k); from the second quarter to the last it
    # should fall ~2.5x.
    second_quarter = values[steps // 4 : steps // 2].mean()
    last_quarter = values[3 * steps // 4 :].mean()
    assert last_quarter < 0.7 * second_quarter, (second_quarter, last_quarter)
    assert last_quarter < 0.5 * sgd_runs["half_step"][steps // 2 :].mean()


# ---- bad input ----


def test_bad_input_raises_clear_errors(logistic):
    features, labels, lam = logistic
    A, mu, L, x0 = problem(10.0, dim=3)
    with pytest.raises(ValueError, match=r"A must be a square 2-D array"):
        gradient_descent(np.ones((3, 2)), x0, 0.1, 5)
    with pytest.raises(ValueError, match=r"A must be symmetric"):
        gradient_descent(A + np.triu(np.ones((3, 3)), 1), x0, 0.1, 5)
    with pytest.raises(ValueError, match=r"A must be positive definite"):
        spd_spectrum(np.diag([1.0, -1.0, 2.0]))
    with pytest.raises(ValueError, match=r"x0 must have shape \(3,\)"):
        gradient_descent(A, np.ones(4), 0.1, 5)
    for bad_step in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"step must be a positive finite number"):
            heavy_ball(A, x0, bad_step, 0.5, 5)
    with pytest.raises(ValueError, match=r"steps must be an int >= 0"):
        nesterov(A, x0, 0.1, 0.5, -1)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\)"):
        nesterov(A, x0, 0.1, 1.0, 5)
    with pytest.raises(ValueError, match=r"need 0 < mu <= L"):
        polyak_parameters(2.0, 1.0)
    with pytest.raises(ValueError, match=r"need 0 < mu <= L"):
        nesterov_parameters(0.0, 1.0)
    with pytest.raises(ValueError, match=r"kappa must be a finite number >= 1"):
        random_spd(3, 0.5)
    with pytest.raises(ValueError, match=r"labels must be -1 or \+1"):
        newton_logistic(features, (labels + 1) / 2, lam)
    with pytest.raises(ValueError, match=r"labels must have shape \(1000,\)"):
        newton_logistic(features, labels[:10], lam)
    with pytest.raises(ValueError, match=r"features must be a 2-D numpy array"):
        sgd_logistic(features[:, 0], labels, lam, np.full(3, 0.1))
    with pytest.raises(ValueError, match=r"lam must be a finite number > 0"):
        sgd_logistic(features, labels, 0.0, np.full(3, 0.1))
    with pytest.raises(
        ValueError, match=r"step_sizes must be a 1-D array \[steps\] of positive"
    ):
        sgd_logistic(features, labels, lam, np.array([0.1, -0.1]))
    with pytest.raises(ValueError, match=r"never reached tol"):
        iterations_to(np.array([1.0, 0.9, 0.8]), 1e-3)
    with pytest.raises(ValueError, match=r"a rate needs at least 2"):
        measured_contraction(np.array([1.0, 1e-9]), 1e-3)
    with pytest.raises(ValueError, match=r"kappa must be a finite number >= 1"):
        random_spd(3, float("inf"))
    with pytest.raises(TypeError, match=r"dim must be an int, got float"):
        random_spd(3.0, 10.0)
    with pytest.raises(TypeError, match=r"steps must be an int, got float"):
        gradient_descent(A, x0, 0.1, 5.0)
    with pytest.raises(ValueError, match=r"features must be finite"):
        newton_logistic(np.full((3, 2), np.nan), np.ones(3), lam)
    with pytest.raises(ValueError, match=r"lam must be a finite number > 0"):
        newton_logistic(features, labels, float("nan"))
    with pytest.raises(ValueError, match=r"tol must be a number > 0"):
        newton_logistic(features, labels, lam, tol=0.0)
    with pytest.raises(ValueError, match=r"max_steps must be an int >= 1"):
        newton_logistic(features, labels, lam, max_steps=0)
    with pytest.raises(RuntimeError, match=r"did not reach"):
        newton_logistic(features, labels, lam, max_steps=2)
    with pytest.raises(ValueError, match=r"start must be a finite numpy array of sha"):
        newton_logistic(features, labels, lam, start=np.ones(features.shape[1] + 1))
    with pytest.raises(ValueError, match=r"start must be a finite"):
        newton_logistic(features, labels, lam, start=np.full(features.shape[1], np.inf))
    with pytest.raises(TypeError, match=r"A must be an array of numbers"):
        spd_spectrum([["a", "b"], ["c", "d"]])
    with pytest.raises(ValueError, match=r"output must be the history"):
        convex.dataflow(np.ones(3))


# ---- the example and the demo ----


def test_example_and_dataflow():
    fn, args = convex.example()
    history = fn(*args)
    assert history.shape == (21, 2)
    nodes, edges = convex.dataflow(history)
    ids = {node_id for node_id, _ in nodes}
    assert len(ids) == len(nodes) <= 25
    assert all(src in ids and dst in ids for src, dst, _ in edges)
    assert any("[21×2]" in label for _, label in nodes)


def test_demo_runs_with_small_flags(tmp_path):
    metrics = convex.main(
        [
            "--kappas",
            "10,40",
            "--dim",
            "10",
            "--sgd-steps",
            "3000",
            "--sgd-seeds",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    for name in ("gd_rates.png", "acceleration.png", "sgd_noise_ball.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert metrics["gd_contraction_kappa40"] == pytest.approx(1 - 1 / 40, abs=0.1 / 40)
    assert metrics["nesterov_iterations_kappa40"] < metrics["gd_iterations_kappa40"] / 3
    assert 0.25 < metrics["sgd_floor_ratio"] < 0.8
    assert metrics["sgd_decaying_final"] < metrics["sgd_floor_half_step"]
    assert metrics["newton_steps"] <= 10


def test_demo_rejects_bad_flags(tmp_path):
    for flags in (
        ["--kappas", "1"],
        ["--kappas", "10,x"],
        ["--dim", "1"],
        ["--lam", "0"],
    ):
        with pytest.raises(SystemExit):
            convex.main([*flags, "--out", str(tmp_path)])


# ---- benchmarks: Newton's method against scipy's BFGS, same problem and start ----


@pytest.mark.benchmark(group="logistic regression optimum, n=1000, d=5")
def test_bench_optimum_newton_ours(benchmark, logistic):
    benchmark.extra_info["label"] = "our Newton's method"
    features, labels, lam = logistic
    benchmark(newton_logistic, features, labels, lam, 1e-9)


@pytest.mark.benchmark(group="logistic regression optimum, n=1000, d=5")
def test_bench_optimum_scipy_bfgs(benchmark, logistic):
    benchmark.extra_info["label"] = "scipy.optimize.minimize (BFGS)"
    features, labels, lam = logistic
    benchmark.extra_info["baseline"] = True
    benchmark(
        scipy.optimize.minimize,
        logistic_loss,
        np.zeros(5),
        args=(features, labels, lam),
        jac=logistic_gradient,
        method="BFGS",
        options={"gtol": 1e-9},
    )
