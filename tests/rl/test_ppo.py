"""Verified against explicit definitions in float64: GAE against the direct sum of
discounted TD errors up to each episode boundary (to 1e-10), the clipped policy and
value losses and their gradients against the piecewise form (to 1e-12).

Gymnasium's next-step autoreset is checked on a real CartPole rollout (dummy steps
masked, returns equal to episode lengths, fresh reset states after each dummy step), and
a short training run must lift the mean return well above a random policy's ~22.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import annotated.rl.ppo as lesson
from tools.literate.figures import short_band
from annotated.rl.ppo import (
    Agent,
    Collector,
    PPOConfig,
    Rollout,
    clipped_policy_loss,
    clipped_value_loss,
    example,
    gae,
    main,
    make_envs,
    ppo_update,
    train,
)

torch.set_num_threads(1)


def explicit_gae(rewards, values, terminated, truncated, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, the sum stopping after the first step that
    ends an episode; delta bootstraps from values[t + 1] unless the step terminated."""
    steps, envs = rewards.shape
    delta = rewards + gamma * values[1:] * (1 - terminated) - values[:-1]
    done = terminated | truncated
    out = np.zeros((steps, envs))
    for n in range(envs):
        for t in range(steps):
            total, weight = 0.0, 1.0
            for k in range(t, steps):
                total += weight * delta[k, n]
                if done[k, n]:
                    break
                weight *= gamma * lam
            out[t, n] = total
    return out


@pytest.mark.parametrize(
    "seed, steps, envs, gamma, lam",
    [(0, 40, 3, 0.99, 0.95), (1, 17, 1, 0.9, 0.0), (2, 25, 4, 1.0, 1.0)],
)
def test_gae_matches_explicit_sum_with_both_flags(seed, steps, envs, gamma, lam):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(steps, envs))
    values = rng.normal(size=(steps + 1, envs))
    terminated = rng.random((steps, envs)) < 0.15
    truncated = (rng.random((steps, envs)) < 0.15) & ~terminated
    assert terminated.any() and truncated.any()
    want = explicit_gae(rewards, values, terminated, truncated, gamma, lam)
    got = gae(
        torch.tensor(rewards),
        torch.tensor(values),
        torch.tensor(terminated),
        torch.tensor(truncated),
        gamma,
        lam,
    )
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-10)


def test_gae_bootstraps_on_truncation_but_not_on_termination():
    rewards, values = torch.tensor([[1.0]]), torch.tensor([[2.0], [5.0]])
    no, yes = torch.tensor([[False]]), torch.tensor([[True]])
    assert gae(rewards, values, no, yes, 0.9, 0.95).item() == pytest.approx(3.5)
    assert gae(rewards, values, yes, no, 0.9, 0.95).item() == pytest.approx(-1.0)
    # Across a boundary the later step's advantage must not leak backwards.
    rewards = torch.tensor([[1.0], [100.0]])
    values = torch.tensor([[0.0], [0.0], [0.0]])
    flags = torch.tensor([[True], [False]])
    for term, trunc in ((flags, ~flags & flags), (~flags & flags, flags)):
        assert gae(rewards, values, term, trunc, 0.9, 0.95)[0, 0].item() == 1.0


def test_gae_on_a_long_episode_is_the_monte_carlo_return_at_lambda_one():
    steps = 5000
    rng = np.random.default_rng(3)
    rewards = rng.random((steps, 1))
    values = rng.random((steps + 1, 1))
    flags = torch.zeros(steps, 1, dtype=torch.bool)
    got = gae(torch.tensor(rewards), torch.tensor(values), flags, flags, 1.0, 1.0)
    to_go = np.cumsum(rewards[::-1], axis=0)[::-1] + values[-1] - values[:-1]
    np.testing.assert_allclose(got.numpy(), to_go, rtol=1e-12, atol=1e-9)


def piecewise_policy_loss(ratio, adv, eps):
    """-mean(min(r A, clip(r) A)) written by the sign of A; and its gradient in r."""
    value = np.where(adv >= 0, np.minimum(ratio, 1 + eps), np.maximum(ratio, 1 - eps))
    active = np.where(adv >= 0, ratio <= 1 + eps, ratio >= 1 - eps)
    return -(value * adv).mean(), -np.where(active, adv, 0.0) / len(ratio)


