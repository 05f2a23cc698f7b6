"""Which captioning recipe teaches the tiny VLM to read its images, robustly across seeds? Prints the figures.

Each run builds the project's tiny VLM (`build_tiny_vlm`, weights seeded by the run's seed) at the env's recipe
image size, draws caption pairs from both splits of the env (`env_alignment.env_caption_sets`), holds out a
fifth of its distinct states that training never sees, and trains with `align_vision` until the held-out
exact-caption accuracy reaches the target or the step budget ends. One line per (recipe, env, seed), then a
table per (recipe, env): seeds that reached the target, steps and seconds to reach it.

    # the robustness check of the per-env recipe (ENV_RECIPES): 10 seeds of each card env, one run at a time
    .venv/bin/python scripts/alignment_experiments.py --seeds 0 1 2 3 4 5 6 7 8 9 --results-dir /tmp/alignment_runs
    # recipe comparisons (RECIPES below) on one env
    .venv/bin/python scripts/alignment_experiments.py --recipes constant recipe --envs gflowvlm/NumberLine-v0

With `--save-models GRID_DIR` (the `recipe` recipe only) each run also saves its aligned model as a reproduce grid
holds it, `GRID_DIR/seed<S>/tiny-vlm/` with alignment.json and built-by.json: it is the model `gflowvlm
make-tiny-model --align ENV_ID --seed S --align-target T` builds, so a grid run with `--models-from GRID_DIR` starts
from it instead of aligning again (Points24: about an hour per seed here).

With `--results-dir`, each run writes its own JSON file there and a run whose file exists is not run again, so an
interrupted check resumes; `--table-only` prints the table of the files already there. Wall seconds depend on
what else runs on the machine (other processes share the cores): compare steps, and read seconds together with
the load average printed at the end. `--threads 1` (the default) lets two copies run side by side on two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from gflowvlm.model.env_alignment import alignment_record, env_caption_sets, recipe, save_seeing_model
from gflowvlm.model.tiny_vlm import build_tiny_vlm, make_tiny_model_arguments
from gflowvlm.reproduce.runner import write_built_by
from gflowvlm.model.vision_alignment import AlignmentConfig, align_vision, caption_accuracy

CARD_ENVS = ("gflowvlm/NumberLine-v0", "gflowvlm/Blackjack-v0", "gflowvlm/EZPoints-v0", "gflowvlm/Points24-v0")

# Recipes compared (AlignmentConfig fields; "mix" is not a field: it adds the other card games' captions to the
# training pairs, evaluation stays on the run's env). The first ones are the NumberLine study of the docstring of
# gflowvlm/model/vision_alignment.py; "recipe" is AlignmentConfig's defaults with the env's ENV_RECIPES entry.
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
    "mix": dict(lr=3e-4, vision_lr_scale=1.0, warmup_steps=100, schedule="cosine", grad_clip=1.0, mix=True),
    # Ablations of warm_cos: which of warm-up, clipping and decay matters?
    "warm_const": dict(lr=3e-4, vision_lr_scale=1.0, warmup_steps=100, schedule="constant", grad_clip=1.0),
    "clip_only": dict(lr=3e-4, vision_lr_scale=1.0, warmup_steps=0, schedule="constant", grad_clip=1.0),
    "warm_noclip": dict(lr=3e-4, vision_lr_scale=1.0, warmup_steps=100, schedule="cosine", grad_clip=None),
    # The recipe the project uses: AlignmentConfig's defaults, the env's image size, pairs and step budget.
    "recipe": dict(),
    # The recipe as every run before commit 9c43be7 had it: the observation text as the caption (only Blackjack's
    # and ALFWorld's differ from their image_caption()) and an early stop at the first evaluation that reaches the
    # target, with no confirmation.
    "text_unconfirmed": dict(caption="text", confirm_max=0),
}


def run_config(name: str, env_id: str, seed: int, steps: int | None, target: float) -> AlignmentConfig:
    settings = {key: value for key, value in RECIPES[name].items() if key != "mix"}
    return replace(AlignmentConfig(), steps=steps or recipe(env_id).steps, seed=seed, target_accuracy=target,
                   **settings)


def run_one(name: str, env_id: str, seed: int, steps: int | None, pairs_per_split: int | None,
            target: float, image_size: int | None, final_eval: int, save_to: Path | None = None) -> dict:
    """One alignment run; with `save_to` (the `recipe` recipe only), the model is saved there as make-tiny-model
    would have saved it, with the command line that builds it in built-by.json."""
    mix = RECIPES[name].get("mix", False)
    env_recipe = recipe(env_id)
    image_size = image_size or env_recipe.image_size
    config = run_config(name, env_id, seed, steps, target)
    model, processor = build_tiny_vlm("llava", image_size=image_size, seed=seed, vision_tower=env_recipe.vision_tower)
    sets = env_caption_sets([env_id], image_size, seed, config.eval_fraction, pairs_per_split, config.caption)
    train, held_out = sets[env_id]
    if mix:
        others = [other for other in CARD_ENVS if other != env_id]
        train += [pair for other_train, _ in env_caption_sets(others, image_size, seed, config.eval_fraction,
                                                              pairs_per_split, config.caption).values()
                  for pair in other_train]
    result = align_vision(model, processor, train, config, progress=False, eval_pairs={env_id: held_out})
    if save_to is not None:
        write_built_by(save_to, make_tiny_model_arguments("llava", image_size, seed, [env_id], steps, target,
                                                          config.caption))
        save_seeing_model(model, processor, alignment_record(result, {env_id: (train, held_out)}, config, image_size),
                          save_to, "llava", env_recipe.vision_tower)
    # The stopping figure is on config.eval_max held-out pairs; re-read a larger held-out share at the end.
    started = time.perf_counter()
    final = caption_accuracy(model, processor, held_out[:final_eval]) if final_eval else None
    return {"recipe": name, "env": env_id, "seed": seed, "image_size": image_size,
            "vision_tower": env_recipe.vision_tower, "reached": result["reached_target"],
            "steps": result["steps"], "accuracy": round(result["accuracy"], 3), "seconds": round(result["seconds"], 1),
            "final_accuracy": None if final is None else round(final, 3), "final_eval_pairs": min(final_eval,
            len(held_out)), "final_eval_seconds": round(time.perf_counter() - started, 1),
            "train_pairs": len(train), "held_out_pairs": len(held_out),
            "curve": [[int(s), round(a, 3), round(loss, 4)] for s, a, loss in result["history"]],
            "confirmations": [[int(s), round(accuracies[env_id], 3)] for s, accuracies in result["confirmations"]],
            "config": asdict(config), "mix": mix, "load_average": os.getloadavg()}


def _rule(row: dict) -> str:
    """The caption source and the early-stop confirmation a run used (files from before either existed: text, none)."""
    config = row.get("config", {})
    confirm = config.get("confirm_max", 0)
    return f"{config.get('caption', 'text')}, {confirm if confirm else 'none'}"


def _confirmed(row: dict) -> str:
    """The confirmation read at the run's last step (the one that stopped it), else "-"."""
    last = (row.get("confirmations") or [[None, None]])[-1]
    return f"{last[1]:.3f}" if last[0] == row["steps"] else "-"


