"""GFlowNet objectives as pure tensor functions (backward policy P_B = 1: generation forms a tree).

Shapes shared by every function (B trajectories, T = longest trajectory in transitions):

- `log_pf` [B, T]: forward log-probability of each transition (CoT weighting already applied);
- `mask` [B, T] bool, left-aligned: trajectory b has n_b = mask[b].sum() >= 1 transitions at 0..n_b-1;
- `log_flow` [B, T+1]: log F of the visited states s_0..s_{n_b}, with `log_flow[b, n_b] = log R(x_b)`;
- `log_reward` [B]: log R(x_b); `log_z` [B]: log Z (one per trajectory, e.g. a head conditioned on the task).

Each trajectory's loss is averaged over its own terms and the batch loss is the mean over trajectories.

Non-finite values: entries OUTSIDE a trajectory (`log_pf[b, t]` with t >= n_b, `log_flow[b, t]` with
t > n_b) may hold anything, inf and nan included: they are replaced with `torch.where` (never multiplied by
the mask, since 0 * nan = nan) so they reach neither the loss nor the gradient. A non-finite value INSIDE a
trajectory makes the loss non-finite, so the trainer can detect it and skip the step instead of training on
a silently corrupted number.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gflowvlm._shapes import shape_text as _shape

__all__ = [
    "trajectory_balance",
    "log_partition_variance",
    "subtrajectory_balance",
    "detailed_balance",
    "trajectory_lengths",
]


def trajectory_lengths(mask: Tensor) -> Tensor:
    """Validate a transition mask and return n_b = mask[b].sum() as an int64 tensor [B].

    The mask must be a 2-D bool tensor, left-aligned (True at 0..n_b-1 and False after), with at least one
    transition per trajectory: a wrong mask would otherwise give a plausible but wrong loss.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.dim() != 2 or mask.shape[0] == 0:
        raise ValueError(f"mask must have shape [B, T] with B >= 1, got {_shape(mask)}")
    lengths = mask.sum(dim=1)
    if bool((lengths < 1).any()):
        raise ValueError("every trajectory needs at least one transition: mask has a row with no True")
    steps = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask, steps[None, :] < lengths[:, None]):
        raise ValueError("mask must be left-aligned: True at positions 0..n_b-1 and False after, in every row")
    return lengths


def _check_log_pf(log_pf: Tensor, mask: Tensor) -> Tensor:
    if not isinstance(log_pf, Tensor) or not log_pf.is_floating_point():
        kind = getattr(log_pf, "dtype", type(log_pf).__name__)
        raise ValueError(f"log_pf must be a floating-point tensor, got {kind}")
    if log_pf.dim() != 2:
        raise ValueError(f"log_pf must have shape [B, T], got {_shape(log_pf)}")
    if not isinstance(mask, Tensor) or mask.shape != log_pf.shape:
        raise ValueError(f"mask must have the shape of log_pf {_shape(log_pf)}, got "
                         f"{_shape(mask) if isinstance(mask, Tensor) else type(mask).__name__}")
    return trajectory_lengths(mask)


def _check_per_trajectory(name: str, value: Tensor, log_pf: Tensor) -> None:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {getattr(value, 'dtype', type(value).__name__)}")
    if value.shape != log_pf.shape[:1]:
        raise ValueError(f"{name} must have shape [B] = [{log_pf.shape[0]}] to match log_pf {_shape(log_pf)}, "
                         f"got {_shape(value)}")


def _check_log_flow(log_flow: Tensor, log_pf: Tensor) -> None:
    if not isinstance(log_flow, Tensor) or not log_flow.is_floating_point():
        raise ValueError(f"log_flow must be a floating-point tensor, got "
                         f"{getattr(log_flow, 'dtype', type(log_flow).__name__)}")
    batch, steps = log_pf.shape
    if log_flow.shape != (batch, steps + 1):
        raise ValueError(f"log_flow must have shape [B, T+1] = [{batch}, {steps + 1}] to match log_pf "
                         f"{_shape(log_pf)}, got {_shape(log_flow)}")


def _masked_log_pf(log_pf: Tensor, mask: Tensor) -> Tensor:
    """log_pf with the padding replaced by 0 (torch.where: nan/inf there must not leak into values or grads)."""
    return torch.where(mask, log_pf, torch.zeros_like(log_pf))


