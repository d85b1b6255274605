"""Verified against gymnasium's own `check_env` (with every warning an error) and
against hand-counted outcomes on layouts set by hand: exact rewards ($1 - 0.01\\,n$ to
1e-12), positions, flags and pixel colours; the breadth-first oracle's solutions replay
in the environment, and a short PPO run beats a random policy.
"""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from tools.literate.figures import short_band
from annotated.rl.custom_env import (
    AGENT_COLOUR,
    COLOURS,
    DOOR,
    EMPTY,
    ENV_ID,
    GOAL,
    KEY,
    MAX_STEPS,
    OPEN_DOOR,
    WALL,
    KeyDoorEnv,
    egocentric_view,
    example,
    generate_layout,
    main,
    parse_layout,
    play,
    random_policy,
    shortest_solution,
)

UP, RIGHT, DOWN, LEFT = range(4)

# The agent two cells left of the key, the door below the key's column, the goal in
# the right room.
LAYOUT = [
    "#######",
    "#A.K#G#",
    "#...D.#",
    "#...#.#",
    "#...#.#",
    "#...#.#",
    "#######",
]


def make(**kwargs):
    env = gym.make(ENV_ID, **kwargs)
    env.reset(seed=0, options={"layout": LAYOUT})
    return env


def test_gymnasium_check_env_passes_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(ENV_ID, render_mode="rgb_array")
        check_env(env.unwrapped)
        # The wrappers of gym.make, the passive checker among them, stay silent too.
        env.reset(seed=3)
        for _ in range(MAX_STEPS):
            env.step(env.action_space.sample())
        env.close()


def test_spaces_and_metadata():
    env = gym.make(ENV_ID)
    assert env.spec.max_episode_steps == MAX_STEPS
    assert env.action_space == gym.spaces.Discrete(4)
    assert env.observation_space.shape == (5 * 13 * 13 + 1,)
    assert env.observation_space.dtype == np.float32
    assert env.metadata["render_fps"] > 0
    assert env.metadata["render_modes"] == ["rgb_array"]


def test_walking_into_a_wall_does_nothing_but_cost_a_step():
    env = make()
    before, _ = env.reset(seed=0, options={"layout": LAYOUT})
    for action in (UP, LEFT):
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["agent"] == (1, 1)
        assert reward == pytest.approx(-0.01, abs=1e-12)
        assert not terminated and not truncated
        np.testing.assert_array_equal(obs, before)


def test_locked_door_blocks_without_the_key_and_opens_with_it():
    env = make()
    layout = ["#######", "#.K.#G#", "#..AD.#"] + ["#...#.#"] * 3 + ["#######"]
    env.reset(options={"layout": layout})
    _, _, _, _, info = env.step(RIGHT)  # into the locked door, no key
    assert info["agent"] == (2, 3) and env.unwrapped.grid[2, 4] == DOOR
    env.step(UP), env.step(LEFT)  # onto the key at (1, 2)
    assert env.unwrapped.has_key and env.unwrapped.grid[1, 2] != KEY
    env.step(DOWN), env.step(RIGHT)
    _, _, _, _, info = env.step(RIGHT)  # with the key: opens and steps through
    assert info == {"agent": (2, 4), "has_key": True}
    assert env.unwrapped.grid[2, 4] == OPEN_DOOR
    env.step(LEFT)  # an open door is floor, both ways
    assert env.unwrapped.agent.tolist() == [2, 3]


def test_reaching_the_goal_terminates_with_the_right_return():
    env = make()
    actions = [RIGHT, RIGHT, DOWN, RIGHT, RIGHT, UP]  # key, door, goal: 6 steps
    rewards, flags = [], []
    for action in actions:
        _, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        flags.append((terminated, truncated))
    assert flags == [(False, False)] * 5 + [(True, False)]
    assert sum(rewards) == pytest.approx(1 - 0.01 * 6, abs=1e-12)
    assert rewards[-1] == pytest.approx(0.99, abs=1e-12)
    grid = env.unwrapped.grid.copy()
    grid[2, 4] = DOOR  # lock it again, put the key back: the oracle's answer
    grid[1, 3] = KEY
    assert shortest_solution(grid, (1, 1)) == actions


