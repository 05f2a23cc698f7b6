"""gymnasium's own env checker on every env id, in every split and reward mode that had a check of its own.

The envs' other contract checks (info keys, action names, images) stay in each env's test file."""
from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the environments)
from test_gym_adapter import CLIFF, TAXI_ACTIONS, cliff_expert
from test_user_env import ENV_ID as USER_ENV_ID  # importing it registers the user's env

SPLITS_AND_REWARDS = [(split, reward) for split in ("id", "ood") for reward in ("rl4vlm", "gflowvlm")]
GYM_ADAPTER_OPTIONS = {
    "cliff": CLIFF,
    "cliff-expert": dict(CLIFF, expert=cliff_expert),
    "taxi-defaults": dict(env_id="Taxi-v4", action_names=TAXI_ACTIONS),
    "frozenlake": dict(env_id="FrozenLake-v1", action_names=["left", "down", "right", "up"],
                       env_kwargs={"is_slippery": False}),
}

# (test id, env id, gym.make keyword arguments, check_env keyword arguments, marks)
CASES = [
    *[(f"{env_id}-{split}-{reward}", env_id, dict(split=split, reward=reward, image_size=64), {}, ())
      for env_id in ("gflowvlm/NumberLine-v0", "gflowvlm/Blackjack-v0", "gflowvlm/FrozenLake-v0")
      for split, reward in SPLITS_AND_REWARDS],
    *[(f"{env_id}-{split}-{reward}", env_id, dict(split=split, reward=reward, image_size=64),
       dict(skip_render_check=False), ())
      for env_id in ("gflowvlm/EZPoints-v0", "gflowvlm/Points24-v0")
      for split, reward in SPLITS_AND_REWARDS],
    *[(f"gflowvlm/Gym-v0-{name}-{reward}", "gflowvlm/Gym-v0", dict(image_size=32, reward=reward, **options), {}, ())
      for name, options in GYM_ADAPTER_OPTIONS.items() for reward in ("rl4vlm", "gflowvlm")],
    (USER_ENV_ID, USER_ENV_ID, dict(image_size=32), {}, ()),
    ("gflowvlm/ALFWorld-v0", "gflowvlm/ALFWorld-v0", dict(split="train", render_mode="rgb_array"), {},
     (pytest.mark.alfworld,)),
]


@pytest.fixture(scope="module")
def alfworld_data_dir(tmp_path_factory) -> str:
    from envs.alfworld.generator import GenerationRequest, generate

    out = str(tmp_path_factory.mktemp("alfworld_check_env"))
    generate(out, GenerationRequest("train", seed=0, size="small"), 6)  # one game per task type
    return out


@pytest.mark.parametrize("env_id, options, checks",
                         [pytest.param(env_id, options, checks, id=name, marks=marks)
                          for name, env_id, options, checks, marks in CASES])
def test_the_gymnasium_checker_passes(env_id, options, checks, request):
    if env_id == "gflowvlm/ALFWorld-v0":
        options = dict(options, data_dir=request.getfixturevalue("alfworld_data_dir"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the ALFWorld env's check was also free of warnings
            check_env(gym.make(env_id, **options).unwrapped, **checks)
        return
    env = gym.make(env_id, **options).unwrapped
    check_env(env, **checks)
    env.close()
