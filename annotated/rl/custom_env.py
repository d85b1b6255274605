r"""
---
title: A custom environment
summary: >-
  A key-and-door grid world written to the gymnasium.Env API (spaces, seeded procedural
  layouts, terminated versus truncated, rgb_array rendering, registration), passing
  gymnasium's checker and solved by the PPO of the previous lesson.
time: 12 s
expected:
  metric: success_rate
  short: ["--total-steps", "10240", "--episodes", "40"]
references:
  - key: towers2024gymnasium
    authors: [Mark Towers, Ariel Kwiatkowski, Jordan Terry, John U. Balis, Gianluca De
      Cola, Tristan Deleu, Manuel Goulão, Andreas Kallinteris, Markus Krimmel, Arjun KG,
      Rodrigo Perez-Vicente, Andrea Pierré, Sander Schulhoff, Jun Jet Tai, Hannah Tan,
      Omar G. Younis]
    title: "Gymnasium: A Standard Interface for Reinforcement Learning Environments"
    year: 2024
    venue: arXiv preprint
    arxiv: "2407.17032"
  - key: chevalier2023minigrid
    authors: [Maxime Chevalier-Boisvert, Bolun Dai, Mark Towers, Rodrigo de Lazcano,
      Lucas Willems, Salem Lahlou, Suman Pal, Pablo Samuel Castro, Jordan Terry]
    title: "Minigrid & Miniworld: Modular & Customizable Reinforcement Learning
      Environments for Goal-Oriented Tasks"
    year: 2023
    venue: NeurIPS 2023 Datasets and Benchmarks
    arxiv: "2306.13831"
  - key: sutton2018reinforcement
    authors: [Richard S. Sutton, Andrew G. Barto]
    title: "Reinforcement Learning: An Introduction (2nd edition)"
    year: 2018
    venue: MIT Press
    url: http://incompleteideas.net/book/the-book-2nd.html
  - key: pardo2018time
    authors: [Fabio Pardo, Arash Tavakoli, Vitaly Levdik, Petar Kormushev]
    title: Time Limits in Reinforcement Learning
    year: 2018
    venue: ICML 2018
    arxiv: "1712.00378"
worksheet:
  - region: egocentric_view
    hint: >-
      Pad the n x n grid with n - 1 cells of wall on every side, cut the (2n - 1)
      square window whose centre is the agent, one-hot it against VIEW_TYPES, and
      append the has-key flag, all as float32.
    tests: [test_observation_is_egocentric_and_in_its_space]
  - region: KeyDoorEnv.step
    hint: >-
      Refuse an action outside the action space; look at the target cell: a locked
      door opens if the agent holds the key, walls and locked doors block, a key is
      picked up (its cell emptied); the episode terminates on the goal with reward 1
      minus the step penalty, every other step costs the penalty.
    tests:
      - test_walking_into_a_wall_does_nothing_but_cost_a_step
      - test_locked_door_blocks_without_the_key_and_opens_with_it
      - test_reaching_the_goal_terminates_with_the_right_return
  - region: shortest_solution
    hint: >-
      Breadth-first search over (row, column, has_key) states, remembering each
      state's parent and action; a move into a wall, or into a locked door without
      the key, is not allowed, and stepping on the key sets has_key. At the goal,
      follow the parents back and reverse the actions; None if the goal is never
      reached.
    tests: [test_every_generated_layout_is_solvable_and_the_oracle_replays]
---

An agent learns from whatever the environment tells it, so writing an environment is
writing half of the learning problem. A reinforcement-learning environment is a Markov
decision process [@sutton2018reinforcement] behind a small API: `reset` starts an
episode and returns the first observation, `step(action)` returns the next observation,
a reward, and two flags that say whether the episode is over. Gymnasium fixes that API
[@towers2024gymnasium], and every algorithm written against it, the
[PPO](ppo.md) of the previous lesson included, runs on every environment that keeps it.

This lesson writes one from scratch: a grid world in the spirit of Minigrid's DoorKey
[@chevalier2023minigrid]. Two rooms are split by a wall with a locked door; the agent
must walk to the key, through the door (which opens only if it carries the key) and to
the goal. Every step costs 0.01 and the goal pays 1, so an episode solved in $n$ steps
returns $1 - 0.01\,n$, and an episode that runs out of time (100 steps) returns
$-1$. Each seed draws a new layout: where the wall, the door, the key, the goal and
the agent are.

Along the way the lesson meets each part of the contract: the observation and action
spaces, seeding through `self.np_random`, `reset(seed=, options=)`, the difference
between *terminated* and *truncated* (a time limit is not a terminal state
[@pardo2018time]), `render_mode="rgb_array"`, the `metadata`, and
`gymnasium.register`. The test runs gymnasium's own checker on it and checks the
rules on layouts set by hand; the demo trains PPO on it and films one solved episode.
"""

