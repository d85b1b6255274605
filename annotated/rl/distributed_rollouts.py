r"""
---
title: Distributed rollouts with V-trace
summary: >-
  Actors in their own Ray processes collect CartPole rollouts with slightly stale
  copies of the policy while one learner trains on whichever batch arrives first,
  corrected for the lag with IMPALA's V-trace.
time: 30 s
references:
  - key: espeholt2018impala
    authors: [Lasse Espeholt, Hubert Soyer, Remi Munos, Karen Simonyan, Volodymyr Mnih,
      Tom Ward, Yotam Doron, Vlad Firoiu, Tim Harley, Iain Dunning, Shane Legg,
      Koray Kavukcuoglu]
    title: "IMPALA: Scalable Distributed Deep-RL with Importance Weighted
      Actor-Learner Architectures"
    year: 2018
    venue: ICML 2018
    arxiv: "1802.01561"
  - key: moritz2018ray
    authors: [Philipp Moritz, Robert Nishihara, Stephanie Wang, Alexey Tumanov, Richard
      Liaw, Eric Liang, Melih Elibol, Zongheng Yang, William Paul, Michael I. Jordan,
      Ion Stoica]
    title: "Ray: A Distributed Framework for Emerging AI Applications"
    year: 2018
    venue: OSDI 2018
    arxiv: "1712.05889"
  - key: mnih2016asynchronous
    authors: [Volodymyr Mnih, Adrià Puigdomènech Badia, Mehdi Mirza, Alex Graves,
      Timothy P. Lillicrap, Tim Harley, David Silver, Koray Kavukcuoglu]
    title: Asynchronous Methods for Deep Reinforcement Learning
    year: 2016
    venue: ICML 2016
    arxiv: "1602.01783"
  - key: schulman2017proximal
    authors: [John Schulman, Filip Wolski, Prafulla Dhariwal, Alec Radford, Oleg Klimov]
    title: Proximal Policy Optimization Algorithms
    year: 2017
    venue: arXiv preprint
    arxiv: "1707.06347"
worksheet:
  - region: vtrace
    hint: >-
      After the checks, rho = exp(log_rhos) clamped at rho_bar and c at c_bar;
      delta_t = rho_t (r_t + gamma (1 - terminated_t) V_{t+1} - V_t); walk backwards
      with correction_t = delta_t + gamma (1 - done_t) c_t correction_{t+1}, and
      v_t = V_t + correction_t. The advantage is rho_t (r_t + gamma (1 -
      terminated_t) v_{t+1} - V_t), with v_{t+1} = V_{t+1} at the last row or where
      an episode ended.
    tests:
      - test_vtrace_matches_the_direct_sum_of_eq_1
      - test_vtrace_matches_eq_1_on_random_inputs
      - test_c_bar_limits_the_trace_and_rho_bar_the_fixed_point
      - test_episode_boundaries_stop_the_trace
  - region: impala_loss
    hint: >-
      Run the agent on every observation; take log pi of the actions, log_rhos =
      log pi (detached) minus the behaviour log-probs, and V-trace on the detached
      values; over the valid steps, the policy loss is -mean(log pi * advantage), the
      value loss half the mean squared error to v_s, and the entropy's mean is
      subtracted with ent_coef; return the loss and its statistics.
    tests: [test_learner_loss_is_on_policy_actor_critic_at_lag_zero]
---

In [PPO](ppo.md) one process takes turns: it plays the game for a while, stops, learns
from what it saw, and plays again. Playing and learning never overlap, and playing is
as fast as one process can step its environments. The way out is the one every large
reinforcement-learning system takes: many *actors* that only play, each in its own
process (or machine), and one *learner* that only trains, fed by all of them.

The price is staleness. While an actor plays with the weights it was sent, the learner
keeps updating, so by the time a batch arrives it was collected by a policy a few
updates old: the *behaviour* policy $\mu$ is not the *target* policy $\pi$ being
trained. A policy gradient computed as if they were equal is biased. A3C
[@mnih2016asynchronous] accepted the bias and kept the lag small; IMPALA
[@espeholt2018impala] corrects it with *V-trace*, an off-policy return built from
truncated importance weights $\pi/\mu$, and so lets actors run as far ahead as the
hardware likes.

This lesson builds both halves. The actors are Ray actors [@moritz2018ray]: Python
classes whose instances live in their own worker processes, called through futures.
Each holds a vector of CartPole environments and a CPU copy of the policy, and returns
one rollout per call together with the *version* of the weights it used. The learner
takes whichever rollout finishes first (`ray.wait`), makes one V-trace actor-critic
step, and publishes the new weights once through Ray's object store (`ray.put`). The
lag it records is the number of updates between a batch's collection and its use.

The same code runs on a cluster: start Ray there (`ray start --head` on one machine,
`ray start --address=...` on the others) and call `ray.init(address="auto")` (the
demo's `--address auto`) instead of the in-process start; the actors are then placed
on whichever machines have room. Here, on 2 cores, the demo trains CartPole-v1 to a
mean return of 475 over 20 episodes (of a possible 500) and measures collection
throughput against the number of actor processes.
"""

