"""What one episode leaves behind: the per-step records every objective and report reads.

A trajectory z_0 -> z_1 -> ... -> z_n has n steps; step t holds the prompt built at z_t, the model's response
(thoughts + action), the command sent to the environment, and log R(z_t). `final_log_reward` is log R(z_n), the
reward of the object the trajectory produced. Log-probabilities are deliberately NOT stored: every loss recomputes
them under the current policy (stale log-probs are the classic off-policy GFlowNet bug).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gflowvlm.prompting import Prompt


@dataclass
class Step:
    prompt: Prompt
    response: str
    action: str  # the command sent to the environment
    parsed: bool  # whether `action` came from the response (False: fallback or exploration replaced it)
    illegal: bool
    reward: float  # the environment's reward for this step (its reward mode)
    log_reward: float  # log R(z_t) of the state the step starts from
    # The model's own text where the collector rewrote `response` to carry a fallback's or exploration's action (so
    # that log P_F scores what was done); None where `response` is what the model wrote. Transcripts show both.
    generated: str | None = None


@dataclass
class Trajectory:
    env_id: str
    task_seed: int  # the reset seed: trajectories of one task share it
    group: int  # index of the task within its batch (Var-TB groups)
    steps: list[Step] = field(default_factory=list)
    final_log_reward: float = 0.0  # log R(z_n)
    final_prompt: Prompt | None = None  # the prompt at z_n (forward-looking flows of unfinished trajectories)
    terminated: bool = False
    truncated: bool = False
    success: bool = False
    task: str = ""
    task_type: str = ""
    source: str = "policy"  # "policy", "expert" or "replay"

    @property
    def length(self) -> int:
        return len(self.steps)

    @property
    def episode_return(self) -> float:
        return float(sum(step.reward for step in self.steps))

    def action_sequence(self) -> tuple[str, ...]:
        """The sequence of commands: two trajectories with the same one reach the same object (diversity, dedup)."""
        return tuple(step.action for step in self.steps)

    def state_log_rewards(self) -> list[float]:
        """log R(z_0), ..., log R(z_n): n + 1 values."""
        return [step.log_reward for step in self.steps] + [self.final_log_reward]


def response_lines(step: Step) -> list[str]:
    """A step's response for a transcript: what the model wrote and, where the collector rewrote it, what was scored.

    A reader diagnosing parse failures needs the model's own text; the rewritten one would show an admissible action
    the model never wrote.
    """
    if step.generated is None:
        return [f"response: {step.response}"]
    return [f"response (the model's own): {step.generated}",
            f"response (as scored, its action replaced by the one taken): {step.response}"]


def pad_per_step(values: list[list[float]], width: int, fill: float = 0.0) -> torch.Tensor:
    """Left-aligned [B, width] float tensor from ragged per-trajectory lists."""
    out = torch.full((len(values), width), fill, dtype=torch.float32)
    for row, items in enumerate(values):
        if items:
            out[row, : len(items)] = torch.tensor(items, dtype=torch.float32)
    return out


def step_mask(lengths: list[int], width: int) -> torch.Tensor:
    """[B, width] bool mask, True at the first lengths[b] positions."""
    positions = torch.arange(width).unsqueeze(0)
    return positions < torch.tensor(lengths).unsqueeze(1)
