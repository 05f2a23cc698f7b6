"""`gflowvlm/Gym-v0`: plain gymnasium envs (CliffWalking, Taxi, FrozenLake) become gflowvlm envs without a subclass:
the checker passes, images come from render(), rewards follow the stated transform, every bad option is one line,
and an env without an expert trains on-policy but refuses what needs the expert."""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import envs  # noqa: F401  (registers the environments)
from envs.base import MIN_LOG_REWARD
from envs.gym_adapter import GymAdapterEnv, GymAdapterError, NoExpertError
from gflowvlm import cli
from gflowvlm.config import load_config
from gflowvlm.config_schema import ConfigError

CLIFF_ACTIONS = ["up", "right", "down", "left"]  # CliffWalking's actions 0..3
TAXI_ACTIONS = ["south", "north", "east", "west", "pickup", "dropoff"]


def cliff_text(env, observation) -> str:
    row, column = divmod(int(observation), 12)
    return f"row {row + 1}, column {column + 1}"


def cliff_expert(env, observation):
    """Up from the start, along the top of the cliff, down to the goal (a safe path; not needed to be optimal)."""
    row, column = divmod(int(observation), 12)
    if row == 3 and column == 0:
        return 0, "I leave the start upwards."
    if column < 11:
        return "right"
    return "down", "The goal is below me."


CLIFF = dict(env_id="CliffWalking-v1", action_names=CLIFF_ACTIONS, state_text=cliff_text,
             task="Walk from the start to the goal along the cliff without falling.", reward_temperature=10.0)
# A user's registration: the callables live in code, the config names the id (no expert: on-policy only).
NO_EXPERT_ID = "gymtest/Cliff-v0"
if NO_EXPERT_ID not in gym.registry:
    gym.register(NO_EXPERT_ID, entry_point="envs.gym_adapter:GymAdapterEnv", kwargs=CLIFF)


def make(**options) -> GymAdapterEnv:
    return gym.make("gflowvlm/Gym-v0", **{"image_size": 32, **options}).unwrapped


def run(env, commands):
    return [env.step(command) for command in commands]


# ----- generic: any Discrete env with an rgb_array renderer ------------------------------------------------------
@pytest.mark.parametrize("reward", ["rl4vlm", "gflowvlm"])
@pytest.mark.parametrize("options", [
    CLIFF, dict(CLIFF, expert=cliff_expert),
    dict(env_id="Taxi-v4", action_names=TAXI_ACTIONS),
    dict(env_id="FrozenLake-v1", action_names=["left", "down", "right", "up"], env_kwargs={"is_slippery": False}),
], ids=["cliff", "cliff-expert", "taxi-defaults", "frozenlake"])
def test_reset_gives_the_contract_info_and_image(options, reward):  # gymnasium's checker: test_check_env.py
    env = make(reward=reward, **options)
    obs, info = env.reset(seed=0)
    assert set(info) >= {"task", "admissible_actions", "illegal", "log_reward", "success"}
    assert info["admissible_actions"] == options["action_names"]
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    env.close()


def test_text_actions_and_defaults():
    env = make(**CLIFF)
    obs, info = env.reset(seed=0)
    assert obs["text"] == "row 4, column 1" and info["task"] == CLIFF["task"]
    obs, *_ = env.step("UP ")  # commands are normalized as in every env
    assert obs["text"] == "row 3, column 1"
    taxi = make(env_id="Taxi-v4")  # no names: "action 0".., the default task, the observation as text
    obs, info = taxi.reset(seed=0)
    assert info["admissible_actions"] == [f"action {i}" for i in range(6)]
    assert "Taxi-v4" in info["task"] and "action 5" in info["task"]
    assert obs["text"] == f"step 0, observation {taxi.inner.unwrapped.s}"


def test_images_come_from_render_padded_to_a_square():
    env = make(image_size=96, **CLIFF)
    obs, _ = env.reset(seed=0)
    # CliffWalking draws 12 x 4 cells: the frame is letterboxed (black bands above and below), not stretched.
    rows_black = (obs["image"].max(axis=(1, 2)) == 0)
    assert rows_black[:30].all() and rows_black[-30:].all() and not rows_black[40:56].any()
    moved, *_ = env.step("up")
    assert not np.array_equal(moved["image"], obs["image"]) and np.array_equal(env.render(), moved["image"])
    stalled, *_ = env.step("fly")
    assert np.array_equal(stalled["image"], moved["image"])


