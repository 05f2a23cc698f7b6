"""NumberLine: the RL4VLM rules, both reward modes, both splits, the oracle, images and gymnasium plumbing."""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils import seeding

import envs  # noqa: F401  (registers the environments)
from envs.number_line import NumberLineEnv


def make(split: str = "id", reward: str = "rl4vlm", image_size: int = 64) -> NumberLineEnv:
    return NumberLineEnv(split=split, reward=reward, image_size=image_size)


def play(env: NumberLineEnv, commands):
    return [env.step(command) for command in commands]


# ----- drawing a start and a target ---------------------------------------------------------------------------
@pytest.mark.parametrize("split, low, high", [("id", 0, 5), ("ood", 10, 50)])
def test_start_and_target_follow_the_redraw_rule(split, low, high):
    env = make(split)
    redraws = 0
    for seed in range(400):
        env.reset(seed=seed)
        # Replay the env's two draws with the same seeded generator and apply the papers' rule by hand.
        rng, _ = seeding.np_random(seed)
        start, target = int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))
        if start == target:
            redraws += 1
            target = low + (target - low + 1) % (high - low)
        assert (env.start, env.target, env.current) == (start, target, start)
        assert env.start != env.target
        assert low <= env.start <= high and low <= env.target <= high
    assert redraws > 0  # the rule was exercised


def test_id_redraw_is_exactly_target_plus_one_mod_five():
    env = make("id")
    seen = {}
    for seed in range(3000):
        rng, _ = seeding.np_random(seed)
        start, target = int(rng.integers(0, 6)), int(rng.integers(0, 6))
        if start == target:
            env.reset(seed=seed)
            seen[start] = env.target
    # (target + 1) % 5: 5 wraps to 1 and 4 wraps to 0, as in gym_cards.
    assert seen == {0: 1, 1: 2, 2: 3, 3: 4, 4: 0, 5: 1}


def test_ood_numbers_cover_ten_to_fifty():
    env = make("ood")
    starts, targets = set(), set()
    for seed in range(3000):
        env.reset(seed=seed)
        starts.add(env.start)
        targets.add(env.target)
    assert starts == set(range(10, 51)) and targets <= set(range(10, 51)) and len(targets) >= 40


def test_reset_options_set_and_validate_the_episode():
    env = make("id")
    obs, info = env.reset(options={"start": 1, "target": 3})
    assert obs["text"] == "target number 3, current number 1"
    assert "target number" in info["task"] and "between 0 and 5" in info["task"]
    for bad in ({"start": 6, "target": 1}, {"start": -1, "target": 1}, {"start": 2, "target": 2},
                {"start": 1.0, "target": 3}, {"start": True, "target": 3}, {"goal": 3}):
        with pytest.raises(ValueError):
            env.reset(options=bad)
    with pytest.raises(ValueError, match=r"\[10, 50\]"):
        make("ood").reset(options={"start": 5, "target": 20})


def test_bad_constructor_arguments_raise_value_error():
    with pytest.raises(ValueError):
        NumberLineEnv(split="test")
    with pytest.raises(ValueError):
        NumberLineEnv(reward="ppo")


# ----- rl4vlm rewards ------------------------------------------------------------------------------------------
def test_rl4vlm_rewards_toward_and_away():
    env = make("id")
    env.reset(options={"start": 1, "target": 3})
    (_, r_toward, term1, _, _), (_, r_away, term2, _, _) = play(env, ["+", "-"])
    assert (r_toward, term1, r_away, term2) == (0.0, False, -1.0, False)
    assert env.current == 1


def test_rl4vlm_reaching_the_target_terminates_with_plus_one():
    env = make("id")
    env.reset(options={"start": 1, "target": 3})
    results = play(env, ["+", "+"])
    assert [r for _, r, *_ in results] == [0.0, 1.0]
    obs, _, terminated, truncated, info = results[-1]
    assert terminated and not truncated and info["success"]
    assert obs["text"] == "target number 3, current number 3"


@pytest.mark.parametrize("split, start, target, command, clamp", [
    ("id", 0, 3, "-", 0), ("id", 5, 2, "+", 5), ("ood", 50, 20, "+", 50)])
def test_blocked_move_at_the_clamp_gives_minus_one(split, start, target, command, clamp):
    env = make(split)
    env.reset(options={"start": start, "target": target})
    _, reward, terminated, _, info = env.step(command)
    assert env.current == clamp and reward == -1.0 and not terminated and not info["illegal"]


def test_ood_line_goes_below_ten_down_to_zero():
    env = make("ood")
    env.reset(options={"start": 10, "target": 12})
    rewards = [r for _, r, *_ in play(env, ["-"] * 11)]
    assert env.current == 0 and rewards == [-1.0] * 11


