"""Verified against gymnasium's CartPole step in float64 (to 1e-12), torch's
gaussian_nll_loss and nn.Linear (to 1e-12), a per-member loop, a quadratic with a known
optimum, and random play on the real environment.

The learned ensemble must beat a constant-state baseline on held-out transitions 100×,
disagree more off the data than on it, and plan better than random pushes.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from annotated.rl.world_model import (
    MPC,
    Ensemble,
    EnsembleLinear,
    Transitions,
    alive,
    cartpole_step,
    cem,
    dyna_q,
    example,
    fit,
    gaussian_nll,
    main,
    run_episode,
)
from tools.literate.figures import short_band

torch.set_num_threads(1)


def random_play(
    steps: int, seed: int, max_steps: int = 500
) -> tuple[Transitions, list]:
    env = gym.make("CartPole-v1", max_episode_steps=max_steps)
    rng = np.random.default_rng(seed)
    data, returns = Transitions(), []
    while len(data) < steps:
        returns.append(
            run_episode(env, lambda _: int(rng.integers(2)), seed + len(returns), data)
        )
    return data, returns


@pytest.fixture(scope="module")
def fitted():
    """An ensemble fitted to 800 random-play transitions, and its fit's statistics."""
    torch.manual_seed(0)
    data, _ = random_play(800, seed=0)
    model = Ensemble()
    stats = fit(model, data.tensors(), epochs=25, seed=0)
    return model, data, stats


# ---- the true dynamics ------------------------------------------------------------


@given(
    st.floats(-2.4, 2.4),
    st.floats(-3.0, 3.0),
    st.floats(-0.2, 0.2),
    st.floats(-3.0, 3.0),
    st.sampled_from([0, 1]),
)
def test_cartpole_step_matches_gymnasium(x, x_dot, theta, theta_dot, action):
    env = gym.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    state = np.array([x, x_dot, theta, theta_dot], dtype=np.float64)
    env.state = state.copy()
    _, _, terminated, _, _ = env.step(action)
    push = torch.tensor([2.0 * action - 1.0], dtype=torch.float64)
    ours, reward = cartpole_step(torch.tensor(state), push)
    np.testing.assert_allclose(ours.numpy(), env.state, rtol=0, atol=1e-12)
    assert reward.item() == 1.0 - terminated


def test_alive_edges_and_batched_shapes():
    states = torch.tensor([[2.4, 0, 0.0, 0], [2.41, 0, 0, 0], [0, 0, -0.21, 0]])
    assert alive(states).tolist() == [1.0, 0.0, 0.0]
    next_states, reward = cartpole_step(torch.zeros(3, 7, 4), torch.ones(3, 7, 1))
    assert next_states.shape == (3, 7, 4) and reward.shape == (3, 7)
    assert (next_states[..., 1] > 0).all()  # pushing right accelerates the cart right


# ---- the ensemble -----------------------------------------------------------------


def test_ensemble_linear_matches_nn_linear_per_member():
    torch.manual_seed(0)
    layer = EnsembleLinear(4, 3, 6).double()
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    for m in range(4):
        want = F.linear(x[m], layer.weight[m].T, layer.bias[m, 0])
        torch.testing.assert_close(layer(x)[m], want, rtol=0, atol=1e-12)


def test_batched_forward_matches_loop_with_gradients():
    torch.manual_seed(0)
    model = Ensemble(members=4, hidden=16).double()
    x = torch.randn(4, 9, 5, dtype=torch.float64)
    mean, logvar = model(x)
    mean_loop, logvar_loop = model.forward_loop(x)
    torch.testing.assert_close(mean, mean_loop, rtol=0, atol=1e-12)
    torch.testing.assert_close(logvar, logvar_loop, rtol=0, atol=1e-12)
    grads = torch.autograd.grad((mean * logvar).sum(), list(model.parameters()))
    grads_loop = torch.autograd.grad(
        (mean_loop * logvar_loop).sum(), list(model.parameters())
    )
    for g, h in zip(grads, grads_loop):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)


