"""The run's starting weights as a reference: GRPO's KL term and the GFlowNet prior (objective.prior_weight) score
responses under them.

"Starting" means the weights this run started from (model.init_from's SFT adapter, or freshly initialised adapters),
not the base model, so peft's disable_adapter() would be wrong. The copy is taken when the algorithm is built,
before `Trainer.resume` loads a checkpoint, so a resumed run re-derives exactly the same reference from the config's
model (init_from's file, or adapters made under the run's seed); nothing is stored in checkpoints. It costs one more
set of trainable tensors on the device (the adapters; the whole model with model.adapter=full).
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch

from gflowvlm.errors import UserError


class StartingWeights:
    """A copy of trainable tensors as they were when made; `swapped_in()` puts the copy in their place (no gradient)
    and the current values back afterwards. The tensors are exchanged, not copied: no third set in memory."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter]):
        self.parameters = list(parameters)
        self.tensors = [p.detach().clone() for p in self.parameters]

    @contextmanager
    def swapped_in(self):
        with torch.no_grad():
            self._exchange()
            try:
                yield
            finally:
                self._exchange()

    def _exchange(self) -> None:
        for i, parameter in enumerate(self.parameters):
            parameter.data, self.tensors[i] = self.tensors[i], parameter.data


def check_whole_parameters(accelerator, option: str) -> None:
    """The reference swaps whole tensors: a rank that holds only a shard of each (FSDP, ZeRO-3) cannot."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if kind == DistributedType.FSDP or (kind == DistributedType.DEEPSPEED and plugin is not None
                                        and plugin.zero_stage == 3):
        raise UserError(f"{option} > 0 needs every rank to hold whole parameters (DDP or ZeRO-1/2); under FSDP "
                        f"or ZeRO-3 set {option}=0")
