"""Evaluating a policy on an environment split: batched episodes through the Collector, then the papers' metrics.

Episodes = tasks x K: task i is reset with a seed derived from (seed, i), and its K samples share that seed, so the
same --seed always poses the same tasks (to every method being compared) and Div@K can compare samples of one
task. Evaluation never explores (epsilon = 0); an unparseable response falls back to a random admissible action as
in RL4VLM (`unparseable="random"`), or is sent as it is and counts as illegal (`"illegal"`).

Only a small record per episode is kept (success, return, length, action sequence), not the trajectories with their
images: a thousand 35-step ALFWorld episodes would otherwise hold gigabytes of prompts. The first few trajectories
are kept whole for the readable transcript.

Also here: finding the adapters of a run / checkpoint directory and loading them (`evaluate_checkpoint`).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from gflowvlm import checkpoint
from gflowvlm.collector import Collector, GenerateFn, policy_generate
from gflowvlm.config import ModelConfig, RunConfig, load_config
from gflowvlm.env_factory import make_env
from gflowvlm.errors import UserError
from gflowvlm.seeding import Stream, stream_seed
from gflowvlm.stats import div_at_k, wilson_interval
from gflowvlm.trajectory import Trajectory, response_lines

UNPARSEABLE_MODES = ("random", "illegal")


@dataclass(frozen=True)
class EpisodeRecord:
    """What the metrics need from one episode."""
    task_index: int
    task_seed: int
    success: bool
    episode_return: float
    length: int
    illegal_steps: int
    parsed_steps: int
    actions: tuple[str, ...]
    task_type: str = ""

    @classmethod
    def from_trajectory(cls, trajectory: Trajectory, task_index: int) -> "EpisodeRecord":
        return cls(task_index=task_index, task_seed=trajectory.task_seed, success=trajectory.success,
                   episode_return=trajectory.episode_return, length=trajectory.length,
                   illegal_steps=sum(step.illegal for step in trajectory.steps),
                   parsed_steps=sum(step.parsed for step in trajectory.steps),
                   actions=trajectory.action_sequence(), task_type=trajectory.task_type)


def task_seeds(seed: int, tasks: int) -> list[int]:
    """The reset seed of each evaluation task (deterministic in `seed`). A stream of its own, so evaluation tasks are
    not the tasks a training run with the same seed collected (they changed when gflowvlm.seeding came in)."""
    return [stream_seed(Stream.EVAL_TASK, seed, index) for index in range(tasks)]


def summarize(records: Sequence[EpisodeRecord], samples_per_task: int) -> dict[str, Any]:
    """Success rate with its Wilson 95% interval, return, length, illegal/parse rates, Div@K, per-task-type rows.

    div_at_k is null when K = 1 (every solved task counts 1: no information) or when no task was solved (0/0).
    """
    if not records:
        raise ValueError("no episodes to summarize")
    episodes = len(records)
    successes = sum(record.success for record in records)
    steps = sum(record.length for record in records)
    by_task: dict[int, list[EpisodeRecord]] = {}
    for record in records:
        by_task.setdefault(record.task_index, []).append(record)
    diversity = div_at_k([(r.success, r.actions) for r in samples] for samples in by_task.values())
    summary: dict[str, Any] = {
        "success_rate": successes / episodes,
        "ci95": list(wilson_interval(successes, episodes)),
        "episodes": episodes,
        "successes": successes,
        "tasks": len(by_task),
        "samples_per_task": samples_per_task,
        "mean_return": sum(record.episode_return for record in records) / episodes,
        "mean_length": steps / episodes,
        "illegal_rate": sum(record.illegal_steps for record in records) / max(1, steps),
        "parse_rate": sum(record.parsed_steps for record in records) / max(1, steps),
        "div_at_k": diversity if samples_per_task > 1 else None,
        "tasks_with_success": sum(any(r.success for r in samples) for samples in by_task.values()),
        # One character per episode, tasks in order and a task's K samples together: '1' solved, '0' not. Rows
        # evaluated with the same seed face the same tasks, so two of them can be compared task by task.
        "outcomes": "".join("1" if r.success else "0" for _, samples in sorted(by_task.items()) for r in samples),
    }
    task_types = sorted({record.task_type for record in records if record.task_type})
    if task_types:
        rows = {}
        for task_type in task_types:
            chosen = [record for record in records if record.task_type == task_type]
            wins = sum(record.success for record in chosen)
            rows[task_type] = {"episodes": len(chosen), "successes": wins, "success_rate": wins / len(chosen),
                               "ci95": list(wilson_interval(wins, len(chosen)))}
        summary["per_task_type"] = rows
    return summary


def evaluation_config(run_config: RunConfig, split: str, samples_per_task: int, seed: int, episodes: int,
                      num_envs: int | None = None, unparseable: str = "random",
                      max_steps: int | None = None) -> RunConfig:
    """The run's config turned into an evaluation config: split, K, batch size, seed; no exploration or replay.

    The run's env.max_steps belongs to the split it trained on: another split gets the env's own horizon for that
    split (NumberLine OOD: 2 x 50 = 100 steps, not the 10 of the ID split), unless `max_steps` is given.
    """
    if episodes <= 0:
        raise UserError(f"episodes must be positive, got {episodes}")
    if samples_per_task <= 0:
        raise UserError(f"samples per task must be positive, got {samples_per_task}")
    if episodes % samples_per_task:
        raise UserError(f"episodes ({episodes}) must be a multiple of samples per task ({samples_per_task}): "
                        "episodes = tasks x samples per task")
    if unparseable not in UNPARSEABLE_MODES:
        raise UserError(f"unknown unparseable fallback {unparseable!r}; choose one of {list(UNPARSEABLE_MODES)}")
    if max_steps is not None and max_steps <= 0:
        raise UserError(f"max steps must be positive, got {max_steps}")
    if num_envs is None:
        # The run's batch size, rounded down to whole tasks.
        num_envs = max(samples_per_task, run_config.env.num_envs // samples_per_task * samples_per_task)
    elif num_envs <= 0 or num_envs % samples_per_task:
        raise UserError(f"num envs must be a positive multiple of samples per task ({samples_per_task}), "
                        f"got {num_envs}")
    config = copy.deepcopy(run_config)
    config.seed = seed
    if max_steps is not None:
        config.env.max_steps = max_steps
    elif split != run_config.env.split:
        config.env.max_steps = None
    config.env.split = split
    config.env.num_envs = min(num_envs, episodes)
    config.collect.trajectories_per_task = samples_per_task
    config.collect.epsilon = 0.0
    config.collect.unparseable = unparseable
    config.collect.expert_injection = False
    config.collect.replay_size = config.collect.replay_samples = 0
    return config


EPISODES_PER_SLOT = 4


def evaluate(generate_fn: GenerateFn, run_config: RunConfig, split: str, episodes: int, samples_per_task: int = 1,
             seed: int = 0, *, num_envs: int | None = None, unparseable: str = "random",
             max_steps: int | None = None, greedy: bool = False,
             transcripts: int = 0, transcript_dir: str | Path | None = None,
             count_tokens: Callable[[str], int] | None = None, progress: bool = False) -> dict[str, Any]:
    """Run `episodes` episodes of run_config.env.id on `split` with `generate_fn(prompts, seed) -> texts`.

    Returns the summary (see `summarize`) plus `settings`; with `transcript_dir` and `transcripts` > 0 the first
    episodes are written there as transcript.txt with their observation images, and `transcript` names the file.
    """
    if transcripts < 0:
        raise UserError(f"transcripts must be >= 0, got {transcripts}")
    config = evaluation_config(run_config, split, samples_per_task, seed, episodes, num_envs, unparseable,
                               max_steps)
    batch = config.env.num_envs
    seeds = [s for s in task_seeds(seed, episodes // samples_per_task) for _ in range(samples_per_task)]
    started = time.perf_counter()
    records: list[EpisodeRecord] = []
    kept: list[Trajectory] = []
    # Freed environments start the next episode at once (continuous batching); each call plays up to
    # EPISODES_PER_SLOT waves, which keeps generation batches full while bounding the trajectories held in memory.
    per_call = batch * EPISODES_PER_SLOT
    collector = Collector(config, count_tokens=count_tokens, split=split, num_envs=min(batch, episodes))
    try:
        with tqdm(total=episodes, desc=f"eval {config.env.id} {split}", unit="episode",
                  disable=not progress) as bar:
            for iteration, first in enumerate(range(0, episodes, per_call)):
                chunk = seeds[first:first + per_call]
                trajectories = collector.collect(generate_fn, iteration, seeds=chunk, epsilon=0.0,
                                                 unparseable=unparseable)
                for offset, trajectory in enumerate(trajectories):
                    records.append(EpisodeRecord.from_trajectory(trajectory, (first + offset) // samples_per_task))
                kept.extend(trajectories[:max(0, transcripts - len(kept))])
                bar.update(len(chunk))
        # The horizon actually used (the env's default for the split when the config leaves it open).
        horizon = getattr(collector.envs[0].unwrapped, "max_steps", config.env.max_steps)
    finally:
        collector.close()
    seconds = time.perf_counter() - started
    result = summarize(records, samples_per_task)
    generation = config.generation
    result["settings"] = {
        "env": config.env.id, "split": split, "seed": seed, "episodes": episodes,
        "samples_per_task": samples_per_task, "greedy": greedy,
        "temperature": None if greedy else generation.temperature, "top_p": generation.top_p,
        "max_new_tokens": generation.max_new_tokens, "num_envs": batch, "epsilon": 0.0, "unparseable": unparseable,
        "reward": config.env.reward, "image_size": config.env.image_size, "max_steps": horizon,
        "history": config.prompt.history, "env_kwargs": dict(config.env.kwargs),
    }
    result["seconds"] = seconds
    result["episodes_per_second"] = episodes / seconds if seconds > 0 else None
    if transcript_dir is not None and kept:
        result["transcript"] = str(write_transcript(kept, Path(transcript_dir), samples_per_task))
    return result


def write_transcript(trajectories: Sequence[Trajectory], folder: Path, samples_per_task: int = 1) -> Path:
    """A readable account of the episodes (prompt, response, action, reward per step) with every image as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("episode*_step*.png"):  # a previous evaluation's images would be mistaken for these
        stale.unlink()
    lines: list[str] = []
    for number, trajectory in enumerate(trajectories):
        outcome = "success" if trajectory.success else "failure"
        lines.append(f"=== episode {number} (task {number // samples_per_task}, sample {number % samples_per_task}, "
                     f"task seed {trajectory.task_seed}): {outcome}, return {trajectory.episode_return:.3f}, "
                     f"{trajectory.length} steps" + (f", task type {trajectory.task_type}" if trajectory.task_type
                                                      else ""))
        lines.append(f"task: {trajectory.task}")
        for index, step in enumerate(trajectory.steps):
            image_name = f"episode{number:02d}_step{index:02d}.png"
            Image.fromarray(step.prompt.image).save(folder / image_name)
            flags = ("" if step.parsed else " [not parsed]") + (" [illegal]" if step.illegal else "")
            lines.append(f"--- step {index} (image {image_name})")
            lines.append("prompt:\n" + step.prompt.text)
            lines.extend(response_lines(step))
            lines.append(f"action: {step.action}{flags}   reward: {step.reward:.3f}")
        if trajectory.final_prompt is not None:
            image_name = f"episode{number:02d}_step{trajectory.length:02d}.png"
            Image.fromarray(trajectory.final_prompt.image).save(folder / image_name)
            lines.append(f"--- final state (image {image_name})")
        lines.append("")
    path = folder / "transcript.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ----- checkpoints ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedCheckpoint:
    adapter_dir: Path  # what VLMPolicy.from_pretrained loads
    config_path: Path | None  # the run's config.yaml, when one belongs to this checkpoint
    kind: str  # "run", "checkpoint" or "adapter"


