r"""
---
title: A learned world model
summary: >-
  A probabilistic ensemble of MLPs learns CartPole's dynamics from a few hundred steps;
  planning in it with the cross-entropy method, and Dyna-style Q-learning in its
  imagination, balance the pole with a small fraction of the experience PPO needs.
time: 50 s
expected:
  metric: model_mse
  short:
    ["--rounds", "1", "--random-steps", "150", "--epochs", "10", "--horizon", "10",
     "--population", "30", "--elites", "6", "--cem-iterations", "2",
     "--max-steps", "60", "--dyna-updates", "100", "--ppo-steps", "512"]
references:
  - key: chua2018deep
    authors: [Kurtland Chua, Roberto Calandra, Rowan McAllister, Sergey Levine]
    title: >-
      Deep Reinforcement Learning in a Handful of Trials using Probabilistic Dynamics
      Models
    year: 2018
    venue: NeurIPS 2018
    arxiv: "1805.12114"
  - key: sutton1991dyna
    authors: [Richard S. Sutton]
    title: Dyna, an Integrated Architecture for Learning, Planning, and Reacting
    year: 1991
    venue: ACM SIGART Bulletin 2(4)
    url: https://doi.org/10.1145/122344.122377
  - key: janner2019trust
    authors: [Michael Janner, Justin Fu, Marvin Zhang, Sergey Levine]
    title: "When to Trust Your Model: Model-Based Policy Optimization"
    year: 2019
    venue: NeurIPS 2019
    arxiv: "1906.08253"
  - key: ha2018world
    authors: [David Ha, Jürgen Schmidhuber]
    title: World Models
    year: 2018
    venue: arXiv preprint
    arxiv: "1803.10122"
  - key: rubinstein1999cross
    authors: [Reuven Rubinstein]
    title: >-
      The Cross-Entropy Method for Combinatorial and Continuous Optimization
    year: 1999
    venue: Methodology and Computing in Applied Probability 1(2)
    url: https://doi.org/10.1023/A:1010091220143
  - key: deboer2005tutorial
    authors: [Pieter-Tjerk de Boer, Dirk P. Kroese, Shie Mannor, Reuven Y. Rubinstein]
    title: A Tutorial on the Cross-Entropy Method
    year: 2005
    venue: Annals of Operations Research 134(1)
    url: https://doi.org/10.1007/s10479-005-5724-z
  - key: lakshminarayanan2017simple
    authors: [Balaji Lakshminarayanan, Alexander Pritzel, Charles Blundell]
    title: >-
      Simple and Scalable Predictive Uncertainty Estimation using Deep Ensembles
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1612.01474"
worksheet:
  - region: Ensemble.forward
    hint: >-
      Run the inputs through the hidden EnsembleLinear layers with SiLU, split the
      last layer's output into mean and log-variance, and bound the log-variance
      softly: max - softplus(max - v), then min + softplus(v - min).
    tests:
      - test_batched_forward_matches_loop_with_gradients
      - test_members_are_independent
  - region: gaussian_nll
    hint: >-
      The mean over elements of half of (target - mean)^2 exp(-logvar) + logvar.
    tests: [test_gaussian_nll_matches_torch_with_gradients]
  - region: cem
    hint: >-
      Check elites, iterations and the shapes; each iteration draw a population of
      mean + std * noise from the generator, score it, keep the top elites by score
      and refit mean and std to them; return the final mean and std.
    tests: [test_cem_finds_the_optimum_of_a_quadratic]
---

[PPO](ppo.md) learns to balance CartPole from tens of thousands of steps, because all it
ever learns is which actions were good: every lesson about *how the world moves* is
thrown away once it has nudged the policy. A *model-based* agent keeps that lesson. It
fits a model $\hat f(s, a) \approx (s', r)$ of the environment to the transitions it
has seen, then uses the model instead of the environment, for two things:

- **planning**: before every real step, try thousands of action sequences inside the
  model and execute the first action of the best one (model-predictive control);
- **imagined experience**: let a model-free learner practise on transitions the model
  makes up, as in Sutton's Dyna [@sutton1991dyna] and its deep descendant MBPO
  [@janner2019trust]. Ha and Schmidhuber's "World Models" [@ha2018world] trained a
  controller entirely inside such a dream.

A model learned from a few hundred transitions is wrong away from them, and a planner
will find exactly the places where it is wrongly optimistic. PETS (probabilistic
ensembles with trajectory sampling) [@chua2018deep] handles this with two kinds of
uncertainty: each network predicts a Gaussian over the next state (the noise in the
data), and an *ensemble* of networks trained on bootstrap resamples disagrees where
the data is thin (the model's ignorance) [@lakshminarayanan2017simple]. Plans are
scored by averaging over the members, so a plan that only one member likes does not
win.

This lesson builds that agent for `CartPole-v1`, chosen so that its sample efficiency
can be set beside PPO's on the same task. CartPole's actions are discrete (push left,
push right), so the planner's cross-entropy method [@rubinstein1999cross;
@deboer2005tutorial] searches over one real number per step whose sign is the push:
its Gaussian is, in effect, a probability of pushing right at each step of the plan.
The reward is also learned: the model predicts whether the pole is still up, and a
plan's imagined return is the expected number of steps it keeps it up.

The demo alternates collect → fit → plan. Starting from nine episodes of random pushes
(241 steps: whole episodes until at least 200), the planner's episodes mostly grow over
the rounds (79, 70, 113, 133, 169 steps) and the sixth keeps the pole up for the full
500, after 1,305 environment steps in all. PPO,
run from its lesson on the same task, averages 27 steps per episode at that point and
85 after 20,000 steps. A Q-network trained on imagined transitions from the final
model, with no planning at all, keeps the pole up for about 200 steps.
"""

