"""The environment contract shared by every gflowvlm game.

A game subclasses `VLMEnv` and fills in a few hooks (state as text, admissible commands, how an admissible
command changes the state, its rewards, how to draw it, its oracle; optionally what the drawing shows in words,
`image_caption`, where the state text says more). `VLMEnv` owns what must be identical
across games so that the trainer never special-cases one:

- observations are `{"image": uint8 HxWx3, "text": str}`; actions are command strings;
- a command that is not admissible never raises: the state stays, `info["illegal"]` is True and the reward
  follows the reward mode (`rl4vlm`: the game's illegal penalty; `gflowvlm`: no penalty);
- `info` always carries `task`, `admissible_actions`, `illegal`, `log_reward` (log R of the current state as if
  the episode ended here, under the GFlowVLM shaping) and `success`;
- reward modes: `rl4vlm` gives the papers' original per-step rewards; `gflowvlm` gives R(x) = exp(log_reward)
  on the final step (terminated or truncated) and 0 before, so a return is exactly the terminal reward;
- truncation: when the step limit cuts an episode off, `_on_truncation()` settles what the unfinished episode is
  worth before the final `info` is made, so the final `log_reward` is log R(x) of the truncated episode (a game
  where an unfinished episode must not pay, such as an unplayed Blackjack hand, scores it as a failure there).
  Illegal steps never change the state, so an agent that only stalls ends truncated in its start state: every
  game sets the worth of that so that stalling earns no more than its random policy
  (`tests/envs/test_garbage_never_pays.py` measures both, in both reward modes).
"""
from __future__ import annotations

import math
import string
from abc import ABCMeta, abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

REWARD_MODES = ("rl4vlm", "gflowvlm")
# Every printable ASCII character: enough for states, commands and anything a model may write.
TEXT_CHARSET = frozenset(string.printable)
MAX_TEXT = 8192
# Floor for log R: GFlowNet losses need finite log-rewards (R = 1e-10 for a Blackjack loss, as the paper).
MIN_LOG_REWARD = math.log(1e-10)


