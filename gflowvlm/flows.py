"""Building the state log-flows `log_flow` [B, T+1] that subtrajectory/detailed balance consume.

Three parameterisations, chosen by the trainer's config (see gflowvlm.objectives for the shapes):

- `log_flow_from_head`: a learned flow head on each visited state's hidden state;
- `log_flow_from_done`: GFlowVLM's [DONE] parameterisation, every state terminable,
  log F(z_t) = log R(z_t) - log P([DONE] | z_t), the last state included (the paper's form; `pin_end=True` sets
  the last state's flow to R(x) instead);
- `log_flow_forward_looking`: Pan et al.'s forward-looking flows, log F(s_t) = log F~(s_t) + log R(s_t),
  which train on truncated (incomplete) trajectories.

All three return 0 at states after s_{n_b} (the objectives ignore them) and build the result with
`torch.where`, so non-finite padding in the inputs never reaches the output or its gradient.
`shape_log_reward` applies the reward exponent and the floor that keeps log R finite.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gflowvlm._shapes import shape_text as _shape
from gflowvlm.objectives import trajectory_lengths

__all__ = [
    "DEFAULT_MIN_LOG_REWARD",
    "log_flow_from_head",
    "log_flow_from_done",
    "log_flow_forward_looking",
    "shape_log_reward",
]

# Floor of log R: R = 1e-10, the reward GFlowVLM gives a lost Blackjack hand (and the envs' own floor).
DEFAULT_MIN_LOG_REWARD = math.log(1e-10)


def _check(name: str, value: Tensor, allowed: list[tuple[int, ...]]) -> None:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {getattr(value, 'dtype', type(value).__name__)}")
    if tuple(value.shape) not in allowed:
        expected = " or ".join("[" + ", ".join(map(str, shape)) + "]" for shape in allowed)
        raise ValueError(f"{name} must have shape {expected} to match mask, got {_shape(value)}")


def _state_positions(mask: Tensor) -> tuple[Tensor, Tensor]:
    """(lengths [B], state index [1, T+1]) for a validated mask."""
    lengths = trajectory_lengths(mask)
    states = torch.arange(mask.shape[1] + 1, device=mask.device)[None, :]
    return lengths, states


def _assemble(before_end: Tensor, at_end: Tensor, lengths: Tensor, states: Tensor) -> Tensor:
    """[B, T+1]: `before_end` at states t < n_b, `at_end` [B] at t = n_b, 0 after."""
    at_end = at_end[:, None].expand_as(before_end)
    zeros = torch.zeros_like(before_end)
    ends = lengths[:, None]
    return torch.where(states < ends, before_end, torch.where(states == ends, at_end, zeros))


def _pad_one_state(values: Tensor) -> Tensor:
    """[B, T] -> [B, T+1] with a 0 appended: the value at s_T is never read for t < n_b <= T."""
    return torch.nn.functional.pad(values, (0, 1))


def log_flow_from_head(head_log_flow: Tensor, log_reward: Tensor, mask: Tensor) -> Tensor:
    """Learned state flows: log_flow[b, t] = head_log_flow[b, t] for t < n_b and log_flow[b, n_b] = log R(x_b).

    `head_log_flow` is the flow head's output at states s_0..s_{T-1} ([B, T]) or s_0..s_T ([B, T+1]; the
    extra state is not read); `log_reward` [B]; `mask` [B, T].
    """
    lengths, states = _state_positions(mask)
    batch, steps = mask.shape
    _check("head_log_flow", head_log_flow, [(batch, steps), (batch, steps + 1)])
    _check("log_reward", log_reward, [(batch,)])
    if head_log_flow.shape[1] == steps:
        head_log_flow = _pad_one_state(head_log_flow)
    return _assemble(head_log_flow, log_reward, lengths, states)


def log_flow_from_done(state_log_reward: Tensor, done_logp: Tensor, mask: Tensor, pin_end: bool = False) -> Tensor:
    """GFlowVLM's [DONE] flows: log F(z_t) = log R(z_t) - log P([DONE] | z_t), every state terminable.

    `state_log_reward` [B, T+1]: log R of each visited state z_0..z_{n_b} as if the episode ended there (the
    env's info["log_reward"]; at z_{n_b} it is log R(x)); `done_logp`: the policy's log-probability of [DONE] at
    each state.

    - pin_end=False (the paper's form, default): `done_logp` [B, T+1] covers z_0..z_{n_b}, the last state
      included, and log F(z_{n_b}) = log R(x) - log P([DONE] | z_{n_b}). The SubTB term of (i, n) is then exactly
      the paper's log R(z_i T) + sum log P_F + log P_F(T | z_n) - log R(z_n T) - log P_F(T | z_i), as in
      gfn-lm-tuning's token-level loss: the model is also taught to END at the states where episodes end.
    - pin_end=True: log F(z_{n_b}) = log R(x) (the flow of a terminal state is its reward, as in SubTB with an
      explicit terminal); `done_logp` [B, T] or [B, T+1] (the value at z_{n_b} is not read).
    """
    lengths, states = _state_positions(mask)
    batch, steps = mask.shape
    _check("state_log_reward", state_log_reward, [(batch, steps + 1)])
    _check("done_logp", done_logp, [(batch, steps), (batch, steps + 1)] if pin_end else [(batch, steps + 1)])
    if done_logp.shape[1] == steps:
        done_logp = _pad_one_state(done_logp)
    every_state = state_log_reward - done_logp
    if pin_end:
        at_end = state_log_reward.gather(1, lengths[:, None]).squeeze(1)
    else:
        at_end = every_state.gather(1, lengths[:, None]).squeeze(1)
    return _assemble(every_state, at_end, lengths, states)


def log_flow_forward_looking(head_log_flow_tilde: Tensor, state_log_reward: Tensor, mask: Tensor,
                             terminal: Tensor) -> Tensor:
    """Forward-looking flows (Pan et al. 2023): log F(s_t) = log F~(s_t) + log R(s_t), with F~ = 1 at a terminal.

    `head_log_flow_tilde` [B, T+1]: the head's log F~ at s_0..s_T; `state_log_reward` [B, T+1]: log R(s_t) of
    each visited state; `terminal` [B] bool: whether s_{n_b} ended the episode. At t = n_b the flow is
    log R(x) when terminal, and log F~(s_n) + log R(s_n) when the trajectory was truncated (s_n is an
    ordinary state, so the head must have been evaluated there). The balance residual of s_t -> s_{t+1} is
    log F~(s_t) + log P_F + log R(s_t) - log R(s_{t+1}) - log F~(s_{t+1}): each transition carries its own
    reward difference, which is why incomplete trajectories still give a correct training signal.
    """
    lengths, states = _state_positions(mask)
    batch, steps = mask.shape
    _check("head_log_flow_tilde", head_log_flow_tilde, [(batch, steps + 1)])
    _check("state_log_reward", state_log_reward, [(batch, steps + 1)])
    if not isinstance(terminal, Tensor) or terminal.dtype != torch.bool or terminal.shape != (batch,):
        raise ValueError(f"terminal must be a bool tensor of shape [{batch}], got "
                         f"{_shape(terminal) if isinstance(terminal, Tensor) else type(terminal).__name__}"
                         f"{' ' + str(terminal.dtype) if isinstance(terminal, Tensor) else ''}")
    index = lengths[:, None]
    last_log_reward = state_log_reward.gather(1, index).squeeze(1)
    last_tilde = head_log_flow_tilde.gather(1, index).squeeze(1)
    # torch.where, not terminal * last_tilde: the head's value at a terminal state is unused and may be anything.
    at_end = last_log_reward + torch.where(terminal, torch.zeros_like(last_tilde), last_tilde)
    return _assemble(head_log_flow_tilde + state_log_reward, at_end, lengths, states)


def shape_log_reward(log_reward: Tensor, beta: float = 1.0,
                     min_log_reward: float = DEFAULT_MIN_LOG_REWARD) -> Tensor:
    """Reward exponent and floor: beta * clamp(log_reward, min=min_log_reward), i.e. R^beta with R >= e^min.

    The floor turns log R = -inf (R = 0) into a finite number, since a GFlowNet loss on -inf is inf; a nan
    stays nan so the trainer still sees it. beta > 1 sharpens the target distribution, beta < 1 flattens it.
    """
    if not isinstance(log_reward, Tensor) or not log_reward.is_floating_point():
        raise ValueError(f"log_reward must be a floating-point tensor, got "
                         f"{getattr(log_reward, 'dtype', type(log_reward).__name__)}")
    if not math.isfinite(beta) or beta <= 0.0:
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    if not math.isfinite(min_log_reward):
        raise ValueError(f"min_log_reward must be a finite number, got {min_log_reward!r}")
    return beta * torch.clamp(log_reward, min=min_log_reward)