import argparse
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from tqdm import tqdm

from annotated.data import integer, number, torch_device
from annotated.figures import figure, save
from annotated.rl.ppo import Agent, PPOConfig, train

# ## The world: a grid of cell types
#
# The state is small: a `size × size` array of cell types (the outer ring is wall), the
# agent's position, and whether it holds the key. Six cell types are enough. The door
# has two: locked (a wall unless the agent has the key) and open (a floor). The key
# disappears from the grid when it is picked up.
#
# The four actions are moves, in the order the grid's rows and columns run: up is
# row $-1$, right is column $+1$. Minigrid gives its agent a heading, turn actions and
# explicit *pick up* and *toggle* actions [@chevalier2023minigrid]; here walking onto
# the key picks it up and walking into the locked door with the key opens it and steps
# through. Fewer actions make a shorter lesson and a faster demo; an exercise puts them
# back.

EMPTY, WALL, DOOR, OPEN_DOOR, KEY, GOAL = range(6)
MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])  # up, right, down, left
ACTION_NAMES = ("up", "right", "down", "left")
LAYOUT_CHARS = {".": EMPTY, "#": WALL, "D": DOOR, "d": OPEN_DOOR, "K": KEY, "G": GOAL}
MAX_STEPS = 100  # the registered time limit
ENV_ID = "KeyDoor-v0"

# ## What the agent sees
#
# PPO's `Agent` is a multilayer perceptron over one flat vector, so the observation
# space is a flat `Box`. The obvious encoding, a one-hot plane per cell type over the
# grid plus one for the agent, is a poor one for an MLP: "the key is one cell to my
# left" is a different set of input units in every position, and the network must
# learn the same rule once per square.
#
# So the view is *egocentric*: the grid is padded with wall and cropped to a
# $(2n - 1) \times (2n - 1)$ window centred on the agent. The whole grid is always
# inside it (nothing is hidden: the process stays Markov), and "key to my left" is
# always the same unit. Five one-hot planes (wall, locked door, open door, key, goal;
# empty is all zeros) and the has-key flag give
#
# $$
# d = 5\,(2n - 1)^2 + 1 = 846 \quad (n = 7).
# $$
#
# The has-key flag is redundant with "no key on the grid" in generated layouts, but
# not in every layout (a hand-set one may have no key at all), and a direct input is
# cheaper to learn from than an absence. In trial runs of this lesson's PPO at a
# learning rate of 6e-4, the one-hot grid with an agent plane averaged a return of 0.70
# after 150,000 steps; the egocentric view reached 0.85 after 36,000.


VIEW_TYPES = np.array([WALL, DOOR, OPEN_DOOR, KEY, GOAL])


def egocentric_view(grid: np.ndarray, agent: np.ndarray, has_key: bool) -> np.ndarray:
    """The flat observation: one-hot planes of the `(2n-1)²` window centred on the
    agent, then the has-key flag."""
    n = grid.shape[0]
    padded = np.full((3 * n - 2, 3 * n - 2), WALL)  # [3n-2, 3n-2]
    padded[n - 1 : 2 * n - 1, n - 1 : 2 * n - 1] = grid
    row, col = agent
    window = padded[row : row + 2 * n - 1, col : col + 2 * n - 1]  # [2n-1, 2n-1]
    planes = window[..., None] == VIEW_TYPES  # [2n-1, 2n-1, 5]
    return np.append(planes.ravel(), has_key).astype(np.float32)  # [5 (2n-1)² + 1]


# ## Drawing it
#
# `render_mode="rgb_array"` asks `render()` for an `[H, W, 3]` `uint8` image, which is
# what video recorders and this page's filmstrip take. No sprites: each cell is a
# `tile × tile` square of its colour, the agent a red square inset in its cell, and the
# key it carries a yellow dot on it. The colours are a table indexed by cell type, so
# the whole grid is drawn by one fancy-indexing expression.

