"""The non-Markovian trajectory collector: B environments rolled together, one batched generation per step.

Per step, for every environment still running: build the prompt (task, past states and actions as text, admissible
actions, the current image), generate one response per prompt in ONE batch, parse the action (never raises), apply
the configured fallback / exploration, step the environment and record everything the objectives need.

Randomness is derived from (seed, rank, iteration), not carried in state, so a resumed run collects exactly the same
tasks and makes the same exploration choices as an uninterrupted one.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gflowvlm.config import RunConfig
from gflowvlm.env_factory import make_env
from gflowvlm.prompting import HistoryStep, Prompt, PromptBuilder
from gflowvlm.response_parser import action_span, parse_action
from gflowvlm.trajectory import Step, Trajectory

# generate(prompts, seed) -> list of response texts
GenerateFn = Callable[[Sequence[Prompt], int], list[str]]
INVALID_ACTION = "(invalid)"


def derived_seed(*parts: int) -> int:
    """A 31-bit seed from integers (stable across runs and Python versions, unlike hash())."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class Collector:
    def __init__(self, config: RunConfig, rank: int = 0, count_tokens: Callable[[str], int] | None = None,
                 split: str | None = None, num_envs: int | None = None):
        self.config = config
        self.rank = rank
        env_config = config.env
        self.env_id = env_config.id
        self.split = split or env_config.split
        self.num_envs = num_envs or env_config.num_envs
        self.envs = [self._make_env() for _ in range(self.num_envs)]
        self._expert_env = None
        self.builder = PromptBuilder(self.env_id, config.prompt, count_tokens)

    def _make_env(self, **extra: Any):
        env_config = self.config.env
        return make_env(self.env_id, split=self.split, reward=env_config.reward, image_size=env_config.image_size,
                        max_steps=env_config.max_steps, **{**env_config.kwargs, **extra})

    def task_seeds(self, iteration: int) -> list[int]:
        """The reset seed of each environment: K consecutive environments share a task."""
        k = self.config.collect.trajectories_per_task
        return [derived_seed(self.config.seed, self.rank, iteration, index // k) for index in range(self.num_envs)]

    def collect(self, generate: GenerateFn, iteration: int, seeds: Sequence[int] | None = None,
                epsilon: float | None = None, unparseable: str | None = None) -> list[Trajectory]:
        """Roll every environment to the end of its episode; return one trajectory per environment."""
        collect_config = self.config.collect
        epsilon = collect_config.epsilon if epsilon is None else epsilon
        unparseable = unparseable or collect_config.unparseable
        seeds = list(seeds) if seeds is not None else self.task_seeds(iteration)
        if not 0 < len(seeds) <= len(self.envs):
            raise ValueError(f"collect needs 1..{len(self.envs)} seeds (one per environment), got {len(seeds)}")
        rng = random.Random(derived_seed(self.config.seed, self.rank, iteration, 1))
        k = self.config.collect.trajectories_per_task
        observations, infos, trajectories, histories = [], [], [], []
        for index, (env, seed) in enumerate(zip(self.envs, seeds)):
            observation, info = env.reset(seed=seed)
            observations.append(observation)
            infos.append(info)
            histories.append([])
            trajectories.append(Trajectory(env_id=self.env_id, task_seed=seed, group=index // k, task=info["task"],
                                           task_type=str(info.get("task_type", ""))))
        active = list(range(len(seeds)))  # a last, smaller batch uses only the first environments
        step_index = 0
        while active:
            prompts = [self._prompt(observations[i], infos[i], histories[i]) for i in active]
            responses = generate(prompts, derived_seed(self.config.seed, self.rank, iteration, 2, step_index))
            still_active = []
            for i, prompt, response in zip(active, prompts, responses):
                admissible = infos[i]["admissible_actions"]
                command = parse_action(response, admissible)
                parsed = command is not None
                if command is None and unparseable == "random" and admissible:
                    command = rng.choice(admissible)
                if admissible and rng.random() < epsilon:
                    command, parsed = rng.choice(admissible), False
                if command is not None and not parsed:
                    response = with_action(response, command)
                sent = command if command is not None else response
                log_reward = infos[i]["log_reward"]
                observation, reward, terminated, truncated, info = self.envs[i].step(sent)
                trajectories[i].steps.append(Step(prompt=prompt, response=response,
                                                  action=command if command is not None else INVALID_ACTION,
                                                  parsed=parsed, illegal=bool(info["illegal"]), reward=float(reward),
                                                  log_reward=float(log_reward)))
                histories[i].append(HistoryStep(observations[i]["text"], command or INVALID_ACTION))
                observations[i], infos[i] = observation, info
                if terminated or truncated:
                    self._finish(trajectories[i], observation, info, histories[i], terminated, truncated)
                else:
                    still_active.append(i)
            active = still_active
            step_index += 1
        return trajectories

    def _prompt(self, observation: dict, info: dict, history: list[HistoryStep]) -> Prompt:
        return self.builder.build(info["task"], history, info["admissible_actions"], observation["image"],
                                  state_text=observation["text"])

    def _finish(self, trajectory: Trajectory, observation: dict, info: dict, history: list[HistoryStep],
                terminated: bool, truncated: bool) -> None:
        trajectory.final_log_reward = float(info["log_reward"])
        trajectory.final_prompt = self._prompt(observation, info, history)
        trajectory.terminated, trajectory.truncated = bool(terminated), bool(truncated)
        trajectory.success = bool(info["success"])

    def expert_trajectory(self, seed: int, group: int) -> Trajectory:
        """The oracle's trajectory for a task (the paper's ground-truth injection), in the policy's response format."""
        if self._expert_env is None:
            strategy = self.config.collect.expert_strategy
            self._expert_env = self._make_env(**({"strategy": strategy} if strategy else {}))
        return play_expert(self._expert_env, self.builder, seed, group, self.env_id)

    def close(self) -> None:
        for env in self.envs + ([self._expert_env] if self._expert_env is not None else []):
            env.close()


def play_expert(env, builder: PromptBuilder, seed: int, group: int, env_id: str) -> Trajectory:
    """Roll the environment's oracle from reset(seed); responses are written in the prompt builder's JSON format."""
    observation, info = env.reset(seed=seed)
    trajectory = Trajectory(env_id=env_id, task_seed=seed, group=group, task=info["task"],
                            task_type=str(info.get("task_type", "")), source="expert")
    history: list[HistoryStep] = []
    while True:
        prompt = builder.build(info["task"], history, info["admissible_actions"], observation["image"],
                               state_text=observation["text"])
        unwrapped = env.unwrapped
        action, thoughts = unwrapped.expert_action(), unwrapped.expert_thoughts()
        response = builder.response(thoughts, action, unwrapped.state_fields())
        log_reward = info["log_reward"]
        next_observation, reward, terminated, truncated, info = env.step(action)
        trajectory.steps.append(Step(prompt=prompt, response=response, action=action, parsed=True,
                                     illegal=bool(info["illegal"]), reward=float(reward), log_reward=float(log_reward)))
        history.append(HistoryStep(observation["text"], action))
        observation = next_observation
        if terminated or truncated:
            trajectory.final_log_reward = float(info["log_reward"])
            trajectory.final_prompt = builder.build(info["task"], history, info["admissible_actions"],
                                                    observation["image"], state_text=observation["text"])
            trajectory.terminated, trajectory.truncated = bool(terminated), bool(truncated)
            trajectory.success = bool(info["success"])
            return trajectory


def with_action(response: str, command: str) -> str:
    """The response with its action value replaced by `command`, so the scored text matches what was done.

    Exploration and fallbacks change the command sent to the environment; the trajectory's log P_F must then be the
    probability of a response that chose that command. Without an action field the response is kept as it is.
    """
    span = action_span(response)
    if span is None:
        return response
    start, end = span
    return response[:start] + command + response[end:]
