"""PPO as RL4VLM: log pi(a) = log p(action tokens) + lambda * log p(CoT tokens), a value head on the last prompt
token, GAE, the clipped objective, several epochs of minibatches over each rollout, normalised advantages.

One update = one rollout (every environment played to the end of its episode) + `ppo.epochs` passes over its
steps. A terminated episode's last step bootstraps from 0; a TRUNCATED one bootstraps from the value of the state it
was cut at, since the episode would have gone on.
"""
from __future__ import annotations

import time

import torch

from gflowvlm.algorithms.common import (OnlineMethod, backward, minibatch_schedule, rollout_metrics,
                                       sync_context)
from gflowvlm.config import RunConfig
from gflowvlm.seeding import Stream, stream_seed


def generalized_advantages(rewards: torch.Tensor, values: torch.Tensor, bootstrap: float, gamma: float,
                           lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over one episode. rewards, values: [n]; bootstrap: V of the state after the last step (0 if terminal).

    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}; returns (advantages, returns = A + V).
    """
    n = rewards.shape[0]
    advantages = torch.zeros(n, dtype=torch.float64)
    next_value, running = float(bootstrap), 0.0
    for t in reversed(range(n)):
        delta = float(rewards[t]) + gamma * next_value - float(values[t])
        running = delta + gamma * lam * running
        advantages[t] = running
        next_value = float(values[t])
    advantages = advantages.to(values.dtype)
    return advantages, advantages + values


def ratio_statistics(new_logp: torch.Tensor, old_logp: torch.Tensor, clip: float) -> dict[str, float]:
    """Diagnostics of one clipped-ratio minibatch: the share of ratios outside [1 - clip, 1 + clip] and the k3
    estimate of KL(old || new), mean((r - 1) - log r)."""
    with torch.no_grad():
        log_ratio = new_logp - old_logp
        return {"clip_fraction": float(((log_ratio.exp() - 1).abs() > clip).float().mean()),
                "approx_kl": float(((log_ratio.exp() - 1) - log_ratio).mean())}


def accumulate(totals: dict[str, float], values: dict[str, float]) -> None:
    """totals[key] += value for every key of `values` (a key seen for the first time starts at 0)."""
    for key, value in values.items():
        totals[key] = totals.get(key, 0.0) + value


def clipped_policy_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        clip: float) -> torch.Tensor:
    """-mean(min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A)) with ratio = exp(new - old)."""
    ratio = torch.exp(new_logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    return -torch.minimum(unclipped, clipped).mean()


class PPO(OnlineMethod):
    @staticmethod
    def required_heads(config: RunConfig) -> tuple[str, ...]:
        """The value head V(s) on the last prompt token (RL4VLM's)."""
        return ("value",)

    @torch.no_grad()
    def _score(self, prompts, responses):
        context, ppo = self.context, self.context.config.ppo
        out = context.policy.score(prompts, responses, cot_weight=ppo.cot_weight)
        return out.log_pf.float(), context.policy.head("value", out.hidden).float()

    def update(self, iteration: int) -> dict[str, float]:
        context, config, ppo = self.context, self.context.config, self.context.config.ppo
        context.model.eval()
        trajectories, collect_seconds = self.collect(iteration)
        started = time.perf_counter()
        steps, advantages, returns, old_logp = [], [], [], []
        for trajectory in trajectories:
            prompts = [s.prompt for s in trajectory.steps]
            responses = [s.response for s in trajectory.steps]
            bootstrap = 0.0
            if not trajectory.terminated:
                prompts.append(trajectory.final_prompt)
                responses.append("")
            logp, values = self._score(prompts, responses)
            if not trajectory.terminated:
                bootstrap, logp, values = float(values[-1]), logp[:-1], values[:-1]
            rewards = torch.tensor([s.reward for s in trajectory.steps], dtype=values.dtype)
            adv, ret = generalized_advantages(rewards, values, bootstrap, ppo.gamma, ppo.gae_lambda)
            steps.extend(trajectory.steps)
            advantages.append(adv)
            returns.append(ret)
            old_logp.append(logp)
        advantages, returns, old_logp = torch.cat(advantages), torch.cat(returns), torch.cat(old_logp)
        if ppo.normalize_advantages and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        losses = self._optimize(iteration, steps, advantages, returns, old_logp)
        metrics = {**rollout_metrics(trajectories), **losses, "seconds_collect": collect_seconds,
                   "seconds_score_update": time.perf_counter() - started}
        if (iteration + 1) % config.logging.sample_every == 0:
            context.logger.samples(trajectories, iteration + 1)
        return metrics

    def _optimize(self, iteration, steps, advantages, returns, old_logp) -> dict[str, float]:
        context, ppo = self.context, self.context.config.ppo
        seed = stream_seed(Stream.PPO_MINIBATCH, context.config.seed, context.accelerator.process_index, iteration)
        totals = {"loss": 0.0, "policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0}
        count = 0
        for index, last in minibatch_schedule(context, len(steps), ppo.minibatch_size, ppo.epochs, seed):
            prompts = [steps[i].prompt for i in index]
            responses = [steps[i].response for i in index]
            anchor = self.anchor.backward(iteration, count)
            with sync_context(context, True):
                out = context.model(context.policy.prepare_batch(prompts, responses), cot_weight=ppo.cot_weight)
                new_logp = out.log_pf.float()
                values = context.policy.head("value", out.hidden).float()
                policy_loss = clipped_policy_loss(new_logp, old_logp[index], advantages[index], ppo.clip)
                value_loss = torch.nn.functional.mse_loss(values, returns[index])
                loss = policy_loss + ppo.value_coef * value_loss
                finite = backward(context, loss, 1.0)
            context.optimizer_step(finite, schedule=last)
            accumulate(totals, {"loss": float(loss.detach()), "policy_loss": float(policy_loss.detach()),
                                "value_loss": float(value_loss.detach()),
                                **ratio_statistics(new_logp, old_logp[index], ppo.clip), **anchor})
            count += 1
        return {key: value / count for key, value in totals.items()}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state  # rollouts are regenerated; nothing carries over between updates
