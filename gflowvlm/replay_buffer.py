"""Per-task replay of the best trajectories found so far (GFlowVLM keeps 4; gfn-lm-tuning the top 50 per prompt).

A task is (env id, reset seed). For each task the buffer keeps the top `capacity` trajectories by final log-reward,
deduplicated by their action sequence (the same object twice would only re-weight it). Tasks are seeds, so new
ones keep coming: beyond `max_tasks` the least recently added task is evicted, which bounds memory. Trajectories are
stored without log-probabilities: they are always rescored under the current policy.

The buffer is checkpointed as JSON-able data plus the prompt images (see `state_dict`), never with pickle.
"""
from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np

from gflowvlm.prompting import Prompt
from gflowvlm.trajectory import Step, Trajectory


class ReplayBuffer:
    def __init__(self, capacity: int, max_tasks: int = 256):
        if capacity < 0 or max_tasks < 1:
            raise ValueError(f"replay capacity must be >= 0 and max_tasks >= 1, got {capacity}, {max_tasks}")
        self.capacity = capacity
        self.max_tasks = max_tasks
        self._tasks: dict[tuple[str, int], list[Trajectory]] = {}  # insertion-ordered: oldest task first

    def __len__(self) -> int:
        return sum(len(items) for items in self._tasks.values())

    def add(self, trajectory: Trajectory) -> bool:
        """Insert if it is among the task's best and not a duplicate; return whether it was kept."""
        if self.capacity == 0 or not trajectory.steps:
            return False
        key = (trajectory.env_id, trajectory.task_seed)
        items = self._tasks.pop(key, [])
        self._tasks[key] = items  # re-inserted: now the most recently used task
        while len(self._tasks) > self.max_tasks:
            del self._tasks[next(iter(self._tasks))]
        sequence = trajectory.action_sequence()
        if any(item.action_sequence() == sequence for item in items):
            return False
        items.append(trajectory)
        items.sort(key=lambda item: item.final_log_reward, reverse=True)
        del items[self.capacity:]
        return any(item is trajectory for item in items)

    def sample(self, count: int, rng: random.Random) -> list[Trajectory]:
        """`count` stored trajectories, uniformly over stored items (without replacement when possible)."""
        pool = [item for items in self._tasks.values() for item in items]
        if not pool or count <= 0:
            return []
        chosen = rng.sample(pool, count) if count <= len(pool) else [rng.choice(pool) for _ in range(count)]
        return [_as_replay(item) for item in chosen]

    # ----- checkpointing without pickle ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "max_tasks": self.max_tasks,
                "trajectories": [_encode(item) for items in self._tasks.values() for item in items]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self.max_tasks = int(state["max_tasks"])
        self._tasks = {}
        for encoded in state["trajectories"]:
            trajectory = _decode(encoded)
            self._tasks.setdefault((trajectory.env_id, trajectory.task_seed), []).append(trajectory)


def _as_replay(trajectory: Trajectory) -> Trajectory:
    copy = Trajectory(**{**trajectory.__dict__, "steps": list(trajectory.steps)})
    copy.source = "replay"
    return copy


def _encode_image(image: np.ndarray) -> dict[str, Any]:
    return {"shape": list(image.shape), "data": base64.b64encode(np.ascontiguousarray(image).tobytes()).decode()}


def _decode_image(data: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(data["data"])
    return np.frombuffer(raw, dtype=np.uint8).reshape(data["shape"]).copy()


def _encode(trajectory: Trajectory) -> dict[str, Any]:
    fields = {k: v for k, v in trajectory.__dict__.items() if k not in ("steps", "final_prompt")}
    fields["steps"] = [{**{k: v for k, v in step.__dict__.items() if k != "prompt"},
                        "prompt_text": step.prompt.text, "prompt_image": _encode_image(step.prompt.image)}
                       for step in trajectory.steps]
    final = trajectory.final_prompt
    fields["final_prompt"] = None if final is None else {"text": final.text, "image": _encode_image(final.image)}
    return fields


def _decode(fields: dict[str, Any]) -> Trajectory:
    fields = dict(fields)
    steps = []
    for step in fields.pop("steps"):
        step = dict(step)
        prompt = Prompt(text=step.pop("prompt_text"), image=_decode_image(step.pop("prompt_image")))
        step.pop("done_response", None)  # a field no code set, in replay states written before it was removed
        steps.append(Step(prompt=prompt, **step))
    final = fields.pop("final_prompt")
    final_prompt = None if final is None else Prompt(text=final["text"], image=_decode_image(final["image"]))
    return Trajectory(steps=steps, final_prompt=final_prompt, **fields)
