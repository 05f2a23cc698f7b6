"""Which of the project's files one training iteration passes through, in the order it first enters them.

    PYTHONPATH=. python scripts/trace_update.py --algorithm subtb [key=value ...]

It builds a Trainer on a fresh tiny LLaVA (as tests/conftest.py does) with the tiny settings of
scripts/fingerprint_runs.py, then runs ONE `algorithm.update` (collection, scoring, loss, backward, optimizer step)
under `sys.setprofile` and prints every file of `gflowvlm/` and `envs/` a Python function of it was called in, with
the number of distinct functions, first-entered first. Files whose functions only build data records or delegate
(prompting, parsing, batching, generation, seeding) are marked "helper", and envs/ files "env" (the task the
algorithm plays, not its update), so that the update's own path reads apart; the split is this script's HELPERS
list and the envs/ prefix, stated here rather than decided by the tracer.

What it measures is what a reader following the calls would open: imports that run no function do not count, and a
file is counted once however often it is re-entered.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FAST = ["env.id=gflowvlm/NumberLine-v0", "env.image_size=64", "env.num_envs=4", "env.max_steps=3",
        "generation.max_new_tokens=20", "logging.progress=false", "logging.save_every=100", "optim.batch_size=64",
        "model.lora_r=4", "model.head_hidden=[32]", "prompt.max_history_steps=2"]
# Modules a reader opens only to see a record's fields or a delegated call's details, not the update's logic.
HELPERS = {"gflowvlm/trajectory.py", "gflowvlm/prompting.py", "gflowvlm/response_parser.py",
           "gflowvlm/model/batching.py", "gflowvlm/model/generation.py", "gflowvlm/seeding.py",
           "gflowvlm/replay_buffer.py", "gflowvlm/run_logger.py", "gflowvlm/model/families.py",
           "gflowvlm/model/tokenizer.py", "gflowvlm/sharding.py"}


def trace(update, iteration: int) -> list[tuple[str, int]]:
    """[(repo-relative file, distinct functions called in it)] in order of first entry, for one update call."""
    order: dict[str, set[str]] = {}

    def profile(frame, event, _arg):
        if event != "call":
            return
        path = Path(frame.f_code.co_filename)
        try:
            relative = path.resolve().relative_to(ROOT).as_posix()
        except ValueError:
            return
        if relative.startswith(("gflowvlm/", "envs/")):
            order.setdefault(relative, set()).add(frame.f_code.co_qualname)

    sys.setprofile(profile)
    try:
        update(iteration)
    finally:
        sys.setprofile(None)
    return [(name, len(functions)) for name, functions in order.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="subtb")
    parser.add_argument("overrides", nargs="*", help="further config overrides (key=value)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from gflowvlm.config import load_config
    from gflowvlm.model.corpus import build_corpus
    from gflowvlm.model.tiny_vlm import build_tiny_vlm, save_tiny_vlm
    from gflowvlm.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="trace-") as tmp:
        model, processor = build_tiny_vlm("llava", image_size=64, seed=0, corpus=build_corpus(episodes_per_env=5))
        save_tiny_vlm(model, processor, Path(tmp) / "tiny-vlm")
        config = load_config(None, FAST + [f"algorithm={args.algorithm}", f"model.name_or_path={tmp}/tiny-vlm",
                                           f"output_dir={tmp}/run", *args.overrides])
        trainer = Trainer(config)
        files = trace(trainer.algorithm.update, 0)
    kinds = {name: "helper" if name in HELPERS else "env" if name.startswith("envs/") else "" for name, _ in files}
    logic = [name for name in kinds if not kinds[name]]
    print(f"{args.algorithm}: one update enters {len(files)} project files: {len(logic)} with the update's logic, "
          f"{sum(kind == 'helper' for kind in kinds.values())} helpers, {sum(kind == 'env' for kind in kinds.values())}"
          f" of the environment")
    for number, (name, count) in enumerate(files, 1):
        print(f"{number:3d}. {name} ({count} functions){'   ' + kinds[name] if kinds[name] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