def test_members_are_independent():
    torch.manual_seed(0)
    model = Ensemble(members=3, hidden=8)
    mean, _ = model(torch.randn(3, 4, 5))
    mean[1].sum().backward()
    for layer in model.layers:
        assert layer.weight.grad[1].abs().sum() > 0
        assert layer.weight.grad[0].abs().sum() == 0
        assert layer.weight.grad[2].abs().sum() == 0


def test_gaussian_nll_matches_torch_with_gradients():
    torch.manual_seed(0)
    mean = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 7, 5, dtype=torch.float64)
    ours = gaussian_nll(mean, logvar, target)
    theirs = F.gaussian_nll_loss(mean, target, logvar.exp(), eps=0.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(ours, (mean, logvar))
    want = torch.autograd.grad(theirs, (mean, logvar))
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)


def test_logvar_stays_within_its_bounds_on_extreme_inputs():
    model = Ensemble()
    mean, logvar = model(torch.full((5, 2, 5), 1e6))
    assert torch.isfinite(mean).all() and torch.isfinite(logvar).all()
    # The bounds are soft: the second softplus can lift the top by softplus's tail.
    assert (logvar <= model.max_logvar + 1e-3).all()
    assert (logvar >= model.min_logvar).all()


def test_predict_adds_the_change_and_samples_reproducibly(fitted):
    model, data, _ = fitted
    states, pushes, _, next_states = data.tensors()
    s, a = states[None, :50].expand(5, -1, -1), pushes[None, :50].expand(5, -1, -1)
    with torch.no_grad():
        mean_next, reward = model.predict(s, a)
        first = model.predict(s, a, torch.Generator().manual_seed(3))[0]
        second = model.predict(s, a, torch.Generator().manual_seed(3))[0]
    assert ((reward >= 0) & (reward <= 1)).all()
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, mean_next)
    # One step on random play moves the state by ~0.02-0.3; the model is far closer.
    assert (mean_next.mean(0) - next_states[:50]).abs().max() < 0.05
    # A sample is the mean plus a standard normal times each output's standard
    # deviation exp(logvar / 2), in world units: its z-scores have mean 0 and
    # spread 1 (1,000 of them: to within about 0.05).
    inputs = (torch.cat([s, a], -1) - model.input_mean) / model.input_std
    with torch.no_grad():
        _, logvar = model(inputs)  # [5, 50, 5]
    spread = (0.5 * logvar[..., :4]).exp() * model.target_std[:4]  # [5, 50, 4]
    z = (first - mean_next) / spread
    assert abs(z.mean().item()) < 0.15 and 0.85 < z.std().item() < 1.15


def test_fit_beats_the_constant_baseline_held_out(fitted):
    _, _, stats = fitted
    # Measured: about 1.5e-4 against 1.0, in normalised units.
    assert stats["model_mse"] < 0.01 * stats["constant_mse"]


def test_fit_normalises_with_training_rows_only_and_bootstraps_each_member():
    # The held-out rows must not leak into the statistics; and members that start
    # identical must end different, which only their own resamples can do.
    data, _ = random_play(120, seed=5)
    states, pushes, rewards, next_states = data.tensors()
    model = Ensemble(members=3, hidden=8)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.copy_(layer.weight[:1].expand_as(layer.weight))
            layer.bias.copy_(layer.bias[:1].expand_as(layer.bias))
    fit(model, data.tensors(), epochs=1, holdout=0.25, seed=3)
    order = torch.randperm(len(states), generator=torch.Generator().manual_seed(3))
    train = order[int(len(states) * 0.25) :]
    inputs = torch.cat([states, pushes], -1)[train].double()
    targets = torch.cat([next_states - states, rewards[:, None]], -1)[train].double()
    torch.testing.assert_close(
        model.input_mean.double(), inputs.mean(0), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        model.target_std.double(), targets.std(0) + 1e-6, rtol=1e-5, atol=1e-6
    )
    first = model.layers[0].weight
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])


