"""`gflowvlm/Gym-v0`: any gymnasium env with a Discrete action space and an rgb_array renderer, no subclass.

    gymnasium.make("gflowvlm/Gym-v0", env_id="FrozenLake-v1", action_names=["left", "down", "right", "up"],
                   task="Reach the goal without falling into a hole.", env_kwargs={"is_slippery": False},
                   reward_temperature=0.1, state_text=caption, expert=oracle)

What the wrapped env becomes (the contract of envs/base.py):
- image: the wrapped env's `render()` in rgb_array mode, padded with black to a square (the aspect ratio is kept,
  as LLaVA pads) and resized to `image_size` (box filter when shrinking, nearest pixel when enlarging);
- text (the history lines of the prompt, and the caption alignment learns: `VLMEnv.image_caption`):
  `state_text(env, observation)`, where `env` is the wrapped env's `unwrapped` and `observation` its latest
  observation; by default the observation itself when it
  is small (an int, or at most 16 numbers), else nothing but the step number. Characters outside printable ASCII
  become "?";
- actions: `action_names[i]` sends the Discrete action `start + i`; all of them are admissible in every state. Any
  other reply is illegal: the wrapped env is not stepped, `info["illegal"]` is True, rl4vlm charges
  `illegal_reward` (default -1) and gflowvlm charges nothing (the collector's `collect.unparseable` fallback
  decides what an unparseable reply becomes before that, as for every env);
- rewards: rl4vlm pays the wrapped env's own rewards. gflowvlm scores the return G (the sum of the wrapped env's
  rewards so far, undiscounted) as log R = G / reward_temperature, i.e. R = exp(G / T), the usual GFlowNet
  choice: R > 0 for any return, negative ones included, and T sets how sharply higher returns are preferred
  (R(G + 1) / R(G) = e^(1/T)). `reward_transform(G) -> log R` replaces the formula. `info["log_reward"]` of a
  running episode is the same formula on its return so far. log R is floored at log 1e-10 (envs.base);
- unfinished episodes: the step limit (`max_steps`, default the wrapped env's registered `max_episode_steps`,
  else 100; its own TimeLimit is dropped so that illegal steps count towards the horizon too) cuts off an
  episode the wrapped env has not terminated. `unfinished="fail"` (default) scores it log R = log 1e-10, the
  floor: illegal replies never change the state, so without it an agent that only stalls would keep its start
  state's return, which in a game that charges every move (CliffWalking, Taxi) beats any real play. With the floor
  no sequence of illegal replies out-scores the random policy under the gflowvlm reward, in any env.
  `unfinished="score"` scores it by its return as it stands, for envs where the episode normally ends at the time
  limit (CartPole); there standing still must earn nothing. Under rl4vlm, illegal replies pay `illegal_reward`
  each, so set it at or below the worst reward of a legal move (CliffWalking's cliff pays -100) if stalling must
  never out-earn random play there;
- success: the wrapped env terminated the episode with a positive reward on its last step (FrozenLake's goal,
  Taxi's drop-off), or `success(env, episode_return)` when given, asked once the wrapped env has terminated;
- expert: `expert(env, observation)` returns the oracle's action as an index into `action_names` or a name, or a
  pair (action, thoughts) where `thoughts` is its reasoning for SFT data. Without one (`expert=None`),
  `expert_action()` raises `NoExpertError`, and SFT data, expert injection and `gflowvlm play` are refused before
  they start (`gflowvlm.env_factory.check_has_expert`); on-policy objectives and PPO still train;
- splits: "id" and "ood" make the wrapped env with `env_kwargs`, updated by `split_kwargs[split]` when given
  (e.g. `{"ood": {"map_name": "8x8"}}`); without it both splits are the same env;
- seeds: reset(seed) seeds the adapter's generator, which draws the wrapped env's reset seed, so a seed replays an
  episode exactly.

Every option is checked when the env is made, each mistake one line (`GymAdapterError`, a ValueError, which
`gflowvlm.env_factory.make_env` turns into the command line's one-line error); `check_options` runs the checks that
need no env before any model loads. Options without callables can come from a config (`env.id: gflowvlm/Gym-v0`,
the options under `env.kwargs`); callables cannot (a config never names code to run): register your own id with
them, `gymnasium.register("my/Lake-v0", entry_point="envs.gym_adapter:GymAdapterEnv", kwargs={...})`, in the
script that then trains (`gflowvlm.cli.main(["train", "--config", FILE, "env.id=my/Lake-v0"])`), as for a VLMEnv
subclass. `envs.frozen_lake` is a worked example.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import load_env_creator
from PIL import Image

from envs.base import MAX_TEXT, MIN_LOG_REWARD, TEXT_CHARSET, VLMEnv, normalize_command

UNFINISHED = ("fail", "score")
DEFAULT_MAX_STEPS = 100
MAX_DEFAULT_TEXT_VALUES = 16  # observations with more numbers are left to the image by the default state text

StateText = Callable[[gym.Env, Any], str]
Expert = Callable[[gym.Env, Any], Any]


class GymAdapterError(ValueError):
    """A wrong adapter option, in one line that starts with the option's name (`option`)."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option


