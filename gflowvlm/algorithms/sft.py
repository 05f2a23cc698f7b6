"""Supervised fine-tuning on oracle data: cross-entropy on the response tokens only (the prompt and image tokens
carry no loss), through the same scoring forward as every other algorithm.

Batches are drawn from a seeded permutation per epoch and the position in it follows from the step counter, so a
resumed run sees exactly the batches an uninterrupted one would. Each rank takes its own slice of every batch.
"""
from __future__ import annotations

import time

import numpy as np

from gflowvlm.algorithms import AlgorithmContext
from gflowvlm.algorithms.common import backward, response_nll, sync_context
from gflowvlm.config import RunConfig
from gflowvlm.seeding import Stream, stream_seed
from gflowvlm.sft_data import check_responses_fit, read_sft_data


class SFT:
    @staticmethod
    def required_heads(config: RunConfig) -> tuple[str, ...]:
        """None: the loss is the responses' likelihood alone."""
        return ()

    def __init__(self, context: AlgorithmContext):
        self.context = context
        self.records = read_sft_data(context.config.sft.data)
        # Before the first step: a reply longer than the generation limit is learnt but never written back.
        check_responses_fit(self.records, context.policy.count_tokens, context.config.generation.max_new_tokens,
                            context.config.sft.data)

    def batch_indices(self, iteration: int) -> list[int]:
        config, accelerator = self.context.config, self.context.accelerator
        size = config.optim.batch_size * accelerator.num_processes
        count = len(self.records)
        start = iteration * size
        indices = []
        for position in range(start, start + size):
            epoch, offset = divmod(position, count)
            order = np.random.default_rng(stream_seed(Stream.SFT_ORDER, config.seed, epoch)).permutation(count)
            indices.append(int(order[offset]))
        return indices[accelerator.process_index::accelerator.num_processes]

    def update(self, iteration: int) -> dict[str, float]:
        context = self.context
        context.model.train()
        started = time.perf_counter()
        records = [self.records[i] for i in self.batch_indices(iteration)]
        with sync_context(context, True):
            loss, tokens, out = response_nll(context, records)
            finite = backward(context, loss, 1.0)
        stepped = context.optimizer_step(finite)
        done = [i for i, record in enumerate(records) if record.get("done")]
        metrics = {"loss": float(loss.detach()), "tokens": float(tokens), "skipped_step": float(not stepped),
                   "seconds_update": time.perf_counter() - started, "env_steps_this_iteration": 0.0}
        if done:
            metrics["done_logp"] = float(out.done_logp[done].mean().detach())
        return metrics

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state  # SFT's data order follows from the step counter
