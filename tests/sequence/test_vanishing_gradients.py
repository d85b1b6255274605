"""Verified against autograd through torch's own fused nn.RNN, nn.LSTM and nn.GRU calls
started from each measured state (gradients to 1e-10 in float64), against
torch.autograd.functional.jacobian for one step's Jacobian (1e-12), and against
torch.nn.utils.clip_grad_norm_ (clipped gradients and returned norm to 1e-12 in
float64, under hypothesis).

The explicit Jacobian products must reproduce autograd's gradients to 1e-10 of their
norm at every distance, sit under the spectral norm of the product, which sits under
Pascanu's bound. The measured decay is asserted: for the tanh RNN with default,
Gaussian (ρ = 0.5) and orthogonal recurrent weights a line fits log-norm against
distance with R² > 0.99 and a slope within 5 % of the predicted rate, and the LSTM
with forget bias 1 keeps more than 10⁶ times the default RNN's gradient at distance
50. The numbers the lesson's prose quotes are recomputed with the demo's
defaults, and the demo must diverge without clipping and learn with it.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import annotated.sequence.vanishing_gradients as lesson
from annotated.sequence.vanishing_gradients import (
    backward_through_jacobians,
    clip_grad_norm,
    dataflow,
    example,
    fit_decay,
    hidden_state_gradients,
    initialised_models,
    log_norms,
    main,
    measurement_batch,
    pascanu_bound,
    pascanu_comparison,
    predicted_rate,
    rnn_jacobians,
    set_forget_bias,
    set_spectral_radius,
    spectral_radius,
    stepped_states,
    train_echo,
)
from tools.literate.figures import short_band

torch.set_num_threads(1)

KINDS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def small_problem(kind, steps=12, batch=3, inputs=4, hidden=5, seed=0):
    torch.manual_seed(seed)
    model = KINDS[kind](inputs, hidden).double()
    x, readout = measurement_batch(steps, batch, inputs, hidden, seed)
    return model, x, readout


def norm_close(got, want, rtol):
    """Per-distance, per-sequence vector comparison relative to the reference's norm:
    elementwise tolerances mean nothing for values spanning 30 orders of magnitude."""
    error = (got - want).norm(dim=-1)
    assert (error <= rtol * want.norm(dim=-1)).all(), (error / want.norm(dim=-1)).max()


# ---------------------------------------------------------------- measurement


@pytest.mark.parametrize("kind", KINDS)
def test_stepped_states_equal_the_fused_sequence_call(kind):
    model, x, _ = small_problem(kind)
    states = torch.cat(stepped_states(model, x))  # [T, batch, hidden]
    fused, _ = model(x)
    torch.testing.assert_close(states, fused, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_a_fused_backward_from_each_state(kind):
    model, x, readout = small_problem(kind, steps=15)
    gradients, _ = hidden_state_gradients(model, x, readout)
    steps = len(x)
    assert gradients.shape == (steps, 3, 5)
    torch.testing.assert_close(gradients[0], readout, rtol=0, atol=0)
    for t in (1, 2, 7, steps - 1):
        # The state after step t from torch's own fused call, as fresh leaves.
        _, state = model(x[:t])
        if kind == "lstm":
            state = tuple(s.detach().requires_grad_() for s in state)
            h_t = state[0]
        else:
            state = h_t = state.detach().requires_grad_()
        out, _ = model(x[t:], state)
        (want,) = torch.autograd.grad((out[-1] * readout).sum(), h_t)
        norm_close(gradients[steps - t], want[0], rtol=1e-10)


def test_one_step_jacobian_matches_autograd_functional():
    model, x, _ = small_problem("rnn", steps=6, hidden=7)
    _, states = hidden_state_gradients(model, x, torch.zeros(3, 7, dtype=x.dtype))
    jacobians = rnn_jacobians(states, model.weight_hh_l0.detach())
    for k in (1, 4):
        for b in range(3):

            def step(h, k=k, b=b):
                _, new = model(x[k : k + 1, b : b + 1], h.view(1, 1, -1))
                return new.view(-1)

            want = torch.autograd.functional.jacobian(step, states[k - 1, b])
            torch.testing.assert_close(jacobians[k, b], want, rtol=1e-12, atol=1e-12)


@given(
    steps=st.integers(2, 30),
    batch=st.integers(1, 4),
    hidden=st.integers(1, 12),
    radius=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**16),
)
def test_explicit_jacobian_products_equal_autograd(steps, batch, hidden, radius, seed):
    torch.manual_seed(seed)
    model = nn.RNN(2, hidden).double()
    set_spectral_radius(model.weight_hh_l0, radius)
    x, readout = measurement_batch(steps, batch, 2, hidden, seed)
    gradients, states = hidden_state_gradients(model, x, readout)
    jacobians = rnn_jacobians(states, model.weight_hh_l0.detach())
    norm_close(backward_through_jacobians(jacobians, readout), gradients, rtol=1e-10)


def test_gradient_under_product_norm_under_pascanu_bound():
    model, x, readout = small_problem("rnn", steps=25, hidden=6)
    with torch.no_grad():
        model.weight_hh_l0.mul_(3.0)  # above 1, so the bound grows
    result = pascanu_comparison(model, x, readout)
    slack = 1 + 1e-10
    assert (result["autograd"] <= result["product"] * slack).all()
    assert (result["product"] <= result["bound"] * slack).all()
    torch.testing.assert_close(
        result["explicit"], result["autograd"], rtol=1e-10, atol=0
    )
    # The product's spectral norm against numpy's, built independently.
    _, states = hidden_state_gradients(model, x, readout)
    w = model.weight_hh_l0.detach().numpy()
    h = states.numpy()
    product = np.eye(6)
    for d in range(1, 25):
        k = 24 - d + 1  # J_{T-d+1}, time index from 0
        product = product @ (np.diag(1 - h[k, 1] ** 2) @ w)
        assert result["product"][d, 1].item() == pytest.approx(
            np.linalg.norm(product, 2), rel=1e-10
        )
    # The bound's ingredients, by hand.
    gamma = (1 - h[:, 0] ** 2).max()
    sigma = np.linalg.svd(w, compute_uv=False)[0]
    assert result["bound"][7, 0].item() == pytest.approx(
        (gamma * sigma) ** 7, rel=1e-12
    )


def test_bound_is_one_at_distance_zero_and_uses_the_largest_slope():
    states = torch.zeros(4, 2, 3, dtype=torch.float64)  # h = 0: tanh' = 1
    w = torch.diag(torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64))
    bound = pascanu_bound(states, w)
    torch.testing.assert_close(bound[:, 0], torch.tensor([1.0, 2.0, 4.0, 8.0]).double())


def test_long_sequence_runs_without_recursion_and_stays_exact():
    torch.manual_seed(0)
    model = nn.RNN(2, 16).double()
    with torch.no_grad():
        nn.init.orthogonal_(model.weight_hh_l0)
    x, readout = measurement_batch(2000, 2, 2, 16)
    gradients, states = hidden_state_gradients(model, x, readout)
    jacobians = rnn_jacobians(states, model.weight_hh_l0.detach())
    explicit = backward_through_jacobians(jacobians, readout)
    assert (gradients.norm(dim=-1)[-1] > 0).all()  # nothing underflowed
    norm_close(explicit, gradients, rtol=1e-9)
    decay = fit_decay(gradients.norm(dim=-1))
    assert decay.slope < 0 and decay.r2 > 0.99


# ---------------------------------------------------------------- initialisations


def test_set_spectral_radius_sets_the_largest_eigenvalue_modulus():
    torch.manual_seed(3)
    weight = torch.empty(20, 20, dtype=torch.float64)
    set_spectral_radius(weight, 1.7)
    eigenvalues = np.linalg.eigvals(weight.numpy())
    assert np.abs(eigenvalues).max() == pytest.approx(1.7, rel=1e-12)
    assert spectral_radius(weight) == pytest.approx(1.7, rel=1e-12)


def test_set_forget_bias_sets_the_forget_gate():
    lstm = nn.LSTM(1, 3).double()
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
    set_forget_bias(lstm, 2.0)
    zeros = torch.zeros(1, 1, 3, dtype=torch.float64)
    # With every weight zero: c_1 = sigmoid(b_f) * c_0 + sigmoid(0) * tanh(0).
    _, (_, cell) = lstm(torch.zeros(1, 1, 1).double(), (zeros, torch.ones_like(zeros)))
    torch.testing.assert_close(
        cell, torch.sigmoid(torch.tensor(2.0)).double().expand(1, 1, 3)
    )
    gates = torch.stack([lstm.bias_ih_l0, lstm.bias_hh_l0]).view(2, 4, 3)
    assert (gates[0, 1] == 2.0).all() and (gates[1, 1] == 0).all()
    assert (gates[:, [0, 2, 3]] == 0).all()


def test_default_and_gaussian_inits_have_the_norms_the_prose_quotes():
    models = initialised_models(8, 64, seed=0)
    default = models["RNN, default"].weight_hh_l0.detach()
    assert 0.55 < spectral_radius(default) < 0.7
    assert torch.linalg.matrix_norm(default, 2).item() == pytest.approx(1.1, abs=0.05)
    gaussian = models["RNN, Gaussian ρ = 1.5"].weight_hh_l0.detach()
    assert 1.6 * 1.5 < torch.linalg.matrix_norm(gaussian, 2).item() < 2.0 * 1.5
    orthogonal = models["RNN, orthogonal"].weight_hh_l0.detach()
    torch.testing.assert_close(
        torch.linalg.svdvals(orthogonal), torch.ones(64).double(), rtol=0, atol=1e-12
    )


# ---------------------------------------------------------------- the decay, asserted


@pytest.fixture(scope="module")
def demo_measurement():
    """The demo's measurement with its defaults: 32 sequences of 100 steps, 64 units."""
    inputs, readout = measurement_batch(100, 32, 8, 64, seed=0)
    norms, rates = {}, {}
    for label, model in initialised_models(8, 64, seed=0).items():
        gradients, states = hidden_state_gradients(model, inputs, readout)
        norms[label] = gradients.norm(dim=-1)
        if isinstance(model, nn.RNN):
            rates[label] = predicted_rate(states, model.weight_hh_l0.detach())
    return norms, rates


