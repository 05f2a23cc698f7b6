"""report.md and plots of a reproduction, rendered from results.json alone.

Table layout as the papers': rows = the reference rows (random, oracle) then the methods; columns = splits (and
ALFWorld's task types), Div@K, parse rate. Each entry is the mean over seeds with its 95% t interval over seeds and
the per-seed values, so a reader sees both how large a gap is and how much the seeds disagree.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gflowvlm.report import (_pyplot, _type_key, env_name, grouped_bars, save_figure, split_name, style_curve_axis,
                             task_type_name)
from gflowvlm.reproduce.results import aggregate, seed_stat
from gflowvlm.stats import paired_difference

REFERENCE_LABELS = {"random": "random (uniform admissible actions)", "oracle": "oracle (the env's expert)"}


def row_order(results: dict) -> list[str]:
    present = {cell["method"] for cell in results["cells"]}
    order = ["random", "oracle", *results.get("methods", [])]
    return [m for m in dict.fromkeys(order) if m in present]


def entry(stat: dict | None, percent: bool = True, digits: int = 1) -> str:
    """'93.8 [88.1, 99.5] (93.8, 95.3, 92.2)'; one seed: '93.8 (seed 0)'; '-' when absent."""
    if stat is None:
        return "-"
    scale = 100.0 if percent else 1.0

    def fmt(value: float) -> str:
        return f"{scale * value:.{digits}f}"
    if stat["ci95"] is None:
        return f"{fmt(stat['mean'])} (seed {stat['seeds'][0]})"
    low, high = stat["ci95"]
    if percent:  # a rate's t interval can leave [0, 1] with few seeds; the rate itself cannot
        low, high = max(0.0, low), min(1.0, high)
    return f"{fmt(stat['mean'])} [{fmt(low)}, {fmt(high)}] ({', '.join(fmt(v) for v in stat['values'])})"


def columns(results: dict) -> list[tuple[str, str, str | None, bool]]:
    """(header, split, task type, percent) of the success columns, in the papers' order."""
    cells = results["cells"]
    out = []
    for split in results["evaluation"]["splits"]:
        types = sorted({c["task_type"] for c in cells if c["split"] == split and c.get("task_type")}, key=_type_key)
        for task_type in types:
            out.append((f"{split_name(split)} {task_type_name(task_type)}", split, task_type, True))
        out.append((f"{split_name(split)}" + (" all" if types else ""), split, None, True))
    return out


