"""The two reference rows every comparison carries: `random` and `oracle`, measured on the same tasks as the models.

- random: every action drawn uniformly from the admissible ones. It is exactly what the unparseable-response
  fallback does, so it is measured through the same evaluation path with a policy that answers nothing: a trained
  model's score is only worth something next to it (on NumberLine OOD with the 100-step horizon it is 34%).
- oracle: the env's expert (`expert_action()`, with the recipe's expert strategy) on the same task seeds: the
  ceiling of what the expert that wrote the SFT data achieves.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gflowvlm.collector import play_expert
from gflowvlm.config import RunConfig
from gflowvlm.env_factory import make_env
from gflowvlm.evaluation import EpisodeRecord, evaluate, evaluation_config, summarize, task_seeds
from gflowvlm.prompting import Prompt, PromptBuilder
from gflowvlm.seeding import Stream, stream_seed


def answer_nothing(prompts: Sequence[Prompt], seed: int) -> list[str]:
    """A policy whose responses never name an action: the fallback then plays uniformly random admissible actions."""
    return ["" for _ in prompts]


def evaluate_random(run_config: RunConfig, split: str, episodes: int, seed: int = 0,
                    max_steps: int | None = None, num_envs: int | None = None,
                    samples_per_task: int = 1) -> dict[str, Any]:
    """Success etc. of the uniformly random admissible-action policy on the evaluation tasks of `seed`
    (`samples_per_task` = K > 1: K episodes per task, and Div@K)."""
    result = evaluate(answer_nothing, run_config, split, episodes, samples_per_task, seed, num_envs=num_envs,
                      unparseable="random", max_steps=max_steps, greedy=False)
    result["settings"]["policy"] = "random"
    return result


def evaluate_oracle(run_config: RunConfig, split: str, episodes: int, seed: int = 0,
                    max_steps: int | None = None, strategy: str | None = None,
                    samples_per_task: int = 1) -> dict[str, Any]:
    """The env's expert on the same evaluation tasks (same task seeds as `evaluate`); with `samples_per_task` = K,
    each task is played K times and Div@K measured (1 for an expert that always plays the same way; a randomised
    one, such as the formula games' "varied", draws afresh in each play, see collector.play_expert)."""
    config = evaluation_config(run_config, split, samples_per_task, seed, episodes, max_steps=max_steps)
    env_config = config.env
    kwargs = dict(env_config.kwargs)
    if strategy:
        kwargs["strategy"] = strategy
    env = make_env(env_config.id, split=split, reward=env_config.reward, image_size=env_config.image_size,
                   max_steps=env_config.max_steps, **kwargs)
    builder = PromptBuilder(env_config.id, config.prompt)
    try:
        records = [EpisodeRecord.from_trajectory(play_expert(
                       env, builder, task_seed, index, env_config.id,
                       expert_seed=stream_seed(Stream.EXPERT_DRAW, seed, index, j) if samples_per_task > 1 else None),
                       index)
                   for index, task_seed in enumerate(task_seeds(seed, episodes // samples_per_task))
                   for j in range(samples_per_task)]
        horizon = env.unwrapped.max_steps
    finally:
        env.close()
    result = summarize(records, samples_per_task)
    result["settings"] = {"env": env_config.id, "split": split, "seed": seed, "episodes": len(records),
                          "samples_per_task": samples_per_task, "policy": "oracle", "expert_strategy": strategy,
                          "reward": env_config.reward, "image_size": env_config.image_size, "max_steps": horizon,
                          "env_kwargs": dict(env_config.kwargs)}
    return result
