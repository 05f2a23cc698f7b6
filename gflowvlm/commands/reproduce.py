"""`gflowvlm reproduce`: the papers' comparison in miniature, every (method, seed) cell of a recipe, resumable.

    gflowvlm reproduce --recipe configs/reproduce/numberline.yaml --out results/numberline
    gflowvlm reproduce --recipe configs/reproduce/blackjack.yaml --out DIR --seeds 0,1,2 --methods sft,ppo,subtb-off
    gflowvlm reproduce --recipe configs/reproduce/numberline.yaml --out DIR --quick     # the recipe's quick grid
    gflowvlm reproduce --recipe configs/reproduce/numberline.yaml --out DIR --jobs 2    # seeds side by side
    gflowvlm reproduce --recipe configs/reproduce/points24.yaml --out DIR2 --models-from DIR  # its tiny models

Per seed: the tiny VLM caption-pre-trained on the env's images, oracle SFT data, the SFT run; then every method from
that SFT model with the same budget of environment steps; then every evaluation, plus the `random` and `oracle`
reference rows on the same tasks. Killed at any moment and run again, it redoes only unfinished cells. Writes
DIR/results.json (one row per method, seed and split), DIR/report.md (mean over seeds with a 95% t interval and
the per-seed values) and DIR/success_curves.png, DIR/success_by_split.png, after every finished cell.

`--models-from OTHER_DIR` (repeatable) copies a seed's aligned tiny VLM from another grid's output instead of
building it again, when that one was built with the same make-tiny-model arguments (recorded in its
tiny-vlm/built-by.json); the report names the grid it came from and the commit it was built at.

`--jobs N` runs the seeds in N worker processes (seeds dealt round-robin; each worker's log is
DIR/worker-<seeds>.log), each with cores / N threads unless GFLOWVLM_NUM_THREADS says otherwise. On a CPU the tiny
VLM's token-by-token generation gains nothing from a second thread (measured: 32 greedy episodes took 27 s on one
thread, 44 s on two), so one process per core nearly doubles a grid's throughput. A cell's numbers depend on its
thread count (results.json records it), not on how many workers ran beside it.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from gflowvlm.commands._parser import Parser
from gflowvlm.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gflowvlm reproduce", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, metavar="FILE", help="configs/reproduce/<env>.yaml")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the cells, results and report go")
    parser.add_argument("--seeds", metavar="S,S,...", help="seeds to run (default: the recipe's)")
    parser.add_argument("--methods", metavar="M,M,...", help="methods to run (default: all of the recipe's)")
    parser.add_argument("--quick", action="store_true", help="the recipe's quick grid (its `quick` section)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="recipe overrides, e.g. budget.env_steps=3000 methods.subtb-off.objective.lam=0.9")
    parser.add_argument("--models-from", action="append", default=[], metavar="DIR",
                        help="another grid's --out: reuse its seeds' tiny VLMs where built with the same "
                             "arguments (repeatable; first match wins)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite results.json and the report from the finished cells; train nothing")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="worker processes, each running a share of the seeds (default 1: this process)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # run cells, leave publishing
    return parser


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated non-negative integers, got {text!r}") from None
    if not seeds or any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must be distinct non-negative integers, got {text!r}")
    return seeds


def worker_argv(argv: list[str], seeds: list[int]) -> list[str]:
    """This command line for one worker: its seeds, no --jobs, --worker (the parent publishes)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in ("--seeds", "--jobs"):
            skip = True
            continue
        if item.startswith(("--seeds=", "--jobs=")):
            continue
        kept.append(item)
    return [*kept, "--seeds", ",".join(map(str, seeds)), "--worker"]