COLOURS = np.array(
    [
        [30, 30, 30],  # empty
        [130, 130, 130],  # wall
        [150, 90, 30],  # locked door
        [225, 185, 130],  # open door
        [240, 200, 20],  # key
        [40, 170, 60],  # goal
    ],
    dtype=np.uint8,
)
AGENT_COLOUR = np.array([220, 40, 40], dtype=np.uint8)


def draw(grid: np.ndarray, agent: np.ndarray, has_key: bool, tile: int) -> np.ndarray:
    """An RGB picture `[n·tile, n·tile, 3]` of the grid with the agent on it."""
    image = COLOURS[grid].repeat(tile, axis=0).repeat(tile, axis=1)  # [nt, nt, 3]
    image[tile - 1 :: tile, :] = 0  # grid lines
    image[:, tile - 1 :: tile] = 0
    top, left = agent * tile
    inset = tile // 5
    image[top + inset : top + tile - inset, left + inset : left + tile - inset] = (
        AGENT_COLOUR
    )
    if has_key:
        low, high = tile // 2 - tile // 8, tile // 2 + tile // 8
        image[top + low : top + high, left + low : left + high] = COLOURS[KEY]
    return image


# ## Procedural layouts from the seed
#
# A fixed layout would be memorised, not solved: the policy would learn one path. So
# every `reset` draws a layout, like Minigrid's DoorKey [@chevalier2023minigrid]: a
# wall at a random inner column (each room at least one column wide), a door at a
# random row of it, the agent and the key on two different cells of the left room,
# the goal anywhere in the right room. On a $7 \times 7$ grid that is 3 wall columns
# × 5 door rows × the placements in the rooms: 11,250 layouts.
#
# All randomness goes through `self.np_random`, the generator that `gym.Env.reset`
# seeds from `seed=`, so a seed fixes the layout, and a reset without a seed continues
# the generator's stream (a new layout each episode, reproducible from the first seed).
# Never `np.random` or Python's `random`: they would ignore the seed the caller passed.


def generate_layout(size: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple]:
    """A random two-room layout `[size, size]` and the agent's start `(row, col)`."""
    grid = np.full((size, size), EMPTY)
    grid[[0, -1], :] = WALL
    grid[:, [0, -1]] = WALL
    wall = int(rng.integers(2, size - 2))
    grid[1:-1, wall] = WALL
    grid[int(rng.integers(1, size - 1)), wall] = DOOR
    rows = range(1, size - 1)
    left = [(r, c) for r in rows for c in range(1, wall)]
    right = [(r, c) for r in rows for c in range(wall + 1, size - 1)]
    agent, key = rng.choice(len(left), size=2, replace=False)
    grid[left[key]] = KEY
    grid[right[rng.integers(len(right))]] = GOAL
    return grid, left[agent]


# A layout can also be set by hand, which is how the tests build the situations they
# check. Gymnasium's `reset` takes an `options` dict for exactly this kind of
# per-episode setting; here `options={"layout": [...]}` is a list of equal-length
# strings, one per row, with `A` for the agent and the characters of `LAYOUT_CHARS` for
# the cells. It is checked before anything is changed, so a bad layout leaves the
# environment as it was.


def parse_layout(layout: list[str], size: int) -> tuple[np.ndarray, tuple]:
    """The grid and the agent's `(row, col)` of a hand-set layout."""
    if not isinstance(layout, (list, tuple)) or not all(
        isinstance(row, str) for row in layout
    ):
        raise TypeError("reset: options['layout'] must be a list of strings")
    if len(layout) != size or any(len(row) != size for row in layout):
        raise ValueError(
            f"reset: options['layout'] must be {size} strings of {size} characters, "
            f"got {[len(row) for row in layout]}"
        )
    text = "".join(layout)
    unknown = set(text) - set(LAYOUT_CHARS) - {"A"}
    if unknown or text.count("A") != 1:
        raise ValueError(
            "reset: options['layout'] must hold exactly one 'A' and only the "
            f"characters {''.join(LAYOUT_CHARS)}; got {text.count('A')} 'A' and "
            f"{sorted(unknown)}"
        )
    edge = layout[0] + layout[-1] + "".join(row[0] + row[-1] for row in layout)
    if set(edge) != {"#"}:
        raise ValueError("reset: options['layout'] must be surrounded by walls '#'")
    agent = divmod(text.index("A"), size)
    cells = [LAYOUT_CHARS.get(char, EMPTY) for char in text]
    return np.array(cells).reshape(size, size), agent


