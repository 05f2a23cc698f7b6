"""NumberLine (RL4VLM's `gym_cards`): move the current number to the target with "+" and "-".

Rules, as in RL4VLM (see /work/shared/reference/papers.md):
- split "id": start and target are uniform integers in [0, 5]; if they are equal the target becomes
  (target + 1) % 5 (the papers' redraw rule, kept exactly, so a start of 5 drawn with target 5 gets target 1);
  the current number stays in [0, 5]; the horizon is 2 * 5 = 10 steps.
- split "ood" (GFlowVLM's OOD test): start and target are uniform in [10, 50]; the same redraw rule, written for
  a range [low, high] as target = low + (target - low + 1) % (high - low) (which is exactly (target + 1) % 5 for
  [0, 5]) keeps the target in [10, 50]; the number line is 0..50 (the agent may walk below 10, as in
  `gym_cards` with max_position 50), and the horizon is 2 * 50 = 100 steps.
- rl4vlm reward: +1 and terminated on reaching the target, -1 if the distance did not shrink (a wrong-way move
  or a move blocked at 0 or at the top of the line), else 0; a command other than "+" / "-" gives -1.
- GFlowVLM reward: R = 100 / (|target - current| + 1), so log R = log 100 - log(distance + 1); it is also
  `info["log_reward"]` of every state before the end.
- Illegal commands and truncation: a command other than "+" / "-" leaves the number where it is (rl4vlm -1, as
  a move that does not shrink the distance; GFlowVLM nothing). An episode the horizon cuts off is scored where
  it stands, R = 100 / (distance + 1), the paper's rule. An agent that only sends illegal commands therefore
  keeps its start distance, which pays less than the uniformly random policy, whose walk often reaches the
  target (`tests/envs/test_garbage_never_pays.py`, id: mean R 34.5 against 76.1, mean log R 3.47 against 4.15;
  ood: 13.4 against 38.9 and 2.19 against 2.72; rl4vlm returns -10 against -2.4 and -100 against -38).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from envs import render
from envs.base import VLMEnv

ACTIONS = ("-", "+")
# (lowest start/target, highest start/target, top of the number line) per split.
SPLIT_RANGES = {"id": (0, 5, 5), "ood": (10, 50, 50)}
HORIZONS = ("split", "optimal")
# Below this font size (pixels) the full labels "Target:" / "Current:" get too small to read, so the image
# switches to the short labels "T:" / "C:" (this happens for images smaller than about 100 pixels).
MIN_FULL_LABEL_FONT = 14


class NumberLineEnv(VLMEnv):
    """Reach the target number; see the module docstring for the exact rules."""

    def __init__(self, split: str = "id", reward: str = "gflowvlm", image_size: int = 300,
                 render_mode: str | None = None, max_steps: int | None = None, horizon: str = "split",
                 horizon_factor: int = 2):
        if horizon not in HORIZONS:
            raise ValueError(f"horizon must be one of {list(HORIZONS)}, got {horizon!r}")
        if isinstance(horizon_factor, bool) or not isinstance(horizon_factor, int) or horizon_factor < 1:
            raise ValueError(f"horizon_factor must be a positive integer, got {horizon_factor!r}")
        if horizon == "optimal" and max_steps is not None:
            raise ValueError("horizon='optimal' sets each episode's horizon itself; do not also give max_steps")
        if split in SPLIT_RANGES:
            self.low, self.high, self.top = SPLIT_RANGES[split]
        self.horizon, self.horizon_factor = horizon, horizon_factor
        super().__init__(split=split, reward=reward, image_size=image_size, render_mode=render_mode,
                         max_steps=max_steps)
        self.start = self.target = self.current = self.low
        self._layout = self._make_layout()

    # ----- rules -------------------------------------------------------------------------------------------
    def default_max_steps(self) -> int:
        return 2 * self.top

    def _reset_state(self, options: dict[str, Any] | None) -> None:
        options = dict(options or {})
        unknown = set(options) - {"start", "target"}
        if unknown:
            raise ValueError(f"unknown NumberLine reset options {sorted(unknown)}; allowed: 'start', 'target'")
        start = int(self.np_random.integers(self.low, self.high + 1))
        target = int(self.np_random.integers(self.low, self.high + 1))
        if start == target:
            target = self.low + (target - self.low + 1) % (self.high - self.low)
        start = self._option_number(options, "start", start)
        target = self._option_number(options, "target", target)
        if start == target:
            raise ValueError(f"start and target must differ, both are {start}")
        self.start, self.target, self.current = start, target, start
        if self.horizon == "optimal":  # read by VLMEnv.step's truncation check
            self.max_steps = self.horizon_factor * abs(target - start)

    def _option_number(self, options: dict[str, Any], name: str, default: int) -> int:
        if name not in options:
            return default
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not self.low <= value <= self.high:
            raise ValueError(f"option {name!r} must be an integer in [{self.low}, {self.high}] for split "
                             f"{self.split!r}, got {value!r}")
        return int(value)

    def admissible_actions(self) -> list[str]:
        return list(ACTIONS)

    def _apply(self, command: str) -> tuple[float, bool]:
        before = abs(self.target - self.current)
        step = 1 if command == "+" else -1
        self.current = min(self.top, max(0, self.current + step))
        after = abs(self.target - self.current)
        if after == 0:
            return 1.0, True
        return (-1.0 if after >= before else 0.0), False

    def log_reward(self) -> float:
        return math.log(100.0) - math.log(abs(self.target - self.current) + 1)

    def is_success(self) -> bool:
        return self.current == self.target

    # ----- text --------------------------------------------------------------------------------------------
    def task(self) -> str:
        return (f"Move the current number to the target number. Each step, \"+\" adds 1 to the current number "
                f"and \"-\" subtracts 1; the current number stays between 0 and {self.top}.")

    def state_text(self) -> str:
        return f"target number {self.target}, current number {self.current}"

    def state_fields(self) -> dict[str, int]:
        # RL4VLM's NumberLine response restates both numbers (read off the image) before reasoning.
        return {"current number": self.current, "target number": self.target}

    # ----- oracle ------------------------------------------------------------------------------------------
    def expert_action(self) -> str:
        self._require_running()
        return "+" if self.current < self.target else "-"

    def expert_thoughts(self) -> str:
        self._require_running()
        if self.current < self.target:
            return (f"The current number {self.current} is smaller than the target {self.target}, "
                    f"so I should increase it.")
        return (f"The current number {self.current} is larger than the target {self.target}, "
                f"so I should decrease it.")

    def _require_running(self) -> None:
        if self._finished or self.current == self.target:
            raise RuntimeError("the episode has ended, so there is no expert action; call reset() first")

    # ----- image -------------------------------------------------------------------------------------------
    def _make_layout(self) -> dict[str, Any]:
        """Labels, font and text positions, fixed per env so that every frame uses the same layout."""
        size = self.image_size
        _, draw = render.canvas(size)
        widest_number = str(self.top)
        box_width, box_height = 0.86 * size, 0.3 * size
        font = render.fit_font(draw, f"Current: {widest_number}", box_width, box_height)
        labels = ("Target: ", "Current: ")
        if font.size < MIN_FULL_LABEL_FONT:
            labels = ("T: ", "C: ")
            font = render.fit_font(draw, f"C: {widest_number}", box_width, box_height)
        margin = round(0.07 * size)
        # Rows centred in the top and bottom halves; textbbox's top offset is removed so glyphs sit centred.
        _, top_offset, _, bottom = draw.textbbox((0, 0), labels[1] + widest_number, font=font)
        text_height = bottom - top_offset
        rows = [round(size * centre - text_height / 2 - top_offset) for centre in (0.3, 0.7)]
        return {"labels": labels, "font": font, "x": margin, "rows": rows}

    def draw(self) -> np.ndarray:
        image, draw = render.canvas(self.image_size)
        layout = self._layout
        for label, value, y in zip(layout["labels"], (self.target, self.current), layout["rows"]):
            draw.text((layout["x"], y), f"{label}{value}", fill=(0, 0, 0), font=layout["font"])
        return render.to_array(image)
