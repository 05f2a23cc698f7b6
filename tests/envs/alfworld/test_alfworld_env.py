"""gflowvlm/ALFWorld-v0 on generated games: contract, rewards, expert, observations, options."""
from __future__ import annotations

import math
import os
import shutil

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the envs)
from envs.alfworld import data
from envs.alfworld.env import ALFWorldEnv, MIN_REWARD
from envs.alfworld.generator import GenerationRequest, generate
from envs.alfworld.vocabulary import TASK_TYPES

pytestmark = pytest.mark.alfworld


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("alfworld_env"))
    for split in ("train", "id", "ood"):
        generate(out, GenerationRequest(split, seed=0, size="small"), 6)   # one game per task type
    return out


def make(data_dir, **kwargs) -> ALFWorldEnv:
    kwargs.setdefault("split", "train")
    return gym.make("gflowvlm/ALFWorld-v0", data_dir=data_dir, **kwargs).unwrapped


def test_expert_wins_every_task_type_and_progress_climbs(data_dir):
    env = make(data_dir, reward="rl4vlm")
    seen = set()
    for index in range(len(env.game_entries)):
        obs, info = env.reset(options={"game_index": index})
        seen.add(info["task_type"])
        progress = [info["goal_progress"]]
        assert progress[0] == 0.0 and not info["success"]
        while True:
            action = env.expert_action()
            assert action in info["admissible_actions"]
            assert env.expert_thoughts().endswith(f"Next action: {action}")
            obs, reward, terminated, truncated, info = env.step(action)
            assert not info["illegal"]
            assert reward == pytest.approx(50.0 * info["success"] + info["goal_progress"])
            progress.append(info["goal_progress"])
            if terminated or truncated:
                break
        assert terminated and info["success"], info["task"]
        assert progress == sorted(progress) and progress[-1] == 1.0
        assert len(set(progress)) >= 3   # it moves at intermediate stages, not only at the end
    assert seen == set(TASK_TYPES)


def test_gflowvlm_reward_is_terminal_and_log_reward_is_every_step(data_dir):
    env = make(data_dir, reward="gflowvlm")
    _, info = env.reset(options={"game_index": 0})
    assert info["log_reward"] == pytest.approx(math.log(MIN_REWARD))
    rewards = []
    while True:
        _, reward, terminated, truncated, info = env.step(env.expert_action())
        expected = max(50.0 * info["success"] + info["goal_progress"], MIN_REWARD)
        assert info["log_reward"] == pytest.approx(math.log(expected))
        rewards.append(reward)
        if terminated or truncated:
            break
    assert rewards[:-1] == [0.0] * (len(rewards) - 1)
    assert rewards[-1] == pytest.approx(51.0)


@pytest.mark.parametrize("reward_mode", ["rl4vlm", "gflowvlm"])
@pytest.mark.parametrize("action", ["fly to the moon", "", None, 42, b"take nothing", "go to nowhere 9"])
def test_inadmissible_command_is_an_illegal_step(data_dir, reward_mode, action):
    env = make(data_dir, reward=reward_mode)
    env.reset(options={"game_index": 1})
    first = env.expert_action()
    _, _, _, _, before = env.step(first)
    obs, reward, terminated, truncated, info = env.step(action)
    assert info["illegal"] and not terminated and not truncated
    assert obs["text"] == "Nothing happens."
    assert info["admissible_actions"] == before["admissible_actions"]
    assert info["goal_progress"] == before["goal_progress"]
    expected = info["goal_progress"] - 1.0 if reward_mode == "rl4vlm" else 0.0
    assert reward == pytest.approx(expected)
    while not (terminated or truncated):   # the state stayed: the expert still wins from here
        _, _, terminated, truncated, info = env.step(env.expert_action())
    assert info["success"]


def test_horizon_truncates_at_35_steps(data_dir):
    env = make(data_dir, reward="gflowvlm")
    env.reset(options={"game_index": 2})
    for step in range(1, 36):
        _, reward, terminated, truncated, info = env.step("look")
        assert not info["illegal"] and not terminated
        assert truncated == (step == 35)
    assert reward == pytest.approx(MIN_REWARD)   # R(x) with no progress sits on the floor
    with pytest.raises(RuntimeError):
        env.step("look")


def test_observation_image_and_text(data_dir):
    env = make(data_dir, image_size=128)
    obs, info = env.reset(options={"game_index": 3})
    assert obs["image"].shape == (128, 128, 3) and obs["image"].dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert "Your task is to" in obs["text"] and "Welcome" not in obs["text"]
    assert info["task"] and info["task"] in obs["text"]
    again, _ = env.reset(options={"game_index": 3})
    assert np.array_equal(obs["image"], again["image"])
    moved, *_ = env.step(env.expert_action())
    assert not np.array_equal(obs["image"], moved["image"])
    assert moved["text"].startswith("You arrive at")
    # The caption pre-training target is what the drawing says, not the engine's sentence.
    view = env.scene_view()
    assert env.image_caption().startswith(f"At: {view.agent_at} Sees: ") and "You arrive" not in env.image_caption()
    assert env.image_caption().endswith("Holds: nothing")


