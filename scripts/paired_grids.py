"""A recipe variant against its base, method by method, paired over the same evaluation episodes. Prints JSON lines.

Two grids of the same env and seeds evaluate the same tasks (an evaluation task's reset seed follows from the cell's
seed and the episode index, `seeding.Stream.EVAL_TASK`), so a row of the variant and the same row of the base can
be compared episode by episode (`stats.paired_difference`), which removes the luck of the tasks both faced. This is
what a report's "gain on SFT" line does within one grid, for a change that needs a grid of its own (one that
changes the SFT data or the SFT run, so every row of the variant starts elsewhere).

    .venv/bin/python scripts/paired_grids.py --base results/tiny/numberline-ablations/results.json \
        --variant results/tiny/numberline-captions/results.json --methods sft,ppo,subtb-off

A method may be named `VARIANT=BASE`: the variant grid's row VARIANT against the base grid's row BASE. With the same
file as both grids this pairs an ablation row with the row it changes one setting of (both start from one SFT model
per seed and face the same tasks):

    .venv/bin/python scripts/paired_grids.py --base results/tiny/numberline-ablations/results.json \
        --variant results/tiny/numberline-ablations/results.json --methods ppo-t07=ppo,subtb-off-t07=subtb-off

Per (method, split): each seed's difference (variant - base, in points) with its 95% t interval over episodes, and
the difference over all seeds' episodes together. Only cells that recorded per-episode outcomes take part; a cell
whose counterpart is missing or has another number of episodes is named and skipped.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gflowvlm.errors import UserError  # noqa: E402
from gflowvlm.stats import paired_difference  # noqa: E402


def load(path: str) -> dict:
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(results, dict) or not isinstance(results.get("cells"), list):
            raise ValueError
    except (OSError, ValueError):
        raise UserError(f"{path} is not a readable results.json") from None
    return results


def outcomes_by_cell(results: dict) -> dict[tuple[str, str, int], str]:
    """(method, split, seed) -> outcomes, for the overall rows (not per task type) that recorded them."""
    table = {}
    for cell in results["cells"]:
        if isinstance(cell, dict) and cell.get("task_type") is None and isinstance(cell.get("outcomes"), str):
            table[(str(cell.get("method")), str(cell.get("split")), int(cell.get("seed", -1)))] = cell["outcomes"]
    return table


def method_pairs(spec: str) -> list[tuple[str, str]]:
    """'sft,ppo-t07=ppo' -> [('sft', 'sft'), ('ppo-t07', 'ppo')]: (the variant grid's row, the base grid's row)."""
    pairs = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        mine, _, theirs = item.partition("=")
        if not mine.strip() or (_ and not theirs.strip()):
            raise UserError(f"--methods: {item!r} is neither METHOD nor VARIANT=BASE")
        pairs.append((mine.strip(), theirs.strip() or mine.strip()))
    if not pairs:
        raise UserError("--methods names no row")
    return pairs


def compare(base: dict, variant: dict, methods: list[str | tuple[str, str]],
            splits: list[str] | None = None) -> list[dict]:
    """One record per (method, split) present in both grids: per-seed and pooled paired differences (points).

    A method is a row name both grids have, or a pair (variant row, base row)."""
    if base.get("cells") and variant.get("cells"):
        envs = {c.get("env") for c in base["cells"]} | {c.get("env") for c in variant["cells"]}
        if len(envs) > 1:
            raise UserError(f"the grids are of different envs ({', '.join(sorted(map(str, envs)))}): nothing pairs")
    a, b = outcomes_by_cell(variant), outcomes_by_cell(base)
    wanted = splits or sorted({split for _, split, _ in b})
    records = []
    for method in methods:
        mine_name, base_name = (method, method) if isinstance(method, str) else method
        for split in wanted:
            seeds, skipped, pooled_a, pooled_b = [], [], "", ""
            for seed in sorted({s for m, sp, s in b if m == base_name and sp == split}
                               | {s for m, sp, s in a if m == mine_name and sp == split}):
                mine, theirs = a.get((mine_name, split, seed)), b.get((base_name, split, seed))
                if mine is None or theirs is None or len(mine) != len(theirs):
                    skipped.append(seed)
                    continue
                mean, interval = paired_difference(mine, theirs)
                seeds.append({"seed": seed, "episodes": len(mine), "variant": _points(mine.count("1") / len(mine)),
                              "base": _points(theirs.count("1") / len(theirs)), "difference": _points(mean),
                              "ci95": [_points(x) for x in interval] if interval else None})
                pooled_a += mine
                pooled_b += theirs
            if not seeds:
                continue
            mean, interval = paired_difference(pooled_a, pooled_b)
            records.append({"method": mine_name, "base_method": base_name, "split": split, "seeds": seeds,
                            "skipped_seeds": skipped,
                            "pooled": {"episodes": len(pooled_a), "difference": _points(mean),
                                       "ci95": [_points(x) for x in interval] if interval else None}})
    return records


def _points(rate: float) -> float:
    return round(100 * rate, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="results.json of the unchanged recipe")
    parser.add_argument("--variant", required=True, help="results.json of the recipe variant")
    parser.add_argument("--methods", required=True,
                        help="comma-separated rows both grids have (sft,ppo,...), or VARIANT=BASE pairs (ppo-t07=ppo)")
    parser.add_argument("--splits", help="comma-separated splits (default: every split of the base)")
    args = parser.parse_args(argv)
    try:
        base, variant = load(args.base), load(args.variant)
        records = compare(base, variant, method_pairs(args.methods),
                          [s for s in args.splits.split(",") if s] if args.splits else None)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not records:
        print("error: no row of --methods has per-episode outcomes in both grids", file=sys.stderr)
        return 2
    print(json.dumps({"base": args.base, "base_commit": base.get("commit"), "variant": args.variant,
                      "variant_commit": variant.get("commit"),
                      "command": "scripts/paired_grids.py " + " ".join(argv if argv is not None else sys.argv[1:])}))
    for record in records:
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
