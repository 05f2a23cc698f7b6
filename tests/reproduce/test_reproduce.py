"""`gflowvlm reproduce`: recipes, one cell end to end, resuming a killed grid, the report from known results."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from gflowvlm.cli import UserError, main as cli_main
from gflowvlm.config_schema import ConfigError
from gflowvlm.reproduce import runner
from gflowvlm.reproduce.recipe import load_recipe
from gflowvlm.reproduce.report import markdown
from gflowvlm.reproduce.results import CELL_KEYS, cell_rows

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs" / "reproduce").rglob("*.yaml"))  # ablations/ included
ENV_RECIPES = [path for path in RECIPES if path.stem != "common"]


@pytest.mark.parametrize("path", ENV_RECIPES, ids=lambda p: p.relative_to(ROOT / "configs" / "reproduce").as_posix())
def test_every_shipped_recipe_resolves_and_its_methods_share_start_and_budget(path):
    recipe = load_recipe(path)
    assert recipe.methods and "sft" in recipe.methods
    budget = recipe.budget.env_steps
    for method in recipe.methods:
        if method == "sft":
            continue
        config = recipe.run_config(method, {"model": {"name_or_path": "sft/final"}}, output_dir="x",
                                   max_env_steps=budget)
        assert config.env.id == recipe.env.id and config.env.image_size == recipe.env.image_size
        assert config.collect.expert_strategy == recipe.expert_strategy  # one expert: data, injection, oracle
        sft = recipe.run_config("sft", {"sft": {"data": "d.jsonl"}}, output_dir="x")
        assert config.prompt == sft.prompt  # SFT data, SFT and training see the same prompts
        if path.parent.name != "ablations":  # an ablation varies one such setting on purpose (ppo-illegal, ...)
            assert config.collect.unparseable == sft.collect.unparseable
        off = "-off" in method  # tb-off, subtb-off-t07, ...
        assert config.collect.expert_injection == off and (config.collect.replay_size > 0) == off
    quick = load_recipe(path, quick=True)
    if path.parent.name == "ablations":  # settings are chosen on validation seeds, never on the reported ones
        reported = set(load_recipe(path.parents[1] / path.name).seeds)
        assert not (set(recipe.seeds) | set(quick.seeds)) & reported
    else:
        assert len(quick.seeds) == 1 and set(quick.default_methods) == {"sft", "ppo", "subtb-off"}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_recipe_mistakes_are_one_line_config_errors(tmp_path):
    base = ROOT / "configs" / "reproduce" / "common.yaml"
    cases = {
        "unknown top key": (f"base: {base}\nenv: {{id: gflowvlm/NumberLine-v0}}\nbudgets: 3\n", "unknown key"),
        "bad method key": (f"base: {base}\nmethods: {{ppo: {{optim: {{lrr: 1}}}}}}\n", "method ppo"),
        "like cycle": (f"base: {base}\nmethods: {{a: {{like: b}}, b: {{like: a}}}}\n", "cycle"),
        "like unknown": (f"base: {base}\nmethods: {{a: {{like: nothing}}}}\n", "neither a method"),
        "harness key": (f"base: {base}\nmethods: {{ppo: {{max_env_steps: 99}}}}\n", "set by the harness"),
        "no sft": ("env: {id: gflowvlm/NumberLine-v0}\nmethods: {ppo: {algorithm: ppo}}\n", "must include 'sft'"),
        "bad split horizon": (f"base: {base}\nevaluation: {{splits: [id], max_steps: {{ood: 5}}}}\n", "max_steps"),
        "optional unknown": (f"base: {base}\noptional_methods: [grpo, nope]\n", "optional_methods must list"),
        "optional sft": (f"base: {base}\noptional_methods: [sft]\n", "optional_methods must list"),
        "bad caption": (f"base: {base}\ntiny_model: {{align_caption: ocr}}\n", "align_caption must be one of"),
        "bad caption samples": (f"base: {base}\nsft_data: {{caption_samples: -3}}\n", "caption_samples must be >= 0"),
        "bad sft caption": (f"base: {base}\nsft_data: {{caption: ocr}}\n", "sft_data.caption must be null or one of"),
    }
    for name, (text, message) in cases.items():
        with pytest.raises(ConfigError, match=message) as error:
            load_recipe(_write(tmp_path / f"{name.replace(' ', '_')}.yaml", text))
        assert "\n" not in str(error.value), name


def test_a_method_can_be_removed_and_composed(tmp_path):
    base = ROOT / "configs" / "reproduce" / "common.yaml"
    recipe = load_recipe(_write(tmp_path / "r.yaml", f"base: {base}\nmethods:\n  db: null\n  db-off: null\n"
                                "  subtb-l9: {like: subtb-off, objective: {lam: 0.9}}\n"))
    assert "db" not in recipe.methods and "db-off" not in recipe.methods
    config = recipe.run_config("subtb-l9", output_dir="x")
    assert config.objective.lam == 0.9 and config.algorithm == "subtb" and config.collect.expert_injection


def test_grpo_is_an_optional_row_on_the_same_budget(tmp_path):
    recipe = load_recipe(ROOT / "configs" / "reproduce" / "numberline.yaml")
    assert "grpo" in recipe.methods and "grpo" not in recipe.default_methods  # runs only when named
    assert "ppo" in recipe.default_methods and "subtb-off" in recipe.default_methods
    budget = recipe.budget.env_steps
    grpo = recipe.run_config("grpo", {"model": {"name_or_path": "sft/final"}}, output_dir="x", max_env_steps=budget)
    ppo = recipe.run_config("ppo", {"model": {"name_or_path": "sft/final"}}, output_dir="x", max_env_steps=budget)
    assert grpo.algorithm == "grpo" and grpo.collect.trajectories_per_task >= 2
    assert grpo.max_env_steps == ppo.max_env_steps and grpo.env == ppo.env and grpo.optim == ppo.optim
    from gflowvlm.reproduce.results import method_label

    assert method_label(recipe, "grpo") == "GRPO"
    # a recipe that drops the row (`grpo: null`) keeps common.yaml's optional list valid
    base = ROOT / "configs" / "reproduce" / "common.yaml"
    dropped = load_recipe(_write(tmp_path / "r.yaml", f"base: {base}\nmethods: {{grpo: null}}\n"))
    assert "grpo" not in dropped.methods


def tiny_recipe(tmp_path: Path) -> Path:
    base = ROOT / "configs" / "reproduce" / "common.yaml"
    return _write(tmp_path / "tiny.yaml", f"""
