"""Verified against the direct sum of IMPALA's eq. 1 in float64 (to 1e-10): V-trace's
recursive targets and policy-gradient advantages on random trajectories with
terminations, truncations and random importance ratios.

Also: on-policy with rho_bar = c_bar = 1 the targets are the n-step bootstrapped returns
(to 1e-10), truncation of the ratios at exactly rho_bar and c_bar and at overflowing
ratios, Ray actors that return real CartPole rollouts with their policy version, and a
short learning run with 2 Ray actors that lifts the mean return well above random.
"""

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
import ray
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
import torch
from hypothesis import given
from hypothesis import strategies as st

from annotated.rl.distributed_rollouts import (
    ImpalaConfig,
    RolloutActor,
    Trajectory,
    collection_throughput,
    dataflow,
    example,
    impala_loss,
    main,
    train,
    vtrace,
)
import annotated.rl.distributed_rollouts as lesson
from annotated.rl.ppo import Agent

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ray_session():
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
    )
    try:
        yield
    finally:
        ray.shutdown()


def direct_vtrace(
    log_rhos, rewards, values, terminated, truncated, gamma, rho_bar, c_bar
):
    """Eq. 1 summed term by term for every s: v_s = V_s + sum_t gamma^(t-s)
    (prod_{i<t} c_i) delta_t, the sum stopping after the first step that ends an episode
    (or at the rollout's end); delta_t bootstraps unless step t terminated. The
    advantage uses v_{s+1}, or V(x_{s+1}) where the episode ended at s."""
    steps, envs = rewards.shape
    ratio = np.exp(log_rhos)
    rho, c = np.minimum(rho_bar, ratio), np.minimum(c_bar, ratio)
    done = terminated | truncated
    delta = rho * (rewards + gamma * values[1:] * ~terminated - values[:-1])
    vs = np.zeros((steps, envs))
    for n in range(envs):
        for s in range(steps):
            total, weight = 0.0, 1.0
            for t in range(s, steps):
                total += weight * delta[t, n]
                if done[t, n]:
                    break
                weight *= gamma * c[t, n]
            vs[s, n] = values[s, n] + total
    next_vs = np.concatenate([vs[1:], values[-1:]])
    next_vs = np.where(done, values[1:], next_vs)
    advantages = rho * (rewards + gamma * ~terminated * next_vs - values[:-1])
    return vs, advantages


def random_trajectory(rng, steps, envs, p_end=0.15, log_rho_scale=1.0):
    rewards = rng.normal(size=(steps, envs))
    values = rng.normal(size=(steps + 1, envs))
    terminated = rng.random((steps, envs)) < p_end
    truncated = (rng.random((steps, envs)) < p_end) & ~terminated
    log_rhos = log_rho_scale * rng.normal(size=(steps, envs))
    return log_rhos, rewards, values, terminated, truncated


def call(args, gamma, rho_bar, c_bar):
    return vtrace(*(torch.tensor(a) for a in args), gamma, rho_bar, c_bar)


@pytest.mark.parametrize(
    "seed, steps, envs, gamma, rho_bar, c_bar",
    [
        (0, 40, 3, 0.99, 1.0, 1.0),
        (1, 17, 1, 0.9, 2.0, 0.5),
        (2, 25, 4, 1.0, 1.0, 1.0),
        (3, 30, 2, 0.95, math.inf, math.inf),
    ],
)
def test_vtrace_matches_the_direct_sum_of_eq_1(
    seed, steps, envs, gamma, rho_bar, c_bar
):
    args = random_trajectory(np.random.default_rng(seed), steps, envs)
    assert args[3].any() and args[4].any()  # both kinds of episode end occur
    assert (np.exp(args[0]) > 1).any() and (np.exp(args[0]) < 1).any()
    want_vs, want_adv = direct_vtrace(*args, gamma, rho_bar, c_bar)
    vs, adv = call(args, gamma, rho_bar, c_bar)
    assert vs.dtype == torch.float64 and adv.dtype == torch.float64
    np.testing.assert_allclose(vs.numpy(), want_vs, rtol=0, atol=1e-10)
    np.testing.assert_allclose(adv.numpy(), want_adv, rtol=0, atol=1e-10)


