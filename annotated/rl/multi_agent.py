r"""
---
title: Multi-agent learning with a centralised critic
summary: >-
  A cooperative grid world on PettingZoo's parallel API, and PPO for its agents twice:
  independent critics (IPPO) and one centralised critic on the global state (MAPPO),
  with shared, decentralised actors.
time: 70 s
references:
  - key: yu2022surprising
    authors: [Chao Yu, Akash Velu, Eugene Vinitsky, Jiaxuan Gao, Yu Wang,
      Alexandre Bayen, Yi Wu]
    title: The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games
    year: 2022
    venue: NeurIPS Datasets and Benchmarks
    arxiv: "2103.01955"
  - key: dewitt2020independent
    authors: [Christian Schroeder de Witt, Tarun Gupta, Denys Makoviichuk, Viktor
      Makoviychuk, Philip H. S. Torr, Mingfei Sun, Shimon Whiteson]
    title: Is Independent Learning All You Need in the StarCraft Multi-Agent Challenge?
    year: 2020
    venue: arXiv preprint
    arxiv: "2011.09533"
  - key: lowe2017multi
    authors: [Ryan Lowe, Yi Wu, Aviv Tamar, Jean Harb, Pieter Abbeel, Igor Mordatch]
    title: Multi-Agent Actor-Critic for Mixed Cooperative-Competitive Environments
    year: 2017
    venue: NeurIPS
    arxiv: "1706.02275"
  - key: terry2021pettingzoo
    authors: [J. K. Terry, Benjamin Black, Nathaniel Grammel, Mario Jayakumar,
      Ananth Hari, Ryan Sullivan, Luis Santos, Rodrigo Perez, Caroline Horsch,
      Clemens Dieffendahl, Niall L. Williams, Yashas Lokesh, Praveen Ravi]
    title: "PettingZoo: Gym for Multi-Agent Reinforcement Learning"
    year: 2021
    venue: NeurIPS
    arxiv: "2009.14471"
  - key: schulman2016high
    authors: [John Schulman, Philipp Moritz, Sergey Levine, Michael Jordan,
      Pieter Abbeel]
    title: High-Dimensional Continuous Control Using Generalized Advantage Estimation
    year: 2016
    venue: ICLR 2016
    arxiv: "1506.02438"
worksheet:
  - region: CoverLandmarks.step
    hint: >-
      Check that the episode is running and that there is one valid action per live
      agent; move every agent at once, clipped to the grid; advance the clock; the
      team reward, the same for every agent, is minus the mean over landmarks of the
      nearest agent's Manhattan distance over (size - 1); truncate everyone at
      max_cycles (and empty agents), and report the covered count in the infos.
    tests:
      - test_moves_walls_and_team_reward_on_a_hand_set_grid
      - test_both_agents_on_one_landmark_leave_the_other_on_the_bill
      - test_episode_truncates_every_agent_at_max_cycles
  - region: ActorCritic.forward
    hint: >-
      Append a one-hot agent id to each agent's input; the actor reads its own
      observation and id; the critic reads the global state (copied for every
      agent) when centralised, else the agent's observation, plus the id. Return
      logits [B, n, actions] and values [B, n].
    tests:
      - test_centralised_critic_reads_the_state_and_the_actor_does_not
      - test_agent_id_lets_the_shared_actor_act_differently
  - region: ppo_loss
    hint: >-
      From a Categorical over the logits take the log-probabilities of the actions
      and the ratio to the old ones; normalise the advantages (mean 0, std 1);
      loss = -mean(min(ratio A, clip(ratio) A)) + value_coef MSE(V, R) -
      entropy_coef mean entropy; return it with the three parts as floats.
    tests: [test_ppo_loss_matches_a_direct_computation_with_gradients]
---

Several agents act at once, each seeing only part of the world, and the team is paid
one reward for what they achieve together. Nothing in a single agent's view says which
of its teammates' moves caused a good step, and from each agent's point of view the
others are part of a world that keeps changing as they learn. Two answers to that are
compared here, both built on [PPO](ppo.md):

- **IPPO**, independent PPO [@dewitt2020independent]: every agent runs PPO as if it
  were alone, its critic judging its own partial observation.
- **MAPPO** [@yu2022surprising]: the same actors, but a *centralised critic* that sees
  the global state during training. The critic is thrown away at execution time, when
  each agent acts on its own observation only: *centralised training, decentralised
  execution*, the scheme MADDPG [@lowe2017multi] made standard.

The world is written here as a PettingZoo *parallel* environment
[@terry2021pettingzoo]: two agents on a 5×5 grid must each stand on a different one of
two landmarks, seeing the landmarks but their teammate only when it is next to them.
The test runs PettingZoo's own `parallel_api_test` against it. The demo trains both
methods for 100,000 environment steps each, about 45 s on 2 CPU cores. Scored on
500 episodes, the trained teams end 0.93 to 0.98 of them with both landmarks covered,
against 0.002 for random agents (the printed output below has the measured numbers). On
a task this small the centralised critic buys little over independent critics: 0.93
against 0.93 in the run below and in one on another machine, 0.98 against 0.94 in a
third. That is de Witt et al.'s finding on harder maps too [@dewitt2020independent];
the exercises make the task harder.
"""

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo import ParallelEnv
from torch import nn
from tqdm import tqdm