@pytest.mark.parametrize(
    "label", ["RNN, default", "RNN, Gaussian ρ = 0.5", "RNN, orthogonal"]
)
def test_tanh_rnn_decays_exponentially_at_the_predicted_rate(demo_measurement, label):
    norms, rates = demo_measurement
    decay = fit_decay(norms[label])
    assert decay.r2 > 0.99
    assert decay.slope < 0
    assert decay.slope == pytest.approx(rates[label], rel=0.05)


def test_prediction_misses_where_the_prose_says_it_does(demo_measurement):
    norms, rates = demo_measurement
    # Gaussian ρ = 1: exponential still, but about 20 % faster than predicted.
    decay = fit_decay(norms["RNN, Gaussian ρ = 1"])
    assert decay.r2 > 0.99
    assert 1.1 < decay.slope / rates["RNN, Gaussian ρ = 1"] < 1.35
    # Gaussian ρ = 1.5: neither vanishing nor exploding, though predicted to grow.
    flat = fit_decay(norms["RNN, Gaussian ρ = 1.5"])
    assert abs(flat.slope) < 0.03 and rates["RNN, Gaussian ρ = 1.5"] > 0.05


def test_lstm_keeps_orders_of_magnitude_more_gradient(demo_measurement):
    norms, _ = demo_measurement
    at_50 = {label: log_norms(n)[50].exp().item() for label, n in norms.items()}
    assert at_50["LSTM, forget bias 1"] / at_50["RNN, default"] > 1e6
    slopes = {label: fit_decay(n).slope for label, n in norms.items()}
    bias_0, bias_1, bias_3 = (slopes[f"LSTM, forget bias {b}"] for b in (0, 1, 3))
    assert bias_0 < bias_1 < bias_3 and abs(bias_3) < 0.02


