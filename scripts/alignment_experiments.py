"""Which captioning recipe teaches the tiny VLM to read its images, robustly across seeds? Prints the figures.

Each run builds the project's tiny VLM (`build_tiny_vlm`, weights seeded by the run's seed), draws caption pairs
from the real environments (`caption_pairs`), holds out a share of NumberLine's distinct states (target, current)
that training never sees, and trains with `align_vision` until the held-out exact-caption accuracy reaches the
target or the step budget ends. One line per (recipe, seed), then a summary per recipe: seeds that reached the
target, steps to reach it (median, worst), wall seconds.

    .venv/bin/python scripts/alignment_experiments.py --recipes constant recipe --seeds 0 1 2

Wall seconds depend on what else runs on the machine (other processes share the cores): compare steps, and
read seconds together with the load average printed at the end. `--threads 1` (the default) lets two copies of
this script run side by side on two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, replace

import torch

from gflowvlm.model.tiny_vlm import build_tiny_vlm
from gflowvlm.model.vision_alignment import AlignmentConfig, align_vision, caption_pairs, split_by_caption

NUMBER_LINE = "gflowvlm/NumberLine-v0"
OTHER_CARD_ENVS = ("gflowvlm/Blackjack-v0", "gflowvlm/EZPoints-v0", "gflowvlm/Points24-v0")

# The recipes compared (AlignmentConfig fields; "mix" is not a field: it adds the other card games' captions).
RECIPES: dict[str, dict] = {
    # What tiny-vlm.md measured first: constant lr 3e-4, no warm-up, no clipping, one learning rate.
    "constant": dict(lr=3e-4, vision_lr_scale=1.0, warmup_steps=0, schedule="constant", grad_clip=None),
    # + 100 warm-up steps, gradient clipping at norm 1, cosine decay to 0.1x over the step budget.
    "warm_cos": dict(lr=3e-4, vision_lr_scale=1.0, warmup_steps=100, schedule="cosine", grad_clip=1.0),
    # + the vision tower and projector at 3x the decoder's learning rate.
    "vis3": dict(lr=3e-4, vision_lr_scale=3.0, warmup_steps=100, schedule="cosine", grad_clip=1.0),
    # warm_cos with a first phase that trains the vision side only (LLaVA's stage 1 freezes the language model).
    "phase1": dict(lr=3e-4, vision_lr_scale=1.0, warmup_steps=100, schedule="cosine", grad_clip=1.0,
                   first_phase_steps=200),
    # warm_cos with the other card games' captions mixed in (evaluation stays on held-out NumberLine states).
    "mix": dict(lr=3e-4, vision_lr_scale=1.0, warmup_steps=100, schedule="cosine", grad_clip=1.0, mix=True),
    # Ablations of warm_cos: which of warm-up, clipping and decay matters?
    "warm_const": dict(lr=3e-4, vision_lr_scale=1.0, warmup_steps=100, schedule="constant", grad_clip=1.0),
    "clip_only": dict(lr=3e-4, vision_lr_scale=1.0, warmup_steps=0, schedule="constant", grad_clip=1.0),
    "warm_noclip": dict(lr=3e-4, vision_lr_scale=1.0, warmup_steps=100, schedule="cosine", grad_clip=None),
    # The defaults of AlignmentConfig: the recipe the project uses.
    "recipe": dict(),
}


def run_one(name: str, seed: int, steps: int, pairs_per_env: int) -> dict:
    settings = dict(RECIPES[name])
    mix = settings.pop("mix", False)
    config = replace(AlignmentConfig(), steps=steps, seed=seed, **settings)
    model, processor = build_tiny_vlm("llava", image_size=64, seed=seed)
    number_line = caption_pairs([NUMBER_LINE], pairs_per_env, image_size=64, seed=seed)
    train, held_out = split_by_caption(number_line, config.eval_fraction, seed)
    if mix:
        train += caption_pairs(OTHER_CARD_ENVS, pairs_per_env, image_size=64, seed=seed)
    result = align_vision(model, processor, train, config, progress=False, eval_pairs=held_out)
    return {"recipe": name, "seed": seed, "reached": result["reached_target"], "steps": result["steps"],
            "accuracy": round(result["accuracy"], 3), "seconds": round(result["seconds"], 1),
            "curve": [[int(s), round(a, 2), round(loss, 3)] for s, a, loss in result["history"]],
            "config": asdict(config), "mix": mix}


def summarise(rows: list[dict]) -> None:
    print("\n| recipe | seeds reaching target | steps per seed | median steps | worst | seconds per seed |")
    print("|---|---|---|---|---|---|")
    for name in dict.fromkeys(row["recipe"] for row in rows):
        mine = [row for row in rows if row["recipe"] == name]
        steps = [row["steps"] if row["reached"] else None for row in mine]
        reached = [s for s in steps if s is not None]
        worst = "never" if len(reached) < len(steps) else max(reached)
        median = statistics.median(reached) if reached else "-"
        print(f"| {name} | {len(reached)}/{len(mine)} | {' '.join(str(s or 'x') for s in steps)} | {median} | "
              f"{worst} | {' '.join(str(row['seconds']) for row in mine)} |")
    print(f"\nload average (1, 5, 15 min): {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["recipe"], choices=sorted(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500, help="step budget per run (early stop at the target)")
    parser.add_argument("--pairs-per-env", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for this process")
    parser.add_argument("--jsonl", help="also append one JSON line per run to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    started = time.perf_counter()
    for name in args.recipes:
        for seed in args.seeds:
            row = run_one(name, seed, args.steps, args.pairs_per_env)
            rows.append(row)
            print(f"{name:>9} seed {seed}: {'reached' if row['reached'] else 'MISSED '} target at step "
                  f"{row['steps']:>5}, held-out accuracy {row['accuracy']:.3f}, {row['seconds']:.0f} s, "
                  f"curve (step, acc, loss) {row['curve']}", flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
    summarise(rows)
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