import argparse
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from matplotlib.ticker import MaxNLocator
import numpy as np
import ray
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from annotated.data import integer, integers, number, torch_device
from annotated.figures import figure, save
from annotated.rl.ppo import Agent, Collector, make_envs

# ## V-trace
#
# A trajectory $x_s, a_s, r_s, \dots$ was generated by the behaviour policy $\mu$; we
# want the value function $V^\pi$ of the target policy $\pi$. V-trace
# [@espeholt2018impala] (its eq. 1) defines the $n$-step target for $V(x_s)$ as
#
# $$
# \begin{aligned}
# v_s &= V(x_s) + \sum_{t=s}^{s+n-1} \gamma^{t-s}
#   \Big(\prod_{i=s}^{t-1} c_i\Big)\, \delta_t V, \\
# \delta_t V &= \rho_t \big(r_t + \gamma V(x_{t+1}) - V(x_t)\big),
# \end{aligned}
# $$
#
# with two *truncated* importance weights
#
# $$
# \rho_t = \min\Big(\bar\rho, \frac{\pi(a_t \mid x_t)}{\mu(a_t \mid x_t)}\Big),
# \qquad
# c_i = \min\Big(\bar c, \frac{\pi(a_i \mid x_i)}{\mu(a_i \mid x_i)}\Big).
# $$
#
# They play different roles. $\rho_t$ decides *which* value function the targets
# converge to: with $\bar\rho = \infty$ it is $V^\pi$, with a smaller $\bar\rho$ a
# value function between $V^\mu$ and $V^\pi$. The product of $c_i$ decides *how fast*
# the correction travels back from later steps (like $\lambda$ in TD($\lambda$)), and
# truncating it at $\bar c$ bounds the variance of that product. The paper uses
# $\bar\rho = \bar c = 1$. On-policy ($\pi = \mu$, every ratio 1) and with
# $\bar\rho = \bar c = 1$, $v_s$ is exactly the $n$-step bootstrapped return
# $\sum_{t=s}^{s+n-1} \gamma^{t-s} r_t + \gamma^n V(x_{s+n})$, as the test checks.
#
# The sum has a recursive form [@espeholt2018impala] (remark 1 of section 4.1),
# which is what we run, backwards over the $T$ steps of a rollout in one pass:
#
# $$
# v_s - V(x_s) = \delta_s V + \gamma c_s \big(v_{s+1} - V(x_{s+1})\big),
# \quad v_T = V(x_T).
# $$
#
# The policy gradient uses the V-trace target of the *next* state as its
# Q-estimate, weighted by $\rho_s$ again:
#
# $$
# A_s = \rho_s \big(r_s + \gamma v_{s+1} - V(x_s)\big).
# $$
#
# **Episode boundaries.** A rollout of $T$ steps cuts across episodes, and the
# rollouts come from [PPO](ppo.md)'s `Collector`, with gymnasium's next-step autoreset:
# `values[t + 1]` is the value of the observation step $t$ returned, and a step after
# an episode end is a dummy (`valid` false) that the loss skips. The same two flags as
# in PPO's GAE enter at two places:
#
# - a **termination** at step $t$ removes the bootstrap: $r_t + \gamma (1 -
#   \text{term}_t) V(x_{t+1})$; a truncation keeps it, since $x_{t+1}$ is the real last
#   observation of an episode that was only cut off;
# - **either** flag cuts the trace, $\gamma (1 - \text{done}_t)\, c_t (v_{t+1} -
#   V(x_{t+1}))$, and makes $v_{t+1}$ in $A_t$ fall back to $V(x_{t+1})$: the next row
#   is the dummy step, whose target belongs to no episode.