class NoExpertError(GymAdapterError):
    """The env was made without an expert, and something asked for one."""


def check_adapter_options(options: Mapping[str, Any], splits: tuple[str, ...] = ("id", "ood")) -> None:
    """The checks that need no env made (types, ranges, callables, a registered `env_id`)."""
    env_id = options.get("env_id")
    if not isinstance(env_id, str) or not env_id.strip():
        raise GymAdapterError("env_id", f"required: the registered gymnasium id of the env to wrap, e.g. "
                                        f"'FrozenLake-v1' (got {env_id!r})")
    if env_id.startswith("gflowvlm/"):
        raise GymAdapterError("env_id", f"{env_id} is already a gflowvlm env; use it as env.id directly")
    _spec(env_id)
    names = options.get("action_names")
    if names is not None:
        _action_names(names)
    task = options.get("task")
    if task is not None and (not isinstance(task, str) or not task.strip()):
        raise GymAdapterError("task", f"must be a non-empty string, got {task!r}")
    env_kwargs = options.get("env_kwargs")
    _env_kwargs(env_kwargs, "env_kwargs")
    split_kwargs = options.get("split_kwargs")
    if split_kwargs is not None:
        if not isinstance(split_kwargs, Mapping):
            raise GymAdapterError("split_kwargs", f"must map a split ({', '.join(splits)}) to env kwargs, "
                                                  f"got {type(split_kwargs).__name__}")
        for split, value in split_kwargs.items():
            if split not in splits:
                raise GymAdapterError("split_kwargs", f"unknown split {split!r} (splits: {', '.join(splits)})")
            _env_kwargs(value, f"split_kwargs.{split}")
    temperature = options.get("reward_temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise GymAdapterError("reward_temperature", f"must be a positive number (log R = return / T), "
                                                    f"got {temperature!r}")
    for name in ("reward_transform", "state_text", "expert", "success"):
        value = options.get(name)
        if value is not None and not callable(value):
            raise GymAdapterError(name, f"must be a callable or None, got {type(value).__name__} {value!r:.60}")
    unfinished = options.get("unfinished", "fail")
    if unfinished not in UNFINISHED:
        raise GymAdapterError("unfinished", f"must be one of {list(UNFINISHED)}, got {unfinished!r}")
    illegal = options.get("illegal_reward", -1.0)
    if isinstance(illegal, bool) or not isinstance(illegal, (int, float)) or not math.isfinite(illegal):
        raise GymAdapterError("illegal_reward", f"must be a finite number, got {illegal!r}")


def _spec(env_id: str) -> gym.envs.registration.EnvSpec:
    try:
        return gym.spec(env_id)
    except gym.error.Error as error:
        raise GymAdapterError("env_id", f"{env_id!r} is not a registered gymnasium env "
                                        f"({' '.join(str(error).split())})") from None
    except ModuleNotFoundError as error:
        raise GymAdapterError("env_id", f"{env_id} needs a missing package: {error}") from None