def test_same_seed_same_episode():
    def rollout(seed):
        env = make(env_id="Taxi-v4", action_names=TAXI_ACTIONS)
        obs, _ = env.reset(seed=seed)
        texts, frames = [obs["text"]], [obs["image"]]
        for command in ["north", "west", "south", "pickup", "east"]:
            obs, *_ = env.step(command)
            texts.append(obs["text"])
            frames.append(obs["image"])
        return texts, np.stack(frames)

    assert rollout(3)[0] == rollout(3)[0] and np.array_equal(rollout(3)[1], rollout(3)[1])
    assert len({rollout(seed)[0][0] for seed in range(8)}) > 1


def test_split_kwargs_make_the_ood_env():
    options = dict(env_id="FrozenLake-v1", action_names=["left", "down", "right", "up"],
                   env_kwargs={"is_slippery": False}, split_kwargs={"ood": {"map_name": "8x8"}})
    assert make(split="id", **options).inner.unwrapped.nrow == 4
    assert make(split="ood", **options).inner.unwrapped.nrow == 8


# ----- rewards ---------------------------------------------------------------------------------------------------
def test_log_reward_is_the_return_over_the_temperature():
    for reward, expected in (("gflowvlm", None), ("rl4vlm", [-1.0, -1.0, -1.0])):
        env = make(reward=reward, **CLIFF)
        _, info = env.reset(seed=0)
        assert info["log_reward"] == 0.0
        results = run(env, ["up", "right", "fly"])
        assert [r[-1]["log_reward"] for r in results] == [-0.1, -0.2, -0.2]  # CliffWalking: -1 a move, T = 10
        rewards = [r[1] for r in results]
        assert rewards == (expected or [0.0, 0.0, 0.0])  # the illegal "fly": rl4vlm's illegal_reward, -1
    # Falling off the cliff costs -100 and sends the agent back to the start.
    env = make(**CLIFF)
    env.reset(seed=0)
    _, _, terminated, _, info = env.step("right")
    assert not terminated and info["log_reward"] == pytest.approx(-10.0) and env.episode_return == -100.0


def test_the_goal_terminates_and_pays_exp_of_the_return():
    env = make(**CLIFF, expert=cliff_expert)
    _, info = env.reset(seed=0)
    total, steps = 0.0, 0
    while True:
        _, reward, terminated, truncated, info = env.step(env.expert_action())
        total, steps = total + reward, steps + 1
        if terminated or truncated:
            break
    assert terminated and steps == 13 and env.episode_return == -13.0
    assert info["log_reward"] == pytest.approx(-1.3) and total == pytest.approx(math.exp(-1.3))
    assert not info["success"]  # the default: the last reward must be positive; CliffWalking's is -1
    env = make(**CLIFF, expert=cliff_expert, success=lambda env, episode_return: episode_return > -20)
    env.reset(seed=0)
    while not env.step(env.expert_action())[2]:
        pass
    assert env.is_success()


def test_a_custom_transform_and_its_checks():
    env = make(**CLIFF, reward_transform=lambda episode_return: 2.0 * episode_return)
    env.reset(seed=0)
    assert env.step("up")[-1]["log_reward"] == -2.0
    env = make(**CLIFF, reward_transform=lambda episode_return: float("nan"))
    with pytest.raises(GymAdapterError, match=r"^reward_transform: gave log R = nan for return 0.0"):
        env.reset(seed=0)
    env = make(**CLIFF, reward_transform=lambda episode_return: -math.inf)  # R = 0 sits on the floor
    assert env.reset(seed=0)[1]["log_reward"] == MIN_LOG_REWARD


@pytest.mark.parametrize("unfinished, expected", [("fail", MIN_LOG_REWARD), ("score", -0.2)])
def test_an_episode_cut_off_by_the_horizon(unfinished, expected):
    env = make(**CLIFF, max_steps=3, unfinished=unfinished)
    env.reset(seed=0)
    *_, (_, reward, terminated, truncated, info) = run(env, ["up", "right", "I am not JSON"])
    assert truncated and not terminated and info["log_reward"] == pytest.approx(expected)
    assert reward == pytest.approx(math.exp(expected))


