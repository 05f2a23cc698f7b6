"""Comparison of runs as the papers show it: a markdown table (rows = methods, columns = task x split, success %
with its 95% interval, Div@K, ALFWorld's task types) and PNG plots (success vs environment steps; bars per split).

Input is already loaded and checked (gflowvlm/commands/compare.py reads the files); everything here is rendering.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ALGORITHM_NAMES = {"tb": "GFlowVLM TB", "vartb": "GFlowVLM Var-TB", "subtb": "GFlowVLM SubTB",
                   "db": "GFlowVLM DB", "ppo": "RL4VLM (PPO)", "grpo": "GRPO", "sft": "SFT"}
GFLOWNET_ALGORITHMS = ("tb", "vartb", "subtb", "db")
# ALFWorld's task types in the order and with the column names of the papers' tables.
TASK_TYPE_NAMES = {"pick_and_place_simple": "Pick", "look_at_obj_in_light": "Look",
                   "pick_clean_then_place_in_recep": "Clean", "pick_heat_then_place_in_recep": "Heat",
                   "pick_cool_then_place_in_recep": "Cool", "pick_two_obj_and_place": "Pick2"}
SPLIT_ORDER = ("id", "ood")
# Columns follow the papers' tables: the card games first, ALFWorld last; other envs after them by name.
ENV_ORDER = ("gflowvlm/NumberLine-v0", "gflowvlm/Blackjack-v0", "gflowvlm/EZPoints-v0", "gflowvlm/Points24-v0",
             "gflowvlm/ALFWorld-v0")


@dataclass(frozen=True)
class EvalResult:
    env: str
    split: str
    success_rate: float
    ci95: tuple[float, float]
    episodes: int
    samples_per_task: int = 1
    div_at_k: float | None = None
    per_task_type: dict[str, dict] = field(default_factory=dict)  # type -> {success_rate, ci95, episodes}
    path: Path | None = None


@dataclass
class RunResults:
    directory: Path
    label: str  # the row's name: method and run directory
    algorithm: str
    env_id: str  # the environment it trained on
    curve: list[tuple[float, float]] = field(default_factory=list)  # (env steps, success rate) from metrics.jsonl
    env_steps: int | None = None  # environment steps at the last logged step
    evals: dict[tuple[str, str], EvalResult] = field(default_factory=dict)  # (env id, split) -> result


def method_name(algorithm: str, off_policy: bool, grpo_baseline: str | None = None) -> str:
    """The row name of a run; grpo with grpo.baseline=rloo is the RLOO row (the leave-one-out baseline)."""
    if algorithm == "grpo" and grpo_baseline == "rloo":
        return "RLOO"
    name = ALGORITHM_NAMES.get(algorithm, algorithm)
    if algorithm in GFLOWNET_ALGORITHMS:
        name += " off-policy" if off_policy else " on-policy"
    return name


def env_name(env_id: str) -> str:
    """'gflowvlm/NumberLine-v0' -> 'NumberLine'."""
    return re.sub(r"-v\d+$", "", env_id.split("/")[-1])


def split_name(split: str) -> str:
    return split.upper()


def task_type_name(task_type: str) -> str:
    return TASK_TYPE_NAMES.get(task_type, task_type)


def _split_key(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def _env_key(env_id: str) -> tuple[int, str]:
    return (ENV_ORDER.index(env_id) if env_id in ENV_ORDER else len(ENV_ORDER), env_id)


def _type_key(task_type: str) -> tuple[int, str]:
    names = list(TASK_TYPE_NAMES)
    return (names.index(task_type) if task_type in names else len(names), task_type)


def percent_cell(rate: float, ci95: Sequence[float]) -> str:
    return f"{100 * rate:.1f} [{100 * ci95[0]:.1f}, {100 * ci95[1]:.1f}]"


def eval_keys(runs: Sequence[RunResults]) -> list[tuple[str, str]]:
    """Every (env id, split) some run was evaluated on, grouped by env, ID before OOD."""
    keys = {key for run in runs for key in run.evals}
    envs = sorted({env for env, _ in keys}, key=_env_key)
    return [(env, split) for env in envs for split in sorted({s for e, s in keys if e == env}, key=_split_key)]


def markdown_table(runs: Sequence[RunResults]) -> str:
    """Rows = runs; columns = env x split success % [95% CI], task types where reported, Div@K where available."""
    headers = ["Method", "Run", "Env steps"]
    columns: list = []  # one function per column: run -> cell text
    keys = eval_keys(runs)
    for env in dict.fromkeys(env for env, _ in keys):
        splits = [split for e, split in keys if e == env]
        for split in splits:
            results = [run.evals[(env, split)] for run in runs if (env, split) in run.evals]
            task_types = sorted({t for result in results for t in result.per_task_type}, key=_type_key)
            for task_type in task_types:
                headers.append(f"{env_name(env)} {split_name(split)} {task_type_name(task_type)}")
                columns.append(_task_type_cell(env, split, task_type))
            headers.append(f"{env_name(env)} {split_name(split)}" + (" all" if task_types else ""))
            columns.append(_success_cell(env, split))
        for split in splits:
            results = [run.evals[(env, split)] for run in runs if (env, split) in run.evals]
            with_div = [result for result in results if result.div_at_k is not None]
            if not with_div:
                continue
            ks = sorted({result.samples_per_task for result in with_div})
            headers.append(f"{env_name(env)} {split_name(split)} Div@{ks[0] if len(ks) == 1 else 'K'}")
            columns.append(_div_cell(env, split, show_k=len(ks) > 1))
    rows = []
    for run in runs:
        steps = "-" if run.env_steps is None else f"{run.env_steps:,}"
        rows.append([_escape(run.label), _escape(str(run.directory)), steps] + [column(run) for column in columns])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _success_cell(env: str, split: str):
    def cell(run: RunResults) -> str:
        result = run.evals.get((env, split))
        return "-" if result is None else percent_cell(result.success_rate, result.ci95)
    return cell


def _task_type_cell(env: str, split: str, task_type: str):
    def cell(run: RunResults) -> str:
        result = run.evals.get((env, split))
        row = result.per_task_type.get(task_type) if result else None
        return "-" if row is None else percent_cell(row["success_rate"], row["ci95"])
    return cell


def _div_cell(env: str, split: str, show_k: bool):
    def cell(run: RunResults) -> str:
        result = run.evals.get((env, split))
        if result is None or result.div_at_k is None:
            return "-"
        return f"{result.div_at_k:.2f}" + (f" (K={result.samples_per_task})" if show_k else "")
    return cell


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def sources(runs: Sequence[RunResults]) -> str:
    """Which files each row was read from, with episode counts (a reader can check any cell)."""
    lines = []
    for run in runs:
        lines.append(f"- {_escape(run.label)}: `{run.directory}`")
        for (env, split), result in sorted(run.evals.items(),
                                           key=lambda item: (_env_key(item[0][0]), _split_key(item[0][1]))):
            lines.append(f"  - {env} {split}: {result.episodes} episodes, K={result.samples_per_task} "
                         f"(`{result.path}`)")
    return "\n".join(lines)


# ----- plots ------------------------------------------------------------------------------------------------------
def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing (the first points are not pulled towards 0)."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, average = [], 0.0
    for index, value in enumerate(values, 1):
        average = weight * average + (1.0 - weight) * value
        out.append(average / (1.0 - weight ** index))
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def style_curve_axis(axis, title: str, ylabel: str = "success rate (%)") -> None:
    """A rate (%) against environment steps, the look every training-curve plot shares."""
    axis.set_title(title)
    axis.set_xlabel("environment steps")
    axis.set_ylabel(ylabel)
    axis.set_ylim(-2, 102)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")


def save_figure(plt, figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_success_curves(runs: Sequence[RunResults], path: Path, smoothing: float = 0.6) -> bool:
    """Success rate (%) vs environment steps, one panel per training env; False when no run logged any."""
    with_curves = [(index, run) for index, run in enumerate(runs) if run.curve]
    if not with_curves:
        return False
    plt = _pyplot()
    envs = sorted({run.env_id for _, run in with_curves}, key=_env_key)
    figure, axes = plt.subplots(1, len(envs), figsize=(6.4 * len(envs), 4.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, env in zip(axes[0], envs):
        for index, run in with_curves:
            if run.env_id != env:
                continue
            color = colors[index % len(colors)]
            steps = [x for x, _ in run.curve]
            rates = [100 * y for _, y in run.curve]
            axis.plot(steps, rates, color=color, alpha=0.25, linewidth=1)
            axis.plot(steps, smooth(rates, smoothing), color=color, linewidth=2, label=run.label)
        style_curve_axis(axis, f"{env_name(env)}: training success (EMA {smoothing:g})")
    save_figure(plt, figure, path)
    return True


def grouped_bars(axis, points, slot: int, width: float, color, label: str) -> None:
    """One series of a grouped bar chart: (group position, rate, low, high) per bar, rates in [0, 1], drawn in %
    with the interval as the error bar; `slot` places the series within each group."""
    if not points:
        return
    xs = [position - 0.4 + width * (slot + 0.5) for position, *_ in points]
    heights = [100 * rate for _, rate, _, _ in points]
    errors = [[max(0.0, 100 * (rate - low)) for _, rate, low, _ in points],
              [max(0.0, 100 * (high - rate)) for _, rate, _, high in points]]
    axis.bar(xs, heights, width, yerr=errors, capsize=3, color=color, label=label)


def plot_split_bars(runs: Sequence[RunResults], path: Path) -> bool:
    """Evaluation success (%) per split with Wilson 95% error bars, one panel per env; False without evaluations."""
    keys = eval_keys(runs)
    if not keys:
        return False
    plt = _pyplot()
    envs = list(dict.fromkeys(env for env, _ in keys))
    figure, axes = plt.subplots(1, len(envs), figsize=(max(5.0, 2.0 + 1.2 * len(runs)) * len(envs), 4.4),
                                squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, env in zip(axes[0], envs):
        splits = [split for e, split in keys if e == env]
        # Only the runs evaluated on this env share its groups; a run keeps its colour across panels.
        present = [(index, run) for index, run in enumerate(runs) if any((env, s) in run.evals for s in splits)]
        width = 0.8 / len(present)
        for slot, (index, run) in enumerate(present):
            points = [(position, result.success_rate, *result.ci95) for position, split in enumerate(splits)
                      if (result := run.evals.get((env, split))) is not None]
            grouped_bars(axis, points, slot, width, colors[index % len(colors)], run.label)
        axis.set_xticks(range(len(splits)), [split_name(split) for split in splits])
        axis.set_xlim(-0.6, len(splits) - 0.4)
        axis.set_title(f"{env_name(env)}: evaluation success (95% CI)")
        axis.set_ylabel("success rate (%)")
        axis.set_ylim(0, 105)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def finite(value) -> float | None:
    """A metrics.jsonl number as float, None for absent / non-finite ("nan" is written as a string)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
