"""Pieces the algorithms share: generation through the policy, rollout statistics, safe backward."""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from gflowvlm.trajectory import Trajectory


def make_generate(trainer, greedy: bool = False):
    """generate(prompts, seed) -> texts, sampling with the run's generation settings (no gradient)."""
    generation = trainer.config.generation

    def generate(prompts, seed: int) -> list[str]:
        with torch.no_grad():
            outputs = trainer.policy.generate(
                prompts, temperature=generation.temperature, top_p=generation.top_p,
                max_new_tokens=generation.max_new_tokens, do_sample=not greedy and generation.temperature > 0,
                seed=seed)
        return [output.text for output in outputs]
    return generate


def rollout_metrics(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Statistics of on-policy trajectories (what the agent does now)."""
    if not trajectories:
        return {}
    steps = [step for t in trajectories for step in t.steps]
    return {
        "success_rate": sum(t.success for t in trajectories) / len(trajectories),
        "mean_return": sum(t.episode_return for t in trajectories) / len(trajectories),
        "episode_length": sum(t.length for t in trajectories) / len(trajectories),
        "mean_log_reward": sum(t.final_log_reward for t in trajectories) / len(trajectories),
        "illegal_rate": sum(s.illegal for s in steps) / max(1, len(steps)),
        "parse_rate": sum(s.parsed for s in steps) / max(1, len(steps)),
        "response_chars": sum(len(s.response) for s in steps) / max(1, len(steps)),
        "env_steps_this_step": float(len(steps)),
    }


def sync_context(trainer, synchronise: bool):
    """DDP all-reduces gradients only on the backward where `synchronise` is True (one per optimizer step)."""
    return nullcontext() if synchronise else trainer.accelerator.no_sync(trainer.model)


def backward(trainer, loss: torch.Tensor, scale: float) -> bool:
    """Backward `loss * scale`; a non-finite loss backpropagates an exact zero instead, so every rank still runs
    the same synchronised backward (skipping it on one rank would deadlock the others). Returns finiteness."""
    if torch.isfinite(loss).all():
        trainer.accelerator.backward(loss * scale)
        return True
    zero = sum((p * 0).sum() for p in trainer.model.parameters() if p.requires_grad)
    trainer.accelerator.backward(zero)
    return False