def test_scene_view_follows_what_the_agent_sees_and_holds(data_dir):
    env = make(data_dir, task_types=["pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep"])
    for index in range(len(env.game_entries)):
        obs, _ = env.reset(options={"game_index": index})
        closed = next(r.name for r in env.scene_view().receptacles if r.openable and not r.opened)
        at_closed, *_ = env.step(f"go to {closed}")
        assert env.scene_view().agent_at == closed and env.scene_view().visible is None
        opened, *_ = env.step(f"open {closed}")
        assert env.scene_view().visible is not None
        assert not np.array_equal(at_closed["image"], opened["image"])
        for command in env.expert_plan():
            env.step(command)
            view = env.scene_view()
            if command.startswith("go to"):
                assert view.agent_at == command[len("go to "):]
            if command.startswith("take "):
                held = command[len("take "):].split(" from ")[0]
                assert view.holding and view.holding[0].startswith(held)
            if command.startswith(("heat ", "cool ")):
                assert "(hot)" in view.holding[0] or "(cold)" in view.holding[0]
        assert env.is_success() and not env.scene_view().holding


def test_task_types_option(data_dir):
    env = make(data_dir, task_types=[4, "pick_two_obj_and_place"])
    assert {e.task_type for e in env.game_entries} == {"pick_heat_then_place_in_recep", "pick_two_obj_and_place"}
    _, info = env.reset(seed=3)
    assert info["task_type"] in env.task_types
    with pytest.raises(ValueError, match="unknown ALFWorld task type"):
        make(data_dir, task_types=["juggle"])
    with pytest.raises(ValueError, match="unknown ALFWorld task type"):
        make(data_dir, task_types=[7])


def test_splits_read_their_own_folders(data_dir):
    for split in ("train", "id", "ood"):
        env = make(data_dir, split=split)
        _, info = env.reset(seed=0)
        assert f"{os.sep}{split}{os.sep}" in info["game_file"]
    with pytest.raises(ValueError, match="has no split 'test'"):
        make(data_dir, split="test")


def test_reset_options_and_seeds(data_dir):
    env = make(data_dir)
    _, info = env.reset(options={"game_file": env.game_entries[2].game_file})
    assert info["game_file"] == env.game_entries[2].game_file
    firsts = {env.reset(seed=s)[1]["game_file"] for s in range(12)}
    assert len(firsts) > 1
    assert env.reset(seed=5)[1]["game_file"] == env.reset(seed=5)[1]["game_file"]
    with pytest.raises(ValueError, match="game_index"):
        env.reset(options={"game_index": 99})
    with pytest.raises(ValueError, match="game_file"):
        env.reset(options={"game_file": "/nowhere/game.tw-pddl"})


def test_official_dataset_layout_and_alfworld_data(data_dir, tmp_path, monkeypatch):
    official = tmp_path / "alfworld_data" / "json_2.1.1"
    for ours, theirs in (("train", "train"), ("id", "valid_seen"), ("ood", "valid_unseen")):
        shutil.copytree(os.path.join(data_dir, ours), official / theirs)
    assert data.split_dir(str(tmp_path / "alfworld_data"), "id").endswith("valid_seen")
    assert data.split_dir(str(official), "ood").endswith("valid_unseen")
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "alfworld_data"))
    env = gym.make("gflowvlm/ALFWorld-v0", split="ood").unwrapped   # no data_dir: the downloaded dataset
    _, info = env.reset(seed=1)
    assert "valid_unseen" in info["game_file"]


def test_bad_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        make(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="expected a subfolder 'ood' or 'valid_unseen'"):
        make(str(tmp_path), split="ood")


def test_default_games_are_generated_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GFLOWVLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "no_download"))   # no official dataset there
    env = gym.make("gflowvlm/ALFWorld-v0", split="id", games=6).unwrapped
    assert env.data_dir.startswith(str(tmp_path)) and len(env.game_entries) == 6
    _, info = env.reset(seed=0)
    assert info["admissible_actions"]

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached games should be reused")
    monkeypatch.setattr("envs.alfworld.generator.generate", no_generation)
    again = gym.make("gflowvlm/ALFWorld-v0", split="id", games=6).unwrapped
    assert [e.game_file for e in again.game_entries] == [e.game_file for e in env.game_entries]