def test_the_numbers_quoted_in_the_prose(demo_measurement):
    norms, rates = demo_measurement
    slopes = {label: fit_decay(n).slope for label, n in norms.items()}
    quoted = {
        "RNN, default": -0.51,
        "RNN, orthogonal": -0.14,
        "LSTM, forget bias 0": -0.46,
        "LSTM, forget bias 1": -0.16,
        "GRU, default": -0.41,
    }
    for label, slope in quoted.items():
        assert slopes[label] == pytest.approx(slope, abs=0.006), label
    assert rates["RNN, default"] == pytest.approx(-0.50, abs=0.006)
    for label in ("RNN, default", "RNN, Gaussian ρ = 0.5", "RNN, orthogonal"):
        assert slopes[label] == pytest.approx(rates[label], rel=0.03), label
    gap = rates["RNN, Gaussian ρ = 1"] - slopes["RNN, Gaussian ρ = 1"]
    assert gap == pytest.approx(0.03, abs=0.006)
    assert rates["RNN, Gaussian ρ = 1.5"] == pytest.approx(0.10, abs=0.006)
    default_at_50 = log_norms(norms["RNN, default"])[50].exp().item()
    assert 2.5e-12 < default_at_50 < 3.5e-12
    ratio = (
        log_norms(norms["LSTM, forget bias 1"])[50]
        - log_norms(norms["RNN, default"])[50]
    ).exp()
    assert 1e7 <= ratio < 1.5e7


