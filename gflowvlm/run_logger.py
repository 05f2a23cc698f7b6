"""Where a run reports: metrics.jsonl (always), accelerate's trackers (wandb / tensorboard, by config), and readable
trajectory samples so a user can see what the agent actually does.

Only the main process writes; metrics arrive already reduced over ranks.
"""
from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gflowvlm.errors import UserError
from gflowvlm.trajectory import Trajectory, response_lines


class RunLogger:
    def __init__(self, output_dir: str | Path, accelerator, trackers: Sequence[str]):
        self.output_dir = Path(output_dir)
        self.accelerator = accelerator
        self.use_trackers = bool(trackers)
        self.metrics_path = self.output_dir / "metrics.jsonl"

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.use_trackers:
            self.accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def truncate_after(self, step: int) -> list[str]:
        """On resume, drop records newer than the checkpoint so metrics.jsonl has no duplicated steps.

        A last line torn by a crash mid-write is dropped too, and said so in one line on stderr (returned as well).
        Any other line that is not a JSON record means the file was edited: a UserError names the line.
        """
        notices: list[str] = []
        if not self.accelerator.is_main_process or not self.metrics_path.exists():
            return notices
        lines = self.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
                    raise ValueError("not a record")
            except ValueError:
                if any(rest.strip() for rest in lines[number:]):
                    raise UserError(f"{self.metrics_path} line {number} is not a JSON record: the file was edited "
                                    "or damaged; fix or delete that line to resume") from None
                notices.append(f"{self.metrics_path}: dropped a torn last line (line {number}, written when the run "
                               "was killed)")
                break
            if record.get("step", 0) <= step:
                kept.append(line)
        # Rewritten through a temporary file: a crash now must not cost the records that are kept.
        temporary = self.metrics_path.with_name(f".{self.metrics_path.name}.tmp")
        temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(temporary, self.metrics_path)
        for notice in notices:
            print(f"gflowvlm: {notice}", file=sys.stderr)
        return notices

    def samples(self, trajectories: Sequence[Trajectory], step: int, count: int = 2) -> None:
        if not self.accelerator.is_main_process or not trajectories:
            return
        folder = self.output_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"step_{step:06d}.txt", "w", encoding="utf-8") as handle:
            handle.write(format_trajectories(trajectories[:count]))


def format_trajectories(trajectories: Sequence[Trajectory]) -> str:
    lines = []
    for number, trajectory in enumerate(trajectories, 1):
        outcome = "success" if trajectory.success else "failure"
        lines.append(f"=== trajectory {number} ({trajectory.source}, task seed {trajectory.task_seed}, {outcome}, "
                     f"log R(x) = {trajectory.final_log_reward:.3f}, return = {trajectory.episode_return:.2f})")
        lines.append(f"task: {trajectory.task}")
        for t, step in enumerate(trajectory.steps):
            flags = "" if step.parsed else " [fallback/exploration]"
            flags += " [illegal]" if step.illegal else ""
            lines.append(f"--- step {t}: log R(z_t) = {step.log_reward:.3f}")
            if t == 0:
                lines.append("prompt:\n" + step.prompt.text)
            lines.extend(response_lines(step))
            lines.append(f"action: {step.action}{flags}   reward: {step.reward:.3f}")
        lines.append("")
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