def test_fit_pulls_the_variance_bounds_together(monkeypatch):
    # With the likelihood's gradient taken away, what is left on the learned bounds is
    # the penalty 0.01 * sum(max_logvar - min_logvar): +0.01 on every upper bound and
    # -0.01 on every lower one, as PETS keeps them near the data.
    from annotated.rl import world_model

    def no_likelihood(mean, logvar, target):
        return 0.0 * (mean.sum() + logvar.sum())

    monkeypatch.setattr(world_model, "gaussian_nll", no_likelihood)
    data, _ = random_play(40, seed=1)
    model = Ensemble(members=2, hidden=8)
    fit(model, data.tensors(), epochs=1, seed=0)
    torch.testing.assert_close(model.max_logvar.grad, torch.full((5,), 0.01))
    torch.testing.assert_close(model.min_logvar.grad, torch.full((5,), -0.01))


def test_disagreement_grows_off_the_data(fitted):
    model, data, _ = fitted
    states, pushes, *_ = data.tensors()
    with torch.no_grad():
        near = model.disagreement(states, pushes)
        far = model.disagreement(states * torch.tensor([1.0, 4.0, 1.0, 4.0]), pushes)
    assert far.median() > 3 * near.median()


def test_state_dict_round_trip_through_safetensors(fitted, tmp_path):
    model, data, _ = fitted
    save_file(model.state_dict(), str(tmp_path / "ensemble.safetensors"))
    other = Ensemble()
    other.load_state_dict(load_file(str(tmp_path / "ensemble.safetensors")))
    states, pushes, *_ = data.tensors()
    s, a = states[None, :20].expand(5, -1, -1), pushes[None, :20].expand(5, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(model.predict(s, a), other.predict(s, a))


# ---- the cross-entropy method and the planner -----------------------------------


@pytest.mark.parametrize("shape", [(6,), (3, 2)])
def test_cem_finds_the_optimum_of_a_quadratic(shape):
    generator = torch.Generator().manual_seed(0)
    optimum = torch.randn(shape, generator=generator, dtype=torch.float64) * 2
    scales = torch.linspace(0.5, 3.0, optimum.numel(), dtype=torch.float64)
    scales = scales.reshape(shape)

    def score(x):  # [population, *shape] → [population]: −Σ scale (x − optimum)²
        return -(scales * (x - optimum) ** 2).flatten(1).sum(1)

    mean, std = cem(
        score,
        torch.zeros(shape, dtype=torch.float64),
        torch.full(shape, 3.0, dtype=torch.float64),
        iterations=40,
        population=200,
        elites=20,
        generator=generator,
    )
    torch.testing.assert_close(mean, optimum, rtol=0, atol=1e-3)
    assert std.max() < 1e-3


def episodes(policy_factory, count: int, max_steps: int) -> list[int]:
    env = gym.make("CartPole-v1", max_episode_steps=max_steps)
    return [run_episode(env, policy_factory(k), seed=100 + k) for k in range(count)]


def test_imagined_return_counts_a_step_only_while_every_earlier_one_was_alive():
    # A fake model whose reward at step h is a fixed sequence and that records the
    # pushes: alive 1, 0.5, 1, 0 gives 1 + 0.5 + 0.5 + 0 = 2, not the plain sum 2.5.
    rewards = torch.tensor([1.0, 0.5, 1.0, 0.0])
    seen = []

    def step(states, push):
        seen.append(push[0, :, 0].clone())
        return states + 1, rewards[len(seen) - 1].expand(states.shape[:2])

    planner = MPC(step, particles=2, horizon=4)
    plans = torch.tensor([[0.3, -0.2, 0.0, 5.0], [-1.0, 1.0, 2.0, -3.0]])
    total = planner.imagined_return(torch.zeros(4), plans)
    torch.testing.assert_close(total, torch.tensor([2.0, 2.0]), rtol=0, atol=0)
    pushes = torch.stack(seen, 1)  # [P, H]: +1 for a positive plan entry, else -1
    torch.testing.assert_close(pushes, torch.where(plans > 0, 1.0, -1.0))


def test_reset_forgets_the_warm_started_plan():
    planner = MPC(cartpole_step, horizon=5, population=10, elites=2, iterations=1)
    planner.act(np.array([0.0, 0.0, 0.05, 0.0]))
    assert planner.plan.abs().sum() > 0  # the plan the next act() would warm-start
    planner.reset()
    torch.testing.assert_close(planner.plan, torch.zeros(5), rtol=0, atol=0)


def test_planning_with_the_true_dynamics_beats_random():
    rng = np.random.default_rng(0)
    random = episodes(lambda k: lambda _: int(rng.integers(2)), 20, 100)
    planner = MPC(cartpole_step, horizon=15, population=40, elites=8, iterations=2)
    planned = episodes(lambda k: planner.act, 1, 100)
    assert np.mean(random) < 30
    assert planned == [100]


def test_planning_with_the_learned_model_beats_random(fitted):
    model, _, _ = fitted
    rng = np.random.default_rng(1)
    random = episodes(lambda k: lambda _: int(rng.integers(2)), 20, 100)
    generator = torch.Generator().manual_seed(0)
    planner = MPC(
        lambda s, a: model.predict(s, a, generator),
        particles=5,
        horizon=15,
        population=40,
        elites=8,
        iterations=2,
    )
    planned = episodes(lambda k: planner.act, 1, 100)
    # The stated margin: at least 40 steps longer than random play's mean (~22).
    assert planned[0] >= np.mean(random) + 40


def test_dyna_q_learns_values_in_the_model(fitted):
    model, data, _ = fitted
    states = data.tensors()[0]
    q, losses = dyna_q(model, states, updates=300, walkers=32, seed=0)
    with torch.no_grad():
        values = q(states).max(-1).values
    # Staying up earns 1 per step: every value is above 1 and it has started to grow.
    assert values.median() > 2.0
    assert np.mean(losses[-50:]) < np.mean(losses[:50]) * 10


# ---- bad input, the example, the demo ---------------------------------------------


def test_bad_inputs_raise_naming_the_argument():
    score = lambda x: -(x**2).sum(1)  # noqa: E731
    with pytest.raises(ValueError, match="elites must be"):
        cem(score, torch.zeros(3), torch.ones(3), population=10, elites=20)
    with pytest.raises(ValueError, match="iterations must be an int >= 1"):
        cem(score, torch.zeros(3), torch.ones(3), iterations=0)
    with pytest.raises(ValueError, match="mean .* and std .* must match"):
        cem(score, torch.zeros(3), torch.ones(4))
    with pytest.raises(ValueError, match="score must return"):
        cem(lambda x: x, torch.zeros(3), torch.ones(3))
    data = random_play(30, seed=0)[0].tensors()
    with pytest.raises(ValueError, match="pushes must be"):
        fit(Ensemble(), (data[0], data[1][:, 0], data[2], data[3]))
    with pytest.raises(ValueError, match="states must be"):
        fit(Ensemble(), (data[0][:, :3], *data[1:]))
    with pytest.raises(ValueError, match="need at least 10 transitions, got 9"):
        fit(Ensemble(), tuple(tensor[:9] for tensor in data))
    with pytest.raises(ValueError, match="start_states must be"):
        dyna_q(Ensemble(), torch.zeros(10, 3), updates=1)


def test_example_runs():
    fn, args = example()
    mean, logvar = fn(*args)
    assert mean.shape == logvar.shape == (5, 8, 5)


def test_demo_collects_fits_and_plans(tmp_path):
    metric, args, low, high = short_band("annotated/rl/world_model.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["model_mse"] < 0.1 * metrics["constant_mse"]
    assert metrics["disagreement_far"] > metrics["disagreement_near"]
    assert metrics["planner_return"] > metrics["random_return"]
    assert (tmp_path / "returns.png").exists() and (tmp_path / "model.png").exists()


# ---- benchmarks -------------------------------------------------------------------


def forward_inputs():
    torch.manual_seed(0)
    return Ensemble(), torch.randn(5, 100, 5)


@pytest.mark.benchmark(group="ensemble forward, 5 members × 100 inputs")
def test_bench_forward_loop(benchmark):
    benchmark.extra_info["label"] = "Python loop over members"
    benchmark.extra_info["baseline"] = True
    model, x = forward_inputs()
    with torch.no_grad():
        benchmark(model.forward_loop, x)


@pytest.mark.benchmark(group="ensemble forward, 5 members × 100 inputs")
def test_bench_forward_einsum(benchmark):
    benchmark.extra_info["label"] = "one einsum over members"
    model, x = forward_inputs()
    with torch.no_grad():
        benchmark(model, x)
