"""The end-to-end demo (the README's main command).

The full demo is the long check (`make test-slow`, about 10-15 minutes on 2 cores): it asserts the issue's
figure, SubTB >= 90% NumberLine in-distribution success. The quick test runs the same pipeline with tiny budgets
to check that every stage is wired and that a rerun resumes instead of redoing finished stages.
"""
import json
import subprocess
import sys

import pytest


def run_demo(out, *args, timeout=3000):
    result = subprocess.run([sys.executable, "-m", "gflowvlm", "demo", "--out", str(out), *args],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_demo_pipeline_is_wired_and_resumes(tmp_path):
    quick = ["--align-steps", "5", "--sft-samples", "64", "--sft-steps", "3", "--budget-env-steps", "6",
             "--eval-episodes", "4", "--eval-max-steps", "3", "--max-new-tokens", "64"]
    run_demo(tmp_path, *quick)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["success"]) == {f"{method} {split}" for method in ("random", "oracle", "sft", "subtb-off")
                                       for split in ("id", "ood")}
    assert (tmp_path / "report" / "comparison.md").read_text().count("NumberLine") >= 2
    assert "GFlowVLM SubTB off-policy" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "seed0" / "subtb-off" / "run" / "final" / "adapter_config.json").exists()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["command"].startswith("gflowvlm reproduce --recipe")
    assert "--methods sft,subtb-off" in results["command"]
    again = run_demo(tmp_path, *quick)
    assert "4 already done" in again.stdout  # every cell (random, oracle, sft, subtb-off) was finished
    assert json.loads((tmp_path / "summary.json").read_text())["seconds"] < summary["seconds"]


@pytest.mark.slow
def test_full_demo_reaches_the_issue_figure(tmp_path):
    run_demo(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    print(json.dumps(summary, indent=2))
    assert summary["caption_accuracy"] >= 0.95
    assert summary["success"]["subtb-off id"] >= 0.9