# ## The environment
#
# A `gymnasium.Env` declares, before any episode:
#
# - `metadata`: the render modes it supports and `render_fps`, the frame rate a video
#   recorder should use;
# - `observation_space` and `action_space`: what `reset` and `step` return and accept.
#   Algorithms size their networks from them (PPO reads `shape[0]` and `n`), and the
#   checker verifies that every observation lies in the space, dtype included: a
#   `float64` vector in a `float32` box is a warning.
#
# `reset(seed=, options=)` must call `super().reset(seed=seed)` first, which reseeds
# `self.np_random` when a seed is given, and returns `(observation, info)`.
#
# `step(action)` returns the five-tuple `(observation, reward, terminated, truncated,
# info)`:
#
# - `terminated` is set when the episode reached a terminal state of the MDP: here
#   the goal. Nothing follows it; its value is 0.
# - `truncated` is set when the episode was cut off for a reason outside the MDP,
#   usually a time limit. The state is not terminal and its value is not 0; an agent
#   that treats it as terminal learns that the states near the limit are worthless,
#   which they are not, since the observation carries no clock [@pardo2018time].
#   (PPO's GAE bootstraps from the value of the last observation exactly then.)
#
# The environment itself never truncates. The time limit is a wrapper, `TimeLimit`,
# that `gym.make` adds from the registration's `max_episode_steps`: it counts steps and
# sets `truncated`. That keeps the MDP and the training budget apart, and lets a user
# change the limit with `gym.make(ENV_ID, max_episode_steps=...)`.
#
# The transition itself is five lines: look at the target cell; a locked door opens if
# the agent has the key; the agent moves unless the cell is a wall or still a locked
# door; a key is picked up; the goal terminates. The reward is $-0.01$ on every step
# plus $1$ on the step that reaches the goal. `step` returns a fresh observation array
# every time: the checker fails an environment that hands back the same buffer twice,
# since a rollout that stores it would see every stored step change.