def markdown(results: dict) -> str:
    cells = results["cells"]
    labels = results.get("method_labels", {})
    methods = row_order(results)
    success_columns = columns(results)
    headers = ["Method"] + [header for header, *_ in success_columns]
    splits = results["evaluation"]["splits"]
    k = results["evaluation"].get("diversity_k") or 0
    if k:
        headers += [f"{split_name(split)} Div@{k}" for split in splits]
        headers += [f"{split_name(split)} Div@{k} samples solved" for split in splits]
    headers += [f"{split_name(split)} parse rate" for split in splits]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for method in methods:
        row = [labels.get(method) or REFERENCE_LABELS.get(method, method)]
        row += [entry(aggregate(cells, method, split, task_type=task_type)) for _, split, task_type, _ in
                success_columns]
        if k:
            row += [entry(aggregate(cells, method, split, "div_at_k"), percent=False, digits=2) for split in splits]
            row += [entry(aggregate(cells, method, split, "div_success_rate")) for split in splits]
        row += [entry(aggregate(cells, method, split, "parse_rate")) for split in splits]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    env = env_name(results["env"])
    seeds = results["seeds"]
    evaluation = results["evaluation"]
    horizon = "; ".join(f"{split_name(split)} {_horizon(evaluation, split)}" for split in evaluation["splits"])
    notes = [
        f"# {env}: reproduction ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}: {', '.join(map(str, seeds))})",
        "",
        f"Success % ({'greedy' if evaluation['greedy'] else 'sampled'}, {evaluation['episodes']} episodes per split "
        "and seed, the same tasks for every row of a seed): mean over seeds [95% t interval over seeds] (per-seed "
        "values). Parse rate: share of steps whose response named an admissible action (the rest fell back to a "
        f"{evaluation['unparseable']} action). "
        + (f"Div@{k}: distinct successful trajectories among {k} samples of a solved task "
           f"({evaluation['diversity_tasks']} tasks per split); read it beside the share of those samples that "
           f"solved their task (Div@{k} samples solved), since it counts only the solved tasks. " if k else ""),
        "",
        f"Every method but SFT trains from the same SFT model of its seed for {results['budget_env_steps']:,} "
        f"on-policy environment steps. Episode horizon: {horizon}. Expert (SFT data, injection, oracle row): "
        f"{results.get('expert_strategy') or 'the env default'}.",
    ]
    if evaluation.get("protocol"):
        notes += ["", f"Protocol: {evaluation['protocol']}"]
    notes += ["", "\n".join(lines), "",
              f"Commit `{results['commit']}`; command `{results['command']}`; recipe `{results['recipe']}`."
              + (f" The cells ran at {', '.join(f'`{c}`' for c in results['cell_commits'])}."
                 if results.get("cell_commits") and results["cell_commits"] != [results["commit"]] else ""),
              "Every number above is computed from `results.json` in this folder (one row per method, seed and "
              "split)."]
    env_steps = _budget_used(cells)
    if env_steps:
        notes.append("Environment steps used (mean over seeds): " + ", ".join(
            f"{labels.get(m, m)} {v:,.0f}" for m, v in env_steps.items()) + ".")
    efficiency = _efficiency_line(results)
    if efficiency:
        notes.append(efficiency)
    for split in results["evaluation"]["splits"]:
        paired = _paired_gain_line(results, split)
        if paired:
            notes.append(paired)
    mean_success = _mean_success_line(results)
    if mean_success:
        notes.append(mean_success)
    if results.get("alignment"):
        notes.append(_alignment_line(results["alignment"]))
    if results.get("cell_seconds_total") is not None:
        notes.append(f"Compute: {results['cell_seconds_total'] / 60:.1f} min of cell time in all (tiny models, SFT "
                     f"data, training and evaluation; threads: {results.get('threads', {}).get('torch_threads')}).")
    return "\n".join(notes) + "\n"


CURVE_EMA = 0.6  # the smoothing of every training curve: the plots and the sample-efficiency line read the same


def steps_to_threshold(curve, threshold: float, weight: float = CURVE_EMA) -> float | None:
    """Environment steps at the first iteration whose smoothed training success (the plotted EMA) reaches
    `threshold`; None if it never does. `curve`: [[env steps, success, ...], ...]."""
    rows = [row for row in curve if len(row) >= 2 and row[1] is not None]
    if not rows:
        return None
    for row, value in zip(rows, _ema((row[1] for row in rows), weight)):
        if value >= threshold:
            return float(row[0])
    return None


def _efficiency_line(results: dict) -> str | None:
    """Sample efficiency, the papers' SubTB-vs-TB claim: env steps until training success first reaches the
    threshold, the mean over the seeds that reached it, and how many did."""
    threshold = (results.get("evaluation") or {}).get("success_threshold")
    if not threshold:  # a results.json from before the threshold existed
        return None
    curves = results.get("curves") or {}
    labels = results.get("method_labels", {})
    parts = []
    for method in [m for m in row_order(results) if curves.get(m)]:
        if not any(len(curve) >= 2 for curve in curves[method].values()):
            continue  # SFT: no on-policy steps
        per_seed = [steps_to_threshold(curve, threshold) for curve in curves[method].values()]
        reached = [steps for steps in per_seed if steps is not None]
        mean = f"{sum(reached) / len(reached):,.0f}" if reached else "never"
        parts.append(f"{labels.get(method, method)} {mean} ({len(reached)}/{len(per_seed)} seeds)")
    if not parts:
        return None
    return (f"Environment steps until the training success (EMA {CURVE_EMA}) first reaches {100 * threshold:.0f}%: "
            + ", ".join(parts) + ".")


def mean_training_success(curve) -> float | None:
    """The env-step-weighted mean of training success over a run: the area under the success-vs-env-steps step
    curve, divided by the env steps it spans. Each iteration's on-policy success counts for the env steps that
    iteration took, so with equal budgets a method that learns sooner scores higher, with no threshold to fall on
    the right side of by one lucky batch. `curve`: [[cumulative env steps, success, ...], ...], in order; steps of
    an iteration without a success value count towards the next one that has one. None if no steps are covered."""
    area, covered, previous = 0.0, 0.0, 0.0
    for row in curve:
        if len(row) < 2 or row[1] is None:
            continue
        steps = float(row[0]) - previous
        if steps > 0:
            area += steps * float(row[1])
            covered += steps
            previous = float(row[0])
    return area / covered if covered > 0 else None