def run_workers(argv: list[str], out: Path, seeds: list[int], jobs: int, on_worker_done=lambda: None) -> None:
    """Deal `seeds` round-robin to `jobs` worker processes and wait for all; a failed worker is a UserError naming
    its log (the other workers finish first: every finished cell stays, and a rerun redoes only the rest)."""
    groups = [seeds[i::jobs] for i in range(min(jobs, len(seeds)))]
    environ = dict(os.environ)
    if not environ.get("GFLOWVLM_NUM_THREADS"):
        from gflowvlm.threads import available_cpus

        environ["GFLOWVLM_NUM_THREADS"] = str(max(1, len(available_cpus()) // len(groups)))
    workers = []
    for group in groups:
        log = out / f"worker-{'-'.join(map(str, group))}.log"
        handle = open(log, "a", encoding="utf-8")
        command = [sys.executable, "-m", "gflowvlm.cli", "reproduce", *worker_argv(argv, group)]
        workers.append((group, log, handle, subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                                             env=environ)))
        print(f"worker for seeds {','.join(map(str, group))}: {environ['GFLOWVLM_NUM_THREADS']} thread(s), "
              f"log {log}", flush=True)
    failed = []
    try:
        for group, log, handle, process in workers:
            code = process.wait()
            handle.close()
            print(f"worker for seeds {','.join(map(str, group))} finished (exit {code})", flush=True)
            if code != 0:
                failed.append(f"seeds {','.join(map(str, group))} (exit {code}, see {log})")
            on_worker_done()
    except KeyboardInterrupt:
        for _, _, _, process in workers:
            process.terminate()
        raise
    if failed:
        raise UserError("reproduce worker failed: " + "; ".join(failed) + "; rerun to redo only unfinished cells")


def parse_methods(text: str, known: list[str]) -> list[str]:
    methods = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [m for m in methods if m not in known]
    if not methods or unknown:
        raise UserError(f"--methods: unknown method {unknown[0] if unknown else text!r}; the recipe has "
                        f"{', '.join(known)}")
    return list(dict.fromkeys(methods))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from gflowvlm.reproduce.recipe import load_recipe

    recipe = load_recipe(args.recipe, quick=args.quick, overrides=args.overrides)
    seeds = parse_seeds(args.seeds) if args.seeds else recipe.seeds
    known = list(recipe.methods)
    methods = parse_methods(args.methods, known) if args.methods else recipe.default_methods
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    models_from = [Path(item) for item in args.models_from]
    for source in models_from:
        if not source.is_dir():
            raise UserError(f"--models-from {source} is not a directory (another grid's --out)")
        if out.exists() and source.resolve() == out.resolve():
            raise UserError(f"--models-from {source} is --out itself")
    out.mkdir(parents=True, exist_ok=True)
    from gflowvlm.env_factory import make_env

    make_env(recipe.env.id, image_size=recipe.env.image_size, **recipe.env.kwargs).close()  # fail before training
    from gflowvlm.evaluation import write_json
    from gflowvlm.reproduce.report import write_report
    from gflowvlm.reproduce.results import build_results, git_commit
    from gflowvlm.reproduce.runner import alignment_summary, grid, load_cell, run_grid

    git_commit()  # read now, while the tree is the one this process imported (it is cached for the run)
    # What regenerates these results: the command without --report-only (which only re-renders them).
    command = "gflowvlm reproduce " + shlex.join([item for item in argv if item != "--report-only"])

    def publish() -> None:
        cells = [cell for cell in grid(recipe, seeds, methods) if (cell.directory(out) / "cell.json").is_file()]
        alignment = {str(seed): summary for seed in seeds if (summary := alignment_summary(out, seed))}
        results = build_results(recipe, [load_cell(cell.directory(out)) for cell in cells], command, methods,
                                seeds, alignment)
        write_json(results, out / "results.json")
        write_report(results, out)

    if args.worker:
        run_grid(recipe, out, seeds, methods, models_from=models_from)
        return 0
    if not args.report_only:
        if args.jobs > 1 and len(seeds) > 1:
            run_workers(argv, out, seeds, args.jobs, on_worker_done=publish)
        else:
            run_grid(recipe, out, seeds, methods, on_cell_done=publish, models_from=models_from)
    publish()
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    print((out / "report.md").read_text(encoding="utf-8"))
    return 0