class KeyDoorEnv(gym.Env):
    """Pick up the key, open the door, reach the goal, on a procedurally generated
    `size × size` grid."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        size: int = 7,
        step_penalty: float = 0.01,
        render_mode: str | None = None,
        tile: int = 16,
    ):
        if not isinstance(size, int) or size < 5:
            raise ValueError(f"KeyDoorEnv: size must be an int >= 5, got {size!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(
                f"KeyDoorEnv: render_mode must be None or one of "
                f"{self.metadata['render_modes']}, got {render_mode!r}"
            )
        self.size = size
        self.step_penalty = step_penalty
        self.render_mode = render_mode
        self.tile = tile
        self.action_space = spaces.Discrete(len(MOVES))
        dim = len(VIEW_TYPES) * (2 * size - 1) ** 2 + 1
        self.observation_space = spaces.Box(0.0, 1.0, shape=(dim,), dtype=np.float32)
        self.grid = np.full((size, size), WALL)
        self.agent = np.array([1, 1])
        self.has_key = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "layout" in options:
            grid, agent = parse_layout(options["layout"], self.size)
        else:
            grid, agent = generate_layout(self.size, self.np_random)
        self.grid, self.agent, self.has_key = grid, np.array(agent), False
        return self.observe(), self.info()

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(
                f"KeyDoorEnv.step: action must be an int in "
                f"[0, {self.action_space.n}), got {action!r}"
            )
        target = self.agent + MOVES[action]
        cell = self.grid[target[0], target[1]]
        if cell == DOOR and self.has_key:
            cell = self.grid[target[0], target[1]] = OPEN_DOOR
        if cell not in (WALL, DOOR):
            self.agent = target
        if cell == KEY:
            self.has_key = True
            self.grid[target[0], target[1]] = EMPTY
        terminated = bool(cell == GOAL)
        reward = float(terminated) - self.step_penalty
        return self.observe(), reward, terminated, False, self.info()

    def observe(self) -> np.ndarray:
        return egocentric_view(self.grid, self.agent, self.has_key)

    def info(self) -> dict:
        return {"agent": tuple(int(i) for i in self.agent), "has_key": self.has_key}

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return draw(self.grid, self.agent, self.has_key, self.tile)
        return None


# ## Registration
#
# `gymnasium.register` puts the environment in the registry under an id, so that
# `gym.make(ENV_ID)` builds it with its wrappers (the time limit, the order enforcer
# that refuses `step` before `reset`, and the passive checker that warns when an
# observation leaves its space) and so does `gym.make_vec`, which is how
# `make_envs` in [PPO](ppo.md#make-envs) builds its vector of copies. The
# `-v0` is the version: an environment whose dynamics change gets a new number, so
# results reported on `-v0` stay comparable.
#
# The entry point is the class itself rather than the string
# `"annotated.rl.custom_env:KeyDoorEnv"`, so that registration also works when this
# file runs as a script or is copied out of the package. Registering runs at import
# time, once: a second registration of the same id would replace the first with a
# warning.

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=KeyDoorEnv, max_episode_steps=MAX_STEPS)


# ## An oracle: the shortest solution
#
# A learning curve needs a ceiling. The grid is small and the rules deterministic, so
# the best return of a layout is exact: breadth-first search over the states
# (position, has key), where a state's neighbours follow the rules of `step` (the
# locked door is passable once the key is held; stepping on the key sets the flag).
# The first time the search reaches the goal it has the fewest steps $n^\ast$ and the
# best return $1 - 0.01\,n^\ast$ [@sutton2018reinforcement] (chapter 4, planning with
# a known model). It returns the actions, so the test can replay them in the
# environment.


def shortest_solution(
    grid: np.ndarray, agent: tuple, has_key: bool = False
) -> list[int] | None:
    """The actions of a shortest path from `agent` (holding the key or not) to the
    goal, or `None` if there is none."""
    start = (int(agent[0]), int(agent[1]), bool(has_key))
    parents = {start: None}
    frontier = deque([start])
    while frontier:
        state = frontier.popleft()
        row, col, has_key = state
        if grid[row, col] == GOAL:
            actions = []
            while parents[state] is not None:
                state, action = parents[state]
                actions.append(action)
            return actions[::-1]
        for action, (dr, dc) in enumerate(MOVES):
            cell = grid[row + dr, col + dc]
            if cell == WALL or (cell == DOOR and not has_key):
                continue
            following = (row + dr, col + dc, has_key or cell == KEY)
            if following not in parents:
                parents[following] = (state, action)
                frontier.append(following)
    return None


# ## Playing an episode
#
# One loop serves the random baseline, the oracle and the trained agent: reset with a
# seed, ask a policy for actions until either flag is set, and keep the frames if the
# environment renders. The policy sees the observation and the environment (the
# oracle plans on the grid; the others ignore it).


@dataclass
class Episode:
    """What one episode left: its return, its length, how it ended, its frames."""

    total_return: float = 0.0
    length: int = 0
    terminated: bool = False
    truncated: bool = False
    frames: list[np.ndarray] = field(default_factory=list)


def play(env: gym.Env, policy, seed: int) -> Episode:
    """One episode of `env` from `reset(seed=seed)`, acting with
    `policy(obs, env) -> action`."""
    obs, _ = env.reset(seed=seed)
    episode = Episode()
    keep_frames = env.render_mode == "rgb_array"
    if keep_frames:
        episode.frames.append(env.render())
    while not (episode.terminated or episode.truncated):
        obs, reward, episode.terminated, episode.truncated, _ = env.step(
            policy(obs, env)
        )
        episode.total_return += reward
        episode.length += 1
        if keep_frames:
            episode.frames.append(env.render())
    return episode


def oracle_policy(obs: np.ndarray, env: gym.Env) -> int:
    """The first action of a shortest solution from the current state."""
    inner = env.unwrapped
    return shortest_solution(inner.grid, inner.agent, inner.has_key)[0]


def agent_policy(agent: Agent, generator: torch.Generator):
    """PPO's agent as a policy: sample from its softmax, as in training."""

    @torch.no_grad()
    def policy(obs: np.ndarray, env: gym.Env) -> int:
        logits, _ = agent(torch.as_tensor(obs)[None])  # [1, actions]
        return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))

    return policy