def _action_names(names: Any) -> list[str]:
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise GymAdapterError("action_names", f"must be a list of strings, got {type(names).__name__}")
    normalized = [normalize_command(name) for name in names]
    bad = [name for name, norm in zip(names, normalized) if not norm or not set(norm) <= TEXT_CHARSET]
    if bad:
        raise GymAdapterError("action_names", f"each must be non-empty printable text, got {bad[0]!r}")
    if len(set(normalized)) != len(normalized):
        raise GymAdapterError("action_names", f"must be distinct (case and spaces ignored), got {list(names)}")
    return normalized


def _env_kwargs(value: Any, option: str) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise GymAdapterError(option, f"must be a mapping of keyword options, got {type(value).__name__}")
    if "render_mode" in value:
        raise GymAdapterError(option, "render_mode is set by the adapter (always 'rgb_array'); leave it out")


class GymAdapterEnv(VLMEnv):
    """A registered gymnasium env as a gflowvlm env; see the module docstring for the options and rules."""

    def __init__(self, split: str = "id", reward: str = "gflowvlm", image_size: int = 300,
                 render_mode: str | None = None, max_steps: int | None = None, *, env_id: str | None = None,
                 action_names: list[str] | None = None, task: str | None = None,
                 env_kwargs: Mapping[str, Any] | None = None, split_kwargs: Mapping[str, Mapping] | None = None,
                 reward_temperature: float = 1.0, reward_transform: Callable[[float], float] | None = None,
                 state_text: StateText | None = None, expert: Expert | None = None,
                 success: Callable[[gym.Env, float], bool] | None = None, unfinished: str = "fail",
                 illegal_reward: float = -1.0):
        options = dict(env_id=env_id, action_names=action_names, task=task, env_kwargs=env_kwargs,
                       split_kwargs=split_kwargs, reward_temperature=reward_temperature,
                       reward_transform=reward_transform, state_text=state_text, expert=expert, success=success,
                       unfinished=unfinished, illegal_reward=illegal_reward)
        check_adapter_options(options, self.splits)
        self.env_id = env_id
        spec = _spec(env_id)
        self._registered_horizon = spec.max_episode_steps
        self._spec = dataclasses.replace(spec, max_episode_steps=None)  # the adapter owns the horizon
        super().__init__(split=split, reward=reward, image_size=image_size, render_mode=render_mode,
                         max_steps=max_steps)
        self._horizon = self.max_steps
        self._env_kwargs = {**(env_kwargs or {}), **((split_kwargs or {}).get(split) or {})}
        self.temperature = float(reward_temperature)
        self.unfinished = unfinished
        self._illegal_reward = float(illegal_reward)
        self._transform, self._state_text, self._expert, self._success = \
            reward_transform, state_text, expert, success
        self.inner = self._make_inner({})
        space = self.inner.action_space
        if not isinstance(space, spaces.Discrete):
            self.inner.close()
            raise GymAdapterError("env_id", f"{env_id} has a {type(space).__name__} action space; the adapter needs "
                                            f"a Discrete one")
        if action_names is None:
            action_names = [f"action {i}" for i in range(int(space.n))]
        self.action_names = _action_names(action_names)
        if len(self.action_names) != int(space.n):
            self.inner.close()
            raise GymAdapterError("action_names", f"{env_id} has {int(space.n)} actions, got "
                                                  f"{len(self.action_names)} names {list(action_names)}")
        self._action_start = int(space.start)
        self._task = task if task is not None else (
            f"Play the gymnasium game {env_id}. Each step, choose one action: {', '.join(self.action_names)}.")
        self._observation_raw: Any = None
        self.episode_return = 0.0  # the wrapped env's rewards so far (undiscounted)
        self._cut_off = False
        self._succeeded = False
        self._expert_cache: tuple[int, int, str, str] | None = None
        self._episode = 0
        self._frame: np.ndarray | None = None

    # ----- options checked before an env is made (gflowvlm.env_factory) -----------------------------------------
    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        check_adapter_options(options, cls.splits)

    @classmethod
    def has_expert(cls, options: Mapping[str, Any]) -> bool:
        return options.get("expert") is not None

    # ----- the wrapped env ---------------------------------------------------------------------------------------
    def _make_inner(self, episode_kwargs: Mapping[str, Any]) -> gym.Env:
        # rgb_array rendering never needs a screen: without this, pygame's display init prints an error line on a
        # headless machine (only a default; a user's own SDL settings win).
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        creator = self._spec.entry_point
        if isinstance(creator, str):
            try:
                creator = load_env_creator(creator)
            except (ImportError, AttributeError, ValueError):
                creator = None  # gymnasium.make below reports it
        modes = list(getattr(creator, "metadata", {}).get("render_modes") or ["rgb_array"])
        if "rgb_array" not in modes:  # known before making it (gymnasium would only warn)
            raise GymAdapterError("env_id", f"{self.env_id} has no rgb_array renderer (render modes: {modes})")
        try:
            # gymnasium's passive checker (which renders twice on a first render) checks the env made at
            # construction; the same env remade with an episode's options is not checked again on every reset.
            checker = None if not episode_kwargs else True  # None: the spec's default (on)
            inner = gym.make(self._spec, render_mode="rgb_array", disable_env_checker=checker,
                             **{**self._env_kwargs, **episode_kwargs})
        except TypeError as error:
            raise GymAdapterError("env_kwargs", f"{self.env_id} refused them: {' '.join(str(error).split())}") \
                from None
        except gym.error.DependencyNotInstalled as error:
            raise GymAdapterError("env_id", f"{self.env_id} needs a missing package: {error}") from None
        modes = inner.metadata.get("render_modes") or []
        if "rgb_array" not in modes or inner.render_mode != "rgb_array":
            inner.close()
            raise GymAdapterError("env_id", f"{self.env_id} has no rgb_array renderer (render modes: {list(modes)})")
        return inner

    def _episode_env_kwargs(self) -> Mapping[str, Any] | None:
        """Options of the wrapped env drawn anew each episode with `self.np_random` (a game whose layout is fixed at
        construction, e.g. FrozenLake's map); the env is remade with them. None (default) keeps the env."""
        return None

    # ----- VLMEnv hooks ------------------------------------------------------------------------------------------
    def default_max_steps(self) -> int:
        return self._registered_horizon or DEFAULT_MAX_STEPS

    def _reset_state(self, options: dict[str, Any] | None) -> None:
        episode_kwargs = self._episode_env_kwargs()
        if episode_kwargs is not None:
            self.inner.close()
            self.inner = self._make_inner(episode_kwargs)
        seed = int(self.np_random.integers(2**31 - 1))
        self._observation_raw, _ = self.inner.reset(seed=seed, options=options)
        self.max_steps = self._horizon
        self.episode_return = 0.0
        self._cut_off = self._succeeded = False
        self._episode += 1
        self._expert_cache = None
        self._frame = None

    def task(self) -> str:
        return self._task

    def admissible_actions(self) -> list[str]:
        return list(self.action_names)

    def illegal_reward(self) -> float:
        return self._illegal_reward

    def _apply(self, command: str) -> tuple[float, bool]:
        action = self._action_start + self.action_names.index(command)
        self._observation_raw, reward, terminated, truncated, _ = self.inner.step(action)
        self._frame = None
        reward = float(reward)
        self.episode_return += reward
        if terminated:
            self._succeeded = bool(self._success(self.inner.unwrapped, self.episode_return)) \
                if self._success is not None else reward > 0
        elif truncated:  # a wrapper of the user's own cut the episode off: end it here (VLMEnv.step reads this)
            self.max_steps = self.steps_taken
        return reward, bool(terminated)

    def _on_truncation(self) -> float:
        self._cut_off = True
        return 0.0

    def log_reward(self) -> float:
        if self._cut_off and self.unfinished == "fail":
            return MIN_LOG_REWARD
        if self._transform is None:
            value = self.episode_return / self.temperature
        else:
            value = self._transform(self.episode_return)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise GymAdapterError("reward_transform", f"must return a number (log R), got {value!r:.60}")
        value = float(value)
        if math.isnan(value) or value == math.inf:
            raise GymAdapterError("reward_transform", f"gave log R = {value} for return {self.episode_return}; it "
                                                      f"must be finite (or -inf for R = 0)")
        return max(MIN_LOG_REWARD, value)

    def is_success(self) -> bool:
        return self._succeeded

    # ----- text --------------------------------------------------------------------------------------------------
    def state_text(self) -> str:
        if self._state_text is None:
            return self._default_state_text()
        text = self._state_text(self.inner.unwrapped, self._observation_raw)
        if not isinstance(text, str):
            raise GymAdapterError("state_text", f"must return a string, got {type(text).__name__}")
        return "".join(c if c in TEXT_CHARSET else "?" for c in text[:MAX_TEXT])

    def _default_state_text(self) -> str:
        observation = self._observation_raw
        values = np.asarray(observation) if isinstance(observation, (int, float, np.number, np.ndarray, tuple)) \
            else None
        if values is not None and values.dtype.kind in "biuf" and values.size <= MAX_DEFAULT_TEXT_VALUES:
            shown = np.array2string(values, precision=3, separator=", ") if values.ndim else str(values.item())
            return f"step {self.steps_taken}, observation {' '.join(shown.split())}"
        return f"step {self.steps_taken}"

    # ----- oracle ------------------------------------------------------------------------------------------------
    def expert_action(self) -> str:
        return self._ask_expert()[0]

    def expert_thoughts(self) -> str:
        return self._ask_expert()[1]

    def _ask_expert(self) -> tuple[str, str]:
        if self._expert is None:
            raise NoExpertError("expert", f"this gflowvlm/Gym-v0 env ({self.env_id}) was made without an expert; "
                                          f"pass expert=callable(env, observation) -> action")
        if self._finished:
            raise RuntimeError("the episode has ended, so there is no expert action; call reset() first")
        key = (self._episode, self.steps_taken)
        if self._expert_cache is not None and self._expert_cache[:2] == key:
            return self._expert_cache[2], self._expert_cache[3]
        answer = self._expert(self.inner.unwrapped, self._observation_raw)
        action, thoughts = answer if isinstance(answer, tuple) and len(answer) == 2 else (answer, None)
        name = self._action_name(action)
        if thoughts is None:
            thoughts = f"The best action here is {name}."
        if not isinstance(thoughts, str):
            raise GymAdapterError("expert", f"thoughts must be a string, got {type(thoughts).__name__}")
        self._expert_cache = (*key, name, thoughts)
        return name, thoughts

    def _action_name(self, action: Any) -> str:
        if isinstance(action, (int, np.integer)) and not isinstance(action, bool) \
                and 0 <= action < len(self.action_names):
            return self.action_names[int(action)]
        name = normalize_command(action)
        if name in self.action_names:
            return name
        raise GymAdapterError("expert", f"returned {action!r:.60}, which is neither an index into action_names nor "
                                        f"one of {self.action_names}")

    # ----- image -------------------------------------------------------------------------------------------------
    def draw(self) -> np.ndarray:
        # An illegal reply leaves the wrapped env untouched, so its frame is reused: no render per stalled step.
        if self._frame is None:
            self._frame = self._render()
        return self._frame.copy()

    def _render(self) -> np.ndarray:
        frame = self.inner.render()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] not in (3, 4) \
                or min(frame.shape[:2]) < 1:
            shape = getattr(frame, "shape", type(frame).__name__)
            raise GymAdapterError("env_id", f"{self.env_id}'s render() must return an H x W x 3 array, got {shape}")
        frame = np.ascontiguousarray(frame[:, :, :3])
        if frame.dtype != np.uint8:
            frame = np.clip(frame, 0, 255).astype(np.uint8)
        return letterbox(frame, self.image_size)

    def close(self) -> None:
        self.inner.close()
        super().close()


def letterbox(frame: np.ndarray, size: int) -> np.ndarray:
    """`frame` padded with black to a square (centred) and resized to size x size."""
    height, width = frame.shape[:2]
    side = max(height, width)
    if height != width:
        square = np.zeros((side, side, 3), dtype=np.uint8)
        top, left = (side - height) // 2, (side - width) // 2
        square[top:top + height, left:left + width] = frame
        frame = square
    image = Image.fromarray(frame)
    if side != size:
        resample = Image.Resampling.BOX if side > size else Image.Resampling.NEAREST
        image = image.resize((size, size), resample=resample)
    return np.asarray(image, dtype=np.uint8).copy()
