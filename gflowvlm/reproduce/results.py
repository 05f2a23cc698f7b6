"""results.json: one flat row per (env, method, seed, split[, task type]) and the aggregates a report shows.

    {"recipe": ..., "commit": ..., "command": ..., "cells": [{"env", "method", "seed", "split", "success_rate",
     "ci95", "div_at_k", "k", "div_success_rate", "episodes", "env_steps", "parse_rate", "seconds", "task_type"},
     ...],
     "curves": {method: {seed: [[env_steps, training success], ...]}}, ...}

The report is rendered from this file alone (gflowvlm/reproduce/report.py), so every number in it can be traced to
a row here, and a results.json from another machine renders the same report.
"""
from __future__ import annotations

import functools
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gflowvlm.stats import mean_interval

CELL_KEYS = ("env", "method", "seed", "split", "success_rate", "ci95", "div_at_k", "k", "div_success_rate",
             "episodes", "env_steps", "parse_rate", "seconds", "task_type", "outcomes")
# div_success_rate: the share of the Div@K samples (K per task, temperature as in training) that solved their task.
# Div@K counts distinct solutions among the solved tasks only, so it is read beside this: a policy that rarely
# solves can show a high Div@K over the few tasks it solved.
# outcomes: '1'/'0' per evaluation episode in task order (rows of one seed face the same tasks, so the report pairs
# them); null in per-task-type rows and in cells evaluated before it was recorded.


def cell_rows(record: dict) -> list[dict[str, Any]]:
    """The results.json rows of one finished cell (cell.json): one per split, plus one per task type."""
    rows = []
    evaluations = record["evaluations"]
    seconds = float(record["seconds"]) / max(1, len(evaluations))
    for split, result in evaluations.items():
        diversity = result.get("diversity") or {}
        base = {"env": record["env"], "method": record["method"], "seed": int(record["seed"]), "split": split,
                "div_at_k": diversity.get("div_at_k"), "k": diversity.get("samples_per_task"),
                "div_success_rate": diversity.get("success_rate"),
                "env_steps": int(record.get("env_steps", 0)), "parse_rate": result.get("parse_rate"),
                "seconds": seconds}
        rows.append({**base, "success_rate": result["success_rate"], "ci95": result["ci95"],
                     "episodes": result["episodes"], "task_type": None, "outcomes": result.get("outcomes")})
        for task_type, row in sorted((result.get("per_task_type") or {}).items()):
            rows.append({**base, "success_rate": row["success_rate"], "ci95": row["ci95"],
                         "episodes": row["episodes"], "task_type": task_type, "div_at_k": None, "k": None,
                         "div_success_rate": None, "outcomes": None})
    return rows


def build_results(recipe, records: Sequence[dict], command: str, methods: Sequence[str],
                  seeds: Sequence[int], alignment: dict[str, dict] | None = None) -> dict[str, Any]:
    """`alignment`: seed (as text) -> what that seed's tiny VLM read (runner.alignment_summary)."""
    cells = [row for record in records for row in cell_rows(record)]
    curves: dict[str, dict[str, list]] = {}
    for record in records:
        if record.get("curve"):
            curves.setdefault(record["method"], {})[str(record["seed"])] = record["curve"]
    return {
        "recipe": recipe.path,
        "commit": git_commit(),  # of the process that wrote this file; each cell's own is in cell_commits
        "cell_commits": sorted({str(record["commit"]) for record in records if record.get("commit")}),
        "command": command,
        "env": recipe.env.id,
        "seeds": list(seeds),
        "methods": list(methods),
        "method_labels": {method: method_label(recipe, method) for method in methods},
        "budget_env_steps": recipe.budget.env_steps,
        "evaluation": {"splits": recipe.evaluation.splits, "episodes": recipe.evaluation.episodes,
                       "greedy": recipe.evaluation.greedy, "max_steps": recipe.evaluation.max_steps,
                       "env_kwargs": recipe.evaluation.env_kwargs,
                       "diversity_k": recipe.evaluation.diversity_k,
                       "diversity_tasks": recipe.evaluation.diversity_tasks,
                       "unparseable": recipe.evaluation.unparseable, "protocol": recipe.evaluation.protocol,
                       "success_threshold": recipe.evaluation.success_threshold},
        "expert_strategy": recipe.expert_strategy,
        "threads": _thread_settings(records),  # the cells' own counts, not the publishing process's
        # Cell time (tiny model, SFT data, training and evaluation), summed: the grid's compute on this machine.
        "cell_seconds_total": round(sum(float(record["seconds"]) for record in records), 1),
        "alignment": alignment or {},
        "cells": cells,
        "curves": curves,
        "resolved_recipe": recipe.resolved,
    }


def method_label(recipe, method: str) -> str:
    """The row name, as the papers write it ("GFlowVLM SubTB off-policy"), with the recipe's key when it adds
    something (two variants of one method)."""
    from gflowvlm.report import method_name

    if method == "sft":
        return "SFT"
    data = recipe.methods[method]
    collect = data.get("collect") or {}
    off_policy = bool(collect.get("expert_injection")) or bool(collect.get("replay_size"))
    grpo = data.get("grpo") or {}
    name = method_name(data.get("algorithm", "subtb"), off_policy, grpo.get("baseline"))
    return name if method in _PLAIN_NAMES.get(data.get("algorithm"), ()) else f"{name} [{method}]"


# Recipe keys whose row name alone says everything (no "[key]" suffix needed).
_PLAIN_NAMES = {"ppo": ("ppo",), "grpo": ("grpo", "rloo"), "tb": ("tb", "tb-off"),
                "vartb": ("vartb", "vartb-off"), "subtb": ("subtb", "subtb-off"), "db": ("db", "db-off")}


def aggregate(cells: Sequence[dict], method: str, split: str, key: str = "success_rate",
              task_type: str | None = None) -> dict[str, Any] | None:
    """Mean over seeds with its 95% t interval, and the per-seed values, of one table entry (None if no cell)."""
    chosen = sorted((c for c in cells if c["method"] == method and c["split"] == split
                     and c.get("task_type") == task_type and c.get(key) is not None), key=lambda c: c["seed"])
    if not chosen:
        return None
    return seed_stat([float(c[key]) for c in chosen], [c["seed"] for c in chosen])


def seed_stat(values: Sequence[float], seeds: Sequence[int]) -> dict[str, Any]:
    """A table entry from per-seed values: their mean, its 95% t interval over seeds, the values and their seeds."""
    mean, interval = mean_interval(values)
    return {"mean": mean, "ci95": list(interval) if interval else None, "values": list(values), "seeds": list(seeds)}


def _thread_settings(records: Sequence[dict] = ()) -> dict[str, Any]:
    """The thread count changes the numbers (gflowvlm/threads.py): a rerun that must match uses the same.

    Each cell records the count it ran with (workers of `--jobs` may differ from the publishing process); a cell
    written before cells recorded it counts as this process's."""
    import os

    import torch

    counts = sorted({int(record.get("torch_threads") or torch.get_num_threads()) for record in records})
    threads: int | list[int] = counts[0] if len(counts) == 1 else (counts or torch.get_num_threads())
    return {"torch_threads": threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


@functools.lru_cache(maxsize=None)
def git_commit(directory: str | Path | None = None) -> str:
    """The commit the code ran at (+ "-dirty" when the tree had uncommitted changes), or "unknown".

    Read once per process: the code a process runs is the code it imported at its start, whatever is committed
    or edited while it runs (a long grid outlives many commits)."""
    where = Path(directory) if directory else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")