from annotated.data import integer, number, torch_device
from annotated.figures import figure, save

# ## The world: covering landmarks
#
# $n$ agents and $n$ landmarks on a $k\times k$ grid, both placed at random at the
# start of an episode (the landmarks on distinct cells). At every step each agent
# picks one of five moves, stay, up, down, left or right; a move into the wall leaves
# it where it is, and agents may share a cell. After the moves the team is paid a
# variant of the reward of MADDPG's *cooperative navigation* task [@lowe2017multi]
# (which sums the distances and also penalises collisions): minus the mean, over
# landmarks, of the distance from each landmark to its nearest agent,
#
# $$
# r_t = -\frac{1}{n(k-1)} \sum_{j} \min_i \lVert p_i - \ell_j \rVert_1,
# $$
#
# the same number for every agent ($p_i$ an agent's cell, $\ell_j$ a landmark's, the
# distance counted in moves and scaled by $k-1$). It is 0 exactly when every landmark
# is covered. An episode lasts `max_cycles` steps (12 by default: the farthest
# landmark on a 5×5 grid is 8 moves away) and *succeeds* when every landmark is
# covered at its last step. Two agents on the same landmark leave the other one's
# distance on the bill, so the team has to split up; and since nothing tells an agent
# where its teammate is heading, the two must agree on who takes which landmark
# without talking. (A first version paid the covered fraction instead, 1/2 for one
# landmark covered: both methods settled on sending both agents to the nearer
# landmark, and success stayed near 1 %. The distance gives the second agent a
# gradient toward the other landmark.)
#
# **What each agent sees** (its *observation*, a vector in $[-1, 1]$): its own cell;
# the offset from it to every landmark; the time left; and, for each teammate, the
# offset to it and a flag that is 1 only when the teammate is within `sight` cells
# (Chebyshev distance, 1 by default: the 3×3 block around the agent); a teammate
# farther away reads as zeros. The **global state**, `state()`, is every agent's and
# every landmark's cell and the time left: what a centralised critic gets and an actor
# never does. PettingZoo defines `state()` on its environments for exactly this use
# [@terry2021pettingzoo].


MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])  # stay, up, down, ←, →


