"""`gflowvlm demo`: the whole method end to end on a CPU, in minutes, with the built-in tiny VLM.

It is a subset of the NumberLine reproduction recipe's quick grid (configs/reproduce/numberline.yaml with --quick),
not a recipe of its own:

    1. build the tiny VLM and teach it to read its images (caption pre-training, LLaVA's stage 1)
    2. oracle SFT data for NumberLine, with the paper's [DONE] samples at terminal states
    3. SFT (the paper's starting point), then SubTB fine-tuning from the SFT model ([DONE] flows, replay, expert
       injection: the recipe's `subtb-off`) on the recipe's budget of environment steps
    4. evaluate both, and the random and oracle reference rows, on the ID and OOD splits
    5. the reproduction report (--out/report.md) and the comparison table and plots (--out/report/)

Every stage is a cell of `gflowvlm reproduce` under --out and is skipped when it is already finished, so an
interrupted demo picks up where it stopped. The run directories are --out/seed<S>/{sft,subtb-off}/run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gflowvlm.commands._parser import Parser
from gflowvlm.errors import UserError

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "reproduce" / "numberline.yaml"
METHODS = ("sft", "subtb-off")


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """The demo's options as overrides of the NumberLine recipe (only those the user gave)."""
    overrides = []
    if args.align_steps is not None:
        overrides.append(f"tiny_model.align_steps={args.align_steps}")
    if args.sft_samples is not None:
        overrides.append(f"sft_data.samples={args.sft_samples}")
    if args.sft_steps is not None:
        overrides.append(f"sft.steps={args.sft_steps}")
    if args.budget_env_steps is not None:
        overrides.append(f"budget.env_steps={args.budget_env_steps}")
    if args.eval_episodes is not None:
        overrides.append(f"evaluation.episodes={args.eval_episodes}")
    if args.eval_max_steps is not None:  # a fixed cap replaces the recipe's per-episode OOD horizon
        overrides += [f"evaluation.max_steps={{id: {args.eval_max_steps}, ood: {args.eval_max_steps}}}",
                      "evaluation.env_kwargs={}"]
    if args.max_new_tokens is not None:
        overrides.append(f"run.generation.max_new_tokens={args.max_new_tokens}")
    return overrides


def main(argv: list[str]) -> int:
    parser = Parser(prog="gflowvlm demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--align-steps", type=int,
                        help="upper bound of caption pre-training steps (default: the env's alignment recipe)")
    parser.add_argument("--sft-samples", type=int, help="SFT records (recipe: 3000)")
    parser.add_argument("--sft-steps", type=int, help="SFT optimizer steps (recipe: 300)")
    parser.add_argument("--budget-env-steps", type=int, help="SubTB's environment steps (the recipe's budget)")
    parser.add_argument("--eval-episodes", type=int, help="evaluation episodes per split (quick recipe: 64)")
    parser.add_argument("--eval-max-steps", type=int, help="a fixed evaluation horizon for both splits (default: "
                        "the recipe's, 10 steps ID and 2 x the optimal number of steps OOD)")
    parser.add_argument("--max-new-tokens", type=int, help="response length cap (recipe: 72)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if not RECIPE.is_file():
        raise UserError(f"the NumberLine recipe is not at {RECIPE}: the demo runs from a checkout of gflowvlm "
                        "(pip install -e .)")
    out = Path(args.out)
    started = time.perf_counter()
    from gflowvlm.commands.reproduce import main as reproduce_main

    reproduce_main(["--recipe", str(RECIPE), "--quick", "--out", str(out), "--seeds", str(args.seed),
                    "--methods", ",".join(METHODS), *recipe_overrides(args)])
    from gflowvlm.commands.compare import main as compare_main

    seed_dir = out / f"seed{args.seed}"
    compare_main([str(seed_dir / method / "run") for method in METHODS] + ["--out", str(out / "report")])
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    total = time.perf_counter() - started
    alignment = json.loads((seed_dir / "tiny-vlm" / "alignment.json").read_text(encoding="utf-8"))
    summary = {"seconds": total, "caption_accuracy": alignment.get("accuracy"),
               "success": {f"{cell['method']} {cell['split']}": cell["success_rate"] for cell in results["cells"]
                           if cell.get("task_type") is None},
               "parse_rate": {f"{cell['method']} {cell['split']}": cell["parse_rate"] for cell in results["cells"]
                              if cell.get("task_type") is None},
               "cell_seconds": _cell_seconds(results["cells"])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"\ndemo finished in {total / 60:.1f} min; reports in {out / 'report.md'} and {out / 'report'}")
    return 0


def _cell_seconds(cells: list[dict]) -> dict[str, float]:
    """Seconds per method (a cell's time is spread over its split rows in results.json)."""
    seconds: dict[str, float] = {}
    for cell in cells:
        if cell.get("task_type") is None:
            seconds[cell["method"]] = seconds.get(cell["method"], 0.0) + cell["seconds"]
    return seconds
