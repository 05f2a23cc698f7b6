"""`gflowvlm compare` on hand-written run directories: the table, comparison.md, the PNG plots, and one-line errors
for missing or garbled files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from gflowvlm.cli import UserError
from gflowvlm.commands import compare
from gflowvlm.config import RunConfig, config_to_dict
from gflowvlm.report import smooth
from gflowvlm.stats import wilson_interval

ROOT = Path(__file__).resolve().parents[2]
NUMBER_LINE = "gflowvlm/NumberLine-v0"
ALFWORLD = "gflowvlm/ALFWorld-v0"


def eval_result(env: str, split: str, successes: int, episodes: int, k: int = 1, div: float | None = None,
                task_types: dict[str, tuple[int, int]] | None = None) -> dict:
    data = {"success_rate": successes / episodes, "ci95": list(wilson_interval(successes, episodes)),
            "episodes": episodes, "mean_return": 1.0, "mean_length": 3.0, "illegal_rate": 0.0, "div_at_k": div,
            "settings": {"env": env, "split": split, "seed": 0, "samples_per_task": k, "greedy": False,
                         "temperature": 1.0}}
    if task_types:
        data["per_task_type"] = {name: {"episodes": n, "successes": s, "success_rate": s / n,
                                        "ci95": list(wilson_interval(s, n))} for name, (s, n) in task_types.items()}
    return data


def write_run(directory: Path, algorithm: str, env: str, evals: dict[str, dict], rates=None,
              off_policy: bool = False) -> Path:
    directory.mkdir(parents=True)
    run_config = RunConfig(algorithm=algorithm, output_dir=str(directory))
    run_config.env.id = env
    run_config.collect.expert_injection = off_policy
    (directory / "config.yaml").write_text(yaml.safe_dump(config_to_dict(run_config), sort_keys=False))
    rates = rates if rates is not None else [min(1.0, 0.05 * step) for step in range(1, 21)]
    with open(directory / "metrics.jsonl", "w", encoding="utf-8") as handle:
        for step, rate in enumerate(rates, 1):
            handle.write(json.dumps({"step": step, "env_steps": 64 * step, "loss": 1.0 / step,
                                     "success_rate": rate}) + "\n")
    for relative, data in evals.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    return directory


@pytest.fixture
def runs(tmp_path):
    subtb = write_run(tmp_path / "nl_subtb", "subtb", NUMBER_LINE, {
        "eval_NumberLine-v0_id.json": eval_result(NUMBER_LINE, "id", 64, 64, k=4, div=1.25),
        "eval_NumberLine-v0_ood.json": eval_result(NUMBER_LINE, "ood", 11, 64, k=4, div=1.5),
        # superseded by the run directory's own file for the same env and split
        "final/eval_NumberLine-v0_id.json": eval_result(NUMBER_LINE, "id", 1, 64)}, off_policy=True)
    ppo = write_run(tmp_path / "nl_ppo", "ppo", NUMBER_LINE, {
        "final/eval_NumberLine-v0_id.json": eval_result(NUMBER_LINE, "id", 57, 64),
        "checkpoint-00000010/eval_NumberLine-v0_id.json": eval_result(NUMBER_LINE, "id", 3, 64)},
        rates=[0.1, "nan", 0.3, 0.5])
    alfworld = write_run(tmp_path / "alf_subtb", "subtb", ALFWORLD, {
        "eval_ALFWorld-v0_id.json": eval_result(ALFWORLD, "id", 13, 50, k=2, div=1.1, task_types={
            "look_at_obj_in_light": (3, 20), "pick_and_place_simple": (10, 30)})})
    return [subtb, ppo, alfworld]


def test_compare_prints_the_table_and_writes_markdown_and_plots(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert compare.main([*map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == ["Method", "Run", "Env steps", "NumberLine ID", "NumberLine OOD", "NumberLine ID Div@4",
                      "NumberLine OOD Div@4", "ALFWorld ID Pick", "ALFWorld ID Look", "ALFWorld ID all",
                      "ALFWorld ID Div@2"]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    assert set(rows) == {"GFlowVLM SubTB off-policy", "RL4VLM (PPO)", "GFlowVLM SubTB on-policy"}
    subtb = rows["GFlowVLM SubTB off-policy"]
    low, high = wilson_interval(11, 64)
    assert subtb[header.index("NumberLine ID")] == f"100.0 [{100 * wilson_interval(64, 64)[0]:.1f}, 100.0]"
    assert subtb[header.index("NumberLine OOD")] == f"{100 * 11 / 64:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
    assert subtb[header.index("NumberLine OOD Div@4")] == "1.50"
    assert subtb[header.index("Env steps")] == "1,280"
    assert subtb[header.index("ALFWorld ID all")] == "-"
    ppo = rows["RL4VLM (PPO)"]  # final/ wins over the older checkpoint; no OOD evaluation
    assert ppo[header.index("NumberLine ID")].startswith(f"{100 * 57 / 64:.1f} [")
    assert ppo[header.index("NumberLine OOD")] == "-" and ppo[header.index("NumberLine ID Div@4")] == "-"
    alfworld = rows["GFlowVLM SubTB on-policy"]
    assert alfworld[header.index("ALFWorld ID Pick")].startswith("33.3 [")
    assert alfworld[header.index("ALFWorld ID Look")].startswith("15.0 [")
    assert alfworld[header.index("ALFWorld ID all")].startswith("26.0 [")
    assert alfworld[header.index("ALFWorld ID Div@2")] == "1.10"

    markdown = (out / "comparison.md").read_text(encoding="utf-8")
    assert table[0] in markdown and table[-1] in markdown
    assert "eval_NumberLine-v0_ood.json" in markdown  # the sources are listed
    for name in ("success_curves.png", "success_by_split.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert width >= 500 and height == 440
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something was drawn


def test_runs_without_evaluations_still_get_curves(tmp_path, capsys):
    run = write_run(tmp_path / "sft", "sft", NUMBER_LINE, {})
    assert compare.main([str(run), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| SFT |" in printed and "no evaluation bars" in printed
    assert (tmp_path / "out" / "success_curves.png").is_file()
    assert not (tmp_path / "out" / "success_by_split.png").exists()


def test_same_method_twice_gets_the_directory_in_its_label(tmp_path, capsys):
    first = write_run(tmp_path / "seed0", "db", NUMBER_LINE, {})
    second = write_run(tmp_path / "seed1", "db", NUMBER_LINE, {})
    assert compare.main([str(first), str(second), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "GFlowVLM DB on-policy (seed0)" in printed and "GFlowVLM DB on-policy (seed1)" in printed


def test_grpo_and_rloo_runs_are_rows_of_their_own(tmp_path, capsys):
    grpo = write_run(tmp_path / "nl_grpo", "grpo", NUMBER_LINE, {
        "eval_NumberLine-v0_id.json": eval_result(NUMBER_LINE, "id", 40, 64)})
    rloo = write_run(tmp_path / "nl_rloo", "grpo", NUMBER_LINE, {})
    config = yaml.safe_load((rloo / "config.yaml").read_text())
    config["grpo"]["baseline"] = "rloo"
    (rloo / "config.yaml").write_text(yaml.safe_dump(config))
    ppo = write_run(tmp_path / "nl_ppo", "ppo", NUMBER_LINE, {})
    assert compare.main([str(grpo), str(rloo), str(ppo), "--out", str(tmp_path / "out")]) == 0
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert rows[2:] == ["GRPO", "RLOO", "RL4VLM (PPO)"]


def test_smoothing_is_a_debiased_moving_average():
    assert smooth([0.5] * 5, 0.9) == pytest.approx([0.5] * 5)  # no pull towards zero
    assert smooth([0.0, 1.0, 0.0], 0.0) == [0.0, 1.0, 0.0]
    rising = smooth([0.0, 0.0, 1.0, 1.0], 0.5)
    assert rising[1] == 0.0 and 0.0 < rising[2] < 1.0 and rising[2] < rising[3] < 1.0
    with pytest.raises(ValueError):
        smooth([1.0], 1.0)


def _break(run: Path, case: str) -> str:
    """Damage one file of a run; return the text the error message must contain."""
    if case == "missing config":
        (run / "config.yaml").unlink()
        return str(run / "config.yaml")
    if case == "garbled config":
        (run / "config.yaml").write_text("algorithm: [subtb\n")
        return f"{run / 'config.yaml'} is not valid YAML"
    if case == "missing metrics":
        (run / "metrics.jsonl").unlink()
        return str(run / "metrics.jsonl")
    if case == "garbled metrics":
        with open(run / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write('{"step": 21, "loss": \n')
        return f"{run / 'metrics.jsonl'}:21 is not valid JSON"
    if case == "garbled eval":
        (run / "eval_NumberLine-v0_ood.json").write_text('{"success_rate": 0.5')
        return f"{run / 'eval_NumberLine-v0_ood.json'} is not valid JSON"
    if case == "eval out of range":
        data = json.loads((run / "eval_NumberLine-v0_ood.json").read_text())
        data["success_rate"] = 1.7
        (run / "eval_NumberLine-v0_ood.json").write_text(json.dumps(data))
        return "success_rate must be a number in [0, 1]"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing config", "garbled config", "missing metrics", "garbled metrics",
                                  "garbled eval", "eval out of range"])
def test_missing_or_garbled_files_are_named(runs, tmp_path, case):
    expected = _break(runs[0], case)
    with pytest.raises(UserError) as error:
        compare.main([*map(str, runs), "--out", str(tmp_path / "out")])
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_compare_command_line_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gflowvlm", "compare", str(tmp_path / "absent")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "run directory not found" in lines[0] and str(tmp_path / "absent") in lines[0]