def test_the_horizon_defaults_to_the_registered_one_and_counts_illegal_steps():
    assert make(env_id="Taxi-v4").max_steps == 200  # its registered TimeLimit
    assert make(**CLIFF).max_steps == 100  # none registered: the adapter's default
    env = make(env_id="Taxi-v4", action_names=TAXI_ACTIONS, max_steps=4)
    env.reset(seed=0)
    assert [r[3] for r in run(env, ["?", "?", "north", "?"])] == [False, False, False, True]


# ----- the expert ------------------------------------------------------------------------------------------------
def test_the_expert_answers_an_index_a_name_or_a_pair():
    env = make(**CLIFF, expert=cliff_expert)
    env.reset(seed=0)
    assert (env.expert_action(), env.expert_thoughts()) == ("up", "I leave the start upwards.")
    env.step("up")
    assert (env.expert_action(), env.expert_thoughts()) == ("right", "The best action here is right.")
    env = make(**CLIFF, expert=lambda env, observation: "jump")
    env.reset(seed=0)
    with pytest.raises(GymAdapterError, match=r"^expert: returned 'jump', which is neither"):
        env.expert_action()


def test_without_an_expert_expert_action_is_one_line():
    env = gym.make(NO_EXPERT_ID, image_size=32).unwrapped
    env.reset(seed=0)
    with pytest.raises(NoExpertError) as raised:
        env.expert_action()
    assert "\n" not in str(raised.value) and str(raised.value).startswith("expert: ")
    assert "without an expert" in str(raised.value)