def _masked_log_flow(log_flow: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """log_flow with states after s_{n_b} replaced by 0, and the [B, T+1] mask of the visited states."""
    states = torch.arange(log_flow.shape[1], device=log_flow.device)
    visited = states[None, :] <= lengths[:, None]
    return torch.where(visited, log_flow, torch.zeros_like(log_flow)), visited


def trajectory_balance(log_pf: Tensor, log_reward: Tensor, log_z: Tensor, mask: Tensor) -> Tensor:
    """Trajectory balance: mean_b (log_z_b + sum_t log_pf[b, t] - log_reward_b)^2."""
    _check_log_pf(log_pf, mask)
    _check_per_trajectory("log_reward", log_reward, log_pf)
    _check_per_trajectory("log_z", log_z, log_pf)
    residual = log_z + _masked_log_pf(log_pf, mask).sum(dim=1) - log_reward
    return residual.square().mean()


def log_partition_variance(log_pf: Tensor, log_reward: Tensor, mask: Tensor, group: Tensor) -> Tensor:
    """Var-TB (no learned log Z): mean_b (zeta_b - mean of zeta over b's group)^2.

    zeta_b = log_reward_b - sum_t log_pf[b, t] is trajectory b's estimate of log Z; trajectories of the same
    task share a group id (any integers). A group of one trajectory contributes 0 but still counts in the
    batch mean over B.
    """
    _check_log_pf(log_pf, mask)
    _check_per_trajectory("log_reward", log_reward, log_pf)
    if not isinstance(group, Tensor) or group.is_floating_point() or group.dtype == torch.bool:
        raise ValueError(f"group must be an integer tensor, got {getattr(group, 'dtype', type(group).__name__)}")
    if group.shape != log_pf.shape[:1]:
        raise ValueError(f"group must have shape [B] = [{log_pf.shape[0]}] to match log_pf {_shape(log_pf)}, "
                         f"got {_shape(group)}")
    zeta = log_reward - _masked_log_pf(log_pf, mask).sum(dim=1)
    # Map arbitrary ids (task hashes, negatives) to 0..G-1, then sum per group in one index_add.
    group_ids, group_index = torch.unique(group, return_inverse=True)
    num_groups = group_ids.numel()
    group_sum = zeta.new_zeros(num_groups).index_add(0, group_index, zeta)
    group_size = zeta.new_zeros(num_groups).index_add(0, group_index, torch.ones_like(zeta))
    group_mean = group_sum[group_index] / group_size[group_index]
    return (zeta - group_mean).square().mean()


def _log_lambda(lam: float) -> float:
    try:
        value = float(lam)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"lam must be a positive finite number, got {lam!r}") from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"lam must be a positive finite number (use detailed_balance for lam -> 0), got {lam!r}")
    return math.log(value)


def subtrajectory_balance(log_pf: Tensor, log_flow: Tensor, mask: Tensor, lam: float) -> Tensor:
    """SubTB(lambda) (Madan et al. 2023), per trajectory with n = n_b transitions:

        sum_{0<=i<j<=n} lam^(j-i) (log_flow_i + sum_{k=i..j-1} log_pf_k - log_flow_j)^2 / sum_{0<=i<j<=n} lam^(j-i)

    All pairs at once: with C_t = sum_{k<t} log_pf_k (a cumulative sum) the residual of (i, j) is
    P_i - P_j where P_t = log_flow_t - C_t, so a [B, T+1, T+1] difference holds every sub-trajectory.
    The weights lam^(j-i) are normalised in log space (a softmax over each trajectory's valid pairs, which
    subtracts the largest log-weight first), so lam^64 for lam = 1e4 never overflows float32.
    lam -> 0 gives detailed_balance; lam -> inf gives (log_flow_0 + sum_t log_pf_t - log_flow_n)^2, i.e.
    trajectory_balance with log_z = log_flow[:, 0].
    """
    lengths = _check_log_pf(log_pf, mask)
    _check_log_flow(log_flow, log_pf)
    log_lam = _log_lambda(lam)
    flow, visited = _masked_log_flow(log_flow, lengths)
    cumulative = torch.nn.functional.pad(_masked_log_pf(log_pf, mask).cumsum(dim=1), (1, 0))
    potential = flow - cumulative
    residual = potential[:, :, None] - potential[:, None, :]  # [b, i, j]

    states = torch.arange(log_flow.shape[1], device=log_flow.device)
    span = states[None, :] - states[:, None]  # [i, j] -> j - i
    # j <= n_b together with i < j keeps exactly the pairs 0 <= i < j <= n_b.
    valid = (span > 0)[None, :, :] & visited[:, None, :]
    log_weight = (span.to(log_pf.dtype) * log_lam).expand_as(residual)
    log_weight = log_weight.masked_fill(~valid, -math.inf)
    weight = torch.softmax(log_weight.flatten(1), dim=1).view_as(log_weight)
    weighted = torch.where(valid, weight * residual.square(), torch.zeros_like(residual))
    return weighted.sum(dim=(1, 2)).mean()


def detailed_balance(log_pf: Tensor, log_flow: Tensor, mask: Tensor) -> Tensor:
    """Detailed balance: per trajectory mean over t < n_b of (log_flow_t + log_pf_t - log_flow_{t+1})^2."""
    lengths = _check_log_pf(log_pf, mask)
    _check_log_flow(log_flow, log_pf)
    flow, _ = _masked_log_flow(log_flow, lengths)
    residual = flow[:, :-1] + _masked_log_pf(log_pf, mask) - flow[:, 1:]
    squared = torch.where(mask, residual.square(), torch.zeros_like(residual))
    return (squared.sum(dim=1) / lengths.to(squared.dtype)).mean()
