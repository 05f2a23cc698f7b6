"""Pieces the algorithms share: generation through the policy, rollout statistics, safe backward, the epochs of
minibatches of the clipped-ratio methods (PPO, GRPO)."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
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


def minibatch_schedule(trainer, count: int, size: int, epochs: int, seed: int) -> Iterator[tuple[torch.Tensor, bool]]:
    """(index [size] of items 0..count-1, last) for `epochs` passes over a rollout of `count` steps.

    Every rank must run the same number of synchronised backwards, so an epoch has as many minibatches as the
    LARGEST rank's rollout needs (gathered when the first minibatch is asked for). Each epoch is a fresh permutation
    (a generator seeded with `seed`), cycled so every minibatch is full and every step is visited at least once an
    epoch. `last` marks the update's final minibatch: the optimizer step that also steps the learning-rate schedule.
    """
    accelerator = trainer.accelerator
    local = torch.tensor([count], device=accelerator.device)
    largest = int(accelerator.gather(local).max().item())
    minibatches = max(1, math.ceil(largest / size))
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(count, generator=generator)
        order = order.repeat(math.ceil(minibatches * size / count))
        for m in range(minibatches):
            yield order[m * size:(m + 1) * size], epoch == epochs - 1 and m == minibatches - 1