@given(
    seed=st.integers(0, 2**32 - 1),
    steps=st.integers(1, 30),
    envs=st.integers(1, 4),
    gamma=st.floats(0.0, 1.0),
    rho_bar=st.floats(0.1, 5.0),
    c_bar=st.floats(0.1, 5.0),
)
def test_vtrace_matches_eq_1_on_random_inputs(seed, steps, envs, gamma, rho_bar, c_bar):
    args = random_trajectory(np.random.default_rng(seed), steps, envs, p_end=0.2)
    want_vs, want_adv = direct_vtrace(*args, gamma, rho_bar, c_bar)
    vs, adv = call(args, gamma, rho_bar, c_bar)
    scale = 1 + np.abs(want_vs).max() + np.abs(want_adv).max()
    np.testing.assert_allclose(vs.numpy(), want_vs, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(adv.numpy(), want_adv, rtol=0, atol=1e-10 * scale)


def test_on_policy_targets_are_n_step_bootstrapped_returns():
    rng = np.random.default_rng(5)
    steps, envs, gamma = 30, 3, 0.97
    _, rewards, values, terminated, truncated = random_trajectory(rng, steps, envs)
    done = terminated | truncated
    log_rhos = np.zeros((steps, envs))  # pi = mu
    vs, _ = call((log_rhos, rewards, values, terminated, truncated), gamma, 1.0, 1.0)
    for n in range(envs):
        for s in range(steps):
            # Rewards up to the episode's end or the rollout's, then the bootstrap.
            ret, discount, t = 0.0, 1.0, s
            while True:
                ret += discount * rewards[t, n]
                discount *= gamma
                if done[t, n] or t == steps - 1:
                    break
                t += 1
            if not terminated[t, n]:
                ret += discount * values[t + 1, n]
            assert vs[s, n].item() == pytest.approx(ret, abs=1e-10)


def test_on_policy_long_episode_is_the_monte_carlo_return():
    steps = 5000  # the backward scan is a loop, not a recursion
    rng = np.random.default_rng(6)
    rewards, values = rng.random((steps, 1)), rng.random((steps + 1, 1))
    flags = np.zeros((steps, 1), dtype=bool)
    vs, adv = call((np.zeros((steps, 1)), rewards, values, flags, flags), 1.0, 1, 1)
    to_go = np.cumsum(rewards[::-1], axis=0)[::-1] + values[-1]
    np.testing.assert_allclose(vs.numpy(), to_go, rtol=1e-12, atol=1e-9)
    # On-policy the advantage is the n-step return minus the baseline.
    np.testing.assert_allclose(adv.numpy(), to_go - values[:-1], rtol=1e-12, atol=1e-9)


def test_ratios_are_truncated_at_exactly_rho_bar_and_c_bar():
    rng = np.random.default_rng(7)
    steps, envs = 12, 2
    _, rewards, values, terminated, truncated = random_trajectory(rng, steps, envs, 0.1)
    rest = (rewards, values, terminated, truncated)
    # Ratios at the clip, above it (even overflowing exp) and equal to it give one
    # answer; so do ratios below it, which pass through.
    at = np.full((steps, envs), np.log(1.5))
    above = np.full((steps, envs), 1000.0)  # exp(1000) is inf in float64
    base_vs, base_adv = call((at, *rest), 0.9, 1.5, 1.5)
    for log_rhos in (above, at + 1e-3):
        vs, adv = call((log_rhos, *rest), 0.9, 1.5, 1.5)
        assert torch.isfinite(vs).all() and torch.isfinite(adv).all()
        torch.testing.assert_close(vs, base_vs, rtol=0, atol=1e-12)
        torch.testing.assert_close(adv, base_adv, rtol=0, atol=1e-12)
    below_vs, _ = call((at - 1e-3, *rest), 0.9, 1.5, 1.5)
    assert not torch.allclose(below_vs, base_vs, rtol=0, atol=1e-6)
    # A vanishing ratio (pi puts no mass on the action) zeroes that step's correction.
    vs, adv = call((np.full((steps, envs), -1000.0), *rest), 0.9, 1.0, 1.0)
    np.testing.assert_allclose(vs.numpy(), values[:-1], rtol=0, atol=0)
    assert (adv == 0).all()


def test_c_bar_limits_the_trace_and_rho_bar_the_fixed_point():
    # Two steps, ratio 3 everywhere: c = c_bar scales how much of step 1's error
    # reaches step 0; rho = rho_bar scales each step's own TD error.
    rewards = np.array([[1.0], [2.0]])
    values = np.array([[0.5], [0.25], [4.0]])
    flags = np.zeros((2, 1), dtype=bool)
    log_rhos = np.full((2, 1), np.log(3.0))
    gamma = 0.5
    d0 = 1.0 + gamma * 0.25 - 0.5
    d1 = 2.0 + gamma * 4.0 - 0.25
    for rho_bar, c_bar in ((1.0, 1.0), (2.0, 0.5), (3.0, 3.0)):
        vs, adv = call((log_rhos, rewards, values, flags, flags), gamma, rho_bar, c_bar)
        want_v1 = 0.25 + rho_bar * d1
        want_v0 = 0.5 + rho_bar * d0 + gamma * c_bar * rho_bar * d1
        assert vs[1, 0].item() == pytest.approx(want_v1, abs=1e-12)
        assert vs[0, 0].item() == pytest.approx(want_v0, abs=1e-12)
        want_a0 = rho_bar * (1.0 + gamma * want_v1 - 0.5)
        assert adv[0, 0].item() == pytest.approx(want_a0, abs=1e-12)


def test_episode_boundaries_stop_the_trace():
    # A huge reward right after a boundary must not reach the step before it; a
    # truncation still bootstraps from V(x_{t+1}), a termination does not.
    rewards = np.array([[1.0, 1.0], [100.0, 100.0]])
    values = np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 0.0]])
    terminated = np.array([[True, False], [False, False]])
    truncated = np.array([[False, True], [False, False]])
    log_rhos = np.zeros((2, 2))
    vs, adv = call((log_rhos, rewards, values, terminated, truncated), 0.9, 1.0, 1.0)
    assert vs[0].tolist() == pytest.approx([1.0, 1.0 + 0.9 * 5.0])
    assert adv[0].tolist() == pytest.approx([1.0, 1.0 + 0.9 * 5.0])


