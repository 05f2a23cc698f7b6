"""Training algorithms: one module each, holding the whole update (collect, score, loss, backward, step).

    gflownet.py   tb, vartb, subtb, db (the update and the loss assembly; the math is in objectives.py / flows.py)
    ppo.py        PPO (RL4VLM's)            grpo.py   GRPO / RLOO            sft.py   supervised fine-tuning
    common.py     what they share (generation, safe backward, rollout statistics, minibatches, the SFT anchor)
    reference.py  the run's starting weights (GRPO's KL, the GFlowNet prior)

An algorithm is a class with
    required_heads(config) -> tuple[str, ...]   (static) the scalar heads the policy is built with, asked before
                                                 the policy exists (DDP needs every trainable parameter to get a
                                                 gradient each step, so an algorithm builds only the heads it trains)
    __init__(context: AlgorithmContext)          built once, after accelerate's prepare and before a resume
    update(iteration) -> metrics                 one trainer iteration, ending with `context.optimizer_step`
    state_dict() / load_state_dict(state)        what it keeps between iterations (checkpointed per rank)
It sees the run only through its AlgorithmContext, never the Trainer; the loop, optimizer, schedule, metrics and
checkpoints are trainer.py's, the one place every algorithm shares. `algorithm_class(name)` finds the class.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: importing gflowvlm.algorithms stays cheap
    import torch
    from accelerate import Accelerator

    from gflowvlm.config import RunConfig
    from gflowvlm.policy import VLMPolicy
    from gflowvlm.run_logger import RunLogger


@dataclass(frozen=True)
class AlgorithmContext:
    """What an algorithm may use of the run (the Trainer builds it after accelerate's prepare).

    config:       the run's validated RunConfig
    policy:       the UNWRAPPED VLMPolicy: generate, prepare_batch, head(name, hidden), parameter_groups,
                  count_tokens, and forwards that need no gradient synchronisation (scoring under no_grad)
    model:        the same policy as accelerate prepared it (DDP / FSDP wrapper, or the policy itself on one
                  process): every forward whose graph is backpropagated goes through it, since only the prepared
                  module's forward takes part in DDP's gradient synchronisation (and in FSDP's gathering)
    accelerator:  backward, no_sync, process_index / num_processes, gather / reduce
    logger:       the RunLogger (`samples(trajectories, iteration)` writes readable trajectories)
    optimizer_step(loss_is_finite: bool, schedule: bool = True) -> bool:
                  Trainer.optimizer_step: clip, step, zero the gradients and (schedule=True) move the learning-rate
                  schedule; a non-finite loss on any rank skips the step on every rank and returns False
    """
    config: RunConfig
    policy: VLMPolicy
    model: torch.nn.Module
    accelerator: Accelerator
    logger: RunLogger
    optimizer_step: Callable[..., bool]


def algorithm_class(name: str) -> Any:
    """The class that trains config.algorithm `name` (imported here, so a PPO run never imports the GFlowNet code)."""
    if name == "ppo":
        from gflowvlm.algorithms.ppo import PPO

        return PPO
    if name == "grpo":
        from gflowvlm.algorithms.grpo import GRPO

        return GRPO
    if name == "sft":
        from gflowvlm.algorithms.sft import SFT

        return SFT
    if name in ("tb", "vartb", "subtb", "db"):
        from gflowvlm.algorithms.gflownet import GFlowNet

        return GFlowNet
    raise ValueError(f"unknown algorithm {name!r}")