import argparse
import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from annotated.data import integer, torch_device
from annotated.figures import figure, save
from annotated.rl.ppo import PPOConfig
from annotated.rl.ppo import train as train_ppo

# ## The true dynamics
#
# To test a planner apart from a learned model, the lesson needs the real equations.
# These are gymnasium's `CartPoleEnv.step` (itself Barto, Sutton and Anderson's
# 1983 cart-pole), written on tensors so that a whole population of states steps in
# one call. With force $F = \pm 10$ N, pole half-length $l = 0.5$, pole mass
# $m = 0.1$ and total mass $m_t = 1.1$:
#
# $$
# \begin{aligned}
# \tau &= \big(F + m l \dot\theta^2 \sin\theta\big) / m_t, \\
# \ddot\theta &= \frac{g \sin\theta - \cos\theta\,\tau}
#   {l\,\big(\tfrac43 - m\cos^2\theta / m_t\big)}, \\
# \ddot x &= \tau - m l\, \ddot\theta \cos\theta / m_t,
# \end{aligned}
# $$
#
# then one Euler step of $0.02$ s. The episode ends when $|x| > 2.4$ or $|\theta| >
# 12°$. Gymnasium pays $+1$ for every step, including the one where the pole falls;
# the signal that matters for planning is whether the new state is still alive, so
# the lesson's reward is $r = 1 - \text{terminated}$ (gymnasium's own
# `sutton_barto_reward=True` option pays this shifted by $-1$). Both functions take
# any number of leading dimensions: `[..., 4]` states and `[..., 1]` pushes in $\{-1,
# +1\}$.

GRAVITY, CART_MASS, POLE_MASS, HALF_LENGTH, FORCE, DT = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
X_LIMIT, THETA_LIMIT = 2.4, 12 * 2 * math.pi / 360


def alive(state: torch.Tensor) -> torch.Tensor:
    """1.0 where `state [..., 4]` is inside the limits, else 0.0: `[...]`."""
    x, theta = state[..., 0], state[..., 2]
    return ((x.abs() <= X_LIMIT) & (theta.abs() <= THETA_LIMIT)).to(state.dtype)


