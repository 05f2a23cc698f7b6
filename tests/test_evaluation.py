"""Evaluation: scripted policies on NumberLine with known outcomes, the metrics, batching, transcripts, checkpoint
resolution, and `gflowvlm eval` end to end (with a scripted policy) and on bad input (one line, exit 2)."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from PIL import Image

import envs  # noqa: F401  (registers the environments)
from envs.number_line import NumberLineEnv
from gflowvlm import checkpoint, evaluation
from gflowvlm.checkpoint import CheckpointError
from gflowvlm.cli import UserError
from gflowvlm.commands import evaluate as evaluate_command
from gflowvlm.config import RunConfig, config_to_dict
from gflowvlm.evaluation import EpisodeRecord, evaluate, evaluation_config, resolve_checkpoint, summarize, task_seeds
from gflowvlm.stats import wilson_interval

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "gflowvlm/NumberLine-v0"


def image_oracle(image_size: int = 64):
    """A policy that reads the state off the image (by looking the exact frame up) and answers like the oracle.

    The card-game prompt carries no state text, so this also checks that the current image reaches the policy.
    """
    env = NumberLineEnv(split="id", image_size=image_size)
    answers = {}
    for start in range(6):
        for target in range(6):
            if start != target:
                observation, _ = env.reset(seed=0, options={"start": start, "target": target})
                answers[observation["image"].tobytes()] = "+" if start < target else "-"

    def generate(prompts, seed):
        return [json.dumps({"thoughts": "read the image", "action": answers[p.image.tobytes()]}) for p in prompts]
    return generate


def constant(action: str):
    return lambda prompts, seed: [f'{{"thoughts": "always", "action": "{action}"}}' for _ in prompts]


def babble(prompts, seed):
    return ["I am not sure what to do here." for _ in prompts]


def number_line_tasks(seed: int, tasks: int) -> list[tuple[int, int]]:
    """(start, target) of the evaluation tasks, replayed with the env directly."""
    env = NumberLineEnv(split="id", image_size=64)
    drawn = []
    for task_seed in task_seeds(seed, tasks):
        env.reset(seed=task_seed)
        drawn.append((env.start, env.target))
    return drawn


def config(**env) -> RunConfig:
    run_config = RunConfig()
    run_config.env.id = ENV_ID
    run_config.env.num_envs = 8
    for key, value in env.items():
        setattr(run_config.env, key, value)
    return run_config


# ----- scripted policies with known outcomes ----------------------------------------------------------------------
def test_oracle_solves_every_task_with_the_shortest_path():
    result = evaluate(image_oracle(), config(), "id", episodes=40, samples_per_task=4, seed=3)
    tasks = number_line_tasks(3, 10)
    assert result["success_rate"] == 1.0
    assert result["successes"] == result["episodes"] == 40 and result["tasks"] == 10
    assert result["ci95"] == pytest.approx(list(wilson_interval(40, 40)))
    assert result["mean_length"] == pytest.approx(sum(abs(s - t) for s, t in tasks) / 10)
    assert result["mean_return"] == pytest.approx(100.0)  # gflowvlm reward at the target: 100 / (0 + 1)
    assert result["illegal_rate"] == 0.0 and result["parse_rate"] == 1.0
    assert result["div_at_k"] == 1.0  # a deterministic oracle finds one trajectory per task
    assert "per_task_type" not in result  # NumberLine reports no task types


def test_always_minus_succeeds_exactly_when_the_target_is_below_the_start():
    result = evaluate(constant("-"), config(), "id", episodes=60, samples_per_task=2, seed=0)
    tasks = number_line_tasks(0, 30)
    below = sum(target < start for start, target in tasks)
    assert 0 < below < 30  # the check means something
    assert result["success_rate"] == pytest.approx(below / 30)
    assert result["successes"] == 2 * below
    assert result["ci95"] == pytest.approx(list(wilson_interval(2 * below, 60)))
    assert result["tasks_with_success"] == below
    assert result["div_at_k"] == 1.0


def test_unparseable_output_is_random_or_illegal_as_configured():
    illegal = evaluate(babble, config(), "id", episodes=8, samples_per_task=1, unparseable="illegal")
    assert illegal["success_rate"] == 0.0
    assert illegal["illegal_rate"] == 1.0 and illegal["parse_rate"] == 0.0
    assert illegal["mean_length"] == 10  # truncated at the horizon, 2 x 5
    assert illegal["div_at_k"] is None  # K = 1
    random_walk = evaluate(babble, config(), "id", episodes=64, samples_per_task=8, seed=1)
    assert random_walk["parse_rate"] == 0.0 and random_walk["illegal_rate"] == 0.0
    assert 0.0 < random_walk["success_rate"] < 1.0
    # Random walks reach a target by different paths: more than one distinct success per solved task.
    assert 1.0 < random_walk["div_at_k"] <= 8.0
    assert random_walk["settings"]["unparseable"] == "random" and random_walk["settings"]["epsilon"] == 0.0


def test_results_are_deterministic_in_the_seed_and_independent_of_batching():
    def strip(result):
        return {k: v for k, v in result.items() if k not in ("seconds", "episodes_per_second", "settings")}

    first = evaluate(babble, config(), "id", episodes=16, samples_per_task=4, seed=5, num_envs=8)
    again = evaluate(babble, config(), "id", episodes=16, samples_per_task=4, seed=5, num_envs=8)
    assert strip(first) == strip(again)
    assert task_seeds(5, 4) != task_seeds(6, 4)
    # 12 episodes in batches of 8 + 4 (a smaller last batch) pose the same tasks as batches of 4.
    uneven = evaluate(constant("-"), config(), "id", episodes=12, samples_per_task=2, seed=2, num_envs=8)
    even = evaluate(constant("-"), config(), "id", episodes=12, samples_per_task=2, seed=2, num_envs=4)
    assert strip(uneven) == strip(even) and uneven["episodes"] == 12


def test_another_split_gets_its_own_horizon_unless_one_is_given():
    run_config = config(max_steps=10)  # trained on ID with the papers' 10 steps
    result = evaluate(constant("+"), run_config, "ood", episodes=2, samples_per_task=1)
    assert result["settings"]["max_steps"] == 100 and result["settings"]["split"] == "ood"
    assert evaluation_config(run_config, "id", 1, 0, 2).env.max_steps == 10
    assert evaluation_config(run_config, "ood", 1, 0, 2, max_steps=7).env.max_steps == 7


@pytest.mark.parametrize("kwargs, message", [
    (dict(episodes=0), "episodes must be positive"),
    (dict(episodes=10, samples_per_task=4), "multiple of samples per task"),
    (dict(episodes=8, samples_per_task=4, num_envs=6), "num envs must be a positive multiple"),
    (dict(episodes=8, unparseable="skip"), "unknown unparseable fallback"),
])
def test_bad_evaluation_settings_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        evaluate(babble, config(), "id", **kwargs)


def test_summarize_reports_task_types_and_null_diversity_for_k1():
    def record(task, success, task_type, actions=("go",)):
        return EpisodeRecord(task_index=task, task_seed=task, success=success, episode_return=float(success),
                             length=len(actions), illegal_steps=0, parsed_steps=len(actions), actions=actions,
                             task_type=task_type)

    records = [record(0, True, "pick_and_place_simple"), record(1, False, "pick_and_place_simple"),
               record(2, True, "look_at_obj_in_light"), record(3, True, "look_at_obj_in_light")]
    summary = summarize(records, samples_per_task=1)
    assert summary["div_at_k"] is None
    assert summary["per_task_type"]["pick_and_place_simple"]["success_rate"] == 0.5
    assert summary["per_task_type"]["look_at_obj_in_light"] == {
        "episodes": 2, "successes": 2, "success_rate": 1.0, "ci95": list(wilson_interval(2, 2))}
    two_samples = summarize([record(0, True, "", ("a",)), record(0, True, "", ("b",)),
                             record(1, False, "", ("a",)), record(1, False, "", ("a",))], samples_per_task=2)
    assert two_samples["div_at_k"] == 2.0 and two_samples["tasks_with_success"] == 1
    # Per-episode outcomes in task order, a task's samples together, whatever order the episodes finished in.
    assert summary["outcomes"] == "1011" and two_samples["outcomes"] == "1100"
    shuffled = summarize([record(2, True, ""), record(0, False, ""), record(1, True, ""), record(0, True, "")], 2)
    assert shuffled["outcomes"] == "0111"


def test_transcript_has_the_first_episodes_and_their_images(tmp_path):
    result = evaluate(constant("-"), config(), "id", episodes=8, samples_per_task=1, transcripts=2,
                      transcript_dir=tmp_path / "transcript")
    text = Path(result["transcript"]).read_text(encoding="utf-8")
    assert "=== episode 0" in text and "=== episode 1" in text and "=== episode 2" not in text
    assert "response:" in text and "action: -" in text
    images = sorted((tmp_path / "transcript").glob("*.png"))
    assert images and all(name.name in text for name in images)
    with Image.open(images[0]) as image:
        assert image.size == (64, 64)
    # A later, shorter transcript in the same folder leaves no images of the earlier one behind.
    evaluate(constant("-"), config(), "id", episodes=8, transcripts=1, transcript_dir=tmp_path / "transcript")
    assert {path.name.split("_")[0] for path in (tmp_path / "transcript").glob("*.png")} == {"episode00"}


# ----- checkpoint directories -------------------------------------------------------------------------------------
def write_run(directory: Path, final: bool = True, steps: tuple[int, ...] = ()) -> Path:
    directory.mkdir(parents=True)
    run_config = config()
    run_config.output_dir = str(directory)
    (directory / "config.yaml").write_text(yaml.safe_dump(config_to_dict(run_config), sort_keys=False))
    if final:
        (directory / "final").mkdir()
        (directory / "final" / "adapter_config.json").write_text("{}")
    for step in steps:
        temporary = checkpoint.temporary_dir(directory, step)
        (temporary / "policy").mkdir(parents=True)
        (temporary / "policy" / "adapter_config.json").write_text(json.dumps({"step": step}))
        checkpoint.finalize(temporary, directory / checkpoint.checkpoint_name(step))
    return directory


def test_resolve_checkpoint_finds_the_adapters_and_the_run_config(tmp_path):
    run = write_run(tmp_path / "run", final=True, steps=(2,))
    resolved = resolve_checkpoint(run)
    assert resolved.adapter_dir == run / "final" and resolved.config_path == run / "config.yaml"
    assert resolve_checkpoint(run / "final").config_path == run / "config.yaml"

    no_final = write_run(tmp_path / "no_final", final=False, steps=(2, 4))
    (no_final / checkpoint.checkpoint_name(6)).mkdir()  # newer but incomplete: skipped
    assert resolve_checkpoint(no_final).adapter_dir == no_final / "checkpoint-00000004" / "policy"
    single = resolve_checkpoint(no_final / "checkpoint-00000002")
    assert single.adapter_dir == no_final / "checkpoint-00000002" / "policy"
    assert single.config_path == no_final / "config.yaml"
    assert resolve_checkpoint(no_final / "checkpoint-00000002" / "policy").config_path == no_final / "config.yaml"

    (no_final / "checkpoint-00000004" / "policy" / "adapter_config.json").write_text("tampered")
    with pytest.raises(CheckpointError, match="corrupt"):
        resolve_checkpoint(no_final)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        resolve_checkpoint(tmp_path / "empty")


@dataclass
class _Generation:
    text: str


class ScriptedPolicy:
    """Stands in for VLMPolicy (same generate signature) so the command runs without a model."""

    def __init__(self):
        self.oracle = image_oracle()
        self.calls = []

    def generate(self, prompts, *, temperature=1.0, top_p=1.0, max_new_tokens=128, do_sample=True, seed=None):
        self.calls.append({"do_sample": do_sample, "temperature": temperature, "seed": seed})
        return [_Generation(text) for text in self.oracle(prompts, seed)]


def test_eval_command_writes_the_json_and_transcript(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "run")
    policy = ScriptedPolicy()
    loaded = {}

    def fake_load_policy(resolved, model_config, trust_remote_code=False):
        loaded.update(adapter_dir=resolved.adapter_dir, model_config=model_config)
        return policy
    monkeypatch.setattr(evaluation, "load_policy", fake_load_policy)
    code = evaluate_command.main(["--checkpoint", str(run), "--env", ENV_ID, "--split", "id", "--episodes", "16",
                                  "--samples-per-task", "2", "--greedy", "--seed", "4", "--num-envs", "4",
                                  "--transcripts", "1", "--quiet"])
    assert code == 0
    assert loaded["adapter_dir"] == run / "final"
    assert policy.calls and not any(call["do_sample"] for call in policy.calls)
    output = run / "eval_NumberLine-v0_id.json"
    data = json.loads(output.read_text())
    for key in ("success_rate", "ci95", "episodes", "mean_return", "mean_length", "illegal_rate", "div_at_k",
                "settings", "transcript", "source"):
        assert key in data, key
    assert data["success_rate"] == 1.0 and data["episodes"] == 16 and data["div_at_k"] == 1.0
    assert data["settings"] == {**data["settings"], "env": ENV_ID, "split": "id", "seed": 4, "samples_per_task": 2,
                                "greedy": True, "temperature": None, "num_envs": 4}
    assert data["source"]["algorithm"] == "subtb" and data["source"]["adapter_dir"] == str(run / "final")
    transcript = output.parent / data["transcript"]
    assert transcript.is_file() and "=== episode 0" in transcript.read_text()
    out = capsys.readouterr().out
    assert "success 100.0%" in out and str(output) in out

    # --out and a sampling temperature
    code = evaluate_command.main(["--checkpoint", str(run / "final"), "--env", ENV_ID, "--split", "id",
                                  "--episodes", "4", "--temperature", "0.5", "--out", str(tmp_path / "r.json"),
                                  "--transcripts", "0", "--quiet"])
    assert code == 0 and policy.calls[-1]["do_sample"] and policy.calls[-1]["temperature"] == 0.5
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["temperature"] == 0.5


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gflowvlm", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


@pytest.mark.parametrize("case", ["missing checkpoint", "unknown env", "bad split", "no episodes"])
def test_eval_bad_input_is_one_line_and_exit_2(tmp_path, case):
    run = write_run(tmp_path / "run")
    args = {"missing checkpoint": ["--checkpoint", str(tmp_path / "nope"), "--env", ENV_ID, "--split", "id"],
            "unknown env": ["--checkpoint", str(run), "--env", "gflowvlm/Chess-v9", "--split", "id"],
            "bad split": ["--checkpoint", str(run), "--env", ENV_ID, "--split", "test"],
            "no episodes": ["--checkpoint", str(run), "--env", ENV_ID, "--split", "id"]}[case]
    episodes = "0" if case == "no episodes" else "4"
    result = run_cli("eval", *args, "--episodes", episodes)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    expected = {"missing checkpoint": "checkpoint not found", "unknown env": "unknown environment id",
                "bad split": "no split 'test'", "no episodes": "--episodes must be positive"}[case]
    assert lines[0].startswith("gflowvlm eval: error:") and expected in lines[0]
    assert not list(run.glob("eval_*.json"))