class CoverLandmarks(ParallelEnv):
    """A cooperative grid world on PettingZoo's parallel API: `n_agents` agents must
    cover `n_agents` landmarks together."""

    metadata = {
        "name": "cover_landmarks_v0",
        "render_modes": ["rgb_array"],
        "is_parallelizable": True,
    }

    def __init__(
        self,
        n_agents: int = 2,
        size: int = 5,
        max_cycles: int = 12,
        sight: int = 1,
        render_mode: str | None = None,
    ):
        if not isinstance(size, int) or size < 2:
            raise ValueError(f"size must be an int >= 2, got {size!r}")
        if not isinstance(n_agents, int) or not 1 <= n_agents <= size * size:
            raise ValueError(
                f"n_agents must be an int in [1, size²={size * size}], got {n_agents!r}"
            )
        if not isinstance(max_cycles, int) or max_cycles < 1:
            raise ValueError(f"max_cycles must be an int >= 1, got {max_cycles!r}")
        if not isinstance(sight, int) or sight < 0:
            raise ValueError(f"sight must be an int >= 0, got {sight!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(
                f"render_mode must be None or 'rgb_array', got {render_mode!r}"
            )
        self.n_agents, self.size, self.sight = n_agents, size, sight
        self.max_cycles = max_cycles
        self.render_mode = render_mode
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        self.agents = []
        # One space object per agent, built once: PettingZoo requires that
        # `observation_space(agent)` return the same object every time.
        obs_dim = 2 + 2 * n_agents + 1 + 3 * (n_agents - 1)
        self.observation_spaces = {
            agent: spaces.Box(-1.0, 1.0, (obs_dim,), np.float32)
            for agent in self.possible_agents
        }
        self.action_spaces = {
            agent: spaces.Discrete(len(MOVES)) for agent in self.possible_agents
        }
        self.state_space = spaces.Box(0.0, 1.0, (4 * n_agents + 1,), np.float32)
        self.np_random, _ = seeding.np_random(None)

    def observation_space(self, agent: str) -> spaces.Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Discrete:
        return self.action_spaces[agent]

    # `reset` draws the landmarks on distinct cells and the agents anywhere. The
    # `options` dict may fix both (`{"agents": [[row, col], ...], "landmarks": ...}`):
    # that is how the test sets up its hand-made cases.

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.np_random, _ = seeding.np_random(seed)
        n, cells = self.n_agents, self.size * self.size
        landmarks = self.np_random.choice(cells, size=n, replace=False)
        self.landmarks = np.stack([landmarks // self.size, landmarks % self.size], 1)
        self.positions = self.np_random.integers(0, self.size, size=(n, 2))
        for key in ("agents", "landmarks"):
            if options and key in options:
                cells_given = np.asarray(options[key], dtype=np.int64)
                if (
                    cells_given.shape != (n, 2)
                    or not ((cells_given >= 0) & (cells_given < self.size)).all()
                ):
                    raise ValueError(
                        f"reset: options[{key!r}] must be {n} [row, col] pairs inside "
                        f"the {self.size}×{self.size} grid, got {options[key]!r}"
                    )
                if key == "agents":
                    self.positions = cells_given.copy()
                else:
                    self.landmarks = cells_given.copy()
        self.timestep = 0
        self.agents = self.possible_agents[:]
        return self.observations(), {agent: {} for agent in self.agents}

    # `step` takes one action per live agent, moves every agent at once (that is
    # what *parallel* means: no agent sees another's move of the same step), and pays
    # the team. At `max_cycles` every agent is *truncated* and removed from
    # `agents`, the PettingZoo way of ending an episode.

    def step(self, actions: dict):
        if not self.agents:
            raise ValueError("step: the episode is over; call reset() first")
        if set(actions) != set(self.agents):
            raise ValueError(
                f"step: actions must have one entry per live agent {self.agents}, "
                f"got keys {sorted(actions)}"
            )
        moves = np.array([int(actions[agent]) for agent in self.agents])
        if ((moves < 0) | (moves >= len(MOVES))).any():
            raise ValueError(f"step: each action must be in 0..4, got {actions}")
        self.positions = np.clip(self.positions + MOVES[moves], 0, self.size - 1)
        self.timestep += 1
        covered = self.covered()  # [landmarks]
        team_reward = -self.distances().min(0).mean() / (self.size - 1)
        done = self.timestep >= self.max_cycles
        observations = self.observations()
        rewards = {agent: float(team_reward) for agent in self.agents}
        terminations = {agent: False for agent in self.agents}
        truncations = {agent: done for agent in self.agents}
        infos = {agent: {"covered": int(covered.sum())} for agent in self.agents}
        if done:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def distances(self) -> np.ndarray:
        """`[agents, landmarks]` Manhattan distances in cells."""
        return np.abs(self.positions[:, None, :] - self.landmarks[None, :, :]).sum(-1)

    def covered(self) -> np.ndarray:
        """`[n]` booleans: is landmark $j$ under some agent?"""
        same = (self.positions[:, None, :] == self.landmarks[None, :, :]).all(-1)
        return same.any(0)  # [landmarks]

    def observations(self) -> dict:
        scale = self.size - 1
        time_left = 1.0 - self.timestep / self.max_cycles
        result = {}
        for i, agent in enumerate(self.possible_agents):
            own = self.positions[i]
            to_landmarks = (self.landmarks - own).ravel() / scale
            teammates = []
            for j in range(self.n_agents):
                if j == i:
                    continue
                offset = self.positions[j] - own
                visible = np.abs(offset).max() <= self.sight
                teammates += [*(offset / scale if visible else (0.0, 0.0)), visible]
            vector = [*own / scale, *to_landmarks, time_left, *teammates]
            result[agent] = np.array(vector, dtype=np.float32)
        return result

    def state(self) -> np.ndarray:
        time_left = 1.0 - self.timestep / self.max_cycles
        cells = np.concatenate([self.positions.ravel(), self.landmarks.ravel()])
        return np.array([*cells / (self.size - 1), time_left], dtype=np.float32)

    # `render` paints the grid into an RGB array, 24 pixels a cell: landmarks as
    # grey squares (green once covered), agents as coloured discs drawn inside them.

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        cell = 24
        image = np.full((self.size * cell, self.size * cell, 3), 250, np.uint8)
        image[::cell, :] = image[:, ::cell] = 200  # grid lines
        rows, cols = np.mgrid[0:cell, 0:cell]
        for landmark, covered in zip(self.landmarks, self.covered()):
            top, left = landmark * cell
            color = (60, 170, 80) if covered else (150, 150, 150)
            image[top + 2 : top + cell - 1, left + 2 : left + cell - 1] = color
        disc = (rows - cell / 2) ** 2 + (cols - cell / 2) ** 2 <= (cell / 3.5) ** 2
        palette = [(31, 119, 180), (255, 127, 14), (214, 39, 40), (148, 103, 189)]
        for i, (row, col) in enumerate(self.positions):
            block = image[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]
            block[disc] = palette[i % len(palette)]
        return image


# ## One network for every agent, two kinds of critic
#
# The actors share their weights (*parameter sharing*): one policy network
# $\pi_\theta(a \mid o_i, e_i)$ reads agent $i$'s observation $o_i$ with the one-hot
# $e_i$ of its index appended. Sharing keeps one set of weights however many agents
# there are, and learns from every agent's experience at once; the one-hot is what
# lets identical weights still act differently. Here it matters: two agents that see
# the same two landmarks need the index to settle which goes where
# [@yu2022surprising].
#
# The critics differ in one input. IPPO's value $V_\phi(o_i, e_i)$ sees what the actor
# sees; MAPPO's $V_\phi(s, e_i)$ sees the global state $s$ (every position, and where
# the teammates really are). A critic is only a baseline for the policy gradient, so
# it may see anything available during training without changing what the actors
# optimise; a better baseline means less noisy advantages. At execution only the
# actor runs, on $o_i$: the `centralised` flag changes training and nothing else.


def mlp(inputs: int, outputs: int, hidden: int, last_gain: float) -> nn.Sequential:
    """Two tanh hidden layers with orthogonal weights, as PPO implementations
    initialise them; the last layer's gain sets the initial output scale."""
    layers = [nn.Linear(inputs, hidden), nn.Linear(hidden, hidden)]
    last = nn.Linear(hidden, outputs)
    for layer, gain in zip([*layers, last], [2**0.5, 2**0.5, last_gain]):
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(layers[0], nn.Tanh(), layers[1], nn.Tanh(), last)


class ActorCritic(nn.Module):
    """A shared actor on (observation, agent id) and a critic on (observation or
    global state, agent id): `(obs [B, n, obs_dim], state [B, state_dim])` →
    `(logits [B, n, actions], values [B, n])`."""

    def __init__(
        self,
        obs_dim: int,
        state_dim: int,
        n_agents: int,
        n_actions: int,
        centralised: bool,
        hidden: int = 64,
    ):
        super().__init__()
        self.n_agents, self.centralised = n_agents, centralised
        critic_inputs = (state_dim if centralised else obs_dim) + n_agents
        # A small last gain starts the policy near uniform (the CleanRL recipe).
        self.actor = mlp(obs_dim + n_agents, n_actions, hidden, last_gain=0.01)
        self.critic = mlp(critic_inputs, 1, hidden, last_gain=1.0)

    def forward(self, obs: torch.Tensor, state: torch.Tensor):
        batch = obs.shape[0]
        ids = torch.eye(self.n_agents, dtype=obs.dtype, device=obs.device)
        ids = ids.expand(batch, self.n_agents, self.n_agents)  # [B, n, n]
        logits = self.actor(torch.cat([obs, ids], -1))  # [B, n, actions]
        if self.centralised:
            seen = state[:, None, :].expand(batch, self.n_agents, state.shape[-1])
        else:
            seen = obs
        values = self.critic(torch.cat([seen, ids], -1)).squeeze(-1)  # [B, n]
        return logits, values


# ## Advantages: GAE
#
# Each agent's advantage is estimated from the team reward and *its* critic's values
# with generalised advantage estimation [@schulman2016high]: the temporal-difference
# errors $\delta_t = r_t + \gamma V(s_{t+1})(1 - d_t) - V(s_t)$, where $d_t = 1$
# when the episode ended at step $t$, summed with weights $(\gamma\lambda)^l$ up to
# the end of the episode,
#
# $$
# \begin{aligned}
# \hat A_t &= \sum_{l \ge 0} (\gamma\lambda)^l \delta_{t+l} \\
# &= \delta_t + \gamma\lambda (1 - d_t) \hat A_{t+1},
# \end{aligned}
# $$
#
# the second line being the one-pass backward loop below. The critic's target is
# $\hat A_t + V(s_t)$. Episodes end only at `max_cycles` here, a truncation in
# PettingZoo's terms; but the time left is in every observation and in the state, so
# the horizon is part of the task and nothing follows the last step: the loop treats
# it as terminal and does not bootstrap past it. `values` and `rewards` carry any
# trailing dimensions (environments, agents): the loop runs over time only.


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_value: torch.Tensor,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and value targets for `rewards, values, dones [T, ...]`, with
    `last_value [...]` the value of the state after the last step."""
    if not (rewards.shape == values.shape == dones.shape):
        raise ValueError(
            f"gae: rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and "
            f"dones {tuple(dones.shape)} must have the same shape [T, ...]"
        )
    if last_value.shape != values.shape[1:]:
        raise ValueError(
            f"gae: last_value must have shape {tuple(values.shape[1:])}, "
            f"got {tuple(last_value.shape)}"
        )
    advantages = torch.zeros_like(values)
    next_advantage, next_value = torch.zeros_like(last_value), last_value
    for t in reversed(range(len(rewards))):
        alive = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * alive - values[t]
        next_advantage = delta + gamma * lam * alive * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages, advantages + values


# ## The PPO loss
#
# The clipped objective of [PPO](ppo.md), per sample (one agent at one step), with
# the probability ratio $\rho = \pi_\theta(a \mid o) / \pi_{\text{old}}(a \mid o)$:
#
# $$
# \begin{aligned}
# L &= -\min\!\big(\rho \hat A,\ \bar\rho\,\hat A\big) \\
# &\quad + c_v\,(V - \hat R)^2 - c_H\,H[\pi_\theta(\cdot \mid o)],
# \end{aligned}
# $$
#
# with $\bar\rho = \operatorname{clip}(\rho, 1-\epsilon, 1+\epsilon)$, $\hat R$ the
# GAE target and $H$ the policy's entropy, averaged over the minibatch, with the
# advantages normalised to zero mean and unit spread inside it. Once $\rho$ has left
# $[1-\epsilon, 1+\epsilon]$ in the direction the advantage favours, the clipped term
# is the smaller one and its gradient is zero: the update cannot push a probability
# further from the one that collected the data.
# In the multi-agent case every agent's sample is one more row of the minibatch; the
# shared actor is trained on all of them together.


def ppo_loss(
    logits: torch.Tensor,
    values: torch.Tensor,
    actions: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    clip: float = 0.2,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped PPO loss of a minibatch of `M` samples: `logits [M, actions]`, the
    rest `[M]`. Returns the loss and its parts."""
    distribution = torch.distributions.Categorical(logits=logits)
    log_probs = distribution.log_prob(actions)  # [M]
    ratio = torch.exp(log_probs - old_log_probs)  # [M]
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    surrogate = torch.min(
        ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    )
    policy_loss = -surrogate.mean()
    value_loss = F.mse_loss(values, returns)
    entropy = distribution.entropy().mean()
    loss = policy_loss + value_coef * value_loss - entropy_coef * entropy
    parts = {
        "policy": policy_loss.item(),
        "value": value_loss.item(),
        "entropy": entropy.item(),
    }
    return loss, parts


# ## Rollouts from many worlds at once
#
# Training steps `envs` copies of the world side by side, so that one forward pass of
# the network serves every agent of every copy: observations stack to
# `[envs, agents, obs_dim]`. A copy whose episode ends is reset on the spot; its
# `done` flag is what stops GAE from reaching across the boundary. The buffer holds
# `steps` steps of every copy, and each finished episode's team return (the sum of
# $r_t$) and success are recorded for the learning curves.


@dataclass
class Args:
    """Every setting of a training run."""

    centralised: bool = True  # MAPPO (True) or IPPO (False)
    total_steps: int = 100_000  # environment steps, over all copies
    envs: int = 16  # copies of the world stepped together
    steps: int = 48  # steps per copy between updates
    epochs: int = 10  # passes over each rollout
    minibatches: int = 4  # minibatches per pass
    lr: float = 2e-3  # Adam learning rate
    gamma: float = 0.99  # discount
    lam: float = 0.95  # GAE's λ
    clip: float = 0.2  # PPO's ε
    entropy_coef: float = 0.01  # weight of the entropy bonus
    n_agents: int = 2
    size: int = 5
    max_cycles: int = 12  # steps per episode
    sight: int = 1  # a teammate is seen within this Chebyshev distance
    seed: int = 0


def stack(worlds: list[CoverLandmarks], observations: list[dict]) -> np.ndarray:
    """Per-world observation dicts → `[envs, agents, obs_dim]`."""
    agents = worlds[0].possible_agents
    return np.stack([[obs[agent] for agent in agents] for obs in observations])


def collect(worlds, observations, running, model, steps, generator, device):
    """Step every world `steps` times with actions sampled from `model`, keeping each
    world's return so far in `running`; returns the rollout tensors, the observations
    to continue from, and the (team return, success) of every finished episode."""
    agents = worlds[0].possible_agents
    buffer = {key: [] for key in ("obs", "state", "action", "log_prob", "value")}
    buffer.update(reward=[], done=[])
    episodes = []
    for _ in range(steps):
        obs = torch.as_tensor(stack(worlds, observations), device=device)
        state = torch.as_tensor(np.stack([w.state() for w in worlds]), device=device)
        with torch.no_grad():
            logits, values = model(obs, state)  # [E, n, actions], [E, n]
        probabilities = torch.softmax(logits, -1).cpu()
        actions = torch.multinomial(probabilities.flatten(0, 1), 1, generator=generator)
        actions = actions.view(probabilities.shape[:2])  # [E, n]
        log_prob = torch.log(probabilities.gather(-1, actions[..., None])).squeeze(-1)
        rewards, dones = [], []
        for index, world in enumerate(worlds):
            step = world.step(dict(zip(agents, actions[index].tolist())))
            observations[index], reward = step[0], step[1][agents[0]]
            running[index] += reward
            rewards.append(reward)
            dones.append(not world.agents)
            if not world.agents:
                success = reward == 0.0
                episodes.append((running[index], float(success)))
                observations[index], _ = world.reset()
                running[index] = 0.0
        buffer["obs"].append(obs)
        buffer["state"].append(state)
        buffer["action"].append(actions.to(device))
        buffer["log_prob"].append(log_prob.to(device))
        buffer["value"].append(values)
        team = torch.tensor(rewards, dtype=torch.float32, device=device)  # [E]
        buffer["reward"].append(team[:, None].expand(-1, len(agents)))  # [E, n]
        done = torch.tensor(dones, dtype=torch.float32, device=device)
        buffer["done"].append(done[:, None].expand(-1, len(agents)))
    rollout = {key: torch.stack(value) for key, value in buffer.items()}  # [T, E, ...]
    return rollout, observations, episodes


# ## Training
#
# The loop of [PPO](ppo.md), unchanged by the number of agents: collect, compute
# advantages with the critic's values, then a few epochs of minibatch updates on the
# clipped loss. The only multi-agent detail is the flattening, which turns
# `[steps, envs, agents]` into one batch of samples, each agent's step a sample of the
# shared actor.


def train(args: Args, device: str = "cpu", progress: bool = True) -> dict:
    """Train one team with PPO; returns the model and the learning curve
    (`steps`, `team_return`, `success`: one entry per update)."""
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    worlds = [
        CoverLandmarks(args.n_agents, args.size, args.max_cycles, args.sight)
        for _ in range(args.envs)
    ]
    observations = [
        world.reset(seed=args.seed * 10_000 + index)[0]
        for index, world in enumerate(worlds)
    ]
    running = [0.0] * args.envs
    first = worlds[0]
    model = ActorCritic(
        first.observation_space(first.possible_agents[0]).shape[0],
        first.state_space.shape[0],
        args.n_agents,
        len(MOVES),
        args.centralised,
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-5)
    updates = max(1, args.total_steps // (args.envs * args.steps))
    curve = {"steps": [], "team_return": [], "success": []}
    name = "MAPPO" if args.centralised else "IPPO"
    for update in tqdm(range(updates), desc=name, disable=not progress):
        rollout, observations, episodes = collect(
            worlds, observations, running, model, args.steps, generator, device
        )
        obs = torch.as_tensor(stack(worlds, observations), device=device)
        state = torch.as_tensor(np.stack([w.state() for w in worlds]), device=device)
        with torch.no_grad():
            last_value = model(obs, state)[1]  # [E, n]
        advantages, returns = gae(
            rollout["reward"],
            rollout["value"],
            rollout["done"],
            last_value,
            args.gamma,
            args.lam,
        )
        samples = args.steps * args.envs  # each sample holds every agent of one world
        flat_obs = rollout["obs"].flatten(0, 1)  # [T·E, n, obs_dim]
        flat_state = rollout["state"].flatten(0, 1)  # [T·E, state_dim]
        flat = {
            "action": rollout["action"].flatten(0, 1),  # [T·E, n]
            "log_prob": rollout["log_prob"].flatten(0, 1),
            "advantage": advantages.flatten(0, 1),
            "return": returns.flatten(0, 1),
        }
        size = samples // args.minibatches
        for _ in range(args.epochs):
            order = torch.randperm(samples, generator=generator).to(device)
            for start in range(0, samples - size + 1, size):
                batch = order[start : start + size]
                logits, values = model(flat_obs[batch], flat_state[batch])
                loss, _ = ppo_loss(
                    logits.flatten(0, 1),  # [M·n, actions]
                    values.flatten(),
                    flat["action"][batch].flatten(),
                    flat["log_prob"][batch].flatten(),
                    flat["advantage"][batch].flatten(),
                    flat["return"][batch].flatten(),
                    args.clip,
                    entropy_coef=args.entropy_coef,
                )
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                optimizer.step()
        if episodes:
            returns_, successes = zip(*episodes)
            curve["steps"].append((update + 1) * samples)
            curve["team_return"].append(float(np.mean(returns_)))
            curve["success"].append(float(np.mean(successes)))
    return {"model": model.cpu(), "curve": curve}


# ## Measuring cooperation
#
# A trained team is judged with decentralised execution: each agent takes the shared
# actor's most likely action for its own observation, and the critic is never
# called. The *cooperation score* is the success rate, the fraction of episodes that
# end with every landmark covered, over the same seeded episodes for every team; the
# mean team return (at most 0, reached only if every landmark is covered at every
# step) is reported beside it. A random team, each agent picking uniformly among the
# five moves, is the floor.


def evaluate(
    model: ActorCritic | None,
    episodes: int,
    seed: int,
    n_agents: int = 2,
    size: int = 5,
    max_cycles: int = 12,
    sight: int = 1,
    frames: bool = False,
) -> dict:
    """Mean team return and success rate of `model` (a random team if `None`) over
    `episodes` seeded episodes of `CoverLandmarks(n_agents, size, max_cycles, sight)`;
    with `frames`, the first episode's rendered frames."""
    world = CoverLandmarks(n_agents, size, max_cycles, sight, render_mode="rgb_array")
    generator = torch.Generator().manual_seed(seed)
    team_returns, successes, strip = [], [], []
    for episode in range(episodes):
        observations, _ = world.reset(seed=seed + episode)
        total, reward = 0.0, 0.0
        if frames and episode == 0:
            strip.append(world.render())
        while world.agents:
            obs = torch.as_tensor(stack([world], [observations]))  # [1, n, obs_dim]
            if model is None:
                uniform = torch.ones(n_agents, len(MOVES))
                actions = torch.multinomial(uniform, 1, generator=generator).view(-1)
            else:
                with torch.no_grad():
                    logits = model.actor(torch.cat([obs[0], torch.eye(n_agents)], -1))
                actions = logits.argmax(-1)  # [n]
            observations, rewards, *_ = world.step(
                dict(zip(world.agents, actions.tolist()))
            )
            reward = rewards[world.possible_agents[0]]
            total += reward
            if frames and episode == 0:
                strip.append(world.render())
        team_returns.append(total)
        successes.append(reward == 0.0)
    return {
        "team_return": float(np.mean(team_returns)),
        "success": float(np.mean(successes)),
        "frames": strip,
    }


# ## The example
#
# The diagrams of this page trace the MAPPO network on a batch of three worlds with
# two agents: the shared actor on observations and ids, the centralised critic on the
# global state.


def example():
    """A small example: `fn(*args)` runs it."""
    torch.manual_seed(0)
    world = CoverLandmarks()
    observations, _ = world.reset(seed=0)
    obs = torch.as_tensor(stack([world], [observations])).expand(3, -1, -1)
    state = torch.as_tensor(world.state())[None].expand(3, -1)
    model = ActorCritic(obs.shape[-1], state.shape[-1], 2, len(MOVES), True)
    return model, (obs, state)


# ## The demo
#
# Trains MAPPO and IPPO with the same seed and budget, scores both and a random team
# on the same 500 evaluation episodes, and draws the learning curves and one episode
# of the MAPPO team.


def plot_curves(results: dict, random_team: dict, out: Path) -> Path:
    fig, (left, right) = figure(panels=2)
    for name, result in results.items():
        curve = result["curve"]
        left.plot(curve["steps"], curve["team_return"], label=name)
        right.plot(curve["steps"], curve["success"], label=name)
    left.axhline(random_team["team_return"], color="grey", ls="--", label="random")
    right.axhline(random_team["success"], color="grey", ls="--", label="random")
    left.set_ylabel("team return per episode")
    right.set_ylabel("success rate")
    for ax in (left, right):
        ax.set_xlabel("environment steps")
        ax.legend()
    return save(
        fig,
        out / "learning_curves.png",
        caption="Team return (left; 0 would be every landmark covered at every step) "
        "and success rate (right) of the training episodes of MAPPO and IPPO, against "
        "a random team's (dashed).",
    )


def plot_episode(frames: list[np.ndarray], out: Path, n_agents: int = 2) -> Path:
    fig, axes = figure(panels=6, rows=2)
    picks = np.linspace(0, len(frames) - 1, len(axes.flat)).round().astype(int)
    for ax, t in zip(axes.flat, picks):
        ax.imshow(frames[t])
        ax.set_title(f"$t = {t}$")
        ax.set_xticks([])
        ax.set_yticks([])
    # The caption names the agents' colours in `render`'s palette order.
    words = {2: "two", 3: "three", 4: "four"}
    team = f"{words.get(n_agents, n_agents)} agents"
    names = ["blue", "orange", "red", "purple"]
    colours = ", ".join(names[i % len(names)] for i in range(n_agents))
    return save(
        fig,
        out / "episode.png",
        caption=f"One evaluation episode of the trained MAPPO team: the {team} "
        f"({colours}) each walk to a different landmark (grey, green once covered).",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train MAPPO and IPPO on `CoverLandmarks`, score them against a random team."""
    parser = argparse.ArgumentParser(
        description="IPPO and MAPPO on a cooperative PettingZoo grid world.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--total-steps",
        type=integer(at_least=1),
        default=Args.total_steps,
        help="environment steps per method",
    )
    parser.add_argument(
        "--envs", type=integer(at_least=1), default=Args.envs, help="parallel worlds"
    )
    parser.add_argument(
        "--agents",
        type=integer(at_least=1),
        default=Args.n_agents,
        help="agents (and landmarks)",
    )
    parser.add_argument(
        "--size", type=integer(at_least=1), default=Args.size, help="grid side"
    )
    parser.add_argument(
        "--max-cycles",
        type=integer(at_least=1),
        default=Args.max_cycles,
        help="steps per episode",
    )
    parser.add_argument(
        "--sight",
        type=integer(at_least=0),
        default=Args.sight,
        help="how far a teammate is seen",
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=Args.lr, help="Adam learning rate"
    )
    parser.add_argument(
        "--episodes",
        type=integer(at_least=1),
        default=500,
        help="evaluation episodes per team",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="torch CPU threads (the nets are tiny)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    parser.add_argument("--out", default="out/multi_agent", help="folder for figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    world = dict(
        n_agents=args.agents,
        size=args.size,
        max_cycles=args.max_cycles,
        sight=args.sight,
    )
    results, metrics = {}, {}
    for name, centralised in (("MAPPO", True), ("IPPO", False)):
        settings = Args(
            centralised=centralised,
            total_steps=args.total_steps,
            envs=args.envs,
            lr=args.lr,
            seed=args.seed,
            **world,
        )
        start = time.perf_counter()
        results[name] = train(settings, args.device)
        seconds = time.perf_counter() - start
        score = evaluate(
            results[name]["model"],
            args.episodes,
            seed=10**6,
            frames=name == "MAPPO",
            **world,
        )
        results[name]["frames"] = score["frames"]
        print(
            f"{name}: success {score['success']:.3f}, team return "
            f"{score['team_return']:.2f} ({seconds:.0f} s of training)"
        )
        metrics[f"{name.lower()}_success"] = score["success"]
        metrics[f"{name.lower()}_team_return"] = score["team_return"]
    random_team = evaluate(None, args.episodes, seed=10**6, **world)
    print(
        f"random: success {random_team['success']:.3f}, team return "
        f"{random_team['team_return']:.2f}"
    )
    metrics["random_success"] = random_team["success"]
    metrics["random_team_return"] = random_team["team_return"]
    plot_curves(results, random_team, out)
    plot_episode(results["MAPPO"]["frames"], out, args.agents)
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Delete the agent id from the actor's input (keep it in the critic). What happens
#    to the success rate, and what do the two agents do in an episode where both
#    landmarks are equally far from each?
# 2. Run with `--sight 0`, so that an agent sees its teammate only when they share a
#    cell, and with `--sight 4` (the whole grid). Which method gains more from seeing
#    further, IPPO or MAPPO, and why would the centralised critic make the difference
#    smaller?
# 3. Train three agents for three landmarks on a 6×6 grid (`--agents 3 --size 6
#    --max-cycles 16`). How many more steps does each method need?
# 4. Replace the team reward with a per-agent one (1 for standing on a landmark no
#    teammate stands on). Is the task still cooperative, and does IPPO catch up?