def resolve_checkpoint(path: str | Path) -> ResolvedCheckpoint:
    """A run dir (its final/, else its newest complete checkpoint), a checkpoint-* dir (its policy/), or an adapter
    dir, with the config.yaml of the run it belongs to."""
    path = Path(path)
    if not path.exists():
        raise checkpoint.CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise UserError(f"--checkpoint must be a directory (run, checkpoint-* or adapter), got the file {path}")
    if (path / "config.yaml").is_file() or (path / "final").is_dir() or checkpoint.list_checkpoints(path):
        config_path = path / "config.yaml" if (path / "config.yaml").is_file() else None
        if (path / "final").is_dir():
            return ResolvedCheckpoint(path / "final", config_path, "run")
        newest = checkpoint.latest(path)
        if newest is None:
            raise checkpoint.CheckpointError(f"run {path} has no final/ and no complete checkpoint yet")
        return ResolvedCheckpoint(_policy_dir(newest), config_path, "run")
    if re.match(rf"^{checkpoint.PREFIX}\d+$", path.name) or (path / checkpoint.MANIFEST).is_file():
        return ResolvedCheckpoint(_policy_dir(path), _config_beside(path.parent), "checkpoint")
    if not any(path.iterdir()):
        raise UserError(f"{path} is empty: not a run, checkpoint-* or adapter directory")
    parent = path.parent
    run_dir = parent.parent if re.match(rf"^{checkpoint.PREFIX}\d+$", parent.name) else parent
    return ResolvedCheckpoint(path, _config_beside(run_dir), "adapter")