base: {base}
env: {{id: gflowvlm/NumberLine-v0, image_size: 64}}
seeds: [0]
sft_data: {{samples: 24}}
budget: {{env_steps: 4}}
run:
  env: {{num_envs: 2}}
  generation: {{max_new_tokens: 64}}
  logging: {{save_every: 1}}
sft: {{steps: 2, optim: {{batch_size: 4, warmup_steps: 0}}}}
presets: {{lora: {{optim: {{batch_size: 8}}}}}}
evaluation: {{splits: [id, ood], episodes: 4, num_envs: 4, env_kwargs: {{ood: {{horizon: optimal}}}}}}
""")


def place_model(out: Path, tiny_vlm_dir: str, seed: int = 0) -> None:
    """The seed's tiny VLM, as if `make-tiny-model --align` had built it (that command has its own tests)."""
    target = out / f"seed{seed}" / "tiny-vlm"
    shutil.copytree(tiny_vlm_dir, target)
    summary = {"envs": ["gflowvlm/NumberLine-v0"], "accuracy": 0.96875, "reached_target": True, "steps": 450,
               "seconds": 98.5, "target_accuracy": 0.95, "note": "placed by the test",
               "per_env": {"gflowvlm/NumberLine-v0": {"accuracy": 0.96875, "train_pairs": 10, "eval_pairs": 4}}}
    (target / "alignment.json").write_text(json.dumps(summary))


