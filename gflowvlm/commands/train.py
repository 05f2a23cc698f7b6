"""`gflowvlm train --config FILE [key.sub=value ...]` (also under `accelerate launch -m gflowvlm train ...`)."""
from __future__ import annotations

from pathlib import Path

from gflowvlm.commands._parser import Parser
from gflowvlm.config import check_run_paths, load_config
from gflowvlm.errors import UserError


def main(argv: list[str]) -> int:
    parser = Parser(prog="gflowvlm train", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML run config (see configs/; `base: FILE` composes)")
    parser.add_argument("--resume", metavar="DIR", help="resume from this checkpoint directory")
    parser.add_argument("overrides", nargs="*", help="config overrides such as optim.lr=1e-5")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    # Everything the run reads or writes is checked here, before the model loads (minutes for a 7B model).
    check_run_paths(config)
    if args.resume and not Path(args.resume).is_dir():
        raise UserError(f"--resume: checkpoint directory not found: {args.resume}")
    from gflowvlm.trainer import Trainer  # deferred: torch/transformers import only once the config is valid

    trainer = Trainer(config, resume_from=args.resume)
    final = trainer.train()
    if trainer.accelerator.is_main_process:
        print(f"done: {trainer.step} steps, adapters in {final}, metrics in {config.output_dir}/metrics.jsonl")
    return 0
