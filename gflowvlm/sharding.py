"""FSDP2 (`configs/accelerate/fsdp.yaml`, `fsdp_version: 2`): what the trainer does differently when every rank
holds only a slice of each parameter.

Under FSDP2 a parameter is a DTensor sharded over the ranks; the prepared module's forward all-gathers the slices it
needs and frees them again. Three things the trainer does outside that forward need whole parameters:
- sampling: `policy.generate` runs the Hugging Face model's `generate`, not the policy's forward, so it is
  registered as an FSDP forward method (`enable_generation`): the same all-gather then runs around it;
- saving (checkpoints, `final/`): the main process writes the trainable tensors and the optimizer state, so every
  rank takes part in gathering them whole (`whole_policy_state`, `gather_state`): the files hold whole tensors, the
  same files as a DDP or single-process run;
- resuming: whole tensors from disk, of which each rank keeps its own slice (`shard_like`, `shard_optimizer_state`).
Without FSDP2 every function here returns its input or does nothing: the trainer has one code path.
Every function that gathers is a collective: all ranks call it, in the same order.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def enable_generation(model: torch.nn.Module) -> None:
    """Let `model.generate` (the policy's sampling) run with gathered parameters, like its forward."""
    if is_sharded(model):
        register_fsdp_forward_method(model, "generate")


def gather_state(tree: Any, keep: bool = True) -> Any:
    """`tree` (a state dict) with every DTensor replaced by the whole tensor, on the CPU (collective). `keep=False`
    (ranks that write nothing) takes part in the gathering but drops the whole tensors (None)."""
    if isinstance(tree, DTensor):
        whole = tree.full_tensor()
        return whole.cpu() if keep else None
    if isinstance(tree, dict):
        return {key: gather_state(value, keep) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(gather_state(value, keep) for value in tree)
    return tree


def whole_policy_state(policy: torch.nn.Module, keep: bool = True) -> dict[str, torch.Tensor] | None:
    """Under FSDP2, the whole tensors `policy.save_pretrained` writes (collective); None otherwise: the policy's
    own tensors are whole. (`state_dict()` of an FSDP2 module always holds the slices, so `save_pretrained`, which
    peft and transformers implement with it, must be handed whole tensors.)"""
    if not is_sharded(policy):
        return None
    return gather_state(policy.state_to_save(), keep)


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's slice of the whole tensor `value`, laid out as `like`; `value` itself unless `like` is sharded.
    Every rank read the same file, so each cuts its own slice (no communication)."""
    if not isinstance(like, DTensor):
        return value
    return distribute_tensor(value.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def shard_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A whole-tensor optimizer state dict (as saved) with each moment cut to its parameter's slice."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(isinstance(p, DTensor) for p in params):
        return state
    sharded = {}
    for index, entry in state["state"].items():
        param = params[index]
        sharded[index] = {key: shard_like(value, param)
                          if isinstance(value, torch.Tensor) and value.shape == param.shape and value.dim() > 0
                          else value for key, value in entry.items()}
    return {**state, "state": sharded}
