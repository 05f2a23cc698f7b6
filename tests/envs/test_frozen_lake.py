"""FrozenLake through the gym adapter: random maps per seed (4x4 id, 8x8 ood), the shortest-path oracle, rewards,
captions, the gymnasium checker, SFT data, and a short training run with every algorithm on the tiny VLM."""
from __future__ import annotations

import json
import math
from collections import deque

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the environments)
from envs.base import MIN_LOG_REWARD
from envs.frozen_lake import FrozenLakeEnv
from gflowvlm import cli
from gflowvlm.config import load_config
from gflowvlm.trainer import Trainer

ENV_ID = "gflowvlm/FrozenLake-v0"
STEPS = {"left": (0, -1), "down": (1, 0), "right": (0, 1), "up": (-1, 0)}


def make(split: str = "id", reward: str = "gflowvlm", image_size: int = 32) -> FrozenLakeEnv:
    return gym.make(ENV_ID, split=split, reward=reward, image_size=image_size).unwrapped


def shortest_path(grid: list[str]) -> int | None:
    """Fewest moves from the start to the goal that avoid every hole (BFS forward from the start), or None."""
    size = len(grid)
    seen, queue = {(0, 0): 0}, deque([(0, 0)])
    while queue:
        r, c = queue.popleft()
        if grid[r][c] == "G":
            return seen[(r, c)]
        for dr, dc in STEPS.values():
            nr, nc = min(size - 1, max(0, r + dr)), min(size - 1, max(0, c + dc))
            if (nr, nc) not in seen and grid[nr][nc] != "H":
                seen[(nr, nc)] = seen[(r, c)] + 1
                queue.append((nr, nc))
    return None


def walk(env: FrozenLakeEnv, commands):
    return [env.step(command) for command in commands]


def find_map(env: FrozenLakeEnv, wanted) -> int:
    """A seed whose map satisfies `wanted(grid)`."""
    for seed in range(1000):
        env.reset(seed=seed)
        if wanted(env.grid):
            return seed
    raise AssertionError("no such map in 1000 seeds")


# ----- maps -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split, size", [("id", 4), ("ood", 8)])
def test_maps_are_random_per_seed_solvable_and_of_the_split_size(split, size):
    env = make(split)
    maps = []
    for seed in range(60):
        env.reset(seed=seed)
        grid = env.grid
        assert len(grid) == size and all(len(row) == size for row in grid)
        assert grid[0][0] == "S" and grid[-1][-1] == "G" and set("".join(grid)) <= set("SFHG")
        assert shortest_path(grid) is not None  # gymnasium's generator redraws until the goal is reachable
        assert env.inner.unwrapped.desc.shape == (size, size) and env.position() == (0, 0)
        maps.append("".join(grid))
    assert len(set(maps)) >= 50  # different seeds, different maps (a 4x4 map can repeat now and then)
    assert env.max_steps == size * size


def test_same_seed_same_map_and_episode():
    def rollout(seed):
        env = make("ood", reward="rl4vlm")
        obs, _ = env.reset(seed=seed)
        texts, frames = [obs["text"]], [obs["image"]]
        for command in ["right", "down", "down", "left", "right"]:
            obs, *_ = env.step(command)
            texts.append(obs["text"])
            frames.append(obs["image"])
            if env._finished:
                break
        return env.grid, texts, np.stack(frames)

    grid_a, texts_a, frames_a = rollout(11)
    grid_b, texts_b, frames_b = rollout(11)
    assert grid_a == grid_b and texts_a == texts_b and np.array_equal(frames_a, frames_b)
    assert rollout(12)[0] != grid_a


def test_reset_without_a_seed_draws_new_maps():
    env = make("id")
    env.reset(seed=0)
    grids = {"".join(env.grid)}
    for _ in range(20):
        env.reset()
        grids.add("".join(env.grid))
    assert len(grids) > 5


# ----- the oracle ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split, seeds", [("id", range(200)), ("ood", range(50))])
def test_oracle_reaches_the_goal_in_the_fewest_steps(split, seeds):
    env = make(split, reward="rl4vlm", image_size=16)
    for seed in seeds:
        env.reset(seed=seed)
        optimal, steps = shortest_path(env.grid), 0
        while True:
            _, reward, terminated, truncated, info = env.step(env.expert_action())
            steps += 1
            if terminated or truncated:
                break
        assert terminated and info["success"] and reward == 1.0, seed
        assert steps == optimal, (seed, env.grid)


def test_expert_thoughts_and_the_end_of_an_episode():
    env = make("id")
    env.reset(seed=find_map(env, lambda grid: shortest_path(grid) == 6))
    assert env.expert_thoughts() == (f"I am at row 1, column 1. The shortest path to the goal that avoids the holes "
                                     f"takes 6 more steps, so I move {env.expert_action()}.")
    while not env._finished:
        env.step(env.expert_action())
    with pytest.raises(RuntimeError, match="episode has ended"):
        env.expert_action()