def test_bad_inputs_raise_naming_the_argument(monkeypatch):
    z = torch.zeros(5, 2)
    flags = torch.zeros(5, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"values must be \[T \+ 1, N\]"):
        vtrace(z, z, z, flags, flags, 0.99)
    with pytest.raises(ValueError, match=r"log_rhos must have rewards' shape \(5, 2\)"):
        vtrace(torch.zeros(4, 2), z, torch.zeros(6, 2), flags, flags, 0.99)
    with pytest.raises(ValueError, match="truncated must have rewards' shape"):
        vtrace(z, z, torch.zeros(6, 2), flags, flags[:, :1], 0.99)
    with pytest.raises(TypeError, match="must be bool tensors"):
        vtrace(z, z, torch.zeros(6, 2), z, flags, 0.99)
    with pytest.raises(ValueError, match="rho_bar and c_bar must be > 0"):
        vtrace(z, z, torch.zeros(6, 2), flags, flags, 0.99, rho_bar=0.0)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        vtrace(z, z, torch.zeros(6, 2), flags, flags, 1.5)
    with pytest.raises(ValueError, match="num_actors must be >= 1"):
        train(ImpalaConfig(num_actors=0), progress=False)
    monkeypatch.setattr(lesson, "ray", SimpleNamespace(is_initialized=lambda: False))
    with pytest.raises(RuntimeError, match=r"call ray.init\(\) first"):
        train(ImpalaConfig(), progress=False)