def test_without_an_expert_sft_data_and_injection_are_refused(capsys, tmp_path):
    out = tmp_path / "sft.jsonl"
    code = cli.main(["make-sft-data", "--env", NO_EXPERT_ID, "--samples", "4", "--image-size", "32",
                     "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--env" in err[0] and "has no expert" in err[0], err
    assert not out.exists() and not (tmp_path / "sft_images").exists()
    code = cli.main(["play", "--env", NO_EXPERT_ID, "--no-images"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has no expert" in err[0]
    with pytest.raises(ConfigError, match=r"^collect.expert_injection: gymtest/Cliff-v0 has no expert"):
        load_config(None, [f"env.id={NO_EXPERT_ID}", "collect.expert_injection=true"])
    load_config(None, [f"env.id={NO_EXPERT_ID}", "algorithm=tb"])  # on-policy: fine


def test_on_policy_training_needs_no_expert_and_no_code(tiny_vlm_dir, tmp_path):
    """A config alone (no callables, so no expert) wraps CliffWalking and trains TB on it."""
    from gflowvlm.trainer import Trainer

    config = load_config(None, [
        "algorithm=tb", "env.id=gflowvlm/Gym-v0", "env.kwargs.env_id=CliffWalking-v1",
        "env.kwargs.action_names=[up,right,down,left]", "env.kwargs.reward_temperature=10",
        "env.image_size=64", "env.num_envs=2", "env.max_steps=3",
        "steps=2", f"model.name_or_path={tiny_vlm_dir}", f"output_dir={tmp_path}", "generation.max_new_tokens=16",
        "logging.progress=false", "model.lora_r=4", "model.head_hidden=[32]", "prompt.max_history_steps=2"])
    trainer = Trainer(config)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.policy.named_parameters() if n in before)
    metrics = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and '"loss": NaN' not in metrics[-1]


# ----- bad options: one line each, naming the option -------------------------------------------------------------
class _TextOnlyEnv(gym.Env):
    metadata = {"render_modes": ["ansi"]}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.action_space, self.observation_space = spaces.Discrete(2), spaces.Discrete(1)


if "gymtest/TextOnly-v0" not in gym.registry:
    gym.register("gymtest/TextOnly-v0", entry_point=_TextOnlyEnv)

FROZEN = dict(env_id="FrozenLake-v1", action_names=["left", "down", "right", "up"])


@pytest.mark.parametrize("options, option, words", [
    ({}, "env_id", "required"),
    ({"env_id": "Nope-v0"}, "env_id", "not a registered gymnasium env"),
    ({"env_id": "gflowvlm/NumberLine-v0"}, "env_id", "already a gflowvlm env"),
    ({"env_id": "Pendulum-v1"}, "env_id", "Box action space"),
    ({"env_id": "gymtest/TextOnly-v0"}, "env_id", "no rgb_array renderer"),
    (dict(FROZEN, action_names=["left", "down", "right"]), "action_names", "has 4 actions, got 3 names"),
    (dict(FROZEN, action_names="left down right up"), "action_names", "list of strings"),
    (dict(FROZEN, action_names=["left", "Left", "right", "up"]), "action_names", "distinct"),
    (dict(FROZEN, action_names=["left", "", "right", "up"]), "action_names", "non-empty"),
    (dict(FROZEN, expert="bfs"), "expert", "callable"),
    (dict(FROZEN, state_text="row and column"), "state_text", "callable"),
    (dict(FROZEN, reward_transform=2.0), "reward_transform", "callable"),
    (dict(FROZEN, success=True), "success", "callable"),
    (dict(FROZEN, reward_temperature=0), "reward_temperature", "positive"),
    (dict(FROZEN, reward_temperature=float("inf")), "reward_temperature", "positive"),
    (dict(FROZEN, unfinished="ignore"), "unfinished", "one of"),
    (dict(FROZEN, illegal_reward=float("nan")), "illegal_reward", "finite"),
    (dict(FROZEN, task=""), "task", "non-empty"),
    (dict(FROZEN, env_kwargs={"render_mode": "human"}), "env_kwargs", "render_mode"),
    (dict(FROZEN, env_kwargs={"slippery": False}), "env_kwargs", "refused them"),
    (dict(FROZEN, split_kwargs={"test": {}}), "split_kwargs", "unknown split"),
])
def test_bad_options_are_one_line_errors(options, option, words):
    with pytest.raises(GymAdapterError) as raised:
        gym.make("gflowvlm/Gym-v0", image_size=32, **options)
    message = str(raised.value)
    assert raised.value.option == option and message.startswith(f"{option}: ") and words in message, message
    assert "\n" not in message and isinstance(raised.value, ValueError)


def test_bad_state_text_returns_are_caught():
    env = make(**dict(FROZEN, state_text=lambda env, observation: 7))
    with pytest.raises(GymAdapterError, match=r"^state_text: must return a string, got int"):
        env.reset(seed=0)
    env = make(**dict(FROZEN, state_text=lambda env, observation: "caf\u00e9\tok"))
    assert env.reset(seed=0)[0]["text"] == "caf?\tok"  # kept inside the observation space's charset


def test_config_validation_checks_the_adapter_options_before_a_model_loads():
    base = ["env.id=gflowvlm/Gym-v0"]
    config = load_config(None, [*base, "env.kwargs.env_id=FrozenLake-v1", "env.kwargs.action_names=[l,d,r,u]",
                                "env.kwargs.env_kwargs.is_slippery=false"])
    assert config.env.kwargs["env_kwargs"] == {"is_slippery": False}
    for overrides, start in (([], "env.kwargs.env_id: required"),
                             (["env.kwargs.env_id=Nope-v0"], "env.kwargs.env_id: 'Nope-v0' is not a registered"),
                             (["env.kwargs.env_id=FrozenLake-v1", "env.kwargs.reward_temperature=-1"],
                              "env.kwargs.reward_temperature: must be a positive number"),
                             (["env.kwargs.env_id=FrozenLake-v1", "env.kwargs.colour=red"],
                              "env.kwargs.colour: gflowvlm/Gym-v0 takes no option 'colour'")):
        with pytest.raises(ConfigError) as raised:
            load_config(None, [*base, *overrides])
        assert str(raised.value).startswith(start) and "\n" not in str(raised.value), str(raised.value)
    with pytest.raises(ConfigError, match=r"wrap it without a subclass: gflowvlm/Gym-v0 with env_id='CartPole-v1'"):
        load_config(None, ["env.id=CartPole-v1"])  # a plain gymnasium id: the error points at the adapter