def test_one_cell_runs_end_to_end_and_writes_results_report_and_plots(tmp_path, tiny_vlm_dir, capsys):
    out = tmp_path / "grid"
    place_model(out, tiny_vlm_dir)
    code = cli_main(["reproduce", "--recipe", str(tiny_recipe(tmp_path)), "--out", str(out),
                     "--methods", "sft,subtb-off"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert {"recipe", "commit", "command", "cells"} <= set(results)
    assert "reproduce" in results["command"]
    cells = results["cells"]
    assert all(set(CELL_KEYS) <= set(cell) for cell in cells)
    assert {(c["method"], c["split"]) for c in cells} == {
        (m, s) for m in ("random", "oracle", "sft", "subtb-off") for s in ("id", "ood")}
    by = {(c["method"], c["split"]): c for c in cells}
    assert by[("oracle", "id")]["success_rate"] == 1.0 and by[("oracle", "id")]["parse_rate"] == 1.0
    assert by[("random", "id")]["parse_rate"] == 0.0
    subtb = by[("subtb-off", "id")]
    assert subtb["env_steps"] >= 4 and subtb["episodes"] == 4 and 0.0 <= subtb["parse_rate"] <= 1.0
    assert by[("sft", "id")]["env_steps"] == 0
    report = (out / "report.md").read_text()
    for row in ("random", "oracle", "SFT", "GFlowVLM SubTB off-policy"):
        assert row in report
    # What the seed's model could read, and the grid's compute, come with the table.
    assert results["alignment"]["0"]["per_env"] == {"gflowvlm/NumberLine-v0": 0.96875}
    assert "Tiny VLM held-out exact captions (target 95%): seed 0 96.9% after 450 steps." in report
    assert results["cell_seconds_total"] > 0 and "min of cell time" in report
    assert results["cell_commits"] == [results["commit"]]  # every cell records the commit it ran at
    assert cli_main(["reproduce", "--recipe", str(tiny_recipe(tmp_path)), "--out", str(out), "--methods",
                     "sft,subtb-off", "--report-only"]) == 0
    rerendered = json.loads((out / "results.json").read_text())
    assert rerendered["cells"] == cells and "--report-only" not in rerendered["command"]  # what regenerates them
    assert results["commit"] in report and (out / "success_by_split.png").stat().st_size > 0
    for method in ("random", "subtb-off"):  # the OOD protocol reaches the model's and the reference rows' envs
        folder = out / "seed0" / method / ("run" if method != "random" else "")
        settings = json.loads((folder / "eval_ood.json").read_text())["settings"]
        assert settings["env_kwargs"] == {"horizon": "optimal"}
    run = out / "seed0" / "subtb-off" / "run"
    assert (run / "final" / "adapter_config.json").is_file()
    config = (run / "config.yaml").read_text()
    assert "max_env_steps: 4" in config and str(out / "seed0" / "sft" / "run" / "final") in config


def test_a_killed_grid_redoes_only_unfinished_cells(tmp_path, tiny_vlm_dir, monkeypatch):
    out = tmp_path / "grid"
    place_model(out, tiny_vlm_dir)
    recipe = str(tiny_recipe(tmp_path))
    ran, killed = [], []
    real = runner.run_cell

    def recording(recipe_, out_, cell, log):
        ran.append(cell.method)
        if cell.method == "subtb-off" and not killed:
            killed.append(cell)
            raise KeyboardInterrupt  # killed between the SFT cell and this one
        return real(recipe_, out_, cell, log)

    monkeypatch.setattr(runner, "run_cell", recording)
    argv = ["reproduce", "--recipe", recipe, "--out", str(out), "--methods", "sft,subtb-off"]
    assert cli_main(argv) == 130
    assert ran == ["random", "oracle", "sft", "subtb-off"]
    ran.clear()
    assert cli_main(argv) == 0
    assert ran == ["subtb-off"]  # random, oracle and sft were finished: not redone
    ran.clear()
    assert cli_main(argv) == 0 and ran == []
    results = json.loads((out / "results.json").read_text())
    assert {c["method"] for c in results["cells"]} == {"random", "oracle", "sft", "subtb-off"}


def test_jobs_run_seeds_in_worker_processes_and_the_parent_publishes_all(tmp_path, tiny_vlm_dir, capsys):
    out = tmp_path / "grid"
    for seed in (0, 1):
        place_model(out, tiny_vlm_dir, seed)
    argv = ["reproduce", "--recipe", str(tiny_recipe(tmp_path)), "--out", str(out), "--methods", "sft",
            "--seeds", "0,1", "--jobs", "2"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert {(c["method"], c["seed"]) for c in results["cells"]} == {
        (m, s) for m in ("random", "oracle", "sft") for s in (0, 1)}
    assert (out / "worker-0.log").is_file() and (out / "worker-1.log").is_file()
    # Two workers on this machine's cores: each cell records the thread count it ran with, and so does results.json.
    threads = {json.loads((out / f"seed{s}" / "sft" / "cell.json").read_text())["torch_threads"] for s in (0, 1)}
    assert len(threads) == 1 and results["threads"]["torch_threads"] == threads.pop()
    assert "--jobs 2" in results["command"]


def test_a_worker_command_line_keeps_everything_but_seeds_and_jobs():
    from gflowvlm.commands.reproduce import worker_argv

    argv = ["--recipe", "r.yaml", "--out", "d", "--seeds", "0,1,2", "--jobs=2", "--quick", "budget.env_steps=9"]
    assert worker_argv(argv, [0, 2]) == ["--recipe", "r.yaml", "--out", "d", "--quick", "budget.env_steps=9",
                                         "--seeds", "0,2", "--worker"]


def known_results() -> dict:
    cells = []
    for seed, (sft, subtb) in enumerate([(0.5, 0.8), (0.6, 0.9), (0.7, 1.0)]):
        for method, rate in (("sft", sft), ("subtb-off", subtb), ("random", 0.25)):
            cells.append({"env": "gflowvlm/NumberLine-v0", "method": method, "seed": seed, "split": "id",
                          "success_rate": rate, "ci95": [0, 1], "div_at_k": None, "k": None, "episodes": 100,
                          "env_steps": 0 if method != "subtb-off" else 1000, "parse_rate": 0.5, "seconds": 1.0,
                          "task_type": None})
    return {"recipe": "configs/reproduce/numberline.yaml", "commit": "abc123", "command": "gflowvlm reproduce x",
            "env": "gflowvlm/NumberLine-v0", "seeds": [0, 1, 2], "methods": ["sft", "subtb-off"],
            "method_labels": {"sft": "SFT", "subtb-off": "GFlowVLM SubTB off-policy"}, "budget_env_steps": 1000,
            "evaluation": {"splits": ["id"], "episodes": 100, "greedy": True, "max_steps": {}, "diversity_k": 0,
                           "diversity_tasks": 16, "unparseable": "random", "protocol": ""},
            "expert_strategy": None, "cells": cells, "curves": {}}


def test_the_report_is_computed_from_results_json():
    text = markdown(known_results())
    # mean 60.0, t_{0.975,2} * 0.1 / sqrt(3) = 24.84 points: [35.2, 84.8]; per-seed values after it; a rate's
    # interval is shown within [0, 100].
    assert "| SFT | 60.0 [35.2, 84.8] (50.0, 60.0, 70.0) |" in text
    assert "| GFlowVLM SubTB off-policy | 90.0 [65.2, 100.0] (80.0, 90.0, 100.0) |" in text
    assert "| random (uniform admissible actions) | 25.0 [25.0, 25.0] (25.0, 25.0, 25.0) |" in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines[1:]] == ["| random (uniform admissible actions)", "| SFT",
                                                            "| GFlowVLM SubTB off-policy"]
    assert "abc123" in text and "gflowvlm reproduce x" in text and "1,000" in text


def test_rows_are_paired_with_sft_over_the_episodes_they_share():
    results = known_results()
    outcomes = {("sft", 0): "1100", ("subtb-off", 0): "1110", ("random", 0): "0000",
                ("sft", 1): "1010", ("subtb-off", 1): "1010"}  # seed 2 recorded none: left out
    for cell in results["cells"]:
        cell["outcomes"] = outcomes.get((cell["method"], cell["seed"]))
    line = next(line for line in markdown(results).splitlines() if line.startswith("ID gain on SFT"))
    # seed 0: d = (0, 0, 1, 0), mean 0.25, s = 0.5, t_{0.975,3} = 3.182: +25.0 [-54.6, +104.6]; seed 1: all equal.
    assert ("random (uniform admissible actions): seed 0 -50.0 [-141.9, +41.9]; GFlowVLM SubTB off-policy: "
            "seed 0 +25.0 [-54.6, +104.6], seed 1 +0.0 [+0.0, +0.0].") in line
    for cell in results["cells"]:  # cells from before outcomes were recorded: no line, as before
        cell.pop("outcomes", None)
    assert "gain on SFT" not in markdown(results)


def test_div_at_k_is_shown_beside_the_share_of_its_samples_that_solved():
    """Div@K counts only solved tasks, so the report puts the samples' success next to it (and '-' where a cell
    from an older results.json lacks it)."""
    results = known_results()
    results["evaluation"]["diversity_k"] = 8
    for cell in results["cells"]:
        cell.update(div_at_k=1.5, k=8)
        if cell["method"] == "sft":
            cell["div_success_rate"] = {0: 0.25, 1: 0.5, 2: 0.75}[cell["seed"]]
    text = markdown(results)
    assert "| Method | ID | ID Div@8 | ID Div@8 samples solved | ID parse rate |" in text
    assert "| SFT | 60.0 [35.2, 84.8] (50.0, 60.0, 70.0) | 1.50 [1.50, 1.50] (1.50, 1.50, 1.50) | " \
           "50.0 [0.0, 100.0] (25.0, 50.0, 75.0) |" in text
    assert "| GFlowVLM SubTB off-policy | 90.0 [65.2, 100.0] (80.0, 90.0, 100.0) | 1.50 [1.50, 1.50] " \
           "(1.50, 1.50, 1.50) | - |" in text


def test_a_malformed_alignment_file_is_left_out_not_trusted(tmp_path):
    (tmp_path / "seed0" / "tiny-vlm").mkdir(parents=True)
    for text in ("{not json", json.dumps({"accuracy": "x", "per_env": []}), json.dumps([1, 2])):
        (tmp_path / "seed0" / "tiny-vlm" / "alignment.json").write_text(text)
        assert runner.alignment_summary(tmp_path, 0) is None
    assert runner.alignment_summary(tmp_path, 1) is None  # never built


def test_the_recipe_alignment_target_reaches_make_tiny_model(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("gflowvlm.model.tiny_vlm.make_tiny_model_main", lambda argv: seen.append(argv) or 1)
    recipe = load_recipe(ROOT / "configs" / "reproduce" / "blackjack.yaml", quick=True)
    with pytest.raises(UserError):
        runner.build_tiny_model(recipe, tmp_path / "m", 3)
    argv = seen[0]
    assert argv[argv.index("--align-target") + 1] == "0.95" and argv[argv.index("--align-steps") + 1] == "1000"
    assert argv[argv.index("--seed") + 1] == "3" and argv[argv.index("--align-caption") + 1] == "image"
    text = load_recipe(ROOT / "configs" / "reproduce" / "blackjack.yaml", overrides=["tiny_model.align_caption=text"])
    seen.clear()
    with pytest.raises(UserError):
        runner.build_tiny_model(text, tmp_path / "m", 3)
    assert seen[0][seen[0].index("--align-caption") + 1] == "text"


def test_training_curves_plot_success_and_parse_rate_and_skip_missing_values(tmp_path):
    from gflowvlm.reproduce.report import plot_curves

    results = known_results()
    results["curves"] = {"subtb-off": {"0": [[10, 0.5, 0.9], [20, 0.6, None], [30, 0.7, 0.4]],
                                       "1": [[10, 0.4], [20, 0.5]]},  # a cell written before the parse column
                         "sft": {"0": [[0, 0.0, None], [1, 0.0, None]]}}
    assert plot_curves(results, tmp_path / "success.png") and (tmp_path / "success.png").stat().st_size > 0
    assert plot_curves(results, tmp_path / "parse.png", column=2) and (tmp_path / "parse.png").stat().st_size > 0
    results["curves"] = {"sft": {"0": [[0, 0.0, None], [1, 0.0, None]]}}
    assert not plot_curves(results, tmp_path / "none.png", column=2) and not (tmp_path / "none.png").exists()


def test_sample_efficiency_is_the_first_step_the_smoothed_success_reaches_the_threshold():
    from gflowvlm.reproduce.report import steps_to_threshold

    # EMA 0.6 with debiasing: 0.0, then 0.625 (1.0 after 0.0), then 0.816 (>= 0.8 at 300 env steps).
    assert steps_to_threshold([[100, 0.0], [200, 1.0, 0.9], [300, 1.0], [400, 1.0]], 0.8) == 300.0
    assert steps_to_threshold([[100, 0.5], [200, 0.5]], 0.8) is None and steps_to_threshold([], 0.8) is None
    assert steps_to_threshold([[100, 0.0], [200, 1.0]], 0.8, weight=0.0) == 200.0  # the weight is the one used
    results = known_results()
    results["evaluation"]["success_threshold"] = 0.8
    results["curves"] = {"subtb-off": {"0": [[100, 0.0], [200, 1.0], [300, 1.0]], "1": [[100, 0.0], [200, 0.1]],
                                       "2": [[100, 1.0], [500, 1.0]]}}
    assert ("first reaches 80%: GFlowVLM SubTB off-policy 200 (2/3 seeds)." in markdown(results))
    assert "The cells ran at" not in markdown(results)
    results["cell_commits"] = ["abc123", "def456"]  # cells from two commits: the report says so
    assert "The cells ran at `abc123`, `def456`." in markdown(results)



def _per_step_mean(curve) -> float | None:
    """Brute force: one success value per environment step, the value of the iteration that took the step."""
    per_step, previous = [], 0
    for row in curve:
        if len(row) < 2 or row[1] is None:
            continue
        per_step += [row[1]] * max(0, int(row[0]) - previous)
        previous = max(previous, int(row[0]))
    return sum(per_step) / len(per_step) if per_step else None


def test_mean_training_success_weights_each_iteration_by_its_env_steps():
    from gflowvlm.reproduce.report import mean_training_success

    rng = random.Random(0)
    for _ in range(200):
        steps, curve = 0, []
        for _ in range(rng.randint(0, 8)):
            steps += rng.randint(0, 40)  # an iteration may take no step (a resumed log)
            curve.append([steps, rng.choice([None, rng.random()]), None][:rng.choice([2, 3])])
        expected = _per_step_mean(curve)
        got = mean_training_success(curve)
        assert (got is None) == (expected is None)
        if expected is not None:
            assert abs(got - expected) < 1e-12
    # A run that learns sooner scores higher on the same budget, where a threshold line could not tell them apart.
    assert mean_training_success([[100, 0.2], [200, 1.0], [300, 1.0]]) > mean_training_success(
        [[100, 0.2], [200, 0.2], [300, 1.0]])
    assert mean_training_success([[50, 0.5], [150, None], [200, 1.0]]) == (50 * 0.5 + 150 * 1.0) / 200
    results = known_results()
    results["curves"] = {"subtb-off": {"0": [[100, 0.0], [200, 1.0]], "1": [[100, 0.5], [200, 0.5]],
                                       "2": [[100, 1.0], [200, 1.0]]},
                         "sft": {"0": [[0, 0.0, None]]}}  # SFT has no on-policy curve: no entry
    line = next(line for line in markdown(results).splitlines() if line.startswith("Mean training success"))
    # Seeds 0.5, 0.5, 1.0: mean 0.667, t interval 0.667 +- 0.717, clipped to a rate's [0, 1].
    assert line.endswith(": GFlowVLM SubTB off-policy 66.7 [0.0, 100.0] (50.0, 50.0, 100.0).") and "SFT" not in line

def test_a_cell_reads_its_curve_from_the_run_log(tmp_path):
    run = tmp_path / "cell" / "run"
    run.mkdir(parents=True)
    lines = [{"step": 1, "env_steps": 30, "success_rate": 0.5, "parse_rate": 0.75},
             {"step": 2, "env_steps": 61, "success_rate": 0.25}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n{torn")
    (tmp_path / "cell" / "cell.json").write_text(json.dumps({"evaluations": {}, "curve": [[1, 1.0]]}))
    assert runner.load_cell(tmp_path / "cell")["curve"] == [[30, 0.5, 0.75], [61, 0.25, None]]


def test_reference_rows_get_div_at_k_on_the_models_protocol(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path), overrides=["evaluation.diversity_k=4",
                                                           "evaluation.diversity_tasks=6"])
    for method in ("random", "oracle"):
        directory = tmp_path / method
        directory.mkdir()
        results = runner._reference_evaluations(recipe, runner.Cell(0, method), directory)
        for split in ("id", "ood"):
            diversity = results[split]["diversity"]
            assert diversity["samples_per_task"] == 4 and diversity["episodes"] == 24
            assert (directory / f"div_{split}.json").is_file()
        rows = {row["split"]: row for row in cell_rows({"env": "e", "method": method, "seed": 0, "seconds": 1,
                                                        "evaluations": results})}
        assert rows["id"]["k"] == 4
        if method == "oracle":  # NumberLine's expert plays a task one way only: one distinct solution per task
            assert rows["id"]["div_at_k"] == 1.0 and rows["ood"]["div_at_k"] == 1.0
        else:  # random walks that reach the target rarely repeat each other
            assert rows["id"]["div_at_k"] is not None and rows["id"]["div_at_k"] > 1.0


@pytest.mark.parametrize("strategy, more_than_one", [("shortest", False), ("varied", True)])
def test_a_randomised_oracle_draws_afresh_in_each_play_of_a_task(tmp_path, strategy, more_than_one):
    """EZPoints deals with two distinct cards have two solution orders: the varied oracle's K plays find both."""
    recipe = load_recipe(ROOT / "configs" / "reproduce" / "ezpoints.yaml",
                         overrides=[f"expert_strategy={strategy}", "evaluation.diversity_k=8",
                                    "evaluation.diversity_tasks=6"])
    results = runner._reference_evaluations(recipe, runner.Cell(0, "oracle"), tmp_path)
    diversity = results["id"]["diversity"]
    assert diversity["success_rate"] == 1.0 and diversity["settings"]["expert_strategy"] == strategy
    assert (diversity["div_at_k"] > 1.2) if more_than_one else (diversity["div_at_k"] == 1.0)
    again = runner._reference_evaluations(recipe, runner.Cell(0, "oracle"), tmp_path / "again")
    assert again["id"]["diversity"]["div_at_k"] == diversity["div_at_k"]  # seeded: the same draws each time


def test_bad_command_lines_are_one_line_errors(tmp_path, capsys):
    recipe = str(ROOT / "configs" / "reproduce" / "numberline.yaml")
    afile = _write(tmp_path / "file", "x")
    for argv, message in [(["--seeds", "0,x"], "--seeds"), (["--methods", "sft,nope"], "unknown method 'nope'"),
                          (["--out", str(afile)], "is a file"),
                          (["--jobs", "0"], "--jobs must be at least 1")]:
        args = ["reproduce", "--recipe", recipe, "--out", str(tmp_path / "o"), *argv]
        if argv[0] == "--out":
            args = ["reproduce", "--recipe", recipe, *argv]
        assert cli_main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err


@pytest.mark.parametrize("path", ENV_RECIPES, ids=lambda p: p.relative_to(ROOT / "configs" / "reproduce").as_posix())
def test_each_recipe_renders_its_env_at_the_size_its_tiny_model_is_aligned_at(path):
    from gflowvlm.model.env_alignment import recipe_image_size

    recipe = load_recipe(path)
    assert recipe.env.image_size == recipe_image_size(recipe.tiny_model.align)


def test_results_report_the_thread_count_the_cells_ran_with_not_the_publishers():
    """A grid re-rendered (--report-only) by a process with another thread count still names the cells' count."""
    import torch

    from gflowvlm.reproduce.results import build_results

    recipe = load_recipe(ROOT / "configs" / "reproduce" / "numberline.yaml")
    other = torch.get_num_threads() + 3
    records = [{"env": recipe.env.id, "method": "sft", "seed": seed, "env_steps": 0, "seconds": 1.0,
                "evaluations": {}, "torch_threads": other, "commit": "abc"} for seed in (0, 1)]
    results = build_results(recipe, records, "gflowvlm reproduce ...", ["sft"], [0, 1])
    assert results["threads"]["torch_threads"] == other
    mixed = records + [{**records[0], "seed": 2, "torch_threads": 1}]
    assert build_results(recipe, mixed, "c", ["sft"], [0, 1, 2])["threads"]["torch_threads"] == sorted({1, other})
