"""GRPO (Shao et al. 2024) and RLOO (Ahmadian et al. 2024) as multi-step baselines: no value head; every task is
played K = collect.trajectories_per_task times, and an episode's worth is its return measured against the other
episodes of the same task.

    return      R_i = sum of episode i's step rewards (the env's reward mode, env.reward; undiscounted)
    advantage   A_i = (R_i - b_i) / (std of the group's returns + 1e-4)   (no division: grpo.scale_rewards=false)
                b_i = the group's mean (grpo.baseline=mean, GRPO) or the mean of the OTHER K-1 returns (rloo)
    per step    log pi = log p(action tokens) + lambda * log p(CoT tokens)   (RL4VLM's, lambda = grpo.cot_weight)
    loss        -mean over a minibatch's steps of min(ratio A, clip(ratio, 1 - eps, 1 + eps) A), ratio =
                pi / pi_old at every step of episode i with A_i, + kl_coef * the steps' KL to the starting weights

One update = one rollout (K episodes of each task, played to their ends) + `grpo.epochs` passes over its steps in
minibatches of `grpo.minibatch_size` steps, one optimizer step each (PPO's schedule: common.minibatch_schedule).
The K episodes of a group get one reset seed (Collector.task_seeds: the same start, the same deal) and are sampled
independently (rows of one batched generation); groups, rounds and ranks get different tasks.

Choices, and why (these are ours: neither GFlowVLM nor RL4VLM runs GRPO):
- Outcome supervision over the whole episode: every step shares its episode's advantage, as every token of a GRPO
  completion shares the completion's. Long episodes weigh more (the loss is a mean over steps, as PPO's here).
- The std is the unbiased one (torch.std, as TRL) plus TRL's epsilon 1e-4. A group whose returns are all equal has
  advantage exactly 0 (nothing to compare: the std would otherwise turn rounding noise into +-1), and so does a
  group of one (no other sample; a grpo run never has one, since validation asks for K >= 2).
- RLOO's A = R_i - mean_{j != i} R_j = K/(K-1) (R_i - mean): GRPO's direction with a baseline independent of the
  sample itself. scale_rewards divides it by the group's std too (set it false for the plain RLOO estimator).
- KL (off by default, as in recent TRL): "starting" means the weights this run started from (model.init_from's SFT
  adapter, or freshly initialised adapters), not the base model, so peft's disable_adapter() would be wrong. A copy
  of the trainable tensors is taken when the algorithm is built, before `Trainer.resume` loads a checkpoint, so a
  resumed run re-derives exactly the same reference from the config's model (init_from's file, or adapters made
  under the run's seed; nothing is stored in checkpoints).
  Once per update the copy is swapped in (no gradient) to score every step's tokens, then swapped back. The
  estimator is k3 per token, exp(ref - new) - (ref - new) - 1 (TRL's), summed over a response with log pi's
  weights (1 on action tokens, lambda on the others): the KL in the units of the policy term. kl_coef = 0 holds no
  copy and scores nothing more. The copy costs one more set of trainable tensors on the device (the adapters; the
  whole model with model.adapter=full), and needs whole parameters on each rank (not FSDP / ZeRO-3).
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from gflowvlm.algorithms import AlgorithmContext
from gflowvlm.algorithms.common import (OnlineMethod, backward, minibatch_schedule, rollout_metrics,
                                       sync_context)
from gflowvlm.algorithms.ppo import accumulate, clipped_policy_loss, ratio_statistics
from gflowvlm.algorithms.reference import StartingWeights, check_whole_parameters
from gflowvlm.config import RunConfig
from gflowvlm.seeding import Stream, stream_seed

STD_EPSILON = 1e-4  # TRL's: added to the group's std before dividing


def group_advantages(returns: torch.Tensor, group_ids: torch.Tensor, scale_by_std: bool = True,
                     baseline: str = "mean", eps: float = STD_EPSILON) -> torch.Tensor:
    """Advantages [n] of episodes with returns [n] in task groups group_ids [n] (any ints; members need not be
    adjacent). baseline "mean": R - mean of the group; "rloo": R - mean of the group's other members. scale_by_std:
    divided by (unbiased std of the group + eps). A group of one, or one whose returns are all equal, gets 0."""
    if baseline not in ("mean", "rloo"):
        raise ValueError(f"baseline must be 'mean' or 'rloo', got {baseline!r}")
    if returns.shape != group_ids.shape or returns.dim() != 1:
        raise ValueError(f"returns and group_ids must be [n] each, got {tuple(returns.shape)} and "
                         f"{tuple(group_ids.shape)}")
    values = returns.to(torch.float64)
    advantages = torch.zeros_like(values)
    for group in torch.unique(group_ids):
        members = torch.nonzero(group_ids == group).squeeze(1)
        group_returns = values[members]
        k = group_returns.numel()
        if k < 2 or bool((group_returns == group_returns[0]).all()):
            continue  # nothing to compare with
        if baseline == "rloo":
            centred = group_returns - (group_returns.sum() - group_returns) / (k - 1)
        else:
            centred = group_returns - group_returns.mean()
        if scale_by_std:
            centred = centred / (group_returns.std() + eps)
        advantages[members] = centred
    return advantages.to(returns.dtype if returns.is_floating_point() else torch.float32)


def token_weights(batch: dict, cot_weight: float) -> list[torch.Tensor]:
    """Per response of a score batch, its tokens' weights in log pi [L_i], in ScoreOutput.token_logp's order:
    1 on tokens of the action value, cot_weight on every other response token (thoughts, JSON, EOS)."""
    response, action = batch["response_mask"], batch["action_mask"]
    ones = torch.tensor(1.0)
    return [torch.where(action[i][response[i]], ones, torch.tensor(float(cot_weight))) for i in range(len(response))]


def per_step_kl(new_token_logp: torch.Tensor, ref_token_logp: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[n] weighted k3 KL per step from [n, T] left-aligned per-token log-probs (weights 0 on padding):
    sum_t w_t (exp(ref_t - new_t) - (ref_t - new_t) - 1), >= 0 and 0 where the two agree."""
    diff = ref_token_logp - new_token_logp
    return ((torch.exp(diff) - diff - 1.0) * weights).sum(1)