def _mean_success_line(results: dict) -> str | None:
    """The sample-efficiency claim read from the whole curve: mean training success over the budget per method,
    over seeds with its 95% t interval."""
    curves = results.get("curves") or {}
    labels = results.get("method_labels", {})
    parts = []
    for method in [m for m in row_order(results) if curves.get(m)]:
        seeds = sorted((seed for seed, curve in curves[method].items() if len(curve) >= 2), key=int)
        values = [mean_training_success(curves[method][seed]) for seed in seeds]
        kept = [(int(seed), value) for seed, value in zip(seeds, values) if value is not None]
        if not kept:
            continue  # SFT: no on-policy steps
        stat = seed_stat([value for _, value in kept], [seed for seed, _ in kept])
        parts.append(f"{labels.get(method, method)} {entry(stat)}")
    if not parts:
        return None
    return ("Mean training success over the environment-step budget (on-policy samples, each iteration weighted "
            "by its env steps: the area under the curve; higher = learned sooner), mean [95% t interval] "
            "(per seed): " + ", ".join(parts) + ".")


def _paired_gain_line(results: dict, split: str, baseline: str = "sft") -> str | None:
    """Each row's gain on SFT, seed by seed, paired over the episodes both faced (the same tasks and deals):
    differences of a few points that per-row Wilson intervals cannot separate. Only cells that recorded their
    per-episode outcomes take part."""
    cells = [c for c in results["cells"] if c["split"] == split and c.get("task_type") is None and c.get("outcomes")]
    base = {c["seed"]: c["outcomes"] for c in cells if c["method"] == baseline}
    labels = results.get("method_labels", {})
    parts = []
    for method in row_order(results):
        if method == baseline:
            continue
        seeds = [c for c in sorted(cells, key=lambda c: c["seed"]) if c["method"] == method
                 and len(base.get(c["seed"], "")) == len(c["outcomes"])]
        if not seeds:
            continue
        gains = []
        for cell in seeds:
            mean, interval = paired_difference(cell["outcomes"], base[cell["seed"]])
            span = f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]" if interval else ""
            gains.append(f"seed {cell['seed']} {100 * mean:+.1f}{span}")
        parts.append(f"{labels.get(method) or REFERENCE_LABELS.get(method, method)}: " + ", ".join(gains))
    if not parts:
        return None
    return (f"{split_name(split)} gain on SFT in points, paired over the same episodes (95% t interval over "
            "episodes, per seed): " + "; ".join(parts) + ".")


def _alignment_line(alignment: dict) -> str:
    """How well each seed's tiny VLM reads the env's images: a method cannot beat what its model cannot see."""
    parts = []
    for seed, summary in sorted(alignment.items(), key=lambda item: int(item[0])):
        missed = "" if summary.get("reached_target") else ", target missed"
        parts.append(f"seed {seed} {100 * summary['accuracy']:.1f}% after {summary['steps']:,} steps{missed}")
    target = next(iter(alignment.values())).get("target_accuracy")
    goal = f" (target {100 * target:.0f}%)" if target is not None else ""
    line = f"Tiny VLM held-out exact captions{goal}: " + "; ".join(parts) + "."
    reused = [(seed, summary) for seed, summary in sorted(alignment.items(), key=lambda item: int(item[0]))
              if summary.get("reused_from")]
    if reused:  # copied from another grid (--models-from): where from, and the code that built it
        line += " Reused, not rebuilt: " + "; ".join(
            f"seed {seed} from {summary['reused_from']} (built at {summary.get('built_at', 'unknown')})"
            for seed, summary in reused) + "."
    return line


def _horizon(evaluation: dict, split: str) -> str:
    if split in (evaluation.get("max_steps") or {}):
        return f"{evaluation['max_steps'][split]} steps"
    options = (evaluation.get("env_kwargs") or {}).get(split)
    if options:
        return "the env's, with " + ", ".join(f"{k}={v}" for k, v in options.items())
    return "the env's own"