def _policy_dir(checkpoint_dir: Path) -> Path:
    checkpoint.verify(checkpoint_dir)
    policy = checkpoint_dir / "policy"
    if not policy.is_dir():
        raise checkpoint.CheckpointError(f"checkpoint {checkpoint_dir} has no policy/ directory")
    return policy


def _config_beside(run_dir: Path) -> Path | None:
    candidate = run_dir / "config.yaml"
    return candidate if candidate.is_file() else None


def check_env(config: RunConfig) -> None:
    """Fail fast (before a model is loaded) on an unknown env id or a split the env lacks: one-line UserError."""
    env_config = config.env
    env = make_env(env_config.id, split=env_config.split, reward=env_config.reward,
                   image_size=env_config.image_size, max_steps=env_config.max_steps, **env_config.kwargs)
    env.close()


def base_run_config(resolved: ResolvedCheckpoint | None, env_id: str, model: str | None = None,
                    image_size: int | None = None, temperature: float | None = None,
                    trust_remote_code: bool = False) -> RunConfig:
    """The run's config (or the defaults) pointed at env_id; the env options and horizon of another env go.

    model.trust_remote_code is this call's `trust_remote_code`, whatever the run's config.yaml says: a file read
    from disk never turns on remote code (README: "Trust model").
    """
    config = load_config(str(resolved.config_path)) if resolved and resolved.config_path else RunConfig()
    config.model.trust_remote_code = bool(trust_remote_code)
    if config.env.id != env_id:
        config.env.kwargs = {}
        config.env.max_steps = None
        config.env.id = env_id
    if image_size is not None:
        config.env.image_size = image_size
    if temperature is not None:
        if temperature < 0:
            raise UserError(f"temperature must be >= 0, got {temperature}")
        config.generation.temperature = temperature
    if model is not None:
        config.model.name_or_path = model
    # The adapters to evaluate are in the checkpoint; the run's starting adapters are not needed again.
    config.model.init_from = None
    return config