def random_policy(obs: np.ndarray, env: gym.Env) -> int:
    """A uniformly random action from the environment's own (seeded) action space."""
    return int(env.action_space.sample())


# ## The example
#
# One rendered episode of the oracle on the layout of seed 0. The dataflow diagram is
# declared by `dataflow` below, not traced: it is the loop of `play`, with the shapes
# that pass between `reset`, `step`, the observation and the renderer.


def example():
    """A small example: `fn(*args)` plays the oracle's episode on seed 0's layout."""
    env = gym.make(ENV_ID, render_mode="rgb_array")
    return play, (env, oracle_policy, 0)


def dataflow(episode: Episode):
    """The loop of `play` on the example, with the shapes between its steps."""
    frame = "×".join(str(d) for d in episode.frames[0].shape)
    dim = len(VIEW_TYPES) * (2 * 7 - 1) ** 2 + 1
    nodes = [
        ("reset", "reset(seed=0): generate_layout → grid [7, 7]"),
        ("observe", "egocentric_view: window [13, 13] × 5 planes + has-key"),
        ("policy", "policy(obs) → action ∈ {0, 1, 2, 3}"),
        ("step", "step: door, wall, key, goal rules"),
        ("limit", f"TimeLimit wrapper ({MAX_STEPS} steps)"),
        ("render", f"render() → RGB frame [{frame}] uint8"),
        (
            "return",
            f"episode: {episode.length} steps, return {episode.total_return:.2f}",
        ),
    ]
    edges = [
        ("reset", "observe", "grid, agent, has_key"),
        ("observe", "policy", f"obs [{dim}] float32"),
        ("policy", "step", "action"),
        ("step", "observe", "new state"),
        ("step", "limit", "reward, terminated"),
        ("limit", "return", "reward, terminated, truncated"),
        ("step", "render", "grid, agent"),
    ]
    return nodes, edges


# ## The demo
#
# Train [PPO](ppo.md) on `KeyDoor-v0` with the previous lesson's `train`, unchanged:
# the environment is a gymnasium id like CartPole, and the registration is all the glue
# there is. Besides the budget (150,000 steps, which the learning rate's annealing
# follows) and the target return, only the learning rate differs from CartPole's
# default (1e-3 instead of 2.5e-4; the reward is sparse and the default needs about
# three times the steps).
# Training stops once the last 20 episodes average a return of 0.85.
#
# Then three policies play the same 200 held-out layouts (seeds from 10,000 up): a
# uniformly random one, the trained agent (sampling, as it was trained), and the
# breadth-first oracle, whose mean return is the ceiling. The figures are the learning
# curve against those two references and a filmstrip of the agent solving one layout.


def evaluate(env: gym.Env, policy, seeds: range) -> tuple[float, float]:
    """The success rate and the mean return of `policy` over one episode per seed."""
    episodes = [play(env, policy, seed) for seed in seeds]
    success = np.mean([episode.terminated for episode in episodes])
    return float(success), float(np.mean([e.total_return for e in episodes]))


def plot_learning_curve(
    episodes, random_return, optimal_return, target, out, layouts: int = 200
):
    """Episode returns during training with the random and optimal levels."""
    steps, returns = np.array([(s, r) for s, r, _ in episodes]).T
    fig, ax = figure()
    ax.scatter(steps, returns, s=4, alpha=0.3, label="episode return")
    if len(returns) >= 20:
        smooth = np.convolve(returns, np.ones(20) / 20, mode="valid")
        ax.plot(steps[19:], smooth, color="C1", label="mean of last 20")
    ax.axhline(optimal_return, color="C2", ls="--", lw=1, label="optimal (BFS)")
    ax.axhline(random_return, color="C3", ls=":", lw=1, label="random policy")
    ax.axhline(target, color="k", ls="-", lw=0.5, label=f"target {target}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return $1 - 0.01\\,n$ (or $-1$)")
    # Below the axes: inside, the key would hide the row of failed episodes at -1.
    fig.legend(loc="outside lower center", ncols=3)
    return save(
        fig,
        out / "learning_curve.png",
        caption="PPO on KeyDoor-v0: the return of each training episode against "
        "environment steps, with the mean of the last 20 (orange), the mean return of "
        "a random policy (red, dotted) and of the breadth-first optimum (green, "
        f"dashed) on {layouts} held-out layouts.",
    )