def _budget_used(cells: Sequence[dict]) -> dict[str, float]:
    used: dict[str, list[int]] = {}
    for cell in cells:
        if cell.get("task_type") is None and cell["split"] == cells[0]["split"] and cell["env_steps"]:
            used.setdefault(cell["method"], []).append(cell["env_steps"])
    return {m: sum(v) / len(v) for m, v in used.items()}


# ----- plots ----------------------------------------------------------------------------------------------------
CURVE_COLUMNS = {1: "training success", 2: "training parse rate"}  # columns of results.json's curves after env steps


def plot_curves(results: dict, path: Path, points: int = 50, column: int = 1) -> bool:
    """Training success (column 1) or parse rate (column 2) vs environment steps per method: the mean over seeds
    and a band from min to max. Iterations without the column's value (None, or an older two-column curve) are
    left out."""
    import numpy as np

    def usable(curve) -> np.ndarray:
        rows = np.asarray([row[:column + 1] for row in curve if len(row) > column], dtype=float)
        rows = rows.reshape(-1, column + 1)
        return rows[np.isfinite(rows[:, column])] if len(rows) else rows

    curves = {m: [c for c in (usable(curve) for curve in per_seed.values()) if len(c) >= 2]
              for m, per_seed in (results.get("curves") or {}).items()}
    curves = {m: c for m, c in curves.items() if c}
    if not curves:
        return False
    plt = _pyplot()
    labels = results.get("method_labels", {})
    figure, axis = plt.subplots(figsize=(7.5, 4.6))
    for method in [m for m in row_order(results) if m in curves]:
        per_seed = curves[method]
        end = min(curve[-1, 0] for curve in per_seed)
        grid = np.linspace(max(curve[0, 0] for curve in per_seed), end, points)
        values = np.stack([np.interp(grid, curve[:, 0], _ema(curve[:, column])) for curve in per_seed]) * 100
        line, = axis.plot(grid, values.mean(0), linewidth=2, label=labels.get(method, method))
        if len(per_seed) > 1:
            axis.fill_between(grid, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    style_curve_axis(axis, f"{env_name(results['env'])}: {CURVE_COLUMNS[column]} (EMA {CURVE_EMA}; band: min-max over "
                           "seeds)", ylabel=f"{CURVE_COLUMNS[column]} (%)")
    save_figure(plt, figure, path)
    return True


def _ema(values, weight: float = CURVE_EMA):
    from gflowvlm.report import smooth

    return smooth(list(values), weight)


def plot_bars(results: dict, path: Path) -> bool:
    """Evaluation success per split and method: mean over seeds, error bars = 95% t interval (none for one seed)."""
    cells = results["cells"]
    splits = results["evaluation"]["splits"]
    methods = row_order(results)
    if not cells or not methods:
        return False
    plt = _pyplot()
    labels = results.get("method_labels", {})
    figure, axis = plt.subplots(figsize=(max(6.0, 1.0 + 0.9 * len(methods) * len(splits)) + 2.5, 4.6))
    width = 0.8 / len(methods)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for slot, method in enumerate(methods):
        points = []
        for position, split in enumerate(splits):
            stat = aggregate(cells, method, split)
            if stat is not None:
                low, high = stat["ci95"] if stat["ci95"] else (stat["mean"], stat["mean"])
                points.append((position, stat["mean"], low, high))
        grouped_bars(axis, points, slot, width, colors[slot % len(colors)],
                     labels.get(method) or REFERENCE_LABELS.get(method, method))
    axis.set_xticks(range(len(splits)), [split_name(split) for split in splits])
    axis.set_title(f"{env_name(results['env'])}: evaluation success (mean over seeds, 95% t interval)")
    axis.set_ylabel("success rate (%)")
    axis.set_ylim(0, 105)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never on them
    save_figure(plt, figure, path)
    return True


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    """report.md, success_curves.png, parse_rate_curves.png, success_by_split.png into `out`; returns what was
    written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.md"]
    (out / "report.md").write_text(markdown(results), encoding="utf-8")
    if plot_curves(results, out / "success_curves.png"):
        written.append(out / "success_curves.png")
    # Where the online methods lose the response format, this shows when (the fallback chooses from then on).
    if plot_curves(results, out / "parse_rate_curves.png", column=2):
        written.append(out / "parse_rate_curves.png")
    if plot_bars(results, out / "success_by_split.png"):
        written.append(out / "success_by_split.png")
    return written