class VLMEnv(gym.Env, metaclass=ABCMeta):
    """Base class of the gflowvlm environments (see module docstring for the contract)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    splits: tuple[str, ...] = ("id", "ood")

    def __init__(self, split: str = "id", reward: str = "gflowvlm", image_size: int = 300,
                 render_mode: str | None = None, max_steps: int | None = None):
        if split not in self.splits:
            raise ValueError(f"{type(self).__name__} has no split {split!r}; choose one of {list(self.splits)}")
        if reward not in REWARD_MODES:
            raise ValueError(f"unknown reward mode {reward!r}; choose one of {list(REWARD_MODES)}")
        if not isinstance(image_size, int) or not 16 <= image_size <= 2048:
            raise ValueError(f"image_size must be an integer in [16, 2048], got {image_size!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"unsupported render_mode {render_mode!r}; only 'rgb_array'")
        self.split = split
        self.reward_mode = reward
        self.image_size = image_size
        self.render_mode = render_mode
        self.max_steps = max_steps if max_steps is not None else self.default_max_steps()
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
            "text": spaces.Text(max_length=MAX_TEXT, min_length=0, charset=TEXT_CHARSET),
        })
        self.action_space = spaces.Text(max_length=256, min_length=0, charset=TEXT_CHARSET)
        self.steps_taken = 0
        self._finished = False

    # ----- hooks a game implements -------------------------------------------------------------------------
    @abstractmethod
    def default_max_steps(self) -> int:
        """Steps before truncation when the caller gives no `max_steps`."""

    @abstractmethod
    def _reset_state(self, options: dict[str, Any] | None) -> None:
        """Draw a new episode with `self.np_random`."""

    @abstractmethod
    def task(self) -> str:
        """The goal, in words (goes first in every prompt)."""

    @abstractmethod
    def state_text(self) -> str:
        """The current state, in words (`obs["text"]`: the history lines of the prompt)."""

    def image_caption(self) -> str:
        """What the image shows, in words: the target of caption pre-training (`gflowvlm.model.vision_alignment`).

        The state text by default. A game whose state text says more than the image draws (Blackjack's hand
        totals and outcomes) overrides this, so that alignment teaches reading and not arithmetic."""
        return self.state_text()

    @abstractmethod
    def admissible_actions(self) -> list[str]:
        """The commands valid in the current state (normalized: lower-case, single spaces)."""

    @abstractmethod
    def _apply(self, command: str) -> tuple[float, bool]:
        """Apply an admissible command; return (rl4vlm reward, terminated)."""

    def state_fields(self) -> dict[str, Any]:
        """Facts the response JSON restates before `thoughts` (e.g. NumberLine's current and target number).

        RL4VLM's prompts ask the model to read these off the image first; the oracle's responses fill them in.
        """
        return {}

    def illegal_reward(self) -> float:
        """rl4vlm reward of a command that is not admissible."""
        return -1.0

    def _on_truncation(self) -> float:
        """The step limit has just cut the episode off without a terminal state: settle the episode's worth.

        Called once, after the last step's command and before its `info`, so a game may change its state here
        (Blackjack forfeits the open hand) and `log_reward()` then gives the truncated episode's log R(x).
        Returns the rl4vlm reward the cut adds to that last step. Default: nothing; the state is scored as is.
        """
        return 0.0

    @abstractmethod
    def log_reward(self) -> float:
        """log R of the current state under the GFlowVLM shaping, as if the episode ended now."""

    @abstractmethod
    def is_success(self) -> bool:
        """Whether the current state solves the task."""

    @abstractmethod
    def draw(self) -> np.ndarray:
        """The current state as a uint8 image of `image_size` squared."""

    @abstractmethod
    def expert_action(self) -> str:
        """The oracle's next command."""

    @abstractmethod
    def expert_thoughts(self) -> str:
        """The oracle's reasoning for `expert_action()`, as chain-of-thought text for SFT data."""

    # ----- the shared mechanics ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.steps_taken = 0
        self._finished = False
        self._reset_state(options)
        return self._observation(), self._info(illegal=False)

    def step(self, action: Any):
        if self._finished:
            raise RuntimeError("step() called after the episode ended; call reset() first")
        command = normalize_command(action)
        admissible = self.admissible_actions()
        self.steps_taken += 1
        if command in admissible:
            base_reward, terminated = self._apply(command)
            illegal = False
        else:
            base_reward, terminated, illegal = self.illegal_reward(), False, True
        truncated = not terminated and self.steps_taken >= self.max_steps
        if truncated:
            base_reward += self._on_truncation()
        self._finished = terminated or truncated
        info = self._info(illegal=illegal)
        if self.reward_mode == "rl4vlm":
            reward = float(base_reward)
        else:
            reward = float(math.exp(info["log_reward"])) if self._finished else 0.0
        return self._observation(), reward, terminated, truncated, info

    def render(self):
        return self.draw()

    def _observation(self) -> dict[str, Any]:
        image = self.draw()
        assert image.shape == (self.image_size, self.image_size, 3) and image.dtype == np.uint8
        return {"image": image, "text": self.state_text()}

    def _info(self, illegal: bool) -> dict[str, Any]:
        return {
            "task": self.task(),
            "admissible_actions": list(self.admissible_actions()),
            "illegal": bool(illegal),
            "log_reward": max(MIN_LOG_REWARD, float(self.log_reward())),
            "success": bool(self.is_success()),
        }


def normalize_command(action: Any) -> str | None:
    """A command as the env compares it: stripped, lower-case; None for anything that is not text."""
    if isinstance(action, bytes):
        action = action.decode("utf-8", errors="replace")
    if isinstance(action, np.str_):
        action = str(action)
    if not isinstance(action, str):
        return None
    return " ".join(action.strip().lower().split())
