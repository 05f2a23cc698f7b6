"""From collected trajectories to a GFlowNet loss: score every step under the current policy, then apply the
objective the config names (tb, vartb, subtb, db) with the flow parameterisation it names (head, done,
forward_looking).

The policy's `forward` is the only call that builds the graph (it is the call DDP synchronises), so all steps of
the trajectories in one chunk go through ONE forward.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from gflowvlm import flows, objectives, prior
from gflowvlm.config import RunConfig
from gflowvlm.trajectory import Trajectory, pad_per_step, step_mask


def needs_final_state(config: RunConfig, trajectory: Trajectory) -> bool:
    """Whether the last state z_n is scored too: the paper's [DONE] flows read log P([DONE] | z_n) there (every
    trajectory); forward-looking flows evaluate the head there when the trajectory was cut short."""
    if config.algorithm not in ("subtb", "db"):
        return False
    flow = config.objective.flow
    return flow == "done" or (flow == "forward_looking" and not trajectory.terminated)


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


def gflownet_loss(model, policy, trajectories: Sequence[Trajectory], config: RunConfig, reference=None
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective's loss over `trajectories` (mean over trajectories) and statistics for logging.

    `reference` (algorithms.reference.StartingWeights) is needed when objective.prior_weight > 0: every row is
    scored under it too, without a gradient, and the scores are tilted by the prior (gflowvlm/prior.py)."""
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
    # Losses in float32 even under bf16 autocast: squared log-ratios of sums over many tokens lose too much in bf16.
    zero = torch.zeros((), dtype=torch.float32, device=out.log_pf.device)
    log_pf = torch.where(mask, out.log_pf.float()[index], zero)
    state_log_reward = flows.shape_log_reward(
        pad_per_step([t.state_log_rewards() for t in trajectories], width + 1).to(out.log_pf.device),
        beta=objective.reward_beta, min_log_reward=objective.min_log_reward)
    n = torch.tensor(lengths, device=out.log_pf.device)
    log_reward = state_log_reward.gather(1, n[:, None]).squeeze(1)

    stats: dict[str, float] = {
        "log_pf": float(torch.where(mask, raw_log_pf.float()[index], zero).sum(1).mean().detach()),
        "action_logp": float(torch.where(mask, out.action_logp.float()[index], zero).sum(1).mean().detach()),
        "cot_logp": float(torch.where(mask, out.cot_logp.float()[index], zero).sum(1).mean().detach()),
        "log_reward": float(log_reward.mean()),
    }
    if reference_out is not None:  # sum_t log P_F - log P_ref of a trajectory: a sampled KL estimate to the start
        stats["log_ratio_to_start"] = float(
            torch.where(mask, (raw_log_pf.float() - reference_out.log_pf.float())[index], zero).sum(1).mean().detach())
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
        log_flow = _log_flow(out, policy, index, mask, state_log_reward, log_reward, trajectories, final_rows,
                             objective.flow)
        stats["log_z"] = float(log_flow[:, 0].mean().detach())
        if algorithm == "subtb":
            loss = objectives.subtrajectory_balance(log_pf, log_flow, mask, objective.lam)
        else:
            loss = objectives.detailed_balance(log_pf, log_flow, mask)
    return loss, stats


def _log_flow(out, policy, index, mask, state_log_reward, log_reward, trajectories, final_rows, flow):
    if flow in ("done", "done_pinned"):
        done_logp = torch.where(mask, out.done_logp[index], torch.zeros_like(out.done_logp[index]))
        done_logp = torch.nn.functional.pad(done_logp.to(state_log_reward.dtype), (0, 1))
        if flow == "done":  # the paper's form: log P([DONE] | z_n) of the final state's own scored row
            done_logp = _put_final(done_logp, out.done_logp.to(done_logp.dtype), trajectories, final_rows, mask)
        return flows.log_flow_from_done(state_log_reward, done_logp, mask, pin_end=flow == "done_pinned")
    head = policy.head("flow", out.hidden).to(state_log_reward.dtype)  # one value per scored row
    per_step = torch.where(mask, head[index], torch.zeros_like(head[index]))
    if flow == "head":
        return flows.log_flow_from_head(per_step, log_reward, mask)
    # forward-looking: log F~ at s_0..s_{n-1} from the steps, at s_n from the extra final-state row if any
    tilde = _put_final(torch.nn.functional.pad(per_step, (0, 1)), head, trajectories, final_rows, mask)
    terminal = torch.tensor([t.terminated for t in trajectories], dtype=torch.bool, device=mask.device)
    return flows.log_flow_forward_looking(tilde, state_log_reward, mask, terminal)


def _put_final(per_state: torch.Tensor, row_values: torch.Tensor, trajectories, final_rows: dict[int, int],
               mask: torch.Tensor) -> torch.Tensor:
    """per_state [B, T+1] with position (b, n_b) set to row_values[final_rows[b]] for the trajectories whose final
    state was scored; out of place, so the gradient reaches the scored rows."""
    if not final_rows:
        return per_state
    rows_b = torch.tensor(list(final_rows), device=mask.device)
    rows_t = torch.tensor([trajectories[b].length for b in final_rows], device=mask.device)
    values = row_values[torch.tensor(list(final_rows.values()), device=mask.device)]
    return per_state.index_put((rows_b, rows_t), values)