def test_time_limit_truncates_and_does_not_terminate():
    env = make(max_episode_steps=7)
    for step in range(1, 8):
        _, reward, terminated, truncated, _ = env.step(LEFT)  # into the wall
        assert not terminated and truncated == (step == 7)
    assert reward == pytest.approx(-0.01)
    stuck = play(gym.make(ENV_ID), lambda obs, env: UP, seed=1)
    assert stuck.truncated and stuck.length == MAX_STEPS
    assert stuck.total_return == pytest.approx(-1.0, abs=1e-12)
    wandering = play(gym.make(ENV_ID), random_policy, seed=2)
    assert wandering.terminated != wandering.truncated


def test_same_seed_same_layout_and_trajectory_and_seeds_differ():
    def trajectory(seed):
        env = gym.make(ENV_ID)
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        out = [obs]
        for _ in range(30):
            out.append(env.step(env.action_space.sample())[0])
        return np.array(out), env.unwrapped.grid.copy()

    (a, grid_a), (b, grid_b) = trajectory(5), trajectory(5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(grid_a, grid_b)
    grids = {trajectory(seed)[1].tobytes() for seed in range(20)}
    assert len(grids) >= 15  # procedural: seeds give different layouts


def test_layouts_put_the_wall_and_door_anywhere_inside():
    # On 7×7 the prose counts 3 wall columns × 5 door rows: in 3,000 draws every one
    # of the 15 pairs turns up, the door is the wall's only opening, the agent and the
    # key are on two cells of the left room and the goal is in the right one.
    rng = np.random.default_rng(0)
    pairs = set()
    for _ in range(3000):
        grid, agent = generate_layout(7, rng)
        inner = grid[1:-1, 1:-1]  # [5, 5]
        (wall,) = np.flatnonzero(np.isin(inner, [WALL, DOOR]).all(axis=0)) + 1
        (door,) = np.argwhere(grid == DOOR)
        assert door[1] == wall
        pairs.add((int(wall), int(door[0])))
        (key,) = np.argwhere(grid == KEY)
        (goal,) = np.argwhere(grid == GOAL)
        assert tuple(key) != agent and agent[1] < wall and key[1] < wall < goal[1]
        assert grid[agent] == EMPTY
    assert pairs == {(wall, row) for wall in (2, 3, 4) for row in range(1, 6)}


def test_every_generated_layout_is_solvable_and_the_oracle_replays():
    env = gym.make(ENV_ID)
    for seed in range(200):
        env.reset(seed=seed)
        inner = env.unwrapped
        assert (inner.grid == KEY).sum() == 1 and (inner.grid == GOAL).sum() == 1
        assert (inner.grid == DOOR).sum() == 1
        actions = shortest_solution(inner.grid, inner.agent)
        assert actions is not None and len(actions) >= 3
        for t, action in enumerate(actions):
            _, reward, terminated, truncated, _ = env.step(action)
            assert terminated == (t == len(actions) - 1) and not truncated


def test_the_oracle_returns_none_when_the_key_is_behind_its_own_door():
    locked = [row.replace("K", ".") for row in LAYOUT]
    locked[3] = "#...#K#"
    grid, agent = parse_layout(locked, 7)
    assert shortest_solution(grid, agent) is None
    # holding a key already, the agent walks through the door and up to the goal
    path = [RIGHT, RIGHT, DOWN, RIGHT, RIGHT, UP]
    assert shortest_solution(grid, agent, has_key=True) == path


def test_observation_is_egocentric_and_in_its_space():
    env = make()
    obs, _ = env.reset(options={"layout": LAYOUT})
    planes = obs[:-1].reshape(13, 13, 5)
    # The agent sits at the window's centre (6, 6); the key is two cells to its right
    # (plane 3), the goal four right (plane 4), the walls above and to the left.
    assert planes[6, 8, 3] == 1 and planes[6, 10, 4] == 1
    assert planes[5, 6, 0] == 1 and planes[6, 5, 0] == 1 and planes[6, 6].sum() == 0
    assert obs[-1] == 0 and obs in env.observation_space
    # Outside the grid is wall: the window's corner when the agent is in (1, 1).
    assert planes[0, 0, 0] == 1
    env.step(RIGHT)
    obs2, *_ = env.step(RIGHT)
    assert obs2[-1] == 1 and obs2.reshape(-1)[:-1].reshape(13, 13, 5)[6, 8, 3] == 0
    # At (1, 3) the goal (1, 5) is two cells right, the door (2, 4) one down-right.
    after = obs2[:-1].reshape(13, 13, 5)
    assert after[6, 8, 4] == 1 and after[7, 7, 1] == 1 and after[:, :, 4].sum() == 1
    # Moving shifts the view: what was two cells right is now at the centre.
    np.testing.assert_array_equal(
        egocentric_view(env.unwrapped.grid, np.array([1, 1]), False)[:-1].reshape(
            13, 13, 5
        )[6, 8],
        obs2[:-1].reshape(13, 13, 5)[6, 6],
    )


def test_render_shows_agent_key_door_goal_in_their_cells():
    env = make(render_mode="rgb_array")
    frame = env.render()
    assert frame.shape == (7 * 16, 7 * 16, 3) and frame.dtype == np.uint8

    def centre(row, col):
        return frame[row * 16 + 8, col * 16 + 8]

    np.testing.assert_array_equal(centre(1, 1), AGENT_COLOUR)
    np.testing.assert_array_equal(centre(1, 3), COLOURS[KEY])
    np.testing.assert_array_equal(centre(2, 4), COLOURS[DOOR])
    np.testing.assert_array_equal(centre(1, 5), COLOURS[GOAL])
    for action in (RIGHT, RIGHT, DOWN, RIGHT):
        env.step(action)
    frame = env.render()
    np.testing.assert_array_equal(centre(1, 3), COLOURS[0])  # key taken
    np.testing.assert_array_equal(frame[2 * 16 + 3, 4 * 16 + 3], AGENT_COLOUR)
    np.testing.assert_array_equal(centre(2, 4), COLOURS[KEY])  # carried: the dot
    assert make().render() is None  # no render_mode, no picture


def test_bad_inputs_raise_naming_the_argument():
    with pytest.raises(ValueError, match="size must be an int >= 5"):
        KeyDoorEnv(size=4)
    with pytest.raises(ValueError, match="render_mode must be None or one of"):
        KeyDoorEnv(render_mode="human")
    env = KeyDoorEnv()
    env.reset(seed=0)
    grid = env.grid.copy()
    with pytest.raises(ValueError, match=r"7 strings of 7 characters"):
        env.reset(options={"layout": LAYOUT[:-1]})
    with pytest.raises(ValueError, match="exactly one 'A'"):
        env.reset(options={"layout": [row.replace("A", ".") for row in LAYOUT]})
    with pytest.raises(ValueError, match=r"\['X'\]"):
        env.reset(options={"layout": [row.replace("G", "X") for row in LAYOUT]})
    with pytest.raises(ValueError, match="surrounded by walls"):
        env.reset(options={"layout": ["." + LAYOUT[0][1:]] + LAYOUT[1:]})
    with pytest.raises(TypeError, match="list of strings"):
        env.reset(options={"layout": "#######"})
    np.testing.assert_array_equal(env.grid, grid)  # nothing changed half-way
    with pytest.raises(ValueError, match=r"action must be an int in \[0, 4\)"):
        env.step(4)


def test_example_runs():
    fn, args = example()
    episode = fn(*args)
    assert episode.terminated and len(episode.frames) == episode.length + 1
    assert episode.total_return == pytest.approx(1 - 0.01 * episode.length)


def test_short_ppo_run_beats_random(tmp_path):
    metric, args, low, high = short_band("annotated/rl/custom_env.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["random_success_rate"] < 0.5
    assert metrics["success_rate"] > metrics["random_success_rate"] + 0.25
    assert metrics["mean_return"] > metrics["random_mean_return"] + 0.4
    assert metrics["optimal_mean_return"] > metrics["mean_return"]
    assert (tmp_path / "learning_curve.png").exists()
    assert (tmp_path / "filmstrip.png").exists()


def random_steps(env_id, steps=1000):
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    env.close()


@pytest.mark.benchmark(group="1,000 random steps through gym.make")
def test_bench_steps_keydoor(benchmark):
    benchmark.extra_info["label"] = "KeyDoor-v0 (ours)"
    benchmark(random_steps, ENV_ID)


@pytest.mark.benchmark(group="1,000 random steps through gym.make")
def test_bench_steps_frozenlake(benchmark):
    benchmark.extra_info["label"] = "gymnasium FrozenLake-v1"
    benchmark.extra_info["baseline"] = True
    benchmark(random_steps, "FrozenLake-v1")
