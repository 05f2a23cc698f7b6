"""`gflowvlm compare RUN_DIR... [--out DIR]`: the runs side by side, as the papers' results tables.

Per run it reads config.yaml (algorithm, env), metrics.jsonl (training success vs environment steps) and the
eval_*.json files written by `gflowvlm eval` (in the run directory, else in final/ or a checkpoint-* directory; for
one env and split the run directory's own file wins, then final/, then the newest checkpoint). It prints a markdown
table and writes <out>/comparison.md, <out>/success_curves.png and <out>/success_by_split.png.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import yaml

from gflowvlm.commands._parser import Parser
from gflowvlm.config_schema import check_output_dir
from gflowvlm.errors import UserError
from gflowvlm.report import (EvalResult, RunResults, finite, markdown_table, method_name, plot_split_bars,
                             plot_success_curves, sources)


def main(argv: list[str]) -> int:
    parser = Parser(prog="gflowvlm compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run output directories")
    parser.add_argument("--out", default="comparison", metavar="DIR", help="where the table and plots go")
    parser.add_argument("--smoothing", type=float, default=0.6,
                        help="EMA weight of the training curves, in [0, 1) (default 0.6)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.smoothing < 1.0:
        raise UserError(f"--smoothing must be in [0, 1), got {args.smoothing}")
    check_output_dir(args.out, "--out")  # before reading any run: a file in the way is known now
    runs = [load_run(Path(directory)) for directory in args.runs]
    _unique_labels(runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(runs)
    (out / "comparison.md").write_text(
        "# Comparison\n\nSuccess % with its Wilson 95% interval; Div@K = mean number of distinct successful "
        "trajectories among K samples of a solved task.\n\n" + table + "\n\n## Sources\n\n" + sources(runs) + "\n",
        encoding="utf-8")
    print(table)
    written = [out / "comparison.md"]
    if plot_success_curves(runs, out / "success_curves.png", args.smoothing):
        written.append(out / "success_curves.png")
    else:
        print("no training curve: no run logged success_rate in metrics.jsonl")
    if plot_split_bars(runs, out / "success_by_split.png"):
        written.append(out / "success_by_split.png")
    else:
        print("no evaluation bars: no run has an eval_*.json (run `gflowvlm eval` first)")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def load_run(directory: Path) -> RunResults:
    if not directory.is_dir():
        raise UserError(f"run directory not found: {directory}")
    config = _read_config(directory / "config.yaml")
    collect = config.get("collect") or {}
    off_policy = bool(collect.get("expert_injection")) or bool(collect.get("replay_size"))
    grpo = config.get("grpo")
    baseline = grpo.get("baseline") if isinstance(grpo, dict) else None
    run = RunResults(directory=directory, label=method_name(config["algorithm"], off_policy, baseline),
                     algorithm=config["algorithm"], env_id=config["env"]["id"])
    run.curve, run.env_steps = _read_metrics(directory / "metrics.jsonl")
    run.evals = _read_evals(directory)
    return run


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found: not a run directory written by `gflowvlm train`")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid YAML") from None
    if not isinstance(data, dict) or not isinstance(data.get("algorithm"), str):
        raise UserError(f"{path} has no 'algorithm'")
    env = data.get("env")
    if not isinstance(env, dict) or not isinstance(env.get("id"), str):
        raise UserError(f"{path} has no 'env.id'")
    return data


def _read_metrics(path: Path) -> tuple[list[tuple[float, float]], int | None]:
    """(env steps, success rate) per logged step that has a success rate, and the last env step count."""
    if not path.is_file():
        raise UserError(f"{path} not found: the run has not logged any step")
    curve, env_steps = [], None
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise UserError(f"{path}:{number} is not valid JSON") from None
        if not isinstance(record, dict) or finite(record.get("step")) is None:
            raise UserError(f"{path}:{number} is not a metrics record (a JSON object with a 'step')")
        records.append(record)
    records.sort(key=lambda record: float(record["step"]))
    for record in records:
        steps = finite(record.get("env_steps"))
        x = steps if steps is not None else float(record["step"])
        if steps is not None:
            env_steps = int(steps)
        rate = finite(record.get("success_rate"))
        if rate is not None:
            curve.append((x, rate))
    return curve, env_steps


def _read_evals(directory: Path) -> dict[tuple[str, str], EvalResult]:
    candidates = sorted(directory.glob("eval_*.json"), key=str) + sorted(
        (p for p in directory.glob("*/eval_*.json")), key=lambda p: _preference(p.parent))
    chosen: dict[tuple[str, str], EvalResult] = {}
    for path in candidates:
        result = read_eval(path)
        chosen.setdefault((result.env, result.split), result)
    return chosen


def _preference(folder: Path) -> tuple[int, int, str]:
    """final/ first, then checkpoints newest first, then anything else."""
    if folder.name == "final":
        return (0, 0, "")
    match = re.match(r"^checkpoint-(\d+)$", folder.name)
    if match:
        return (1, -int(match.group(1)), "")
    return (2, 0, folder.name)


def read_eval(path: Path) -> EvalResult:
    """One eval_*.json, checked: UserError naming the file and the field on anything missing or malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not an evaluation result (expected a JSON object)")
    settings = data.get("settings")
    if not isinstance(settings, dict) or not isinstance(settings.get("env"), str) \
            or not isinstance(settings.get("split"), str):
        raise UserError(f"{path} has no settings.env / settings.split")
    rate = _probability(data.get("success_rate"), path, "success_rate")
    ci95 = data.get("ci95")
    if not isinstance(ci95, list) or len(ci95) != 2:
        raise UserError(f"{path}: ci95 must be a list [low, high]")
    low, high = (_probability(value, path, "ci95") for value in ci95)
    episodes = data.get("episodes")
    if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes <= 0:
        raise UserError(f"{path}: episodes must be a positive integer, got {episodes!r}")
    diversity = data.get("div_at_k")
    if diversity is not None and (finite(diversity) is None or isinstance(diversity, bool)):
        raise UserError(f"{path}: div_at_k must be a number or null, got {diversity!r}")
    samples = settings.get("samples_per_task", data.get("samples_per_task", 1))
    if not isinstance(samples, int) or samples <= 0:
        raise UserError(f"{path}: samples_per_task must be a positive integer, got {samples!r}")
    per_type = data.get("per_task_type") or {}
    if not isinstance(per_type, dict):
        raise UserError(f"{path}: per_task_type must be a JSON object")
    rows = {}
    for task_type, row in per_type.items():
        if not isinstance(row, dict) or not isinstance(row.get("ci95"), list) or len(row["ci95"]) != 2:
            raise UserError(f"{path}: per_task_type.{task_type} needs success_rate and ci95 [low, high]")
        rows[task_type] = {"success_rate": _probability(row.get("success_rate"), path,
                                                        f"per_task_type.{task_type}.success_rate"),
                           "ci95": [_probability(v, path, f"per_task_type.{task_type}.ci95") for v in row["ci95"]],
                           "episodes": row.get("episodes")}
    return EvalResult(env=settings["env"], split=settings["split"], success_rate=rate, ci95=(low, high),
                      episodes=episodes, samples_per_task=samples,
                      div_at_k=None if diversity is None else float(diversity), per_task_type=rows, path=path)


def _probability(value: Any, path: Path, name: str) -> float:
    number = finite(value) if not isinstance(value, (bool, str)) else None
    if number is None or not 0.0 <= number <= 1.0:
        raise UserError(f"{path}: {name} must be a number in [0, 1], got {value!r}")
    return number


def _unique_labels(runs: list[RunResults]) -> None:
    """Two rows with the same method get their run directory's name added, so every row is told apart."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
    for run in runs:
        if counts[run.label] > 1:
            run.label = f"{run.label} ({run.directory.name})"