# ----- rules and rewards -----------------------------------------------------------------------------------------
OPEN_4X4 = ["SFFF", "FFFF", "FFFF", "FFFG"]


def test_goal_hole_and_horizon_rewards():
    env = make("id")
    # The goal: gymnasium's reward 1, log R = 1 / 0.1 = 10; intermediate states have log R 0 (return 0).
    env.reset(seed=find_map(env, lambda grid: grid == OPEN_4X4))
    results = walk(env, ["down", "down", "down", "right", "right", "right"])
    assert [r[-1]["log_reward"] for r in results] == [0.0] * 5 + [10.0]
    assert [r[1] for r in results[:-1]] == [0.0] * 5 and results[-1][1] == pytest.approx(math.exp(10.0))
    assert results[-1][2] and results[-1][-1]["success"]
    # A hole ends the episode with return 0: log R 0, R = 1, no success.
    seed = find_map(env, lambda grid: grid[0][1] == "H")
    env.reset(seed=seed)
    _, reward, terminated, _, info = env.step("right")
    assert terminated and reward == 1.0 and info["log_reward"] == 0.0 and not info["success"]
    # Cut off by the horizon (16 steps against the edge): the floor, below a hole.
    env.reset(seed=seed)
    results = walk(env, ["left"] * 16)
    assert [r[3] for r in results] == [False] * 15 + [True] and not results[-1][2]
    assert results[-1][-1]["log_reward"] == MIN_LOG_REWARD and results[-1][1] == pytest.approx(1e-10)


def sequences(grid: list[str], horizon: int) -> tuple[int, int, int]:
    """How many action sequences reach the goal, end in a hole, or are cut off by the horizon."""
    size, current, goal, hole = len(grid), {(0, 0): 1}, 0, 0
    for _ in range(horizon):
        following: dict[tuple[int, int], int] = {}
        for (r, c), count in current.items():
            for dr, dc in STEPS.values():
                cell = (min(size - 1, max(0, r + dr)), min(size - 1, max(0, c + dc)))
                letter = grid[cell[0]][cell[1]]
                if letter == "G":
                    goal += count
                elif letter == "H":
                    hole += count
                else:
                    following[cell] = following.get(cell, 0) + count
        current = following
    return goal, hole, sum(current.values())


@pytest.mark.parametrize("split, at_t1, at_t01", [("id", (0.25, 0.45), (0.995, 1.0)), ("ood", (0.0, 0.1), (0.95, 1.0))])
def test_the_temperature_makes_a_reward_proportional_sampler_succeed(split, at_t1, at_t01):
    """The docstring's reason for T = 0.1: P(goal) of a sampler proportional to R, over the maps of 50 seeds."""
    env = make(split)
    shares = {1.0: [], 0.1: []}
    for seed in range(50):
        env.reset(seed=seed)
        goal, hole, cut = sequences(env.grid, env.max_steps)
        for temperature, share in shares.items():
            weight = goal * math.exp(1 / temperature)
            share.append(weight / (weight + hole + cut * 1e-10))
    assert at_t1[0] < np.mean(shares[1.0]) < at_t1[1] and at_t01[0] < np.mean(shares[0.1]) <= at_t01[1]


def test_rl4vlm_rewards_and_illegal_commands():
    env = make("id", reward="rl4vlm")
    obs, _ = env.reset(seed=find_map(env, lambda grid: grid == OPEN_4X4))
    for command in ["jump", "", None, 3, "north"]:
        after, reward, terminated, truncated, info = env.step(command)
        assert info["illegal"] and reward == -1.0 and not terminated and not truncated
        assert after["text"] == obs["text"] and np.array_equal(after["image"], obs["image"])
    rewards = [r[1] for r in walk(env, ["Down", " down ", "down", "right", "right", "right"])]
    assert rewards == [0.0] * 5 + [1.0]


def test_captions_name_the_cell_and_how_the_episode_ended():
    env = make("id")
    obs, info = env.reset(seed=find_map(env, lambda grid: grid[1][0] == "F" and grid[1][1] == "H"))
    assert obs["text"] == "row 1, column 1"
    assert "row 4, column 4" in info["task"] and "left, down, right or up" in info["task"]
    obs, *_ = env.step("down")
    assert obs["text"] == "row 2, column 1"
    obs, *_ = env.step("right")
    assert obs["text"] == "row 2, column 2: in a hole"
    env.reset(seed=find_map(env, lambda grid: grid == OPEN_4X4))
    *_, (obs, *_) = walk(env, ["down"] * 3 + ["right"] * 3)
    assert obs["text"] == "row 4, column 4: at the goal"


