"""scripts/alignment_experiments.py --save-models: a robustness run's model is the one make-tiny-model builds.

A seed's alignment check (an hour per Points24 seed on this CPU) then doubles as that seed's tiny VLM for a
reproduce grid (`--models-from`), which accepts it only because the two are the same model, not two alike.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from gflowvlm.model.tiny_vlm import make_tiny_model_main
from gflowvlm.reproduce import runner
from gflowvlm.reproduce.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "alignment_experiments.py"
ENV = "gflowvlm/NumberLine-v0"


def test_a_saved_run_is_the_make_tiny_model_model_and_a_grid_reuses_it(tmp_path):
    grid = tmp_path / "grid"
    done = subprocess.run([sys.executable, str(SCRIPT), "--envs", ENV, "--seeds", "1", "--steps", "2",
                           "--final-eval", "0", "--results-dir", str(tmp_path / "rows"), "--save-models", str(grid)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = runner.tiny_model_directory(grid, 1)
    record = runner.built_by(saved)
    row = json.loads(next((tmp_path / "rows").glob("*.json")).read_text())
    summary = runner.alignment_summary(grid, 1)
    assert summary["steps"] == row["steps"] == 2 and summary["accuracy"] == row["accuracy"]
    assert record["arguments"] == ["--family", "llava", "--image-size", "64", "--seed", "1", "--align-steps", "2",
                                   "--align-target", "0.95", "--align-caption", "image", "--align", ENV]

    built = tmp_path / "built"
    assert make_tiny_model_main(["--out", str(built), *record["arguments"]]) == 0
    theirs, ours = load_file(saved / "model.safetensors"), load_file(built / "model.safetensors")
    assert theirs.keys() == ours.keys() and all((theirs[k] == ours[k]).all() for k in ours)
    assert (saved / "tokenizer.json").read_text() == (built / "tokenizer.json").read_text()
    aligned = json.loads((built / "alignment.json").read_text())
    assert aligned["per_env"] == json.loads((saved / "alignment.json").read_text())["per_env"]

    # The NumberLine recipe at two alignment steps names the same command line: its grid copies the model.
    recipe = load_recipe(ROOT / "configs" / "reproduce" / "numberline.yaml", overrides=["tiny_model.align_steps=2"])
    assert runner.reuse_tiny_model(recipe, tmp_path / "ablation", 1, [grid], lambda _: None) == saved


def test_save_models_refuses_runs_make_tiny_model_cannot_express(tmp_path):
    for extra in (["--recipes", "constant"], ["--pairs-per-split", "100"], ["--envs", ENV, "gflowvlm/EZPoints-v0"]):
        argv = [sys.executable, str(SCRIPT), "--envs", ENV, "--seeds", "0", "--save-models", str(tmp_path), *extra]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 2 and "--save-models saves what make-tiny-model builds" in done.stderr
        assert not list(tmp_path.iterdir())