@pytest.mark.parametrize("command", ["jump", "", "++", "plus", None, 1, 0.5, ["+"], {"a": 1}])
def test_illegal_command_keeps_the_state_and_never_raises(command):
    for reward_mode, expected in (("rl4vlm", -1.0), ("gflowvlm", 0.0)):
        env = make("id", reward=reward_mode)
        obs_before, _ = env.reset(options={"start": 2, "target": 4})
        obs, reward, terminated, truncated, info = env.step(command)
        assert info["illegal"] and reward == expected and not terminated and not truncated
        assert obs["text"] == obs_before["text"] and np.array_equal(obs["image"], obs_before["image"])


@pytest.mark.parametrize("command", ["+", " + ", b"+", np.str_("+")])
def test_commands_are_normalized(command):
    env = make("id")
    env.reset(options={"start": 2, "target": 4})
    _, _, _, _, info = env.step(command)
    assert not info["illegal"] and env.current == 3


# ----- horizon -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split, start, target, horizon", [("id", 0, 5, 10), ("ood", 10, 50, 100)])
def test_truncation_at_twice_the_top_of_the_line(split, start, target, horizon):
    env = make(split, reward="gflowvlm")
    env.reset(options={"start": start, "target": target})
    assert env.max_steps == horizon
    for step in range(1, horizon + 1):
        _, reward, terminated, truncated, info = env.step("-")
        assert not terminated and truncated == (step == horizon)
    distance = target - 0
    assert reward == pytest.approx(100 / (distance + 1))
    with pytest.raises(RuntimeError):
        env.step("+")


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_optimal_horizon_is_a_multiple_of_the_shortest_path(factor):
    env = gym.make("gflowvlm/NumberLine-v0", split="ood", image_size=16, horizon="optimal", horizon_factor=factor)
    env.reset(options={"start": 30, "target": 22})
    assert env.unwrapped.max_steps == factor * 8
    for step in range(1, factor * 8 + 1):
        _, _, terminated, truncated, _ = env.step("+")
        assert not terminated and truncated == (step == factor * 8)
    # The oracle still succeeds on every task, in exactly the optimal number of steps.
    for seed in range(50):
        env.reset(seed=seed)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(env.unwrapped.expert_action())
            done = terminated or truncated
        assert info["success"]


def test_optimal_horizon_leaves_a_random_walk_far_below_the_fixed_one():
    """The reason for the option: a fixed 100-step OOD horizon lets a random walk reach the target a third of the
    time; at twice the optimal number of steps it rarely does."""
    rng = np.random.default_rng(0)
    rates = {}
    for horizon in ("split", "optimal"):
        env = gym.make("gflowvlm/NumberLine-v0", split="ood", image_size=16, horizon=horizon)
        wins = 0
        for seed in range(300):
            env.reset(seed=seed)
            done = False
            while not done:
                _, _, terminated, truncated, info = env.step(str(rng.choice(["+", "-"])))
                done = terminated or truncated
            wins += info["success"]
        rates[horizon] = wins / 300
    assert rates["split"] > 0.25 and rates["optimal"] < 0.12


def test_optimal_horizon_arguments_are_checked():
    with pytest.raises(ValueError, match="horizon must be one of"):
        gym.make("gflowvlm/NumberLine-v0", horizon="short")
    with pytest.raises(ValueError, match="horizon_factor"):
        gym.make("gflowvlm/NumberLine-v0", horizon="optimal", horizon_factor=0)
    with pytest.raises(ValueError, match="do not also give max_steps"):
        gym.make("gflowvlm/NumberLine-v0", horizon="optimal", max_steps=5)


# ----- gflowvlm rewards ----------------------------------------------------------------------------------------
def test_gflowvlm_log_reward_and_terminal_reward():
    env = make("id", reward="gflowvlm")
    _, info = env.reset(options={"start": 0, "target": 4})
    assert info["log_reward"] == pytest.approx(math.log(100 / 5))
    rewards = []
    for distance in (3, 2, 1, 0):
        _, reward, terminated, _, info = env.step("+")
        rewards.append(reward)
        assert info["log_reward"] == pytest.approx(math.log(100 / (distance + 1)))
    assert rewards[:3] == [0.0, 0.0, 0.0] and rewards[3] == pytest.approx(100.0) and terminated


def test_gflowvlm_return_equals_terminal_reward_on_random_play():
    env = make("ood", reward="gflowvlm")
    rng = np.random.default_rng(0)
    for seed in range(30):
        env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(str(rng.choice(["+", "-", "?"])))
            total += reward
            done = terminated or truncated
        assert total == pytest.approx(math.exp(info["log_reward"]))
        assert total == pytest.approx(100 / (abs(env.target - env.current) + 1))


