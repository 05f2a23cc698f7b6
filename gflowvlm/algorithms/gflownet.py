"""GFlowNet fine-tuning (TB, Var-TB, SubTB(lambda), DB; flows from a head, [DONE] or forward-looking): the update
and the loss assembly. The objectives' math is in gflowvlm/objectives.py, the state flows' in gflowvlm/flows.py.

One update (`GFlowNet.update`), for each of optim.grad_accum collection rounds:
    collect on-policy trajectories (collector.py, sampling with policy.generate)
    -> add the oracle's trajectory for failed tasks (the paper's expert injection) -> keep the best in the replay
       buffer and mix replayed ones in (replay_buffer.py)
    -> cut the batch into chunks of whole task groups (`chunk_by_group`, about optim.batch_size steps each)
    -> per chunk, `gflownet_loss`: score every step under the CURRENT policy in ONE forward (`score_rows`), then the
       objective over per-trajectory tensors -> backward (gradients accumulate over chunks and rounds)
then ONE optimizer step (`context.optimizer_step`: Trainer.optimizer_step).

The prepared model's forward is the only call that builds the graph (it is the call DDP synchronises), so all steps
of the trajectories in one chunk go through one forward.
"""
from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence

import torch

from gflowvlm import flows, objectives, prior
from gflowvlm.algorithms import AlgorithmContext
from gflowvlm.algorithms.common import OnlineMethod, backward, rollout_metrics, sync_context
from gflowvlm.algorithms.reference import StartingWeights, check_whole_parameters
from gflowvlm.config import RunConfig
from gflowvlm.model.scoring import ScoreOutput
from gflowvlm.replay_buffer import ReplayBuffer
from gflowvlm.seeding import Stream, stream_seed
from gflowvlm.trajectory import Trajectory, pad_per_step, step_mask


class GFlowNet(OnlineMethod):
    @staticmethod
    def required_heads(config: RunConfig) -> tuple[str, ...]:
        """TB learns log Z; SubTB and DB learn state flows with a head unless they read them from [DONE]."""
        if config.algorithm == "tb":
            return ("log_z",)
        if config.algorithm in ("subtb", "db") and config.objective.flow in ("head", "forward_looking"):
            return ("flow",)
        return ()

    def __init__(self, context: AlgorithmContext):
        super().__init__(context)
        config = context.config
        self.replay = ReplayBuffer(config.collect.replay_size, config.collect.replay_tasks)
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
            round_index = iteration * config.optim.grad_accum + micro
            on_policy, collect_seconds = self.collect(round_index)
            started = time.perf_counter()
            batch = on_policy + self._off_policy(on_policy, round_index)  # the expert's episodes count as collection
            seconds["collect"] += collect_seconds + time.perf_counter() - started
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
                scale = 1.0 if key.endswith("_this_iteration") else 1.0 / config.optim.grad_accum
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


# ----- from trajectories to the loss ------------------------------------------------------------------------------
def chunk_by_group(trajectories: Sequence[Trajectory], max_steps: int) -> list[list[Trajectory]]:
    """Split into chunks of whole task groups (Var-TB compares a task's samples) of about `max_steps` steps."""
    groups: dict[tuple[str, int, int], list[Trajectory]] = {}
    for trajectory in trajectories:
        groups.setdefault((trajectory.env_id, trajectory.task_seed, trajectory.group), []).append(trajectory)
    chunks: list[list[Trajectory]] = []
    current: list[Trajectory] = []
    current_steps = 0
    for members in groups.values():
        steps = sum(max(1, t.length) for t in members)
        if current and current_steps + steps > max_steps:
            chunks.append(current)
            current, current_steps = [], 0
        current.extend(members)
        current_steps += steps
    if current:
        chunks.append(current)
    return chunks


def needs_final_state(config: RunConfig, trajectory: Trajectory) -> bool:
    """Whether the last state z_n is scored too: the paper's [DONE] flows read log P([DONE] | z_n) there (every
    trajectory); forward-looking flows evaluate the head there when the trajectory was cut short."""
    if config.algorithm not in ("subtb", "db"):
        return False
    flow = config.objective.flow
    return flow == "done" or (flow == "forward_looking" and not trajectory.terminated)


