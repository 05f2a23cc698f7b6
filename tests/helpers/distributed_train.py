"""Run under `accelerate launch` with two processes: train a few steps, then record what each rank holds.

Writes <output_dir>/rank<r>.json with a digest of every trainable parameter, the rank's own env-step count and
the world size, so the test can check that DDP kept the ranks identical and that metrics came from both.
"""
import hashlib
import json
import sys

import torch

from gflowvlm.config import load_config
from gflowvlm.trainer import Trainer

torch.set_num_threads(1)
config = load_config(None, sys.argv[1:])
trainer = Trainer(config)


def digest_trainable():
    return {name: hashlib.sha256(p.detach().cpu().numpy().tobytes()).hexdigest()
            for name, p in trainer.policy.named_parameters() if p.requires_grad}


initial = digest_trainable()
local_env_steps = []
original_update = trainer.algorithm.update


def counting_update(iteration):
    metrics = original_update(iteration)
    local_env_steps.append(metrics["env_steps_this_step"])
    return metrics


trainer.algorithm.update = counting_update
trainer.train()
record = {"rank": trainer.accelerator.process_index, "world": trainer.accelerator.num_processes,
          "local_env_steps": sum(local_env_steps), "total_env_steps": trainer.env_steps, "params": digest_trainable(), "initial_params": initial,
          "task_seeds": trainer.algorithm.collector.task_seeds(0)}
with open(f"{config.output_dir}/rank{record['rank']}.json", "w") as handle:
    json.dump(record, handle)