def test_example_and_dataflow():
    fn, args = example()
    vs, adv = fn(*args)
    assert vs.shape == adv.shape == (6, 2)
    nodes, edges = dataflow((vs, adv))
    names = {n for n, _ in nodes}
    assert all(a in names and b in names for a, b, _ in edges)


def test_learner_loss_is_on_policy_actor_critic_at_lag_zero():
    # With the behaviour log-probs of the learner's own network every rho is 1, and
    # the policy gradient equals the plain advantage actor-critic gradient.
    torch.manual_seed(0)
    agent, config = Agent(4, 2), ImpalaConfig(ent_coef=0.0, vf_coef=0.0)
    steps, envs = 6, 3
    obs = torch.randn(steps + 1, envs, 4)
    actions = torch.randint(0, 2, (steps, envs))
    with torch.no_grad():
        logits, values = agent(obs.flatten(0, 1))
    log_mu = logits.view(steps + 1, envs, 2)[:-1].log_softmax(-1)
    log_mu = log_mu.gather(-1, actions[..., None])[..., 0]
    flags = torch.zeros(steps, envs, dtype=torch.bool)
    valid = torch.ones(steps, envs, dtype=torch.bool)
    valid[2, 1] = False  # a dummy step: it must not contribute
    rewards = torch.ones(steps, envs)
    trajectory = Trajectory(
        obs, actions, log_mu, rewards, flags, flags, valid, 0, 0, []
    )
    loss, stats = impala_loss(agent, trajectory, config)
    assert stats["mean_rho"] == pytest.approx(1.0, abs=1e-6)
    assert stats["truncated_rho_fraction"] == 0.0
    agent.zero_grad()
    loss.backward()
    got = [p.grad.clone() for p in agent.actor.parameters()]
    # Reference: n-step returns minus V, times log pi, over the valid steps.
    values = values.view(steps + 1, envs)
    returns = torch.zeros(steps, envs)
    running = values[-1]
    for t in reversed(range(steps)):
        running = rewards[t] + config.gamma * running
        returns[t] = running
    next_returns = torch.cat([returns[1:], values[-1:]])
    advantages = rewards + config.gamma * next_returns - values[:-1]
    agent.zero_grad()
    logits = agent.actor(obs[:-1].flatten(0, 1)).view(steps, envs, 2)
    log_pi = logits.log_softmax(-1).gather(-1, actions[..., None])[..., 0]
    (-(log_pi * advantages)[valid].mean()).backward()
    for g, p in zip(got, agent.actor.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_learner_loss_off_policy_is_vtrace_actor_critic_with_value_and_entropy():
    # Off-policy, with episode ends, a dummy step and both extra terms on, in float64:
    # the loss and every parameter's gradient against eq. 1's targets computed
    # directly, with V-trace's targets and advantages held constant (no gradient).
    steps, envs = 7, 3
    rng = np.random.default_rng(6)
    torch.manual_seed(6)
    agent, config = Agent(4, 2).double(), ImpalaConfig(gamma=0.9, rho_bar=1.5)
    obs = torch.tensor(rng.normal(size=(steps + 1, envs, 4)))
    actions = torch.tensor(rng.integers(0, 2, size=(steps, envs)))
    log_mu = torch.tensor(np.log(rng.uniform(0.2, 0.8, size=(steps, envs))))
    rewards = torch.tensor(rng.normal(size=(steps, envs)))
    terminated = torch.tensor(rng.random((steps, envs)) < 0.2)
    truncated = torch.tensor(rng.random((steps, envs)) < 0.2) & ~terminated
    valid = torch.ones(steps, envs, dtype=torch.bool)
    valid[1:] = ~(terminated | truncated)[:-1]
    assert not valid.all()
    trajectory = Trajectory(
        obs, actions, log_mu, rewards, terminated, truncated, valid, 0, 0, []
    )
    loss, stats = impala_loss(agent, trajectory, config)
    agent.zero_grad()
    loss.backward()
    got = [p.grad.clone() for p in agent.parameters()]

    agent.zero_grad()
    logits, values = agent(obs.flatten(0, 1))
    log_probs = logits.view(steps + 1, envs, 2)[:-1].log_softmax(-1)
    values = values.view(steps + 1, envs)
    log_pi = log_probs.gather(-1, actions[..., None])[..., 0]
    vs, advantages = direct_vtrace(
        (log_pi - log_mu).detach().numpy(),
        rewards.numpy(),
        values.detach().numpy(),
        terminated.numpy(),
        truncated.numpy(),
        config.gamma,
        config.rho_bar,
        config.c_bar,
    )
    vs, advantages = torch.tensor(vs), torch.tensor(advantages)
    policy = -(log_pi * advantages)[valid].mean()
    value = 0.5 * ((values[:-1] - vs) ** 2)[valid].mean()
    entropy = -(log_probs.exp() * log_probs).sum(-1)[valid].mean()
    want = policy + config.vf_coef * value - config.ent_coef * entropy
    want.backward()
    assert loss.item() == pytest.approx(want.item(), abs=1e-12)
    assert stats["value_loss"] == pytest.approx(value.item(), abs=1e-12)
    assert stats["entropy"] == pytest.approx(entropy.item(), abs=1e-12)
    for g, p in zip(got, agent.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def two_actors(ray_session):
    actors = [RolloutActor.remote("CartPole-v1", 8, 32, i, i) for i in range(2)]
    torch.manual_seed(0)
    weights = ray.put(Agent(4, 2).state_dict())
    collection_throughput(actors, weights, 1)  # start the processes first
    yield actors, weights
    for actor in actors:
        ray.kill(actor)


def test_actors_return_cartpole_rollouts_with_their_version(two_actors):
    # The benchmarks' actors (8 environments × 32 steps, ids 0 and 1): a Ray actor is
    # a process, and starting one takes seconds.
    actors, weights = two_actors
    actor = actors[1]
    first = ray.get(actor.rollout.remote(weights, 3))
    second = ray.get(actor.rollout.remote(weights, 4))
    assert first.obs.shape == (33, 8, 4) and first.actions.shape == (32, 8)
    assert (first.version, second.version, first.actor) == (3, 4, 1)
    # The actor keeps its environments between calls: the second rollout starts where
    # the first one's bootstrap observation left off.
    torch.testing.assert_close(second.obs[0], first.obs[-1], rtol=0, atol=0)
    # The behaviour log-probs are the sent policy's (near uniform at init).
    assert (first.behaviour_log_probs - math.log(0.5)).abs().max() < 0.05
    # Each rollout reports the episodes that ended during it, and only those.
    for rollout in (first, second):
        done = rollout.terminated | rollout.truncated
        assert done.sum() == len(rollout.episode_returns) > 0
    assert all(r >= 8 for r in first.episode_returns + second.episode_returns)


def test_demo_learns_from_two_lagging_actors(ray_session, monkeypatch, tmp_path):
    # One short demo run serves the learning checks and the outputs: two actors for
    # 40,000 steps, then a one-actor throughput sweep. (Each actor is a process that
    # imports torch, seconds on two cores, so the test starts as few as it can.)
    # The demo's first two actors start side by side, and the second returns once
    # both are up: on a busy machine one can take longer to start than the run
    # lasts, and the lag assertion needs both.
    started = []

    def side_by_side(*args):
        started.append(RolloutActor.remote(*args))
        if len(started) == 2:
            ray.get([actor.__ray_ready__.remote() for actor in started])
        return started[-1]

    monkeypatch.setattr(lesson, "RolloutActor", SimpleNamespace(remote=side_by_side))
    began = time.perf_counter()
    metrics = main(
        [
            *("--actors", "2", "--total-steps", "40000", "--lr", "3e-3"),
            *("--seed", "1", "--sweep", "1", "--sweep-rounds", "2"),
            *("--out", str(tmp_path)),
        ]
    )
    wall = time.perf_counter() - began
    assert ray.is_initialized()  # the demo leaves a Ray it did not start running
    assert metrics["steps"] >= 40_000 and metrics["throughput_1"] > 0
    assert metrics["mean_lag"] > 0  # two actors: data is often an update stale
    assert metrics["mean_return"] > 100  # the last 20 episodes
    assert (tmp_path / "returns.png").exists()
    assert (tmp_path / "throughput.png").exists()
    # The TensorBoard log holds one policy lag per update (256 steps) and every
    # episode, the first ones those of a near-uniform policy (~22 on CartPole).
    (log,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    events = EventAccumulator(str(log), size_guidance={"scalars": 0}).Reload()
    assert len(events.Scalars("charts/policy_lag")) == metrics["steps"] // 256
    first = [event.value for event in events.Scalars("charts/episodic_return")[:20]]
    assert np.mean(first) < 35
    # Steps per second over the training run, which lies within the call.
    assert events.Scalars("charts/SPS")[0].value >= metrics["steps"] / wall


class Done:
    """An `ObjectRef` stand-in: the result of a call that already ran."""

    def __init__(self, value):
        self.value = value


class LocalRay:
    """The Ray calls the lesson makes, run in this process, each call at once."""

    def __init__(self):
        self.initialized, self.calls = False, []

    def init(self, **kwargs):
        self.initialized = True
        self.calls.append(("init", kwargs["num_cpus"]))

    def shutdown(self):
        self.initialized = False
        self.calls.append(("shutdown",))

    def is_initialized(self):
        return self.initialized

    def put(self, value):
        return value

    def get(self, refs):
        return [ref.value for ref in refs] if isinstance(refs, list) else refs.value

    def wait(self, refs, num_returns):
        return refs[:num_returns], refs[num_returns:]

    def kill(self, actor):
        pass


def local_actor(*args):
    """A `RolloutActor` built in this process; its `rollout.remote` runs at once."""
    actor = RolloutActor.__ray_actor_class__(*args)  # the class under @ray.remote
    return SimpleNamespace(
        rollout=SimpleNamespace(remote=lambda *call: Done(actor.rollout(*call)))
    )


def test_demo_starts_its_own_ray_and_stops_at_the_target(monkeypatch, tmp_path, capsys):
    """With no Ray running the demo starts one and shuts it down; a target of 0 is
    met as soon as 20 episodes have ended, well inside the budget."""
    local = LocalRay()
    monkeypatch.setattr(lesson, "ray", local)
    monkeypatch.setattr(lesson, "RolloutActor", SimpleNamespace(remote=local_actor))
    monkeypatch.setattr(lesson, "save", lambda fig, path, caption: path)  # no PNGs
    metrics = main(
        [
            *("--actors", "1", "--total-steps", "4096", "--target", "0"),
            *("--sweep", "1,3", "--sweep-rounds", "1", "--out", str(tmp_path)),
        ]
    )
    assert local.calls == [("init", 3), ("shutdown",)]
    assert 20 * 8 <= metrics["steps_to_target"] == metrics["steps"] < 4096
    assert math.isfinite(metrics["seconds_to_target"])
    assert "reached 0 after" in capsys.readouterr().out


def throughput_benchmark(benchmark, two_actors, count):
    actors, weights = two_actors
    rate = benchmark.pedantic(
        collection_throughput, (actors[:count], weights, 20 // count), rounds=3
    )
    benchmark.extra_info["steps per second"] = rate


@pytest.mark.benchmark(group="collect 20 rollouts of 8 CartPoles × 32 steps")
def test_bench_collect_one_actor(benchmark, two_actors):
    benchmark.extra_info["label"] = "1 Ray actor process"
    benchmark.extra_info["baseline"] = True
    throughput_benchmark(benchmark, two_actors, 1)


@pytest.mark.benchmark(group="collect 20 rollouts of 8 CartPoles × 32 steps")
def test_bench_collect_two_actors(benchmark, two_actors):
    benchmark.extra_info["label"] = "2 Ray actor processes"
    throughput_benchmark(benchmark, two_actors, 2)