@pytest.mark.parametrize("size", [32, 97, 300])
def test_images_have_the_declared_size_and_follow_the_agent(size):
    env = make("ood", image_size=size)
    obs, _ = env.reset(seed=find_map(env, lambda grid: grid[0][1] != "H"))
    assert obs["image"].shape == (size, size, 3) and obs["image"].dtype == np.uint8
    moved, *_ = env.step("right")
    assert not np.array_equal(moved["image"], obs["image"]) and np.array_equal(env.render(), moved["image"])
    other = make("ood", image_size=size)
    other.reset(seed=find_map(other, lambda grid: grid != env.grid and grid[0][1] != "H"))
    assert not np.array_equal(other.render(), obs["image"])  # the map is in the picture


@pytest.mark.parametrize("split", ["id", "ood"])
@pytest.mark.parametrize("reward", ["rl4vlm", "gflowvlm"])
def test_reset_gives_the_action_names(split, reward):  # gymnasium's checker: test_check_env.py
    env = gym.make(ENV_ID, split=split, reward=reward, image_size=64)
    _, info = env.reset(seed=0)
    assert info["admissible_actions"] == ["left", "down", "right", "up"]


def test_bad_arguments_are_one_line():
    for kwargs, words in (({"split": "train"}, "no split 'train'"), ({"image_size": 8}, "image_size"),
                          ({"env_id": "Taxi-v4"}, "unexpected keyword")):
        with pytest.raises((ValueError, TypeError), match=words):
            gym.make(ENV_ID, **kwargs)


# ----- SFT data and training -------------------------------------------------------------------------------------
def test_make_sft_data_writes_the_oracle_moves(capsys, tmp_path):
    path = tmp_path / "lake.jsonl"
    code = cli.main(["make-sft-data", "--env", ENV_ID, "--samples", "40", "--image-size", "32",
                     "--done-fraction", "0.25", "--out", str(path)])
    assert code == 0 and "wrote 40 records" in capsys.readouterr().out
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 40 and sum(record["done"] for record in records) == 10
    env = make("id")
    for record in (r for r in records if not r["done"]):
        env.reset(seed=record["task_seed"])
        for _ in range(record["step"]):
            env.step(env.expert_action())
        response = json.loads(record["response"])
        assert response["action"] == env.expert_action() and response["thoughts"] == env.expert_thoughts()
        assert (tmp_path / record["image"]).is_file() and "Actions: left, down, right, up" in record["prompt"]
        assert "Current state:" not in record["prompt"]  # the image alone shows the current state


# Every algorithm trains on FrozenLake for two iterations. Add an algorithm by its name (e.g. "grpo"); EXTRA holds the
# settings an algorithm needs beyond the shared ones.
ALGORITHMS = ["sft", "ppo", "grpo", "subtb", "tb"]
EXTRA = {"ppo": ["env.reward=rl4vlm", "ppo.minibatch_size=2", "ppo.epochs=1"],
         # SFT refuses data its policy could not write back (the expert's replies here run to 79 tokens)
         "sft": ["generation.max_new_tokens=96"],
         "subtb": ["objective.flow=done", "collect.expert_injection=true"],
         "tb": ["collect.expert_injection=true"],
         # two tasks per update, each played twice (the groups GRPO normalises the returns in). The GFlowVLM reward
         # (a hole 1, a cut-off 1e-10) makes the returns of a group differ; rl4vlm's are all 0 in three steps.
         "grpo": ["env.num_envs=4", "collect.trajectories_per_task=2", "grpo.minibatch_size=2", "grpo.epochs=1"]}


@pytest.fixture(scope="module")
def lake_sft_data(tmp_path_factory):
    from gflowvlm.sft_data import write_sft_data

    out = tmp_path_factory.mktemp("lake-sft") / "lake.jsonl"
    return str(write_sft_data(ENV_ID, out, 16, image_size=64, done_fraction=0.25, progress=False))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_trains_on_frozen_lake(tiny_vlm_dir, tmp_path, lake_sft_data, algorithm):
    config = load_config(None, [
        f"algorithm={algorithm}", f"env.id={ENV_ID}", "env.image_size=64", "env.num_envs=2", "env.max_steps=3",
        "steps=2", f"model.name_or_path={tiny_vlm_dir}", f"output_dir={tmp_path}", "generation.max_new_tokens=16",
        "logging.progress=false", "model.lora_r=4", "model.head_hidden=[32]", "prompt.max_history_steps=2",
        f"sft.data={lake_sft_data}", "optim.batch_size=4", *EXTRA.get(algorithm, [])])
    trainer = Trainer(config)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.policy.named_parameters() if n in before)
    metrics = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and '"loss": NaN' not in metrics[-1]
