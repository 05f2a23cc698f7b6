"""`gflowvlm train --config FILE [key.sub=value ...]` (also under `accelerate launch -m gflowvlm train ...`)."""
from __future__ import annotations

import argparse

from gflowvlm.config import load_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gflowvlm train", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML run config (see configs/)")
    parser.add_argument("--resume", metavar="DIR", help="resume from this checkpoint directory")
    parser.add_argument("overrides", nargs="*", help="config overrides such as optim.lr=1e-5")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    from gflowvlm.trainer import Trainer  # deferred: torch/transformers import only once the config is valid

    trainer = Trainer(config)
    if args.resume:
        trainer.resume(args.resume)
    final = trainer.train()
    if trainer.accelerator.is_main_process:
        print(f"done: {trainer.step} steps, adapters in {final}, metrics in {config.output_dir}/metrics.jsonl")
    return 0