class GRPO(OnlineMethod):
    @staticmethod
    def required_heads(config: RunConfig) -> tuple[str, ...]:
        """None: the group's returns are the baseline, not a value head."""
        return ()

    def __init__(self, context: AlgorithmContext):
        super().__init__(context)
        self.reference: StartingWeights | None = None
        if context.config.grpo.kl_coef > 0:
            check_whole_parameters(context.accelerator, "grpo.kl_coef")
            # Built before Trainer.resume runs: these are the run's starting weights, on a resume too.
            self.reference = StartingWeights(context.policy.parameter_groups()[0])

    @torch.no_grad()
    def _score(self, steps: Sequence) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(log pi [n] of every step, its response tokens' log-probs [L_i] each) under the weights in place."""
        context, grpo = self.context, self.context.config.grpo
        chunk = context.config.optim.batch_size
        logp, tokens = [], []
        for start in range(0, len(steps), chunk):
            part = steps[start:start + chunk]
            batch = context.policy.prepare_batch([s.prompt for s in part], [s.response for s in part])
            out = context.policy(batch, cot_weight=grpo.cot_weight)
            logp.append(out.log_pf.float())
            lengths = batch["response_mask"].sum(1).tolist()
            tokens.extend(out.token_logp[i, :length].float() for i, length in enumerate(lengths))
        return torch.cat(logp), tokens

    def update(self, iteration: int) -> dict[str, float]:
        context, config, grpo = self.context, self.context.config, self.context.config.grpo
        context.model.eval()  # dropout off: the scored distribution must be the sampled one
        trajectories, collect_seconds = self.collect(iteration)
        started = time.perf_counter()
        returns = torch.tensor([t.episode_return for t in trajectories], dtype=torch.float32)
        groups = torch.tensor([t.group for t in trajectories])
        episode_advantages = group_advantages(returns, groups, grpo.scale_rewards, grpo.baseline)
        lengths = torch.tensor([t.length for t in trajectories])
        advantages = episode_advantages.repeat_interleave(lengths)
        steps = [step for trajectory in trajectories for step in trajectory.steps]
        old_logp, _ = self._score(steps)
        reference = None
        if self.reference is not None:
            with self.reference.swapped_in():
                _, reference = self._score(steps)
        losses = self._optimize(iteration, steps, advantages.to(old_logp.device), old_logp, reference)
        metrics = {**rollout_metrics(trajectories), **losses,
                   "zero_advantage_fraction": float((episode_advantages == 0).float().mean()),
                   "seconds_collect": collect_seconds, "seconds_score_update": time.perf_counter() - started}
        if (iteration + 1) % config.logging.sample_every == 0:
            context.logger.samples(trajectories, iteration + 1)
        return metrics

    def _optimize(self, iteration, steps, advantages, old_logp, reference) -> dict[str, float]:
        context, grpo = self.context, self.context.config.grpo
        # The same stream as PPO's minibatch order: a run is one algorithm, so the two never share a seed.
        seed = stream_seed(Stream.PPO_MINIBATCH, context.config.seed, context.accelerator.process_index, iteration)
        totals = {"loss": 0.0, "policy_loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0}
        if reference is not None:
            totals["kl"] = 0.0
        count = 0
        for index, last in minibatch_schedule(context, len(steps), grpo.minibatch_size, grpo.epochs, seed):
            batch = context.policy.prepare_batch([steps[i].prompt for i in index], [steps[i].response for i in index])
            anchor = self.anchor.backward(iteration, count)
            with sync_context(context, True):
                out = context.model(batch, cot_weight=grpo.cot_weight)
                new_logp = out.log_pf.float()
                policy_loss = clipped_policy_loss(new_logp, old_logp[index], advantages[index], grpo.clip)
                loss = policy_loss
                if reference is not None:
                    new_tokens = out.token_logp.float()
                    kl = per_step_kl(new_tokens, _padded([reference[i] for i in index], new_tokens),
                                     _padded(token_weights(batch, grpo.cot_weight), new_tokens)).mean()
                    loss = policy_loss + grpo.kl_coef * kl
                    totals["kl"] += float(kl.detach())
                finite = backward(context, loss, 1.0)
            context.optimizer_step(finite, schedule=last)
            accumulate(totals, {"loss": float(loss.detach()), "policy_loss": float(policy_loss.detach()),
                                **ratio_statistics(new_logp, old_logp[index], grpo.clip), **anchor})
            count += 1
        return {key: value / count for key, value in totals.items()}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        # Rollouts are regenerated, and the KL reference is re-derived from the config's model at construction.
        del state


def _padded(rows: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Ragged [L_i] rows as a zero-padded [n, T] tensor shaped like `like` (the minibatch's token_logp)."""
    out = pad_sequence([row.to(like.device, like.dtype) for row in rows], batch_first=True)
    if out.shape != like.shape:
        raise RuntimeError(f"per-token tensors disagree: {tuple(out.shape)} vs {tuple(like.shape)} (the same "
                           "responses must tokenise the same in every batch)")
    return out