def test_clipped_policy_loss_matches_piecewise_definition_at_the_boundaries():
    eps = 0.2
    ratio = np.array([0.5, 0.8, 0.9, 1.0, 1.2, 1.5, 0.5, 0.8, 1.0, 1.1, 1.2, 1.5])
    adv = np.array([2.0] * 6 + [-3.0] * 6)
    assert 1 + eps == 1.2 and 1 - eps == 0.8  # the boundaries are hit exactly
    r = torch.tensor(ratio, requires_grad=True)
    loss = clipped_policy_loss(r, torch.tensor(adv), eps)
    loss.backward()
    want_loss, want_grad = piecewise_policy_loss(ratio, adv, eps)
    assert loss.item() == pytest.approx(want_loss, abs=1e-12)
    np.testing.assert_allclose(r.grad.numpy(), want_grad, rtol=0, atol=1e-12)


def test_clipped_policy_loss_gradient_is_zero_only_past_the_clip():
    eps = 0.2
    ratio = torch.tensor([1.3, 0.7, 0.7, 1.3, 1.2 + 1e-9], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    ratio.requires_grad_(True)
    clipped_policy_loss(ratio, adv, eps).backward()
    # A > 0 above 1 + eps, A < 0 below 1 - eps: flat. The other sides still pull back.
    assert ratio.grad[0] == 0 and ratio.grad[1] == 0 and ratio.grad[4] == 0
    assert ratio.grad[2] == pytest.approx(-1 / 5) and ratio.grad[3] == pytest.approx(
        1 / 5
    )


def test_clipped_value_loss_matches_definition_and_gradient():
    rng = np.random.default_rng(4)
    values, old, returns = rng.normal(size=(3, 64))
    eps = 0.2
    moved = old + np.clip(values - old, -eps, eps)
    want = 0.5 * np.maximum((values - returns) ** 2, (moved - returns) ** 2).mean()
    v = torch.tensor(values, requires_grad=True)
    got = clipped_value_loss(v, torch.tensor(old), torch.tensor(returns), eps)
    got.backward()
    assert got.item() == pytest.approx(want, abs=1e-12)
    use_unclipped = (values - returns) ** 2 >= (moved - returns) ** 2
    inside = np.abs(values - old) <= eps
    grad = np.where(use_unclipped | inside, values - returns, 0.0) / len(values)
    # Where both terms tie (inside the clip) both give the same gradient.
    np.testing.assert_allclose(v.grad.numpy(), grad, rtol=0, atol=1e-12)


def test_ppo_update_steps_down_the_combined_loss_on_the_valid_steps_only():
    # One epoch, one minibatch, SGD at lr 1 and no effective norm clip: the update
    # must move every parameter by minus the gradient of the loss written out here,
    # with returns A + V(s_t), advantages normalised over the valid steps, and the
    # entropy bonus subtracted, all in float64.
    steps, envs, gamma, lam = 6, 3, 0.9, 0.8
    rng = np.random.default_rng(5)
    torch.manual_seed(5)
    agent = Agent(4, 2).double()
    obs = torch.tensor(rng.normal(size=(steps, envs, 4)))
    actions = torch.tensor(rng.integers(0, 2, size=(steps, envs)))
    with torch.no_grad():
        logits, _ = agent(obs.flatten(0, 1))
        sampled = logits.log_softmax(-1).gather(1, actions.flatten()[:, None])[:, 0]
    noise = torch.tensor(rng.normal(scale=0.2, size=steps * envs))
    terminated = torch.tensor(rng.random((steps, envs)) < 0.2)
    truncated = torch.tensor(rng.random((steps, envs)) < 0.2) & ~terminated
    valid = torch.ones(steps, envs, dtype=torch.bool)
    valid[1:] = ~(terminated | truncated)[:-1]
    rollout = Rollout(
        obs=obs,
        actions=actions,
        log_probs=(sampled + noise).reshape(steps, envs),
        values=torch.tensor(rng.normal(size=(steps + 1, envs))),
        rewards=torch.tensor(rng.normal(size=(steps, envs))),
        terminated=terminated,
        truncated=truncated,
        valid=valid,
    )
    assert not valid.all() and (terminated.any() or truncated.any())
    config = PPOConfig(gamma=gamma, gae_lambda=lam, update_epochs=1, num_minibatches=1)
    config.max_grad_norm = 1e12

    reference = Agent(4, 2).double()
    reference.load_state_dict(agent.state_dict())
    advantages = explicit_gae(
        rollout.rewards.numpy(),
        rollout.values.numpy(),
        terminated.numpy(),
        truncated.numpy(),
        gamma,
        lam,
    )
    keep = valid.flatten().numpy()
    returns = (advantages + rollout.values[:-1].numpy()).flatten()[keep]
    adv = advantages.flatten()[keep]
    adv = torch.tensor((adv - adv.mean()) / (adv.std(ddof=1) + 1e-8))
    logits, values = reference(obs.flatten(0, 1)[keep])
    log_probs = logits.log_softmax(-1)
    taken = log_probs.gather(1, actions.flatten()[keep][:, None])[:, 0]
    ratio = (taken - rollout.log_probs.flatten()[keep]).exp()
    policy = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
    old = rollout.values[:-1].flatten()[keep]
    moved = old + (values - old).clamp(-0.2, 0.2)
    returns = torch.tensor(returns)
    value = 0.5 * torch.maximum((values - returns) ** 2, (moved - returns) ** 2).mean()
    entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
    (policy + 0.5 * value - 0.01 * entropy).backward()
    assert ((ratio - 1).abs() > 0.2).any() and ((ratio - 1).abs() < 0.2).any()

    optimizer = torch.optim.SGD(agent.parameters(), lr=1.0)
    stats = ppo_update(agent, optimizer, rollout, config, torch.Generator())
    assert stats["policy_loss"] == pytest.approx(policy.item(), abs=1e-12)
    assert stats["value_loss"] == pytest.approx(value.item(), abs=1e-12)
    assert stats["entropy"] == pytest.approx(entropy.item(), abs=1e-12)
    for (name, got), want in zip(agent.named_parameters(), reference.parameters()):
        step = (got - want).detach()
        torch.testing.assert_close(step, -want.grad, rtol=0, atol=1e-12, msg=name)


def test_next_step_autoreset_is_masked_and_returns_are_episode_lengths():
    envs = make_envs("CartPole-v1", 4)
    torch.manual_seed(0)
    collector = Collector(envs, seed=0)
    rollout = collector.collect(Agent(4, 2), 200, torch.Generator().manual_seed(0))
    envs.close()
    done = rollout.terminated | rollout.truncated
    assert done.sum() >= 10  # a random policy ends many episodes in 200 steps
    assert rollout.valid[0].all()
    assert torch.equal(rollout.valid[1:], ~done[:-1])
    dummy = ~rollout.valid
    assert (rollout.rewards[dummy] == 0).all() and not done[dummy].any()
    # After each dummy step the copy starts afresh: CartPole resets in [-0.05, 0.05].
    after = torch.zeros_like(dummy)
    after[1:] = dummy[:-1]
    assert rollout.obs[after].abs().max() <= 0.05
    # CartPole pays 1 a step: each finished episode's return is its valid step count,
    # and the collector recorded exactly these returns.
    returns = []
    for n in range(4):
        ends = done[:, n].nonzero()[:, 0].tolist()
        for start, end in zip([0] + [e + 1 for e in ends[:-1]], ends):
            episode = slice(start, end + 1)
            length = rollout.valid[episode, n].sum().item()
            assert rollout.rewards[episode, n].sum().item() == length
            returns.append(float(length))
    assert sorted(r for _, r, _ in collector.episodes) == sorted(returns)


def test_a_truncation_is_followed_by_a_masked_dummy_step_too():
    # Episodes cut at 5 steps, shorter than any CartPole fall: every episode ends by
    # truncation, and next-step autoreset still spends one dummy step after each.
    envs = gym.make_vec("CartPole-v1", num_envs=2, max_episode_steps=5)
    collector = Collector(envs, seed=0)
    torch.manual_seed(0)
    rollout = collector.collect(Agent(4, 2), 18, torch.Generator().manual_seed(0))
    envs.close()
    assert rollout.truncated.any() and not rollout.terminated.any()
    assert torch.equal(rollout.valid[1:], ~rollout.truncated[:-1])
    assert (~rollout.valid).sum() >= 4  # 18 steps: ends at 4, 10, 16 in each copy
    assert sorted(r for _, r, _ in collector.episodes) == [5.0] * len(
        collector.episodes
    )


def test_short_training_run_beats_random_clearly():
    # Ten times the demo's learning rate so that 12 updates (6,144 steps) show it;
    # seeds 0-2 reach 137-181 here.
    config = PPOConfig(total_steps=12 * 512, lr=2.5e-3, seed=1)
    _, history = train(config, progress=False)
    last = [r for _, r, _ in history.episodes[-20:]]
    first = [r for _, r, _ in history.episodes[:20]]
    assert np.mean(first) < 35  # an untrained, near-uniform policy: ~22
    assert np.mean(last) > 80
    # The learning rate anneals linearly towards 0 over the updates, as CleanRL's does.
    lrs = [update["lr"] for update in history.updates]
    assert lrs == pytest.approx([2.5e-3 * (1 - i / 12) for i in range(12)], rel=1e-12)


def test_demo_writes_its_outputs(tmp_path):
    metric, args, low, high = short_band("annotated/rl/ppo.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["steps"] == 2048 and metrics["steps_per_second"] > 0
    assert np.isnan(metrics["seconds_to_target"])  # 475 is not reached in 2048 steps
    assert (tmp_path / "returns.png").exists()
    assert (tmp_path / "diagnostics.png").exists()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    weights = load_file(str(tmp_path / "agent.safetensors"))
    assert weights["actor.4.weight"].shape == (2, 64)


def test_training_stops_after_the_rollout_that_reaches_the_target(
    tmp_path, monkeypatch, capsys
):
    """A target of 0 is met once 20 episodes have ended: within the first rollout
    (512 steps of ~22-step episodes), so the second of the budget never runs."""
    monkeypatch.setattr(lesson, "save", lambda fig, path, caption: path)  # no PNGs
    metrics = main(["--total-steps", "1024", "--target", "0", "--out", str(tmp_path)])
    assert metrics["steps"] == metrics["steps_to_target"] == 512
    assert 0 < metrics["seconds_to_target"]
    assert "reached 0 after 512 steps" in capsys.readouterr().out


def test_agent_checkpoint_round_trip_and_near_uniform_start(tmp_path):
    agent, (obs,) = example()
    save_file(agent.state_dict(), str(tmp_path / "a.safetensors"))
    other = Agent(4, 2)
    other.load_state_dict(load_file(str(tmp_path / "a.safetensors")))
    for a, b in zip(agent(obs), other(obs)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    probs = agent(obs)[0].softmax(-1)
    assert (probs - 0.5).abs().max() < 0.05  # the 0.01 gain on the actor's last layer


def test_bad_inputs_raise_naming_the_argument():
    with pytest.raises(ValueError, match="env_id 'NoSuchEnv-v0' is not a registered"):
        make_envs("NoSuchEnv-v0", 2)
    with pytest.raises(ValueError, match="'Pendulum-v1' has a Box action space"):
        make_envs("Pendulum-v1", 2)
    with pytest.raises(ValueError, match="mode must be 'sync' or 'async'"):
        make_envs("CartPole-v1", 2, mode="threads")
    with pytest.raises(ValueError, match="'FrozenLake-v1' must observe a flat Box"):
        make_envs("FrozenLake-v1", 2)  # Discrete actions, but a Discrete observation
    flags = torch.zeros(5, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"values must be \[T \+ 1, N\]"):
        gae(torch.zeros(5, 2), torch.zeros(5, 2), flags, flags, 0.99, 0.95)
    rewards, values = torch.zeros(5, 2), torch.zeros(6, 2)
    with pytest.raises(ValueError, match="terminated and truncated must have rewards'"):
        gae(rewards, values, flags, flags[:, :1], 0.99, 0.95)
    with pytest.raises(ValueError, match="at least one rollout, .* 512 steps, got 100"):
        train(PPOConfig(total_steps=100), progress=False)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--total-steps", "100"], "--total-steps: expected a whole number >= 512"),
        (["--threads", "0"], "--threads: expected a whole number >= 1"),
    ],
)
def test_demo_refuses_bad_flags_before_writing(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([*flags, "--out", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_example_runs():
    fn, args = example()
    logits, value = fn(*args)
    assert logits.shape == (8, 2) and value.shape == (8,)


def rollout_benchmark(benchmark, mode):
    envs = make_envs("CartPole-v1", 4, mode=mode)
    torch.manual_seed(0)
    agent, collector = Agent(4, 2), Collector(envs, seed=0)
    generator = torch.Generator().manual_seed(0)
    try:
        benchmark.pedantic(
            collector.collect, (agent, 128, generator), rounds=5, warmup_rounds=1
        )
    finally:
        envs.close()


@pytest.mark.benchmark(group="rollout, 4 CartPoles × 128 steps")
def test_bench_rollout_sync(benchmark):
    benchmark.extra_info["label"] = "gymnasium SyncVectorEnv"
    benchmark.extra_info["baseline"] = True
    rollout_benchmark(benchmark, "sync")


@pytest.mark.benchmark(group="rollout, 4 CartPoles × 128 steps")
def test_bench_rollout_async(benchmark):
    benchmark.extra_info["label"] = "gymnasium AsyncVectorEnv, 4 subprocesses"
    rollout_benchmark(benchmark, "async")