def test_fit_decay_recovers_an_exact_exponential_and_skips_underflow():
    distance = torch.arange(40, dtype=torch.float64)
    norms = (3.0 * 0.8**distance)[:, None].repeat(1, 2)
    decay = fit_decay(norms)
    assert decay.slope == pytest.approx(math.log(0.8), rel=1e-12)
    assert decay.intercept == pytest.approx(math.log(3.0), rel=1e-12)
    assert decay.r2 == pytest.approx(1.0, abs=1e-12) and decay.distances == 39
    norms[30:, 1] = 0.0  # one sequence underflowed
    assert fit_decay(norms).distances == 29
    assert fit_decay(norms).slope == pytest.approx(math.log(0.8), rel=1e-12)


def test_float32_underflow_to_zero_leaves_the_fit_intact():
    torch.manual_seed(0)
    model = nn.RNN(8, 64)
    inputs, readout = measurement_batch(300, 4, 8, 64)
    gradients32, _ = hidden_state_gradients(model, inputs.float(), readout.float())
    norms32 = gradients32.norm(dim=-1)
    assert (gradients32[-1] == 0).all()  # the tail underflowed in float32
    # Around distance 100 the norm is already 0 while the gradient is not: every entry
    # is below about 2.6e-23, and its square, under half of float32's smallest
    # positive number (1.4e-45), rounds to 0.
    lost = (norms32 == 0) & (gradients32 != 0).any(dim=-1)
    assert lost[90:130].any() and not lost[:90].any()
    assert gradients32[lost].abs().max() < 2.65e-23
    norms64 = hidden_state_gradients(model.double(), inputs, readout)[0].norm(dim=-1)
    assert (norms64 > 0).all()
    assert fit_decay(norms32).slope == pytest.approx(fit_decay(norms64).slope, rel=0.02)


# ---------------------------------------------------------------- clipping


def with_grads(shapes, seed, scale=1.0, dtype=torch.float64, missing=()):
    """Two identical parameter lists with random gradients (None at `missing`)."""
    generator = torch.Generator().manual_seed(seed)
    ours, theirs = [], []
    for index, shape in enumerate(shapes):
        p = torch.randn(shape, generator=generator, dtype=dtype).requires_grad_()
        q = p.detach().clone().requires_grad_()
        if index not in missing:
            p.grad = scale * torch.randn(shape, generator=generator, dtype=dtype)
            q.grad = p.grad.clone()
        ours.append(p)
        theirs.append(q)
    return ours, theirs


def assert_same_grads(ours, theirs, **tolerance):
    for p, q in zip(ours, theirs):
        if q.grad is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, q.grad, equal_nan=True, **tolerance)


@given(
    shapes=st.lists(
        st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple),
        min_size=1,
        max_size=5,
    ),
    max_norm=st.floats(1e-3, 1e3),
    norm_type=st.sampled_from([0.5, 1.0, 2.0, 3.5, math.inf]),
    scale=st.floats(1e-3, 1e3),
    missing=st.sets(st.integers(0, 4), max_size=2),
    seed=st.integers(0, 2**16),
)
def test_clip_matches_torch(shapes, max_norm, norm_type, scale, missing, seed):
    ours, theirs = with_grads(shapes, seed, scale, missing=missing)
    got = clip_grad_norm(ours, max_norm, norm_type)
    want = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert_same_grads(ours, theirs, rtol=1e-12, atol=0)


def test_clip_rescales_to_max_norm_keeping_direction():
    ours, _ = with_grads([(10, 3), (7,)], seed=1, scale=100.0)
    before = torch.cat([p.grad.flatten() for p in ours])
    total = clip_grad_norm(ours, 0.5)
    after = torch.cat([p.grad.flatten() for p in ours])
    assert total.item() == pytest.approx(before.norm().item(), rel=1e-12)
    assert after.norm().item() == pytest.approx(0.5, rel=1e-5)
    torch.testing.assert_close(after / after.norm(), before / before.norm())
    # Already small enough: multiplied by exactly 1.
    small, _ = with_grads([(4,)], seed=2, scale=1e-3)
    kept = small[0].grad.clone()
    clip_grad_norm(small, 1.0)
    assert torch.equal(small[0].grad, kept)