@dataclasses.dataclass(frozen=True)
class ScoredRows:
    """The trajectories of one chunk, scored in one forward: one row per step, then one per scored final state.

    out:              the rows' scores (log P_F and log P([DONE]) tilted by the prior when objective.prior_weight > 0)
    raw_log_pf:       the rows' untilted log P_F
    reference_log_pf: the rows' log P_F under the starting weights (None without the prior)
    index:            [B, T] the row of step t of trajectory b (0 past its end); mask: [B, T] its real steps
    final_rows:       {b: row} for the trajectories whose final state z_n has a row (needs_final_state)
    trajectories:     the B trajectories
    """
    out: ScoreOutput
    raw_log_pf: torch.Tensor
    reference_log_pf: torch.Tensor | None
    index: torch.Tensor
    mask: torch.Tensor
    final_rows: dict[int, int]
    trajectories: Sequence[Trajectory]

    def per_step(self, row_values: torch.Tensor) -> torch.Tensor:
        """[B, T] float32 values of the steps' rows (0 past each trajectory's end)."""
        zero = torch.zeros((), dtype=torch.float32, device=self.index.device)
        return torch.where(self.mask, row_values.float()[self.index], zero)


def score_rows(model, policy, trajectories: Sequence[Trajectory], config: RunConfig,
               reference: StartingWeights | None = None) -> ScoredRows:
    """Every step of `trajectories` (and the final states needs_final_state names) through ONE forward of `model`,
    and, with objective.prior_weight > 0, through one more without a gradient under `reference`."""
    objective = config.objective
    prompts, responses, rows = [], [], []
    for trajectory in trajectories:
        rows.append(list(range(len(prompts), len(prompts) + trajectory.length)))
        prompts.extend(step.prompt for step in trajectory.steps)
        responses.extend(step.response for step in trajectory.steps)
    final_rows = {}
    for b, trajectory in enumerate(trajectories):
        if needs_final_state(config, trajectory):
            final_rows[b] = len(prompts)
            prompts.append(trajectory.final_prompt)
            responses.append("")
    batch = policy.prepare_batch(prompts, responses)
    reference_out = None
    if objective.prior_weight > 0:
        if reference is None:
            raise ValueError("objective.prior_weight > 0 needs the run's starting weights (reference=)")
        with reference.swapped_in():  # no gradient; the same forward (autocast, DDP) as the policy's below
            reference_out = model(batch, cot_weight=objective.cot_weight)
    out = model(batch, cot_weight=objective.cot_weight)
    raw_log_pf = out.log_pf
    if reference_out is not None:
        out = dataclasses.replace(
            out, log_pf=prior.tilt(out.log_pf.float(), reference_out.log_pf.float(), objective.prior_weight),
            done_logp=prior.tilt(out.done_logp.float(), reference_out.done_logp.float(), objective.prior_weight))

    lengths = [t.length for t in trajectories]
    width = max(lengths)
    mask = step_mask(lengths, width).to(out.log_pf.device)
    index = torch.zeros((len(trajectories), width), dtype=torch.long)
    for b, row in enumerate(rows):
        index[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    index = index.to(out.log_pf.device)
    return ScoredRows(out=out, raw_log_pf=raw_log_pf,
                      reference_log_pf=None if reference_out is None else reference_out.log_pf,
                      index=index, mask=mask, final_rows=final_rows, trajectories=trajectories)


def gflownet_loss(model, policy, trajectories: Sequence[Trajectory], config: RunConfig,
                  reference: StartingWeights | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective's loss over `trajectories` (mean over trajectories) and statistics for logging.

    `model` and `policy` are one policy seen twice (AlgorithmContext's model and policy): the forward goes through
    the accelerate-prepared `model`, since only its forward builds a graph DDP synchronises; the heads (log Z, flow)
    and prepare_batch are the unwrapped `policy`'s. They, the config and the reference are all the loss reads,
    so it takes them rather than the whole context (which also holds the optimizer step): a test or a benchmark
    calls it on a Trainer's pieces, with any config. `reference` (algorithms.reference.StartingWeights) is needed
    when objective.prior_weight > 0: every row is scored under it too, without a gradient, and the scores are tilted
    by the prior (gflowvlm/prior.py).
    """
    objective = config.objective
    scored = score_rows(model, policy, trajectories, config, reference)
    out, mask, index = scored.out, scored.mask, scored.index
    # Losses in float32 even under bf16 autocast: squared log-ratios of sums over many tokens lose too much in bf16.
    log_pf = scored.per_step(out.log_pf)
    lengths = [t.length for t in trajectories]
    state_log_reward = flows.shape_log_reward(
        pad_per_step([t.state_log_rewards() for t in trajectories], max(lengths) + 1).to(out.log_pf.device),
        beta=objective.reward_beta, min_log_reward=objective.min_log_reward)
    n = torch.tensor(lengths, device=out.log_pf.device)
    log_reward = state_log_reward.gather(1, n[:, None]).squeeze(1)

    stats: dict[str, float] = {
        "log_pf": float(scored.per_step(scored.raw_log_pf).sum(1).mean().detach()),
        "action_logp": float(scored.per_step(out.action_logp).sum(1).mean().detach()),
        "cot_logp": float(scored.per_step(out.cot_logp).sum(1).mean().detach()),
        "log_reward": float(log_reward.mean()),
    }
    if scored.reference_log_pf is not None:  # sum_t log P_F - log P_ref of a trajectory: a sampled KL estimate
        stats["log_ratio_to_start"] = float(scored.per_step(
            scored.raw_log_pf.float() - scored.reference_log_pf.float()).sum(1).mean().detach())
    algorithm = config.algorithm
    if algorithm == "tb":
        log_z = policy.head("log_z", out.hidden[index[:, 0]]).to(log_pf.dtype)
        loss = objectives.trajectory_balance(log_pf, log_reward, log_z, mask)
        stats["log_z"] = float(log_z.mean().detach())
    elif algorithm == "vartb":
        keys = {}
        group = torch.tensor([keys.setdefault((t.env_id, t.task_seed), len(keys)) for t in trajectories],
                             device=log_pf.device)
        loss = objectives.log_partition_variance(log_pf, log_reward, mask, group)
        stats["log_z"] = float((log_reward - log_pf.sum(1)).mean().detach())  # the zeta estimate of log Z
    else:
        log_flow = _log_flow(scored, policy, objective.flow, state_log_reward=state_log_reward,
                             log_reward=log_reward)
        stats["log_z"] = float(log_flow[:, 0].mean().detach())
        if algorithm == "subtb":
            loss = objectives.subtrajectory_balance(log_pf, log_flow, mask, objective.lam)
        else:
            loss = objectives.detailed_balance(log_pf, log_flow, mask)
    return loss, stats


def _log_flow(scored: ScoredRows, policy, flow: str, *, state_log_reward: torch.Tensor,
              log_reward: torch.Tensor) -> torch.Tensor:
    """log F(s_0..s_n) [B, T+1] of objective.flow `flow` for SubTB / DB, from the scored rows and the shaped log
    rewards of every state ([B, T+1]) and of each trajectory's last one ([B])."""
    out, index, mask = scored.out, scored.index, scored.mask
    if flow in ("done", "done_pinned"):
        done_logp = torch.where(mask, out.done_logp[index], torch.zeros_like(out.done_logp[index]))
        done_logp = torch.nn.functional.pad(done_logp.to(state_log_reward.dtype), (0, 1))
        if flow == "done":  # the paper's form: log P([DONE] | z_n) of the final state's own scored row
            done_logp = _put_final(done_logp, out.done_logp.to(done_logp.dtype), scored)
        return flows.log_flow_from_done(state_log_reward, done_logp, mask, pin_end=flow == "done_pinned")
    head = policy.head("flow", out.hidden).to(state_log_reward.dtype)  # one value per scored row
    per_step = torch.where(mask, head[index], torch.zeros_like(head[index]))
    if flow == "head":
        return flows.log_flow_from_head(per_step, log_reward, mask)
    # forward-looking: log F~ at s_0..s_{n-1} from the steps, at s_n from the extra final-state row if any
    tilde = _put_final(torch.nn.functional.pad(per_step, (0, 1)), head, scored)
    terminal = torch.tensor([t.terminated for t in scored.trajectories], dtype=torch.bool, device=mask.device)
    return flows.log_flow_forward_looking(tilde, state_log_reward, mask, terminal)


def _put_final(per_state: torch.Tensor, row_values: torch.Tensor, scored: ScoredRows) -> torch.Tensor:
    """per_state [B, T+1] with position (b, n_b) set to row_values[final_rows[b]] for the trajectories whose final
    state was scored; out of place, so the gradient reaches the scored rows."""
    final_rows, device = scored.final_rows, scored.mask.device
    if not final_rows:
        return per_state
    rows_b = torch.tensor(list(final_rows), device=device)
    rows_t = torch.tensor([scored.trajectories[b].length for b in final_rows], device=device)
    values = row_values[torch.tensor(list(final_rows.values()), device=device)]
    return per_state.index_put((rows_b, rows_t), values)