@torch.no_grad()
def vtrace(
    log_rhos: torch.Tensor,
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""V-trace targets $v_s$ and policy-gradient advantages $A_s$, both `[T, N]`, from
    $\log \pi/\mu$ `log_rhos [T, N]`, `rewards [T, N]`, `values [T + 1, N]` (the value
    of the observation each step returned is one row down) and the two flags
    `[T, N]`."""
    if rewards.ndim != 2 or values.shape != (rewards.shape[0] + 1, rewards.shape[1]):
        raise ValueError(
            f"vtrace: values must be [T + 1, N] for rewards [T, N]; got values "
            f"{tuple(values.shape)} and rewards {tuple(rewards.shape)}"
        )
    for name, tensor in (
        ("log_rhos", log_rhos),
        ("terminated", terminated),
        ("truncated", truncated),
    ):
        if tensor.shape != rewards.shape:
            raise ValueError(
                f"vtrace: {name} must have rewards' shape {tuple(rewards.shape)}, got "
                f"{tuple(tensor.shape)}"
            )
    if terminated.dtype != torch.bool or truncated.dtype != torch.bool:
        raise TypeError("vtrace: terminated and truncated must be bool tensors")
    if not (rho_bar > 0 and c_bar > 0):
        raise ValueError(
            f"vtrace: rho_bar and c_bar must be > 0, got {rho_bar}, {c_bar}"
        )
    if not 0 <= gamma <= 1:
        raise ValueError(f"vtrace: gamma must be in [0, 1], got {gamma}")
    rhos = log_rhos.to(values.dtype).exp()  # [T, N] pi/mu; may overflow to inf
    clipped_rhos = rhos.clamp(max=rho_bar)  # rho_t, finite even where rhos is inf
    cs = rhos.clamp(max=c_bar)  # c_t
    not_terminal = 1.0 - terminated.to(values.dtype)  # [T, N]
    not_done = 1.0 - (terminated | truncated).to(values.dtype)  # [T, N]
    bootstrap = gamma * not_terminal * values[1:]  # [T, N]
    deltas = clipped_rhos * (rewards + bootstrap - values[:-1])  # [T, N]
    corrections = torch.zeros_like(deltas)  # v_s - V(x_s)
    next_correction = torch.zeros_like(values[0])  # v_T - V(x_T) = 0, [N]
    for t in reversed(range(rewards.shape[0])):
        trace = gamma * not_done[t] * cs[t]
        next_correction = deltas[t] + trace * next_correction
        corrections[t] = next_correction
    vs = values[:-1] + corrections  # [T, N]
    # v_{s+1}: the next row's target, V(x_T) after the last row, and V(x_{s+1}) alone
    # where an episode ended at s.
    later = torch.cat([corrections[1:], torch.zeros_like(corrections[:1])])  # [T, N]
    next_vs = values[1:] + not_done * later  # [T, N]
    pg_advantages = clipped_rhos * (
        rewards + gamma * not_terminal * next_vs - values[:-1]
    )
    return vs, pg_advantages


# ## What an actor sends back
#
# One rollout of $T$ steps from $E$ environments, with the observation after the last
# step appended (the learner needs $V(x_T)$ under its *current* weights, so it cannot
# use the value the actor computed), the behaviour policy's log-probabilities, the
# version of the weights that produced them, and the returns of the episodes that
# finished meanwhile. Tensors travel through Ray's object store as pickled bytes; a
# few kilobytes a rollout here.


@dataclass
class Trajectory:
    """One actor's rollout; `T` steps of `E` environments."""

    obs: torch.Tensor  # [T + 1, E, obs_dim]; the last row is the bootstrap observation
    actions: torch.Tensor  # [T, E] int64
    behaviour_log_probs: torch.Tensor  # [T, E] log mu(a|x)
    rewards: torch.Tensor  # [T, E]
    terminated: torch.Tensor  # [T, E] bool
    truncated: torch.Tensor  # [T, E] bool
    valid: torch.Tensor  # [T, E] bool: False on next-step autoreset's dummy steps
    version: int  # how many updates the weights had seen when this was collected
    actor: int  # which actor collected it
    episode_returns: list[float]  # the episodes that ended during this rollout


# ## The actor
#
# `@ray.remote` turns a class into an actor type: `RolloutActor.remote(...)` starts a
# worker process, builds the instance *there*, and returns a handle; calling
# `handle.rollout.remote(...)` sends the call and returns at once with an
# `ObjectRef`, a future of the result. Calls to one actor run one after another in
# its process, so its environments and its collector's carry-over state (the current
# observations, the running returns) stay put between calls, as they would in a
# single process.
#
# Each actor pins torch to one thread: many processes each trying to use every core
# would only fight over them. The weights argument arrives as an `ObjectRef` made by
# `ray.put`; Ray fetches it from the object store before the call runs, so the learner
# serialises each new set of weights once however many actors read it.


@ray.remote
class RolloutActor:
    """Steps `num_envs` copies of `env_id` with a CPU copy of the agent, `num_steps`
    steps per call."""

    def __init__(
        self, env_id: str, num_envs: int, num_steps: int, seed: int, actor_id: int
    ):
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        self.envs = make_envs(env_id, num_envs)
        sizes = self.envs.single_observation_space.shape[0]
        self.agent = Agent(sizes, int(self.envs.single_action_space.n))
        self.collector = Collector(self.envs, seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.num_steps = num_steps
        self.actor_id = actor_id
        self.reported = 0  # episodes already sent to the learner

    def rollout(self, weights: dict[str, torch.Tensor], version: int) -> Trajectory:
        """Load `weights` (the learner's `version`) and collect one rollout."""
        self.agent.load_state_dict(weights)
        batch = self.collector.collect(self.agent, self.num_steps, self.generator)
        last_obs = torch.as_tensor(self.collector.obs, dtype=torch.float32)[None]
        episodes = self.collector.episodes[self.reported :]
        self.reported = len(self.collector.episodes)
        return Trajectory(
            obs=torch.cat([batch.obs, last_obs]),  # [T + 1, E, obs_dim]
            actions=batch.actions,
            behaviour_log_probs=batch.log_probs,
            rewards=batch.rewards,
            terminated=batch.terminated,
            truncated=batch.truncated,
            valid=batch.valid,
            version=version,
            actor=self.actor_id,
            episode_returns=[r for _, r, _ in episodes],
        )


# ## The learner's loss
#
# The learner evaluates its *current* network on all $T + 1$ observations of a
# trajectory, forms $\log\rho_t = \log\pi(a_t \mid x_t) - \log\mu(a_t \mid x_t)$ with
# the behaviour log-probabilities the actor sent, and runs V-trace on the detached
# values. The loss is IMPALA's actor-critic loss [@espeholt2018impala] (section 4.2),
# averaged over the real (non-dummy) steps:
#
# $$
# \begin{aligned}
# L = &-\log\pi(a_s \mid x_s)\, A_s
#   + c_V\, \tfrac12 \big(V(x_s) - v_s\big)^2 \\
#   &- c_H\, H\big[\pi(\cdot \mid x_s)\big].
# \end{aligned}
# $$
#
# $v_s$ and $A_s$ are targets: no gradient flows through them, so the value loss
# moves $V$ toward $v_s$ and the policy term is the importance-weighted policy
# gradient. Unlike [PPO](ppo.md), each batch buys exactly one gradient step; V-trace
# is what makes the *next* batch, collected by an older policy, still usable. The
# returned diagnostics include the mean $\rho$ before truncation and the share of
# steps where it was truncated: both stay near 1 and 0 while the lag is small.


@dataclass
class ImpalaConfig:
    env_id: str = "CartPole-v1"  # a gymnasium id with a discrete action space
    num_actors: int = 2  # actor processes
    num_envs: int = 8  # environments per actor
    num_steps: int = 32  # steps per environment per rollout (T)
    total_steps: int = 500_000  # the budget of environment steps, over all actors
    lr: float = 1e-3  # Adam's learning rate, annealed linearly to 0 over the budget
    gamma: float = 0.99  # discount
    rho_bar: float = 1.0  # truncation of rho_t
    c_bar: float = 1.0  # truncation of c_i
    ent_coef: float = 0.01  # weight of the entropy bonus
    vf_coef: float = 0.5  # weight of the value loss
    max_grad_norm: float = 0.5  # the global gradient norm is clipped to this
    target_return: float = 475.0  # stop when the last 20 episodes average this
    seed: int = 0  # seeds the learner's network; actor i uses seed + 1 + i


def impala_loss(
    agent: nn.Module, trajectory: Trajectory, config: ImpalaConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The V-trace actor-critic loss on one trajectory (on the agent's device)."""
    steps, envs = trajectory.actions.shape
    logits, values = agent(trajectory.obs.flatten(0, 1))  # [(T+1)E, A], [(T+1)E]
    logits = logits.view(steps + 1, envs, -1)[:-1]  # [T, E, A]
    values = values.view(steps + 1, envs)  # [T + 1, E]
    log_probs = F.log_softmax(logits, dim=-1)  # [T, E, A]
    log_pi = log_probs.gather(-1, trajectory.actions[..., None])[..., 0]  # [T, E]
    log_rhos = log_pi.detach() - trajectory.behaviour_log_probs  # [T, E]
    vs, pg_advantages = vtrace(
        log_rhos,
        trajectory.rewards,
        values.detach(),
        trajectory.terminated,
        trajectory.truncated,
        config.gamma,
        config.rho_bar,
        config.c_bar,
    )
    mask = trajectory.valid.to(values.dtype)  # [T, E]
    count = mask.sum()
    policy_loss = -(log_pi * pg_advantages * mask).sum() / count
    value_loss = 0.5 * (((values[:-1] - vs) ** 2) * mask).sum() / count
    entropy = (-(log_probs.exp() * log_probs).sum(-1) * mask).sum() / count
    loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
    rhos = log_rhos.exp()
    stats = {
        "policy_loss": policy_loss.item(),
        "value_loss": value_loss.item(),
        "entropy": entropy.item(),
        "mean_rho": ((rhos * mask).sum() / count).item(),
        "truncated_rho_fraction": (
            ((rhos > config.rho_bar) * mask).sum() / count
        ).item(),
    }
    return loss, stats


# ## The learner's loop
#
# The loop keeps one rollout in flight per actor, in a dictionary from future to
# actor. `ray.wait(pending, num_returns=1)` blocks until *any* of them is ready and
# returns it: the learner never waits for the slowest actor, which is what a
# synchronous design (collect from all, then update) would do. It then
#
# 1. fetches the trajectory (`ray.get`) and records its lag, the current version
#    minus the version that collected it;
# 2. makes one gradient step on it, and bumps the version;
# 3. puts the new weights in the object store once (`ray.put`) and hands that
#    reference to the actor that just finished, with its next call.
#
# The other actors keep playing with the weights they have; they get the new ones
# when they come back. With $K$ actors the lag is therefore about $K - 1$ updates,
# more when an actor is slow. The histogram in the demo shows it: with two actors
# nearly every batch is one update old, a few are zero or a few more. An actor whose
# process comes up seconds after the others can add a tail: its first rollout, made
# with version 0, arrives as many updates late as the learner made in the meantime.
# That is V-trace's job: late batches are used, corrected, not thrown away.
#
# Because the order of arrival depends on timing, two runs with the same seed do not
# see the same batches in the same order and are not identical: the demo reaches the
# target after anywhere from about 90,000 to 350,000 environment steps (about 6 to 35
# seconds on 2 cores) over repeated runs and seeds. Determinism is one of the things a
# distributed learner gives up.
#
# Ray must already be running (`ray.init`); the loop starts its actors and ends them
# when it returns.


@dataclass
class History:
    """What a run leaves behind."""

    episodes: list[tuple[int, float, float]]  # (env steps, return, learner seconds)
    lags: list[int]  # policy lag of every trajectory used, in updates
    updates: list[dict[str, float]]  # per-update losses and diagnostics
    steps: int
    seconds: float
    target_steps: int | None
    target_seconds: float | None


def train(
    config: ImpalaConfig,
    writer: SummaryWriter | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> tuple[Agent, History]:
    """Train an `Agent` with V-trace from `config.num_actors` Ray actors."""
    if config.num_actors < 1:
        raise ValueError(f"train: num_actors must be >= 1, got {config.num_actors}")
    if not ray.is_initialized():
        raise RuntimeError("train: call ray.init() first")
    probe = make_envs(config.env_id, 1)  # checks the id and the spaces here, early
    sizes = probe.single_observation_space.shape[0], int(probe.single_action_space.n)
    probe.close()
    torch.manual_seed(config.seed)
    agent = Agent(*sizes).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.lr, eps=1e-5)
    actors = [
        RolloutActor.remote(
            config.env_id, config.num_envs, config.num_steps, config.seed + 1 + i, i
        )
        for i in range(config.num_actors)
    ]
    version = 0
    weights = ray.put({k: v.cpu() for k, v in agent.state_dict().items()})
    pending = {actor.rollout.remote(weights, version): actor for actor in actors}
    episodes: list[tuple[int, float, float]] = []
    lags: list[int] = []
    updates: list[dict[str, float]] = []
    recent: deque[float] = deque(maxlen=20)
    target_steps = target_seconds = None
    steps = 0
    batch = config.num_envs * config.num_steps
    start = time.perf_counter()
    bar = tqdm(total=config.total_steps, unit="step", disable=not progress)
    try:
        while steps < config.total_steps:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ready)
            trajectory = ray.get(ready)
            steps += batch
            seconds = time.perf_counter() - start
            lags.append(version - trajectory.version)
            for episode_return in trajectory.episode_returns:
                episodes.append((steps, episode_return, seconds))
                recent.append(episode_return)

            lr = config.lr * max(0.0, 1.0 - steps / config.total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, stats = impala_loss(agent, move(trajectory, device), config)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
            optimizer.step()
            version += 1
            weights = ray.put({k: v.cpu() for k, v in agent.state_dict().items()})
            pending[actor.rollout.remote(weights, version)] = actor

            mean_return = float(np.mean(recent)) if recent else 0.0
            updates.append({"step": steps, "lag": lags[-1], **stats})
            bar.update(batch)
            bar.set_postfix(mean_return=f"{mean_return:.0f}", lag=lags[-1])
            if writer is not None:
                for name, value in stats.items():
                    writer.add_scalar(f"losses/{name}", value, steps)
                writer.add_scalar("charts/policy_lag", lags[-1], steps)
                writer.add_scalar("charts/mean_return_20", mean_return, steps)
                for episode_return in trajectory.episode_returns:
                    writer.add_scalar("charts/episodic_return", episode_return, steps)
            if len(recent) == 20 and mean_return >= config.target_return:
                target_steps, target_seconds = steps, seconds
                break
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
    seconds = time.perf_counter() - start
    if writer is not None:
        writer.add_scalar("charts/SPS", steps / seconds, steps)
    history = History(
        episodes, lags, updates, steps, seconds, target_steps, target_seconds
    )
    return agent.cpu(), history


def move(trajectory: Trajectory, device: str) -> Trajectory:
    """The trajectory with every tensor on `device`."""
    fields = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v
        for k, v in vars(trajectory).items()
    }
    return Trajectory(**fields)


# ## Collection throughput
#
# How many environment steps per second do $K$ actor processes deliver? Each actor is
# sent all of its `rounds` calls at once, with the same weights reference: Ray queues
# them in the actor's process, which runs them back to back, so the measurement is
# the actors' own speed, not the round trip to the driver (the learner's loop, which
# sends the next call only when a batch is back, pays that trip on every rollout). The
# clock runs from the first call to the last result. With a core per actor the rate
# grows nearly linearly in $K$ until the driver, which receives every trajectory,
# becomes the bottleneck. On 2 cores it cannot pass about twice one actor's rate:
# more actors only share the same cores.


def collection_throughput(actors: list, weights: ray.ObjectRef, rounds: int) -> float:
    """Environment steps per second of `actors`, each collecting `rounds` rollouts."""
    start = time.perf_counter()
    futures = [
        actor.rollout.remote(weights, 0) for actor in actors for _ in range(rounds)
    ]
    steps = sum(trajectory.actions.numel() for trajectory in ray.get(futures))
    return steps / (time.perf_counter() - start)


def example():
    """V-trace on a 6-step, 2-environment trajectory with one termination, one
    truncation and off-policy ratios."""
    generator = torch.Generator().manual_seed(0)
    log_rhos = 0.5 * torch.randn(6, 2, generator=generator)  # [T, N]
    rewards = torch.ones(6, 2)  # [T, N]
    values = torch.randn(7, 2, generator=generator)  # [T + 1, N]
    terminated = torch.zeros(6, 2, dtype=torch.bool)
    truncated = torch.zeros(6, 2, dtype=torch.bool)
    terminated[2, 0] = True
    truncated[3, 1] = True
    return vtrace, (log_rhos, rewards, values, terminated, truncated, 0.99)


def dataflow(output):
    """The steps of V-trace with the shapes that pass between them."""
    vs, pg_advantages = output
    steps, envs = vs.shape
    tn = f"[{steps}, {envs}]"
    return (
        [
            ("log_rhos", "log π/μ"),
            ("inputs", "rewards, values, dones"),
            ("clip", "ρ = min(ρ̄, e^·), c = min(c̄, e^·)"),
            ("delta", "δ_t = ρ_t (r_t + γV_{t+1} − V_t)"),
            ("scan", "backward scan: v_s − V_s"),
            ("vs", "v_s"),
            ("pg", "A_s = ρ_s (r_s + γ v_{s+1} − V_s)"),
        ],
        [
            ("log_rhos", "clip", tn),
            ("clip", "delta", f"ρ {tn}"),
            ("inputs", "delta", f"values [{steps + 1}, {envs}]"),
            ("clip", "scan", f"c {tn}"),
            ("delta", "scan", tn),
            ("scan", "vs", tn),
            ("scan", "pg", tn),
            ("clip", "pg", f"ρ {tn}"),
        ],
    )


# ## The demo
#
# Start Ray in this process (or join a cluster with `--address`), train to the target
# with two actors, then measure collection throughput with 1, 2 and 4 actor processes.
# Ray is shut down at the end even if training fails; when Ray was already running
# (a test, a notebook) the demo uses it and leaves it running.


def plot_returns(history: History, config: ImpalaConfig, out: Path) -> Path:
    """Episode returns against the learner's wall time, and the policy lags."""
    target, actors = config.target_return, config.num_actors
    steps, returns, seconds = (np.array(c) for c in zip(*history.episodes))
    fig, axes = figure(panels=2)
    axes[0].scatter(seconds, returns, s=4, alpha=0.35, label="episode return")
    if len(returns) >= 20:
        smooth = np.convolve(returns, np.ones(20) / 20, mode="valid")
        axes[0].plot(seconds[19:], smooth, color="C1", label="mean of last 20")
    axes[0].axhline(target, color="k", ls="--", lw=1, label=f"target {target:.0f}")
    axes[0].set_xlabel("learner wall time (s)")
    axes[0].set_ylabel("return")
    # Below the panel: inside, the key would hide the first episodes that reach 500.
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=3)
    lags = np.array(history.lags)
    axes[1].hist(lags, bins=np.arange(lags.max() + 2) - 0.5, rwidth=0.8, log=True)
    # A lag is a whole number of updates: no tick at 0.5.
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("policy lag (updates)")
    axes[1].set_ylabel("trajectories")
    axes[1].set_title(f"mean lag {lags.mean():.2f}, max {lags.max()}")
    lag_share = float(np.mean(lags == 1))
    words = {1: "one Ray actor process", 2: "two Ray actor processes"}
    processes = words.get(actors, f"{actors} Ray actor processes")
    return save(
        fig,
        out / "returns.png",
        caption=f"Left: {config.env_id} episode returns against the learner's "
        f"wall-clock time, trained by V-trace from {processes}; the orange line is the "
        "mean of the last 20 episodes. Right: how many updates old the policy that "
        "collected each trajectory was when the learner used it (log scale): "
        f"{lag_share:.0%} of them were one update old, the mean lag was "
        f"{lags.mean():.2f} updates and the longest {lags.max()}.",
    )


def plot_throughput(counts: list[int], rates: list[float], out: Path) -> Path:
    """Collection throughput against the number of actor processes."""
    fig, ax = figure()
    ax.plot(counts, rates, marker="o", label="measured")
    ax.plot(
        counts,
        [rates[0] * k for k in counts],
        ls="--",
        color="gray",
        label="linear in actors",
    )
    ax.set_xticks(counts)
    ax.set_xlabel("actor processes")
    ax.set_ylabel("environment steps / s")
    ax.set_ylim(bottom=0)
    ax.legend()
    return save(
        fig,
        out / "throughput.png",
        caption="Rollout collection throughput of CartPole-v1 actors against the "
        "number of actor processes, each stepping 8 environments, on a 2-core "
        "machine, with the linear scaling a machine with a core per actor would "
        "approach: here the curve saturates by 2 actors, since every further "
        "process (and the driver that receives the rollouts) shares the same 2 "
        "cores.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train with V-trace from Ray actors to a return target; measure throughput."""
    defaults = ImpalaConfig()
    parser = argparse.ArgumentParser(
        description="IMPALA-style V-trace learning from Ray rollout actors.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--env-id", default=defaults.env_id, help="gymnasium id")
    parser.add_argument(
        "--actors",
        type=integer(at_least=1),
        default=defaults.num_actors,
        help="actor processes",
    )
    parser.add_argument(
        "--total-steps",
        type=integer(at_least=1),
        default=defaults.total_steps,
        help="environment-step budget (the learning rate anneals to 0 over it)",
    )
    parser.add_argument(
        "--lr",
        type=number(above=0),
        default=defaults.lr,
        help="Adam's learning rate, annealed to 0 over the budget",
    )
    parser.add_argument(
        "--target", type=number(), default=defaults.target_return, help="stop at this"
    )
    parser.add_argument(
        "--sweep",
        type=integers(at_least=1),
        default="1,2,4",
        help="actor counts for the throughput figure, comma-separated",
    )
    parser.add_argument(
        "--sweep-rounds",
        type=integer(at_least=1),
        default=40,
        help="rollouts per actor per count",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=defaults.seed, help="random seed"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto' or host:port); omit to start one here",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device for the learner (actors act on their CPUs)",
    )
    parser.add_argument(
        "--out", default="out/distributed_rollouts", help="folder for the outputs"
    )
    args = parser.parse_args(argv)
    counts = args.sweep
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = ImpalaConfig(
        env_id=args.env_id,
        num_actors=args.actors,
        total_steps=args.total_steps,
        lr=args.lr,
        target_return=args.target,
        seed=args.seed,
    )
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=args.address,
            num_cpus=None if args.address else max(counts + [args.actors]),
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
    try:
        writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        agent, history = train(config, writer, device=args.device)
        writer.close()

        # One pool of actors, measured with its first 1, 2, ... members.
        actors = [
            RolloutActor.remote(
                config.env_id, config.num_envs, config.num_steps, 100 + i, i
            )
            for i in range(max(counts))
        ]
        weights = ray.put(agent.state_dict())
        collection_throughput(actors, weights, 1)  # start-up and first reset
        rates = [
            collection_throughput(actors[:count], weights, args.sweep_rounds)
            for count in tqdm(counts, desc="throughput")
        ]
        for actor in actors:
            ray.kill(actor)
    finally:
        if started:
            ray.shutdown()

    last_20 = [r for _, r, _ in history.episodes[-20:]]
    mean_return = float(np.mean(last_20)) if last_20 else 0.0
    print(f"episodes {len(history.episodes)}, env steps {history.steps:,}")
    print(f"mean return of the last 20 episodes {mean_return:.1f}")
    if history.target_seconds is None:
        print(
            f"target {config.target_return:.0f} not reached in {history.seconds:.1f} s"
        )
    else:
        print(
            f"reached {config.target_return:.0f} after {history.target_steps:,} steps "
            f"in {history.target_seconds:.1f} s"
        )
    print(f"mean policy lag {np.mean(history.lags):.2f} updates")
    for count, rate in zip(counts, rates):
        print(f"{count} actor(s): {rate:,.0f} steps/s")
    if history.episodes:
        plot_returns(history, config, out)
    plot_throughput(counts, rates, out)
    return {
        "mean_return": mean_return,
        "seconds_to_target": history.target_seconds or float("nan"),
        "steps_to_target": float(history.target_steps or float("nan")),
        "steps_per_second": history.steps / history.seconds,
        "mean_lag": float(np.mean(history.lags)),
        "steps": float(history.steps),
        **{f"throughput_{k}": rate for k, rate in zip(counts, rates)},
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Set `rho_bar` and `c_bar` to infinity (no truncation) and train with 4 actors.
#    How large do the ratios $\rho$ get (the `mean_rho` curve in TensorBoard; add
#    `rhos.max()` to `impala_loss`'s stats to see the largest, since
#    `truncated_rho_fraction` is 0 with no truncation), and what happens to the return?
# 2. Replace V-trace by the on-policy targets (every `log_rhos` set to 0) and raise the
#    lag on purpose: give each actor 8 times more steps per rollout. At what lag does
#    the uncorrected learner fall behind the corrected one?
# 3. Make the learner synchronous: wait for *all* actors (`ray.wait` with
#    `num_returns=len(pending)`), update once on their concatenated batch, and send the
#    same weights to all. The lag is now 0; compare steps per second and seconds to
#    the target.
# 4. Start a Ray cluster of two machines and run the demo with `--address auto` and 8
#    actors. Where does the throughput curve bend now: in the actors, or in the
#    learner's loop that receives every trajectory?