def test_clip_float32_a_single_tensor_and_a_generator_like_torch():
    ours, theirs = with_grads([(64, 32), (32,), (5, 5, 5)], seed=4, dtype=torch.float32)
    got = clip_grad_norm(iter(ours), 0.1)
    want = torch.nn.utils.clip_grad_norm_(iter(theirs), 0.1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    assert_same_grads(ours, theirs, rtol=1e-6, atol=0)
    ours, theirs = with_grads([(3, 3)], seed=5, scale=10.0)
    got = clip_grad_norm(ours[0], 1.0)
    want = torch.nn.utils.clip_grad_norm_(theirs[0], 1.0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert_same_grads(ours, theirs, rtol=1e-12, atol=0)


def test_clip_edge_cases_like_torch():
    # No gradients at all, and gradients that are all zero.
    assert clip_grad_norm([], 1.0).item() == 0.0
    ours, theirs = with_grads([(3,), (2,)], seed=0, missing=(0, 1))
    assert clip_grad_norm(ours, 1.0) == torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    ours, _ = with_grads([(3,)], seed=0, scale=0.0)
    assert clip_grad_norm(ours, 1.0).item() == 0.0 and (ours[0].grad == 0).all()
    # A non-finite gradient: the same NaNs as torch, or the same refusal.
    for bad in (math.inf, math.nan):
        ours, theirs = with_grads([(3,), (4,)], seed=0)
        ours[0].grad[1] = theirs[0].grad[1] = bad
        got = clip_grad_norm(ours, 1.0)
        want = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
        torch.testing.assert_close(got, want, equal_nan=True)
        assert_same_grads(ours, theirs)
        with pytest.raises(RuntimeError, match="cannot be clipped"):
            clip_grad_norm(ours, 1.0, error_if_nonfinite=True)
        with pytest.raises(RuntimeError, match="non-finite"):
            torch.nn.utils.clip_grad_norm_(theirs, 1.0, error_if_nonfinite=True)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_naming_the_argument():
    model, x, readout = small_problem("rnn")
    with pytest.raises(TypeError, match="model must be an nn.RNN, nn.LSTM or nn.GRU"):
        hidden_state_gradients(nn.LSTMCell(4, 5), x, readout)
    with pytest.raises(ValueError, match="one layer, one direction"):
        hidden_state_gradients(nn.RNN(4, 5, num_layers=2).double(), x, readout)
    with pytest.raises(ValueError, match="batch_first=False"):
        hidden_state_gradients(nn.GRU(4, 5, batch_first=True).double(), x, readout)
    with pytest.raises(ValueError, match="inputs must be a 3-D tensor"):
        hidden_state_gradients(model, x[:, 0], readout)
    with pytest.raises(ValueError, match="at least 2 steps and input_size 4"):
        hidden_state_gradients(model, x[:1], readout)
    with pytest.raises(ValueError, match="at least 2 steps and input_size 4"):
        hidden_state_gradients(model, x[..., :3], readout)
    readout_shape = r"readout must be \[batch, hidden\] = \(3, 5\)"
    with pytest.raises(ValueError, match=readout_shape):
        hidden_state_gradients(model, x, readout.T)
    with pytest.raises(TypeError, match="nonlinearity='tanh'"):
        pascanu_comparison(nn.RNN(4, 5, nonlinearity="relu").double(), x, readout)
    with pytest.raises(ValueError, match="w_hh"):
        rnn_jacobians(torch.zeros(3, 2, 5), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="weight must be square"):
        set_spectral_radius(torch.zeros(3, 4), 1.0)
    with pytest.raises(ValueError, match="norms must be"):
        fit_decay(torch.ones(10))
    with pytest.raises(ValueError, match="at least 3 distances"):
        fit_decay(torch.zeros(10, 2))
    params, _ = with_grads([(3,)], seed=0)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="max_norm must be > 0"):
            clip_grad_norm(params, bad)
    with pytest.raises(ValueError, match="norm_type must be > 0"):
        clip_grad_norm(params, 1.0, norm_type=0)
    with pytest.raises(TypeError, match="parameters must be a tensor"):
        clip_grad_norm([1.0, 2.0], 1.0)


# ---------------------------------------------------------------- example and demo


def test_example_runs_and_its_routes_agree():
    fn, args = example()
    result = fn(*args)
    assert result["autograd"].shape == (20, 4)
    torch.testing.assert_close(
        result["explicit"], result["autograd"], rtol=1e-10, atol=0
    )
    nodes, edges = dataflow(result)
    names = {name for name, _ in nodes}
    assert all(src in names and dst in names for src, dst, _ in edges)


@pytest.mark.parametrize("radius, seed", [(2.0, 1), (2.0, 3), (1.0, 2)])
def test_echo_run_diverges_without_clipping_and_learns_with_it(radius, seed):
    plain = train_echo(None, steps=40, radius=radius, seed=seed)
    clipped = train_echo(1.0, steps=40, radius=radius, seed=seed)
    assert plain.diverged_at is not None and plain.diverged_at < 40
    assert max(plain.grad_norms) > 1e6
    assert clipped.diverged_at is None
    assert sum(clipped.losses[-10:]) / 10 < 0.8 * clipped.losses[0]


def test_demo_measures_and_clips(tmp_path):
    # The clipped run's final loss over the stored seeds is its expected band.
    metric, args, low, high = short_band("annotated/sequence/vanishing_gradients.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["rnn_r2"] > 0.99 and metrics["rnn_slope"] < 0
    assert metrics["rnn_slope"] == pytest.approx(
        metrics["rnn_predicted_slope"], rel=0.1
    )
    assert metrics["explicit_vs_autograd"] < 1e-10
    assert metrics["lstm_over_rnn_at_50"] > 10
    assert metrics["unclipped_diverged_at"] < 40
    assert metrics["clipped_final_loss"] < 0.8 * metrics["clipped_first_loss"]
    for name in ("decay.png", "pascanu.png", "clipping.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_demo_says_when_the_unclipped_run_stays_finite(tmp_path, monkeypatch, capsys):
    """One echo step is too few to explode: the demo reports the final loss instead
    of a step (its smallest sizes, figures left out)."""
    for name in ("plot_decay", "plot_pascanu", "plot_clipping"):
        monkeypatch.setattr(lesson, name, lambda *args: None)
    sizes = ["--length", "52", "--batch", "1", "--hidden", "4", "--inputs", "1"]
    metrics = main([*sizes, "--steps", "1", "--out", str(tmp_path)])
    assert metrics["unclipped_diverged_at"] == math.inf
    assert "without clipping: no divergence, final loss" in capsys.readouterr().out


# ---------------------------------------------------------------- benchmarks


def rnn_backward_problem():
    torch.manual_seed(0)
    model = nn.RNN(8, 64).double()
    inputs, readout = measurement_batch(100, 8, 8, 64)
    states = stepped_states(model, inputs)
    loss = (states[-1][0] * readout).sum()
    values = torch.cat(states).detach()
    return model.weight_hh_l0.detach(), states, loss, values, readout


@pytest.mark.benchmark(group="∂L/∂h_t at all 100 steps, tanh RNN, batch 8, 64 units")
def test_bench_gradients_autograd(benchmark):
    benchmark.extra_info["label"] = "torch.autograd.grad"
    benchmark.extra_info["baseline"] = True
    _, states, loss, _, _ = rnn_backward_problem()
    benchmark(torch.autograd.grad, loss, states, retain_graph=True)


@pytest.mark.benchmark(group="∂L/∂h_t at all 100 steps, tanh RNN, batch 8, 64 units")
def test_bench_gradients_explicit_jacobians(benchmark):
    benchmark.extra_info["label"] = "explicit Jacobian matrices"
    w_hh, _, _, values, readout = rnn_backward_problem()
    benchmark(lambda: backward_through_jacobians(rnn_jacobians(values, w_hh), readout))


def clipping_problem():
    torch.manual_seed(0)
    model = nn.LSTM(256, 256, num_layers=2)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return list(model.parameters())


@pytest.mark.benchmark(group="clip 8 gradient tensors (2-layer LSTM, 1.05 M weights)")
def test_bench_clip_torch(benchmark):
    benchmark.extra_info["label"] = "torch.nn.utils.clip_grad_norm_"
    benchmark.extra_info["baseline"] = True
    benchmark(torch.nn.utils.clip_grad_norm_, clipping_problem(), 1.0)


@pytest.mark.benchmark(group="clip 8 gradient tensors (2-layer LSTM, 1.05 M weights)")
def test_bench_clip_ours(benchmark):
    benchmark.extra_info["label"] = "ours"
    benchmark(clip_grad_norm, clipping_problem(), 1.0)