# ----- oracle --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["id", "ood"])
def test_oracle_always_succeeds_in_the_shortest_number_of_steps(split):
    env = make(split, image_size=16)
    for seed in range(300):
        env.reset(seed=seed)
        distance, steps, done = abs(env.target - env.start), 0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(env.expert_action())
            steps += 1
            done = terminated or truncated
        assert info["success"] and terminated and reward == 1.0 and steps == distance


def test_expert_thoughts_wording():
    env = make("id")
    env.reset(options={"start": 1, "target": 3})
    assert env.expert_action() == "+"
    assert env.expert_thoughts() == "The current number 1 is smaller than the target 3, so I should increase it."
    env.reset(options={"start": 4, "target": 0})
    assert env.expert_action() == "-"
    assert env.expert_thoughts() == "The current number 4 is larger than the target 0, so I should decrease it."
    env.reset(options={"start": 4, "target": 3})
    env.step("-")
    with pytest.raises(RuntimeError):
        env.expert_action()


# ----- images --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 300])
@pytest.mark.parametrize("split", ["id", "ood"])
def test_images_have_the_declared_shape_and_show_the_state(size, split):
    env = make(split, image_size=size)
    low = 0 if split == "id" else 10
    obs_a, _ = env.reset(options={"start": low + 1, "target": low + 3})
    assert obs_a["image"].shape == (size, size, 3) and obs_a["image"].dtype == np.uint8
    assert env.observation_space.contains(obs_a)
    obs_a_again, _ = env.reset(options={"start": low + 1, "target": low + 3})
    obs_b, _ = env.reset(options={"start": low + 2, "target": low + 3})
    obs_c, _ = env.reset(options={"start": low + 1, "target": low + 4})
    assert np.array_equal(obs_a["image"], obs_a_again["image"])
    assert not np.array_equal(obs_a["image"], obs_b["image"])
    assert not np.array_equal(obs_a["image"], obs_c["image"])
    # Black text on white: a real share of dark pixels, most of the image white.
    dark = (obs_a["image"].mean(axis=2) < 128).mean()
    assert 0.01 < dark < 0.4
    assert np.array_equal(env.render(), obs_c["image"])  # render() is the current frame


# ----- gymnasium plumbing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["id", "ood"])
@pytest.mark.parametrize("reward", ["rl4vlm", "gflowvlm"])
def test_reset_gives_the_contract_info(split, reward):  # gymnasium's checker: test_check_env.py
    env = gym.make("gflowvlm/NumberLine-v0", split=split, reward=reward, image_size=64)
    obs, info = env.reset(seed=0)
    assert set(info) >= {"task", "admissible_actions", "illegal", "log_reward", "success"}
    assert info["admissible_actions"] == ["-", "+"]


def test_same_seed_same_episode():
    def rollout(seed):
        env = gym.make("gflowvlm/NumberLine-v0", split="ood", reward="rl4vlm", image_size=64)
        obs, _ = env.reset(seed=seed)
        frames, rewards = [obs["image"]], []
        for command in ["+", "-", "-", "+", "+"]:
            obs, reward, *_ = env.step(command)
            frames.append(obs["image"])
            rewards.append(reward)
        return obs["text"], np.stack(frames), rewards

    text_a, frames_a, rewards_a = rollout(7)
    text_b, frames_b, rewards_b = rollout(7)
    assert text_a == text_b and np.array_equal(frames_a, frames_b) and rewards_a == rewards_b
    starts = {NumberLineEnv(split="ood", image_size=16).reset(seed=s)[0]["text"] for s in range(10)}
    assert len(starts) > 1


def test_make_vec_batches_images_and_keeps_text_as_tuples():
    vec = gym.make_vec("gflowvlm/NumberLine-v0", num_envs=2, vectorization_mode="sync", image_size=64,
                       reward="rl4vlm")
    obs, info = vec.reset(seed=3)
    # Gymnasium batches Text spaces as a Tuple: the texts come back as a tuple of strings, images as one array.
    assert obs["image"].shape == (2, 64, 64, 3) and obs["image"].dtype == np.uint8
    assert isinstance(obs["text"], tuple) and all(t.startswith("target number") for t in obs["text"])
    assert list(info["admissible_actions"][0]) == ["-", "+"]
    obs, reward, terminated, truncated, info = vec.step(("+", "fly"))
    assert reward.shape == (2,) and list(info["illegal"]) == [False, True] and reward[1] == -1.0
    vec.close()