def summarise(rows: list[dict]) -> None:
    print("\n| recipe | env | caption, confirmation | image | seeds reaching target | held-out accuracy per seed "
          "| confirmed (other pairs) | final (larger set) | steps per seed | seconds per seed | median steps | worst |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in dict.fromkeys((row["recipe"], row["env"], _rule(row)) for row in rows):
        mine = sorted((row for row in rows if (row["recipe"], row["env"], _rule(row)) == key),
                      key=lambda row: row["seed"])
        steps = [row["steps"] if row["reached"] else None for row in mine]
        reached = [s for s in steps if s is not None]
        worst = "never" if len(reached) < len(steps) else max(reached)
        median = statistics.median(reached) if reached else "-"
        finals = " ".join("-" if row["final_accuracy"] is None else f"{row['final_accuracy']:.3f}" for row in mine)
        accuracies = " ".join(f"{row['accuracy']:.3f}" for row in mine)
        confirmed = " ".join(_confirmed(row) for row in mine)
        seconds = " ".join(f"{row['seconds']:.0f}" for row in mine)
        seeds = ",".join(str(row["seed"]) for row in mine)
        print(f"| {key[0]} | {key[1].split('/')[-1]} | {key[2]} | {mine[0]['image_size']} | {len(reached)}/{len(mine)} "
              f"(seeds {seeds}) | {accuracies} | {confirmed} | {finals} | {' '.join(str(s or 'x') for s in steps)} "
              f"| {seconds} | {median} | {worst} |")
    print(f"\nload average (1, 5, 15 min): {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["recipe"], choices=sorted(RECIPES))
    parser.add_argument("--envs", nargs="+", default=list(CARD_ENVS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="step budget per run (default: the env's recipe)")
    parser.add_argument("--pairs-per-split", type=int, default=None, help="default: the env's recipe")
    parser.add_argument("--image-size", type=int, default=None, help="default: the env's recipe")
    parser.add_argument("--target", type=float, default=0.95, help="early stop once held-out accuracy reaches it")
    parser.add_argument("--final-eval", type=int, default=512, help="held-out pairs re-read at the end (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for this process")
    parser.add_argument("--results-dir", help="one JSON file per run; runs already there are skipped")
    parser.add_argument("--table-only", action="store_true", help="print the table of --results-dir and exit")
    parser.add_argument("--save-models", metavar="GRID_DIR", help="save each run's model as a reproduce grid holds "
                        "it (GRID_DIR/seed<S>/tiny-vlm), for `gflowvlm reproduce --models-from GRID_DIR`")
    args = parser.parse_args(argv)
    if args.save_models and (args.recipes != ["recipe"] or len(args.envs) != 1 or args.pairs_per_split):
        parser.error("--save-models saves what make-tiny-model builds: only --recipes recipe, one env, the "
                     "recipe's pairs")
    torch.set_num_threads(args.threads)
    results = Path(args.results_dir) if args.results_dir else None
    if args.table_only:
        if results is None:
            parser.error("--table-only needs --results-dir")
        summarise([json.loads(path.read_text()) for path in sorted(results.glob("*.json"))])
        return 0
    rows = []
    started = time.perf_counter()
    # Seed-major: an interrupted check has every env at its first seeds rather than one env at all seeds.
    for name in args.recipes:
        for seed in args.seeds:
            for env_id in args.envs:
                path = results / f"{name}_{env_id.replace('/', '_')}_seed{seed}.json" if results else None
                if path is not None and path.exists():
                    row = json.loads(path.read_text())
                    # A file written under other settings (an older rule) is run again, not passed off as current.
                    if row.get("config") == asdict(run_config(name, env_id, seed, args.steps, args.target)):
                        rows.append(row)
                        continue
                    print(f"{path.name}: written under other settings than today's {name!r}; running it again")
                save_to = Path(args.save_models) / f"seed{seed}" / "tiny-vlm" if args.save_models else None
                row = run_one(name, env_id, seed, args.steps, args.pairs_per_split, args.target, args.image_size,
                              args.final_eval, save_to)
                rows.append(row)
                print(f"{name} {env_id} seed {seed}: {'reached' if row['reached'] else 'MISSED '} target at step "
                      f"{row['steps']:>5}, held-out accuracy {row['accuracy']:.3f} (final {row['final_accuracy']}), "
                      f"{row['seconds']:.0f} s, curve (step, acc, loss) {row['curve']}", flush=True)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(row))
    summarise(rows)
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