def load_policy(resolved: ResolvedCheckpoint | None, model_config: ModelConfig | None,
                trust_remote_code: bool = False):
    """The policy to evaluate: the checkpoint's adapters on their base model, or the bare base model (on the GPU
    when there is one: the loader places it). The checkpoint is verified as it loads (VLMPolicy.from_pretrained).

    model_config None lets the adapter directory name its own base model (no run config and no --model given).
    Remote code runs only with `trust_remote_code` (--trust-remote-code on this command line).
    """
    from gflowvlm.policy import VLMPolicy  # deferred: transformers is slow to import

    if resolved is None:
        policy = VLMPolicy.from_config(dataclasses.replace(model_config, adapter="none",
                                                           trust_remote_code=trust_remote_code), heads=())
    else:
        policy = VLMPolicy.from_pretrained(str(resolved.adapter_dir), model_config,
                                           trust_remote_code=trust_remote_code)
    policy.eval()
    return policy


def default_output(checkpoint_path: str | Path | None, env_id: str, split: str) -> Path:
    """<checkpoint>/eval_<env>_<split>.json (in the run dir when given one), or ./eval_... for a base model."""
    name = f"eval_{re.sub(r'[^A-Za-z0-9_.-]+', '_', env_id.split('/')[-1])}_{split}.json"
    return (Path(checkpoint_path) if checkpoint_path is not None else Path.cwd()) / name