def cartpole_step(
    state: torch.Tensor, push: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of CartPole: `state [..., 4]`, `push [..., 1]` in {-1, +1} →
    `(next_state [..., 4], reward [...])`, the reward being 1 while alive."""
    x, x_dot, theta, theta_dot = state.unbind(-1)
    force = FORCE * push[..., 0]
    total_mass = CART_MASS + POLE_MASS
    cos, sin = torch.cos(theta), torch.sin(theta)
    temp = (force + POLE_MASS * HALF_LENGTH * theta_dot**2 * sin) / total_mass
    theta_acc = (GRAVITY * sin - cos * temp) / (
        HALF_LENGTH * (4.0 / 3.0 - POLE_MASS * cos**2 / total_mass)
    )
    x_acc = temp - POLE_MASS * HALF_LENGTH * theta_acc * cos / total_mass
    next_state = torch.stack(
        [
            x + DT * x_dot,
            x_dot + DT * x_acc,
            theta + DT * theta_dot,
            theta_dot + DT * theta_acc,
        ],
        dim=-1,
    )
    return next_state, alive(next_state)


# ## A layer for a whole ensemble
#
# An ensemble of $M$ networks could be $M$ `nn.Module`s called in a Python loop. But
# the members have the same shapes, so their weights stack into one tensor
# $W \in \mathbb R^{M \times d_\text{in} \times d_\text{out}}$ and each layer of all
# members is one batched matrix product,
#
# $$
# y_{mbo} = \sum_i x_{mbi} W_{mio} + b_{mo},
# $$
#
# one `einsum` over members $m$, batch $b$ and features. The members never mix: a
# gradient through member $m$'s output reaches only $W_m$. The benchmark in the test
# times it against the loop, which launches $M$ times as many small kernels: on a
# shared 2-core machine, five members on 100 inputs took 0.27 ms as one einsum and
# 0.43 ms as a loop. At these sizes the difference is the per-call overhead, which
# grows with the number of members and which the planner pays 90 times per real step
# (30 steps ahead × 3 CEM iterations). The initialisation is `nn.Linear`'s, uniform in
# $\pm 1/\sqrt{d_\text{in}}$, drawn independently per member; different starting
# points are half of what makes members disagree.


class EnsembleLinear(nn.Module):
    """`members` independent linear layers: `[M, batch, inputs]` → `[M, batch,
    outputs]`."""

    def __init__(self, members: int, inputs: int, outputs: int):
        super().__init__()
        bound = 1.0 / math.sqrt(inputs)
        self.weight = nn.Parameter(
            torch.empty(members, inputs, outputs).uniform_(-bound, bound)
        )
        self.bias = nn.Parameter(
            torch.empty(members, 1, outputs).uniform_(-bound, bound)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("mbi,mio->mbo", x, self.weight) + self.bias


# ## The probabilistic ensemble
#
# Each member reads a normalised (state, push) and outputs a Gaussian over the
# normalised *change* of the state and the reward: a mean $\mu$ and a log-variance
# $\log\sigma^2$ for each of the five numbers. Predicting the change
# $\Delta s = s' - s$ rather than $s'$ matters: in 0.02 s the state barely moves, so
# $s'$ is almost the identity of $s$, which a small network would spend its capacity
# copying; $\Delta s$ is the interesting part. Normalising inputs and targets to zero
# mean and unit variance (statistics from the data, kept as buffers so that they
# travel with the state dict) gives all outputs the same scale in the loss.
#
# The log-variance is squashed softly between two learned bounds, as in PETS'
# reference code: `max - softplus(max - v)` then `min + softplus(v - min)`. Without
# them a member can shrink the variance of a well-fitted output towards zero and
# the likelihood towards infinity. The bounds start at $-10$ and $0.5$ and are pulled
# inwards by a small penalty in the loss.


class Ensemble(nn.Module):
    """`members` MLPs, each mapping a normalised `[state, push]` to a Gaussian over the
    normalised `[Δstate, reward]`."""

    def __init__(self, state_dim=4, action_dim=1, members=5, hidden=64):
        super().__init__()
        self.state_dim, self.members = state_dim, members
        inputs, outputs = state_dim + action_dim, state_dim + 1
        self.layers = nn.ModuleList(
            [
                EnsembleLinear(members, inputs, hidden),
                EnsembleLinear(members, hidden, hidden),
                EnsembleLinear(members, hidden, 2 * outputs),
            ]
        )
        self.max_logvar = nn.Parameter(torch.full((outputs,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((outputs,), -10.0))
        self.register_buffer("input_mean", torch.zeros(inputs))
        self.register_buffer("input_std", torch.ones(inputs))
        self.register_buffer("target_mean", torch.zeros(outputs))
        self.register_buffer("target_std", torch.ones(outputs))

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised `inputs [M, batch, in]` → `(mean, logvar)`, each `[M, batch,
        out]`, in normalised target units."""
        h = inputs
        for layer in self.layers[:-1]:
            h = F.silu(layer(h))  # [M, batch, hidden]
        mean, logvar = self.layers[-1](h).chunk(2, dim=-1)  # [M, batch, out] each
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def forward_loop(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward`, one member at a time: the same numbers, $M$ times the calls."""
        means, logvars = [], []
        for m in range(self.members):
            h = inputs[m]  # [batch, in]
            for layer in self.layers[:-1]:
                h = F.silu(h @ layer.weight[m] + layer.bias[m])
            last = self.layers[-1]
            mean, logvar = (h @ last.weight[m] + last.bias[m]).chunk(2, dim=-1)
            means.append(mean)
            logvars.append(logvar)
        logvar = torch.stack(logvars)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return torch.stack(means), logvar

    # ### Prediction in the world's units
    #
    # `predict` is what the planner calls: raw states and pushes with leading shape
    # `[M, n]` (one slice per member, so that member $m$ propagates its own
    # particles), normalise, run, un-normalise, add the change to the state. With a
    # `generator` it *samples* from each member's Gaussian, PETS' trajectory sampling:
    # a particle follows one member for the whole plan, so the spread of its return
    # carries both the noise and the disagreement. Without one it returns the means.
    # The reward is clipped to $[0, 1]$, the range of "still alive".

    def predict(
        self,
        state: torch.Tensor,
        push: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`state [M, n, 4]`, `push [M, n, 1]` → `(next_state [M, n, 4], reward [M,
        n])`."""
        inputs = (torch.cat([state, push], -1) - self.input_mean) / self.input_std
        mean, logvar = self(inputs)  # [M, n, 5] each
        if generator is not None:
            noise = torch.randn(mean.shape, generator=generator).to(mean.device)
            mean = mean + noise * (0.5 * logvar).exp()
        out = mean * self.target_std + self.target_mean  # [M, n, 5]
        next_state = state + out[..., : self.state_dim]
        return next_state, out[..., -1].clamp(0.0, 1.0)

    def disagreement(self, state: torch.Tensor, push: torch.Tensor) -> torch.Tensor:
        """The members' spread about a prediction: the standard deviation over members
        of the mean normalised output, averaged over outputs. `state [n, 4]`, `push
        [n, 1]` → `[n]`."""
        inputs = (torch.cat([state, push], -1) - self.input_mean) / self.input_std
        mean, _ = self(inputs.expand(self.members, -1, -1))  # [M, n, 5]
        return mean.std(dim=0).mean(dim=-1)


# ## Fitting the ensemble
#
# Each member minimises the Gaussian negative log-likelihood of its targets,
#
# $$
# \begin{aligned}
# \mathcal L &= \frac12 \sum_o \Big[ \frac{(y_o - \mu_o)^2}{\sigma_o^2}
#   + \log \sigma_o^2 \Big] \\
#   &+ 0.01 \textstyle\sum_o (\text{max}_o - \text{min}_o),
# \end{aligned}
# $$
#
# averaged over outputs and rows: what `torch.nn.functional.gaussian_nll_loss`
# computes without its optional constant (the test checks it), plus the bounds'
# penalty. Each member trains on
# its own *bootstrap* resample of the data, drawn with replacement, so that members
# see different data as well as starting from different weights
# [@lakshminarayanan2017simple; @chua2018deep]. A tenth of the transitions is held
# out from all of them to report an honest one-step error.


def gaussian_nll(
    mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    r"""Mean over elements of $\frac12[(y-\mu)^2 e^{-\log\sigma^2} + \log
    \sigma^2]$."""
    return 0.5 * ((target - mean) ** 2 * torch.exp(-logvar) + logvar).mean()


class Transitions:
    """A growing buffer of real transitions: states `[n, 4]`, pushes `[n, 1]`,
    rewards `[n]`, next states `[n, 4]`, as float32 tensors."""

    def __init__(self):
        self.states, self.pushes, self.rewards, self.next_states = [], [], [], []

    def add(self, state, push: float, reward: float, next_state) -> None:
        self.states.append(torch.as_tensor(state, dtype=torch.float32))
        self.pushes.append(torch.tensor([push], dtype=torch.float32))
        self.rewards.append(torch.tensor(reward, dtype=torch.float32))
        self.next_states.append(torch.as_tensor(next_state, dtype=torch.float32))

    def __len__(self) -> int:
        return len(self.states)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(
            torch.stack(part)
            for part in (self.states, self.pushes, self.rewards, self.next_states)
        )


def check_transitions(states, pushes, rewards, next_states) -> None:
    """Raise naming the argument whose shape does not fit the others."""
    if states.ndim != 2 or states.shape[1] != 4:
        raise ValueError(f"fit: states must be [n, 4], got {tuple(states.shape)}")
    n = len(states)
    if n < 10:
        raise ValueError(f"fit: need at least 10 transitions, got {n}")
    for name, tensor, shape in (
        ("pushes", pushes, (n, 1)),
        ("rewards", rewards, (n,)),
        ("next_states", next_states, (n, 4)),
    ):
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"fit: {name} must be {list(shape)}, got {tuple(tensor.shape)}"
            )


def fit(
    model: Ensemble,
    data: tuple[torch.Tensor, ...],
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 2e-3,
    holdout: float = 0.1,
    seed: int = 0,
) -> dict[str, float]:
    """Fit `model` in place to `data = (states, pushes, rewards, next_states)`.

    Returns the held-out one-step mean squared error of the ensemble's mean prediction
    of the next state (in normalised units, averaged over the four state outputs) and
    that of the constant baseline that predicts no change.
    """
    check_transitions(*data)
    device = model.input_mean.device
    states, pushes, rewards, next_states = (part.to(device) for part in data)
    inputs = torch.cat([states, pushes], -1)  # [n, 5]
    targets = torch.cat([next_states - states, rewards[:, None]], -1)  # [n, 5]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(inputs), generator=generator).to(device)
    n_test = max(1, int(len(inputs) * holdout))
    test, train = order[:n_test], order[n_test:]
    # Statistics from the training part only; the +1e-6 keeps a constant column finite.
    model.input_mean.copy_(inputs[train].mean(0))
    model.input_std.copy_(inputs[train].std(0) + 1e-6)
    model.target_mean.copy_(targets[train].mean(0))
    model.target_std.copy_(targets[train].std(0) + 1e-6)
    x = (inputs - model.input_mean) / model.input_std
    y = (targets - model.target_mean) / model.target_std
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    # Every member's own resample of the training rows: [M, n_train].
    draws = torch.randint(len(train), (model.members, len(train)), generator=generator)
    boot = train[draws.to(device)]
    for _ in range(epochs):
        shuffled = boot[:, torch.randperm(len(train), generator=generator).to(device)]
        for start in range(0, len(train), batch_size):
            rows = shuffled[:, start : start + batch_size]  # [M, b]
            mean, logvar = model(x[rows])
            loss = gaussian_nll(mean, logvar, y[rows])
            loss = loss + 0.01 * (model.max_logvar - model.min_logvar).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    # The error is over the state only: the reward is 1 on all but a few held-out
    # rows, and whether one of those few lands in the held-out tenth would swing it.
    with torch.no_grad():
        mean, _ = model(x[test].expand(model.members, -1, -1))
        state_test = y[test, :-1]  # [n_test, 4]
        model_error = ((mean.mean(0)[:, :-1] - state_test) ** 2).mean().item()
        # "Nothing changes": Δs = 0, which is -mean/std in normalised units.
        no_change = -model.target_mean[:-1] / model.target_std[:-1]
        baseline_error = ((no_change - state_test) ** 2).mean().item()
    return {"model_mse": model_error, "constant_mse": baseline_error}


# ## The cross-entropy method
#
# Planning means maximising the imagined return over a sequence of actions, and the
# model is a black box to the planner. The cross-entropy method [@rubinstein1999cross;
# @deboer2005tutorial] needs nothing but scores: keep a Gaussian
# $\mathcal N(\mu, \operatorname{diag}\sigma^2)$ over candidates, and repeat
#
# 1. draw a *population* of $N$ candidates from it;
# 2. score them, keep the best $K$, the *elites*;
# 3. refit $\mu$ and $\sigma$ to the elites.
#
# Each refit is the Gaussian of the elites' mean and standard deviation (the
# maximum-likelihood fit, but for the $n - 1$ of torch's `std`), which minimises the
# cross-entropy from the elite distribution to the new one; hence the name. The
# Gaussian contracts onto the best region, and no gradient is ever taken, so a score
# that jumps (a pole that falls or does not) is no obstacle. The test hands it a
# quadratic with a known optimum.


def cem(
    score: Callable[[torch.Tensor], torch.Tensor],
    mean: torch.Tensor,
    std: torch.Tensor,
    iterations: int = 4,
    population: int = 200,
    elites: int = 20,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximise `score` (`[population, *shape]` → `[population]`) from the Gaussian
    `(mean, std)` of shape `shape`; returns the final `(mean, std)`."""
    if not isinstance(elites, int) or not 2 <= elites <= population:
        raise ValueError(
            f"cem: elites must be an int in [2, population={population}], "
            f"got {elites!r}"
        )
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"cem: iterations must be an int >= 1, got {iterations!r}")
    if mean.shape != std.shape:
        raise ValueError(
            f"cem: mean {tuple(mean.shape)} and std {tuple(std.shape)} must match"
        )
    for _ in range(iterations):
        noise = torch.randn((population, *mean.shape), generator=generator)
        candidates = mean + std * noise.to(mean.device)  # [population, *shape]
        scores = score(candidates)  # [population]
        if scores.shape != (population,):
            raise ValueError(
                f"cem: score must return [{population}], got {tuple(scores.shape)}"
            )
        elite = candidates[scores.topk(elites).indices]  # [elites, *shape]
        mean, std = elite.mean(0), elite.std(0)
    return mean, std


# ## Model-predictive control
#
# The planner imagines $H$ steps ahead and scores a plan $a_{1:H}$ by its expected
# number of steps alive,
#
# $$
# J(a_{1:H}) = \frac1K \sum_{k=1}^{K} \sum_{h=1}^{H} \prod_{j \le h} \hat r^{(k)}_j,
# $$
#
# where particle $k$ follows member $k$ of the ensemble: the running product is the
# probability the pole is still up at step $h$, so an imagined episode ends when the
# model says the pole fell. CEM searches over one real number per step whose sign is
# the push, so its Gaussian is a probability $\Phi(\mu_h/\sigma_h)$ of pushing right
# at step $h$, sharpened as the elites agree.
#
# Only the first action is executed; at the next real step the planner plans again
# from the real state (receding horizon), so errors of the model far in the future
# are corrected before they matter. Replanning from scratch wastes the last plan,
# so CEM starts from it shifted by one step (a *warm start*), with a fresh spread.
# `step` is anything that maps `[K, P, 4]` states and `[K, P, 1]` pushes to next
# states and rewards: the true equations with $K = 1$, or the ensemble with $K = M$.
#
# The horizon has to see the end of the track, not only the pole. The reward says
# nothing until the cart actually leaves it, so a planner that looks 15 steps (0.3 s)
# ahead keeps the pole up while the cart drifts off: with the true equations it
# lasted 243 steps on the first seed we tried, and 500 (the limit) with 30 steps
# ahead, the default. Each extra step of horizon is one more model call per CEM
# iteration per real step, which is where a planner's time goes.


class MPC:
    """A CEM planner over `horizon` pushes, replanning at every real step."""

    def __init__(
        self,
        step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        particles: int = 1,
        horizon: int = 30,
        population: int = 100,
        elites: int = 10,
        iterations: int = 3,
        seed: int = 0,
        device: str = "cpu",
    ):
        self.step, self.particles, self.horizon = step, particles, horizon
        self.population, self.elites, self.iterations = population, elites, iterations
        self.generator = torch.Generator().manual_seed(seed)
        self.device = device
        self.plan = torch.zeros(horizon, device=device)

    def imagined_return(self, state: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
        """`state [4]`, `plans [P, H]` → each plan's expected steps alive `[P]`."""
        population = len(plans)
        states = state.expand(self.particles, population, -1)  # [K, P, 4]
        pushes = torch.where(plans > 0, 1.0, -1.0)  # [P, H]
        still_up = torch.ones(self.particles, population, device=self.device)
        total = torch.zeros(self.particles, population, device=self.device)
        for h in range(self.horizon):
            push = pushes[:, h, None].expand(self.particles, -1, -1)  # [K, P, 1]
            states, reward = self.step(states, push)
            still_up = still_up * reward
            total = total + still_up
        return total.mean(0)

    @torch.no_grad()
    def act(self, observation) -> int:
        """The first push of the best plan from `observation`, as CartPole's action
        (0 left, 1 right)."""
        state = torch.as_tensor(observation, dtype=torch.float32, device=self.device)
        warm = torch.cat([self.plan[1:], self.plan.new_zeros(1)])
        self.plan, _ = cem(
            lambda plans: self.imagined_return(state, plans),
            warm,
            torch.ones_like(warm),
            self.iterations,
            self.population,
            self.elites,
            self.generator,
        )
        return int(self.plan[0] > 0)

    def reset(self) -> None:
        self.plan = torch.zeros(self.horizon, device=self.device)


# ## Dyna: learning from imagined experience
#
# Planning at every step is expensive: with the demo's settings, 90 calls of the
# ensemble per real action (30 steps ahead × 3 CEM iterations), each predicting 500
# next states (5 members × 100 candidates), 45,000 in all. The other use of a model is
# to *train a policy* on experience it makes up, once, and then act with the policy
# alone. Dyna [@sutton1991dyna] interleaves real steps with Q-learning updates on
# transitions drawn from the model; MBPO [@janner2019trust] branches short imagined
# rollouts from real states, because a model's error compounds with every step it
# imagines, and states near real data are where it is trustworthy.
#
# The learner here is a small Q-network, $Q(s, \cdot) \in \mathbb R^2$, one value
# per push. A set of imagined *walkers* starts at real states; at every update the
# model imagines both pushes from every walker (a full-width backup, cheaper than a
# sample per action), and with the imagined survival $\hat r \in [0, 1]$ the target
# for each push is
#
# $$
# y(s, a) = \hat r(s, a)\,\big(1 + \gamma \max_{a'} \bar Q(\hat s', a')\big),
# $$
#
# the reward for staying up plus, only if it did, the discounted value after; $\bar
# Q$ is a target network, copied from $Q$ every 100 updates as in DQN. Then each
# walker moves to the imagined state of an $\epsilon$-greedy push, and walkers whose
# pole fell, or that have walked `rollout_length` steps on average, restart at a real
# state. Each walker follows one member of the ensemble, as the planner's particles do.


class QNetwork(nn.Module):
    r"""$Q(s, \cdot)$: `[batch, 4]` → `[batch, 2]`, one value per push."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


def dyna_q(
    model: Ensemble,
    start_states: torch.Tensor,
    updates: int = 3000,
    walkers: int = 64,
    rollout_length: int = 10,
    gamma: float = 0.99,
    epsilon: float = 0.1,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[QNetwork, list[float]]:
    """Train a `QNetwork` on transitions imagined by `model` from the real
    `start_states [n, 4]`; returns it and the loss of every update."""
    if start_states.ndim != 2 or start_states.shape[1] != 4:
        raise ValueError(
            f"dyna_q: start_states must be [n, 4], got {tuple(start_states.shape)}"
        )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = model.input_mean.device
    q = QNetwork().to(device)
    target = copy.deepcopy(q)
    optimizer = torch.optim.Adam(q.parameters(), lr=lr)
    start_states = start_states.to(device)
    members = model.members

    def fresh(count: int) -> torch.Tensor:
        rows = torch.randint(len(start_states), (count,), generator=generator)
        return start_states[rows.to(device)]

    states = fresh(members * walkers).reshape(members, walkers, 4)  # [M, w, 4]
    both = torch.tensor([-1.0, 1.0], device=device).repeat_interleave(walkers)
    both = both[None, :, None].expand(members, -1, -1)  # [M, 2w, 1]
    losses = []
    for update in range(updates):
        with torch.no_grad():
            next_states, reward = model.predict(states.repeat(1, 2, 1), both, generator)
            next_states = next_states.reshape(members, 2, walkers, 4)
            reward = reward.reshape(members, 2, walkers)
            after = target(next_states).max(-1).values  # [M, 2, w]
            y = reward * (1.0 + gamma * after)  # [M, 2, w]
        q_values = q(states)  # [M, w, 2]
        loss = F.smooth_l1_loss(q_values, y.permute(0, 2, 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if update % 100 == 99:
            target.load_state_dict(q.state_dict())
        with torch.no_grad():
            # Walk on: an ε-greedy push, then restart the fallen and a random few.
            greedy = q_values.argmax(-1)  # [M, w]
            explore = torch.rand(greedy.shape, generator=generator).to(device) < epsilon
            coin = torch.randint(2, greedy.shape, generator=generator).to(device)
            push = torch.where(explore, coin, greedy)  # [M, w], 0 left 1 right
            index = push[:, None, :, None].expand(-1, 1, -1, 4)
            states = next_states.gather(1, index)[:, 0]  # [M, w, 4]
            fallen = reward.gather(1, push[:, None])[:, 0] < 0.5
            restart = torch.rand(fallen.shape, generator=generator).to(device)
            restart = fallen | (restart < 1.0 / rollout_length)
            states[restart] = fresh(int(restart.sum()))
    return q, losses


# ## Running an episode
#
# One loop for every way of acting: random pushes, the planner, or the Q-network
# greedily. With `data` it stores each transition, the reward as $1 -
# \text{terminated}$ and the push as $\pm 1$.


def run_episode(
    env: gym.Env,
    policy: Callable[[np.ndarray], int],
    seed: int,
    data: Transitions | None = None,
) -> int:
    """Play one episode of `env` with `policy` (observation → action); returns its
    length, which for CartPole is its return."""
    observation, _ = env.reset(seed=seed)
    length, done = 0, False
    while not done:
        action = policy(observation)
        next_observation, _, terminated, truncated, _ = env.step(action)
        if data is not None:
            data.add(
                observation, 2.0 * action - 1.0, 1.0 - terminated, next_observation
            )
        observation, length, done = (
            next_observation,
            length + 1,
            terminated or truncated,
        )
    return length


def greedy(q: QNetwork) -> Callable[[np.ndarray], int]:
    """The push with the larger Q-value."""
    device = next(q.parameters()).device

    @torch.no_grad()
    def policy(observation: np.ndarray) -> int:
        state = torch.as_tensor(observation, dtype=torch.float32, device=device)
        return int(q(state).argmax())

    return policy


def example():
    """The ensemble on a batch of eight normalised (state, push) inputs per member."""
    torch.manual_seed(0)
    return Ensemble(), (torch.randn(5, 8, 5),)


# ## The demo: collect, fit, plan
#
# The loop of every model-based agent: a few random episodes to start, then rounds of
# fitting a fresh ensemble to everything seen so far and playing one episode with the
# planner in it, whose transitions join the data. After the last round the final
# model also trains a Q-network by Dyna, which then plays without any planning. For
# the comparison, PPO from the [PPO lesson](ppo.md) runs on the same environment with
# a small budget, and every finished episode of both is plotted against the number
# of environment steps consumed before it ended.


def plot_returns(curves: dict[str, list[tuple[int, float]]], out: Path) -> Path:
    """Episode return against environment steps, one series per learner."""
    used, last = curves["CEM in the learned model"][-1]
    fig, ax = figure()
    styles = {
        "random pushes": dict(c="0.6", marker=".", ls="none"),
        "PPO, model-free": dict(c="tab:orange", marker=".", ls="none", alpha=0.5),
        "CEM in the learned model": dict(c="tab:blue", marker="o", ls="-"),
        "Dyna Q-net, no planning": dict(c="tab:green", marker="s", ls="none"),
    }
    for name, points in curves.items():
        if points:
            steps, returns = zip(*points)
            ax.plot(steps, returns, label=name, **styles[name])
    ax.set_xscale("log")
    ax.set_xlabel("environment steps consumed")
    ax.set_ylabel("episode return")
    ax.axhline(500, c="k", lw=0.5, ls=":")
    ax.legend(loc="upper left")
    return save(
        fig,
        out / "returns.png",
        caption="CartPole-v1 episode returns against the environment steps used so "
        "far (log scale): the planner in the learned model mostly does better round "
        f"by round, and its last episode lasts {last:.0f} steps, {used:,} steps in "
        "all, where PPO's episodes are still close to random pushes.",
    )


def plot_model(
    errors: list[tuple[int, float, float]],
    near: np.ndarray,
    far: np.ndarray,
    out: Path,
) -> Path:
    """Held-out one-step error per round, and the ensemble's disagreement on and off
    the data."""
    fig, (left, right) = figure(panels=2)
    sizes, model_mse, constant_mse = zip(*errors)
    left.plot(sizes, model_mse, "o-", label="ensemble mean")
    left.plot(sizes, constant_mse, "s--", label="constant: no change")
    left.set_yscale("log")
    left.set_xlabel("transitions in the data")
    left.set_ylabel("held-out one-step MSE (normalised)")
    left.legend()
    bins = np.logspace(np.log10(min(near.min(), far.min())), np.log10(far.max()), 30)
    right.hist(near, bins=bins, alpha=0.7, label="states the agent saw")
    right.hist(far, bins=bins, alpha=0.7, label="velocities ×4 (unseen)")
    right.set_xscale("log")
    right.set_xlabel("ensemble disagreement (std over members)")
    right.set_ylabel("count")
    right.legend()
    return save(
        fig,
        out / "model.png",
        caption="Left: the ensemble's held-out one-step error against a model that "
        "predicts no change, as data accumulates. Right: the members agree on states "
        "like those they were trained on and disagree on states with four times "
        "the velocities.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Collect → fit → plan on CartPole-v1, then Dyna, then PPO for comparison."""
    parser = argparse.ArgumentParser(
        description="A learned world model for CartPole: PETS-style planning and Dyna.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--rounds", type=integer(at_least=1), default=6, help="fit-and-plan rounds"
    )
    parser.add_argument(
        "--random-steps",
        type=integer(at_least=1),
        default=200,
        help="random steps to start with",
    )
    parser.add_argument(
        "--members", type=integer(at_least=1), default=5, help="ensemble size"
    )
    parser.add_argument(
        "--epochs", type=integer(at_least=1), default=30, help="fitting epochs"
    )
    parser.add_argument(
        "--horizon", type=integer(at_least=1), default=30, help="planning horizon H"
    )
    parser.add_argument(
        "--population", type=integer(at_least=1), default=100, help="CEM population"
    )
    parser.add_argument(
        "--elites", type=integer(at_least=1), default=10, help="CEM elites"
    )
    parser.add_argument(
        "--cem-iterations", type=integer(at_least=1), default=3, help="CEM iterations"
    )
    parser.add_argument(
        "--max-steps",
        type=integer(at_least=1),
        default=500,
        help="episode length limit (CartPole: 500)",
    )
    parser.add_argument(
        "--dyna-updates",
        type=integer(at_least=1),
        default=2000,
        help="Q-learning updates in the model",
    )
    parser.add_argument(
        "--ppo-steps",
        type=integer(at_least=1),
        default=20_000,
        help="PPO's budget of env steps",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--threads", type=integer(at_least=1), default=1, help="torch CPU threads"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device for the model and the planner",
    )
    parser.add_argument("--out", default="out/world_model", help="folder for figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    env = gym.make("CartPole-v1", max_episode_steps=args.max_steps)
    data = Transitions()
    curves = {name: [] for name in ("random pushes", "CEM in the learned model")}
    episode = 0
    while len(data) < args.random_steps:
        length = run_episode(
            env, lambda _: int(rng.integers(2)), args.seed + episode, data
        )
        curves["random pushes"].append((len(data), float(length)))
        episode += 1
    random_mean = float(np.mean([r for _, r in curves["random pushes"]]))
    print(f"random pushes: {episode} episodes, mean return {random_mean:.1f}")

    errors = []
    start = time.perf_counter()
    for round_ in tqdm(range(args.rounds), desc="collect → fit → plan"):
        model = Ensemble(members=args.members).to(args.device)
        stats = fit(model, data.tensors(), args.epochs, seed=args.seed + round_)
        errors.append((len(data), stats["model_mse"], stats["constant_mse"]))
        generator = torch.Generator().manual_seed(args.seed + round_)
        planner = MPC(
            lambda s, a: model.predict(s, a, generator),
            particles=args.members,
            horizon=args.horizon,
            population=args.population,
            elites=args.elites,
            iterations=args.cem_iterations,
            seed=args.seed + round_,
            device=args.device,
        )
        length = run_episode(env, planner.act, args.seed + 1000 + round_, data)
        curves["CEM in the learned model"].append((len(data), float(length)))
        tqdm.write(
            f"round {round_}: one-step MSE {stats['model_mse']:.4f} "
            f"(constant {stats['constant_mse']:.4f}), planner return {length}"
        )
    planning_seconds = time.perf_counter() - start

    # The final model: fitted to everything, probed off the data, then dreamt in.
    model = Ensemble(members=args.members).to(args.device)
    stats = fit(model, data.tensors(), args.epochs, seed=args.seed)
    errors.append((len(data), stats["model_mse"], stats["constant_mse"]))
    states, pushes, *_ = (t.to(args.device) for t in data.tensors())
    with torch.no_grad():
        near = model.disagreement(states, pushes).cpu().numpy()
        far_states = states * torch.tensor([1.0, 4.0, 1.0, 4.0], device=args.device)
        far = model.disagreement(far_states, pushes).cpu().numpy()
    print(
        f"disagreement: median {np.median(near):.4f} on the data, "
        f"{np.median(far):.4f} at four times the velocities"
    )
    q, _ = dyna_q(model, states, updates=args.dyna_updates, seed=args.seed)
    dyna_returns = [run_episode(env, greedy(q), args.seed + 2000 + k) for k in range(3)]
    curves["Dyna Q-net, no planning"] = [(len(data), float(r)) for r in dyna_returns]
    print(f"Dyna Q-network, greedy, no planning: returns {dyna_returns}")

    _, history = train_ppo(
        PPOConfig(total_steps=args.ppo_steps, seed=args.seed), progress=False
    )
    curves["PPO, model-free"] = [(s, r) for s, r, _ in history.episodes]
    model_based_steps = len(data)
    ppo_so_far = [r for s, r, _ in history.episodes if s <= model_based_steps]
    ppo_mean = float(np.mean(ppo_so_far[-10:])) if ppo_so_far else float("nan")
    ppo_last = float(np.mean([r for _, r, _ in history.episodes[-10:]]))
    planner_last = curves["CEM in the learned model"][-1][1]
    print(
        f"after {model_based_steps} env steps: planner return {planner_last:.0f}, "
        f"PPO's last 10 episodes by then {ppo_mean:.1f}"
    )
    print(f"PPO after {history.steps:,} env steps: last 10 episodes {ppo_last:.1f}")
    print(f"planning rounds took {planning_seconds:.1f} s")
    env.close()
    plot_returns(
        {
            name: curves[name]
            for name in (
                "random pushes",
                "PPO, model-free",
                "CEM in the learned model",
                "Dyna Q-net, no planning",
            )
        },
        out,
    )
    plot_model(errors, near, far, out)
    return {
        "random_return": random_mean,
        "planner_return": planner_last,
        "planner_best": max(r for _, r in curves["CEM in the learned model"]),
        "dyna_return": float(np.mean(dyna_returns)),
        "model_mse": stats["model_mse"],
        "constant_mse": stats["constant_mse"],
        "disagreement_near": float(np.median(near)),
        "disagreement_far": float(np.median(far)),
        "env_steps": float(model_based_steps),
        "ppo_return_same_steps": ppo_mean,
        "ppo_return_final": ppo_last,
        "ppo_steps": float(history.steps),
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Set `--members 1`, so that nothing disagrees and each particle follows the one
#    network. Does the planner's first round get worse, and where in the episode?
# 2. Shorten the horizon to 15 steps with the true equations (`MPC(cartpole_step)`).
#    The pole stays up but the cart leaves the track: why can't the planner see it
#    coming, and how does a terminal value (the Dyna Q-network's $\max_a Q$ added
#    after the last imagined step) fix it?
# 3. Replace the full-width backup in `dyna_q` by one sampled push per walker, as in
#    Sutton's Dyna-Q. How many more updates does the Q-network need?
# 4. Turn the model's reward head off and plan with the true `alive` test on the
#    predicted states, as PETS does with a known cost. How much of the planner's error
#    came from the learned reward?
