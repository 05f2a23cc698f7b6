"""Pieces the algorithms share: generation through the policy, rollout statistics, safe backward, the epochs of
minibatches of the clipped-ratio methods (PPO, GRPO), the SFT loss and the SFT anchor of the online methods.

Each takes the algorithm's AlgorithmContext (gflowvlm/algorithms/__init__.py) first.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext

import numpy as np
import torch

from gflowvlm.algorithms import AlgorithmContext
from gflowvlm.collector import Collector, policy_generate
from gflowvlm.seeding import Stream, stream_seed
from gflowvlm.sft_data import load_prompt, read_sft_data
from gflowvlm.trajectory import Trajectory


class OnlineMethod:
    """What every online method (ppo, grpo, the GFlowNet objectives) builds alike from its context, in this order:
    this rank's collector, the sampling function, and the SFT anchor (inert at anchor.coef = 0)."""

    def __init__(self, context: AlgorithmContext):
        self.context = context
        self.collector = Collector(context.config, rank=context.accelerator.process_index,
                                   count_tokens=context.policy.count_tokens)
        self.generate = make_generate(context)
        self.anchor = SFTAnchor(context)

    def collect(self, round_index: int) -> tuple[list[Trajectory], float]:
        """One round of on-policy trajectories under the current weights, and the seconds it took."""
        started = time.perf_counter()
        trajectories = self.collector.collect(self.generate, round_index)
        return trajectories, time.perf_counter() - started


def make_generate(context: AlgorithmContext, greedy: bool = False):
    """generate(prompts, seed) -> texts, sampling with the run's generation settings (no gradient)."""
    return policy_generate(context.policy, context.config.generation, greedy)


def rollout_metrics(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Statistics of on-policy trajectories (what the agent does now)."""
    if not trajectories:
        return {}
    steps = [step for t in trajectories for step in t.steps]  # Step records: one per env step
    return {
        "success_rate": sum(t.success for t in trajectories) / len(trajectories),
        "mean_return": sum(t.episode_return for t in trajectories) / len(trajectories),
        "episode_length": sum(t.length for t in trajectories) / len(trajectories),
        "mean_log_reward": sum(t.final_log_reward for t in trajectories) / len(trajectories),
        "illegal_rate": sum(s.illegal for s in steps) / max(1, len(steps)),
        "parse_rate": sum(s.parsed for s in steps) / max(1, len(steps)),
        "response_chars": sum(len(s.response) for s in steps) / max(1, len(steps)),
        "env_steps_this_iteration": float(len(steps)),
    }


def sync_context(context: AlgorithmContext, synchronise: bool):
    """DDP all-reduces gradients only on the backward where `synchronise` is True (one per optimizer step)."""
    return nullcontext() if synchronise else context.accelerator.no_sync(context.model)


def backward(context: AlgorithmContext, loss: torch.Tensor, scale: float) -> bool:
    """Backward `loss * scale`; a non-finite loss backpropagates an exact zero instead, so every rank still runs
    the same synchronised backward (skipping it on one rank would deadlock the others). Returns finiteness."""
    if torch.isfinite(loss).all():
        context.accelerator.backward(loss * scale)
        return True
    zero = sum((p * 0).sum() for p in context.model.parameters() if p.requires_grad)
    context.accelerator.backward(zero)
    return False


def response_nll(context: AlgorithmContext, records: Sequence[dict]):
    """(mean negative log-likelihood per response token of `records`' responses, token count, ScoreOutput): the
    SFT loss, action and CoT tokens alike, through the same scoring forward as every algorithm's."""
    prompts = [load_prompt(record) for record in records]
    responses = [record["response"] for record in records]
    out = context.model(context.policy.prepare_batch(prompts, responses), cot_weight=1.0)
    tokens = (out.action_tokens + out.cot_tokens).sum().clamp(min=1)
    return -(out.action_logp + out.cot_logp).sum() / tokens, tokens, out


class SFTAnchor:
    """`anchor.coef` * the SFT loss on `anchor.batch_size` records of `anchor.data`, backpropagated once per
    optimizer step of an online method (see config.AnchorConfig for why; [DONE] records are left out).

    `backward(iteration, index)` runs before the step's synchronised backward, under no_sync: its gradient then
    joins the step's all-reduce like an accumulated micro-batch, and DDP never sees a backward that leaves the
    heads without a gradient. The records come from a seeded stream of (rank, iteration, index), so a resumed run
    draws what an uninterrupted one would. Off (coef 0), it reads nothing and costs nothing.
    """

    def __init__(self, context: AlgorithmContext):
        self.context = context
        self.coef = context.config.anchor.coef
        self.records = []
        if self.coef > 0:
            self.records = [r for r in read_sft_data(context.config.anchor.data) if not r.get("done")]
            if not self.records:
                from gflowvlm.errors import UserError  # deferred like every library module's
                raise UserError(f"anchor.data {context.config.anchor.data} holds only [DONE] records")

    def backward(self, iteration: int, index: int = 0) -> dict[str, float]:
        """Backpropagate the anchor of optimizer step (iteration, index); {"anchor_loss": ...} or {} when off."""
        if not self.records:
            return {}
        context, config = self.context, self.context.config
        rng = np.random.default_rng(stream_seed(Stream.ANCHOR, config.seed, context.accelerator.process_index,
                                                iteration, index))
        size = config.anchor.batch_size
        picks = rng.choice(len(self.records), size=size, replace=size > len(self.records))
        with sync_context(context, False):
            loss, _, _ = response_nll(context, [self.records[int(i)] for i in picks])
            backward(context, loss, self.coef)
        return {"anchor_loss": float(loss.detach())}


def minibatch_schedule(context: AlgorithmContext, count: int, size: int, epochs: int, seed: int
                       ) -> Iterator[tuple[torch.Tensor, bool]]:
    """(index [size] of items 0..count-1, last) for `epochs` passes over a rollout of `count` steps.

    Every rank must run the same number of synchronised backwards, so an epoch has as many minibatches as the
    LARGEST rank's rollout needs (gathered when the first minibatch is asked for). Each epoch is a fresh permutation
    (a generator seeded with `seed`), cycled so every minibatch is full and every step is visited at least once an
    epoch. `last` marks the update's final minibatch: the optimizer step that also steps the learning-rate schedule.
    """
    accelerator = context.accelerator
    local = torch.tensor([count], device=accelerator.device)
    largest = int(accelerator.gather(local).max().item())
    minibatches = max(1, math.ceil(largest / size))
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(count, generator=generator)
        order = order.repeat(math.ceil(minibatches * size / count))
        for m in range(minibatches):
            yield order[m * size:(m + 1) * size], epoch == epochs - 1 and m == minibatches - 1