def evaluate_checkpoint(path: str | Path | None, env_id: str, split: str, episodes: int = 100,
                        samples_per_task: int = 1, *, model: str | None = None, greedy: bool = False,
                        temperature: float | None = None, seed: int = 0, num_envs: int | None = None,
                        out: str | Path | None = None, transcripts: int = 3, unparseable: str = "random",
                        image_size: int | None = None, max_steps: int | None = None,
                        progress: bool = False, trust_remote_code: bool = False,
                        env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a run / checkpoint / adapter directory (or, with path None, the base `model`) and write the JSON.

    Returns the written result plus `output` (the JSON's path). `trust_remote_code`: the caller's own decision
    (--trust-remote-code); nothing in the checkpoint can turn it on. `env_kwargs` are added to the run's env
    options (e.g. NumberLine's horizon="optimal" for an evaluation protocol).
    """
    if path is None and model is None:
        raise UserError("give a checkpoint directory or a base model (--model NAME_OR_PATH)")
    if transcripts < 0:
        raise UserError(f"transcripts must be >= 0, got {transcripts}")
    resolved = resolve_checkpoint(path) if path is not None else None
    config = base_run_config(resolved, env_id, model, image_size, temperature, trust_remote_code)
    config.env.kwargs.update(env_kwargs or {})
    has_run_config = resolved is not None and resolved.config_path is not None
    # Cheap checks first: a bad count or split must not cost a model load.
    check_env(evaluation_config(config, split, samples_per_task, seed, episodes, num_envs, unparseable, max_steps))
    output = Path(out) if out is not None else default_output(path, env_id, split)
    policy = load_policy(resolved, config.model if has_run_config or model is not None else None,
                         trust_remote_code=trust_remote_code)
    result = evaluate(policy_generate(policy, config.generation, greedy), config, split, episodes,
                      samples_per_task, seed, num_envs=num_envs, unparseable=unparseable, max_steps=max_steps,
                      greedy=greedy,
                      transcripts=transcripts, transcript_dir=output.with_name(output.stem + "_transcript"),
                      count_tokens=getattr(policy, "count_tokens", None), progress=progress)
    result["source"] = {"checkpoint": str(path) if path is not None else None,
                        "adapter_dir": str(resolved.adapter_dir) if resolved else None,
                        "model": config.model.name_or_path or None,
                        "algorithm": config.algorithm if has_run_config else None}
    if "transcript" in result:
        result["transcript"] = os.path.relpath(result["transcript"], output.parent)
    write_json(result, output)
    result["output"] = str(output)
    return result


def write_json(data: dict[str, Any], path: Path) -> None:
    """Written to a temporary name, then renamed: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)