def plot_filmstrip(episode: Episode, out: Path) -> Path:
    """Six frames of one episode, evenly spaced from the first to the last."""
    picks = np.linspace(0, len(episode.frames) - 1, 6).round().astype(int)
    fig, axes = figure(panels=6, rows=2)
    for ax, t in zip(axes.flat, picks):
        ax.imshow(episode.frames[t], interpolation="nearest")
        ax.set_title(f"$t = {t}$")
        ax.set_axis_off()
    return save(
        fig,
        out / "filmstrip.png",
        caption=f"The trained agent (red) on a held-out layout, solved in "
        f"{episode.length} steps: it walks to the key (yellow; the dot on the agent "
        "shows it is carried), through the door (brown when locked, tan when open) "
        "and to the goal (green).",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train PPO on KeyDoor-v0 and compare it with a random policy and the optimum."""
    parser = argparse.ArgumentParser(
        description="Train PPO on the key-and-door grid world and film one episode.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--total-steps",
        type=integer(at_least=1),
        default=150_000,
        help="PPO's step budget",
    )
    parser.add_argument(
        "--target", type=number(), default=0.85, help="stop at this mean return of 20"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=1e-3, help="Adam's learning rate"
    )
    parser.add_argument(
        "--episodes",
        type=integer(at_least=1),
        default=200,
        help="held-out layouts per policy",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="torch CPU threads (1 is fastest here)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device for PPO's update (acting stays on the CPU)",
    )
    parser.add_argument("--out", default="out/custom_env", help="folder for figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    config = PPOConfig(
        env_id=ENV_ID,
        total_steps=args.total_steps,
        target_return=args.target,
        lr=args.lr,
        seed=args.seed,
    )
    agent, history = train(config, device=args.device)
    agent.eval()

    env = gym.make(ENV_ID)
    env.action_space.seed(args.seed)
    seeds = range(10_000, 10_000 + args.episodes)
    generator = torch.Generator().manual_seed(args.seed)
    results = {}
    for name, policy in [
        ("random", random_policy),
        ("ppo", agent_policy(agent, generator)),
        ("optimal", oracle_policy),
    ]:
        results[name] = evaluate(env, policy, tqdm(seeds, desc=name, leave=False))
    env.close()

    print(
        f"PPO: {history.steps:,} env steps in {history.seconds:.1f} s "
        f"({history.steps / history.seconds:,.0f} steps/s)"
    )
    for name, (success, mean_return) in results.items():
        print(f"{name:8s} success {success:.3f}  mean return {mean_return:+.3f}")

    film_env = gym.make(ENV_ID, render_mode="rgb_array")
    policy = agent_policy(agent, generator)
    solved = next(
        (e for s in seeds if (e := play(film_env, policy, s)).terminated), None
    )
    film_env.close()
    if history.episodes:
        plot_learning_curve(
            history.episodes,
            results["random"][1],
            results["optimal"][1],
            args.target,
            out,
            args.episodes,
        )
    if solved is not None:
        plot_filmstrip(solved, out)
    return {
        "success_rate": results["ppo"][0],
        "mean_return": results["ppo"][1],
        "random_success_rate": results["random"][0],
        "random_mean_return": results["random"][1],
        "optimal_mean_return": results["optimal"][1],
        "steps": float(history.steps),
        "seconds": history.seconds,
        "steps_to_target": float(history.target_steps or float("nan")),
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Replace the egocentric view by the allocentric one (one-hot planes over the grid
#    itself, plus a plane for the agent). How many more environment steps does PPO
#    need to reach the target, and why does an MLP care where the origin is?
# 2. Give the agent Minigrid's interface: a heading, *turn left*, *turn right*,
#    *forward*, *pick up* and *toggle*, and a $7 \times 7$ view in front of it only.
#    The process is no longer Markov in the observation; what does PPO need then?
# 3. Make the environment truncate by itself at 100 steps and register it without
#    `max_episode_steps`. What changes for a user who wants a longer limit, and does
#    gymnasium's checker notice?
# 4. Drop the step penalty. The random policy's success rate does not change; what
#    happens to the length of the agent's solutions, and why?
