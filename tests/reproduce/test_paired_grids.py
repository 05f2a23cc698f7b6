"""scripts/paired_grids.py: a recipe variant against its base, row by row, paired over the same episodes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "paired_grids.py"
ENV = "gflowvlm/NumberLine-v0"


def grid(path: Path, cells: list[tuple[str, str, int, str]], env: str = ENV) -> Path:
    path.write_text(json.dumps({"commit": "abc", "cells": [
        {"env": env, "method": m, "split": s, "seed": seed, "outcomes": o, "success_rate": o.count("1") / len(o)}
        for m, s, seed, o in cells] + [{"env": env, "method": "sft", "split": "id", "seed": 0, "task_type": "x",
                                        "outcomes": "0000"}]}))
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def brute_force(a: str, b: str) -> tuple[float, float]:
    """Mean and half-width of a 95% t interval of a_i - b_i, written out (t quantiles for the sizes used here)."""
    d = [int(x) - int(y) for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = (sum((x - mean) ** 2 for x in d) / (n - 1)) ** 0.5
    t = {4: 2.776445, 8: 2.306004}[n - 1]  # t_{0.975, df}
    return 100 * mean, 100 * t * sd / n ** 0.5


def test_each_seed_and_the_pool_are_paired_differences(tmp_path):
    base = grid(tmp_path / "base.json", [("sft", "ood", 0, "10010"), ("sft", "ood", 1, "0100"),
                                         ("ppo", "ood", 0, "11000")])
    variant = grid(tmp_path / "variant.json", [("sft", "ood", 0, "11011"), ("sft", "ood", 1, "0110"),
                                               ("ppo", "ood", 0, "110")])  # ppo: other episodes, not paired
    done = run("--base", str(base), "--variant", str(variant), "--methods", "sft,ppo")
    assert done.returncode == 0, done.stderr
    header, *records = [json.loads(line) for line in done.stdout.splitlines()]
    assert header["base_commit"] == "abc" and "--methods sft,ppo" in header["command"]
    assert [(r["method"], r["split"]) for r in records] == [("sft", "ood")]  # ppo has no pair, task-type rows none
    (sft,) = records
    seed0, seed1 = sft["seeds"]
    assert (seed0["variant"], seed0["base"], seed0["difference"]) == (80.0, 40.0, 40.0)
    mean, half = brute_force("11011", "10010")
    assert abs(seed0["difference"] - mean) < 0.01
    assert abs(seed0["ci95"][1] - (mean + half)) < 0.01 and abs(seed0["ci95"][0] - (mean - half)) < 0.01
    assert seed1["difference"] == 25.0
    mean, half = brute_force("11011" + "0110", "10010" + "0100")
    assert sft["pooled"]["episodes"] == 9 and abs(sft["pooled"]["difference"] - mean) < 0.01
    assert abs(sft["pooled"]["ci95"][1] - (mean + half)) < 0.01


def test_grids_that_cannot_pair_are_one_line_errors(tmp_path):
    base = grid(tmp_path / "base.json", [("sft", "id", 0, "1010")])
    other_env = grid(tmp_path / "bj.json", [("sft", "id", 0, "1010")], env="gflowvlm/Blackjack-v0")
    (tmp_path / "broken.json").write_text("{not json")
    for variant, message in ((other_env, "different envs"), (tmp_path / "broken.json", "not a readable"),
                             (tmp_path / "missing.json", "not a readable")):
        done = run("--base", str(base), "--variant", str(variant), "--methods", "sft")
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = run("--base", str(base), "--variant", str(base), "--methods", "ppo")
    assert done.returncode == 2 and "no row" in done.stderr


def test_a_variant_row_pairs_with_its_base_row_in_one_grid(tmp_path):
    """`VARIANT=BASE`: an ablation row against the row it changes, both from one grid (the same tasks per seed)."""
    one = grid(tmp_path / "grid.json", [("ppo", "ood", 0, "10010"), ("ppo-t07", "ood", 0, "11011"),
                                        ("sft", "ood", 0, "00000")])
    done = run("--base", str(one), "--variant", str(one), "--methods", "ppo-t07=ppo,sft")
    assert done.returncode == 0, done.stderr
    _, pair, same = [json.loads(line) for line in done.stdout.splitlines()]
    assert (pair["method"], pair["base_method"]) == ("ppo-t07", "ppo")
    mean, half = brute_force("11011", "10010")
    (seed0,) = pair["seeds"]
    assert (seed0["variant"], seed0["base"]) == (80.0, 40.0) and abs(seed0["difference"] - mean) < 0.01
    assert abs(seed0["ci95"][0] - (mean - half)) < 0.01
    assert (same["method"], same["base_method"], same["pooled"]["difference"]) == ("sft", "sft", 0.0)
    for spec in ("ppo-t07=", "=ppo", ","):
        done = run("--base", str(one), "--variant", str(one), "--methods", spec)
        assert done.returncode == 2 and "--methods" in done.stderr and len(done.stderr.strip().splitlines()) == 1
