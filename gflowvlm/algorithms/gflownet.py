"""GFlowNet fine-tuning (TB, Var-TB, SubTB(lambda), DB; flows from a head, [DONE] or forward-looking).

One update: collect on-policy trajectories -> add the oracle's trajectory for failed tasks (the paper's expert
injection) -> keep the best in the replay buffer and mix replayed ones in -> score every trajectory under the
CURRENT policy -> objective -> backward -> one optimizer step.
"""
from __future__ import annotations

import random
import time

from gflowvlm.algorithms import AlgorithmContext
from gflowvlm.algorithms.common import SFTAnchor, backward, make_generate, rollout_metrics, sync_context
from gflowvlm.algorithms.reference import StartingWeights, check_whole_parameters
from gflowvlm.collector import Collector
from gflowvlm.config import RunConfig
from gflowvlm.gflownet_loss import chunk_by_group, gflownet_loss
from gflowvlm.replay_buffer import ReplayBuffer
from gflowvlm.seeding import Stream, stream_seed


class GFlowNet:
    @staticmethod
    def required_heads(config: RunConfig) -> tuple[str, ...]:
        """TB learns log Z; SubTB and DB learn state flows with a head unless they read them from [DONE]."""
        if config.algorithm == "tb":
            return ("log_z",)
        if config.algorithm in ("subtb", "db") and config.objective.flow in ("head", "forward_looking"):
            return ("flow",)
        return ()

    def __init__(self, context: AlgorithmContext):
        self.context = context
        config = context.config
        self.collector = Collector(config, rank=context.accelerator.process_index,
                                   count_tokens=context.policy.count_tokens)
        self.replay = ReplayBuffer(config.collect.replay_size, config.collect.replay_tasks)
        self.generate = make_generate(context)
        self.anchor = SFTAnchor(context)
        self.reference: StartingWeights | None = None
        if config.objective.prior_weight > 0:
            check_whole_parameters(context.accelerator, "objective.prior_weight")
            # Built before Trainer.resume runs: the run's starting weights (the SFT model), on a resume too.
            self.reference = StartingWeights(context.policy.parameter_groups()[0])
        self.last_trajectories = []

    def update(self, iteration: int) -> dict[str, float]:
        context, config = self.context, self.context.config
        context.model.eval()  # dropout off: the scored distribution must be the sampled one
        seconds = {"collect": 0.0, "score_update": 0.0}
        metrics: dict[str, float] = self.anchor.backward(iteration)
        finite = True
        for micro in range(config.optim.grad_accum):
            started = time.perf_counter()
            round_index = iteration * config.optim.grad_accum + micro
            on_policy = self.collector.collect(self.generate, round_index)
            batch = on_policy + self._off_policy(on_policy, round_index)
            seconds["collect"] += time.perf_counter() - started
            started = time.perf_counter()
            chunks = chunk_by_group(batch, config.optim.batch_size)
            last_micro = micro == config.optim.grad_accum - 1
            scale_total = len(batch) * config.optim.grad_accum
            for index, chunk in enumerate(chunks):
                with sync_context(context, last_micro and index == len(chunks) - 1):
                    loss, stats = gflownet_loss(context.model, context.policy, chunk, config, self.reference)
                    finite &= backward(context, loss, len(chunk) / scale_total)
                for key, value in {"loss": float(loss.detach()), **stats}.items():
                    metrics[key] = metrics.get(key, 0.0) + value * len(chunk) / scale_total
            seconds["score_update"] += time.perf_counter() - started
            for key, value in rollout_metrics(on_policy).items():
                scale = 1.0 if key.endswith("_this_step") else 1.0 / config.optim.grad_accum
                metrics[key] = metrics.get(key, 0.0) + value * scale
            metrics["replay_size"] = float(len(self.replay))
            metrics["off_policy_fraction"] = 1.0 - len(on_policy) / len(batch)
            self.last_trajectories = batch
        started = time.perf_counter()
        stepped = context.optimizer_step(finite)
        seconds["score_update"] += time.perf_counter() - started
        metrics["skipped_step"] = 0.0 if stepped else 1.0
        metrics.update({f"seconds_{k}": v for k, v in seconds.items()})
        if (iteration + 1) % config.logging.sample_every == 0:
            context.logger.samples(self.last_trajectories, iteration + 1)
        return metrics

    def _off_policy(self, on_policy, round_index: int):
        config = self.context.config
        extra = []
        if config.collect.expert_injection:
            tasks = {}
            for trajectory in on_policy:
                tasks.setdefault((trajectory.task_seed, trajectory.group), []).append(trajectory.success)
            for (seed, group), successes in tasks.items():
                if not any(successes):
                    extra.append(self.collector.expert_trajectory(seed, group))
        for trajectory in on_policy + extra:
            self.replay.add(trajectory)
        rank = self.context.accelerator.process_index
        rng = random.Random(stream_seed(Stream.REPLAY, config.seed, rank, round_index))
        return extra + self.replay.sample(config.collect.replay_samples, rng)

    def state_dict(self) -> dict:
        return {"replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.replay.load_state_dict(state["replay"])
