"""Run under `accelerate launch` with two processes: train a few steps, then record what each rank holds.

Writes <output_dir>/rank<r>.json with a digest of every trainable parameter (whole, gathered where FSDP shards
it), the rank's own env-step count, the world size and how accelerate distributed the run, so the tests can check
that the ranks stayed identical and that metrics came from both.

The Accelerator is the trainer's own (`accelerator_kwargs`). One thing is added for fsdp.yaml on CPU: accelerate
1.15 turns `ACCELERATE_USE_FSDP` into FSDP only on accelerator devices (its AcceleratorState checks MULTI_GPU, NPU,
XPU, ...; MULTI_CPU is not among them) and otherwise silently runs DDP. torch's FSDP2 itself runs over gloo on CPU,
so here the gate is opened by hand (the distributed type set to FSDP, with the plugin accelerate builds from the
launch config's environment and its mixed precision, as AcceleratorState would set them): everything after that
(accelerate's FSDP2 prepare with the config's wrap policy, torch's fully_shard, the trainer) is the real code.
"""
import hashlib
import json
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from gflowvlm.config import load_config
from gflowvlm.trainer import Trainer, accelerator_kwargs

torch.set_num_threads(1)
config = load_config(None, sys.argv[1:])
accelerator = Accelerator(**accelerator_kwargs(config))
if os.environ.get("ACCELERATE_USE_FSDP") == "true" and accelerator.distributed_type == DistributedType.MULTI_CPU:
    # in PartialState's shared state too: every AcceleratorState() (set_seed makes one) copies it over its own
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        accelerator.state.fsdp_plugin.set_mixed_precision(accelerator.mixed_precision)
trainer = Trainer(config, accelerator=accelerator)


def _digest(tensor):
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def digest_trainable(local=False):
    """Digests of the trainable parameters: whole (a collective under FSDP), or this rank's own slices."""
    out = {}
    for name, p in trainer.policy.named_parameters():
        if p.requires_grad:
            sharded = isinstance(p, DTensor)
            out[name] = _digest(p.to_local() if local and sharded else p.full_tensor() if sharded else p)
    return out


def local_numel():
    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in trainer.policy.parameters())


initial = digest_trainable()
local_env_steps = []
original_update = trainer.algorithm.update


def counting_update(iteration):
    metrics = original_update(iteration)
    local_env_steps.append(metrics["env_steps_this_iteration"])
    return metrics


record = {"rank": accelerator.process_index, "world": accelerator.num_processes,
          "distributed_type": str(accelerator.distributed_type).split(".")[-1],
          "mixed_precision": accelerator.mixed_precision,
          "launch_mixed_precision": os.environ.get("ACCELERATE_MIXED_PRECISION"),
          "fsdp_units": sorted({type(m).__name__ for m in trainer.model.modules() if isinstance(m, FSDPModule)}),
          "numel": sum(p.numel() for p in trainer.policy.parameters()), "local_numel": local_numel(),
          "initial_params": initial}
original_end_training = accelerator.end_training


def end_training():
    # What the ranks hold after the last step, gathered while the process group is still up (end_training ends it).
    record["params"] = digest_trainable()
    record["local_params"] = digest_trainable(local=True)
    original_end_training()


trainer.algorithm.update = counting_update
accelerator.end_training = end_training
trainer.train()
record.update(local_env_steps=sum(local_env_steps), total_env_steps=trainer.env_steps,
              task_seeds=trainer.algorithm.collector.task_seeds(0))
with open(f"{config.output_dir}/rank{record['rank']}.json", "w") as handle:
    json.dump(record, handle)
