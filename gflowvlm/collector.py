"""The non-Markovian trajectory collector: B environments rolled together, one batched generation per step.

Per step, for every environment still running: build the prompt (task, past states and actions as text, admissible
actions, the current image), generate one response per prompt in ONE batch, parse the action (never raises), apply
the configured fallback / exploration, step the environment and record everything the objectives need.

Randomness is derived from (seed, rank, iteration) through gflowvlm.seeding's named streams, not carried in state,
so a resumed run collects exactly the same tasks and makes the same exploration choices as an uninterrupted one.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from gflowvlm.config import GenerationConfig, RunConfig
from gflowvlm.env_factory import make_env
from gflowvlm.prompting import HistoryStep, Prompt, PromptBuilder
from gflowvlm.response_parser import action_span, parse_action
from gflowvlm.seeding import Stream, derived_seed, stream_seed  # noqa: F401  (derived_seed: re-exported)
from gflowvlm.trajectory import Step, Trajectory

# generate(prompts, seed) -> list of response texts
GenerateFn = Callable[[Sequence[Prompt], int], list[str]]
INVALID_ACTION = "(invalid)"


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
        """The reset seed of each episode of a round: K consecutive episodes share a task. With collect.task_pool =
        N, each group's task is one of N fixed tasks (the same N on every rank), drawn per group."""
        collect = self.config.collect
        k = collect.trajectories_per_task
        episodes = collect.episodes or self.num_envs
        if not collect.task_pool:
            return [stream_seed(Stream.TASK_RESET, self.config.seed, self.rank, iteration, index // k)
                    for index in range(episodes)]
        # Pool tasks sit at iteration -1 of rank 0, which no fresh task ever uses.
        pool = [stream_seed(Stream.TASK_RESET, self.config.seed, 0, -1, j) for j in range(collect.task_pool)]
        return [pool[stream_seed(Stream.TASK_POOL, self.config.seed, self.rank, iteration, index // k)
                     % collect.task_pool] for index in range(episodes)]

    def collect(self, generate: GenerateFn, iteration: int, seeds: Sequence[int] | None = None,
                epsilon: float | None = None, unparseable: str | None = None) -> list[Trajectory]:
        """Play one episode per seed to its end; return the trajectories in seed order.

        Episodes run in the environments' slots; when one ends and episodes remain, its slot starts the next one
        at once, so every generation call stays as full as the slots allow (continuous batching) instead of
        shrinking while the longest episode of a wave finishes.
        """
        collect_config = self.config.collect
        epsilon = collect_config.epsilon if epsilon is None else epsilon
        unparseable = unparseable or collect_config.unparseable
        seeds = list(seeds) if seeds is not None else self.task_seeds(iteration)
        if not seeds:
            raise ValueError("collect needs at least one seed")
        rng = random.Random(stream_seed(Stream.EXPLORATION, self.config.seed, self.rank, iteration))
        k = self.config.collect.trajectories_per_task
        trajectories: list[Trajectory | None] = [None] * len(seeds)
        observations: dict[int, dict] = {}
        infos: dict[int, dict] = {}
        histories: dict[int, list[HistoryStep]] = {}
        pending = iter(range(len(seeds)))
        running: dict[int, int] = {}  # slot (environment index) -> episode index

        def start(slot: int) -> None:
            episode = next(pending, None)
            if episode is None:
                running.pop(slot, None)
                return
            observation, info = self.envs[slot].reset(seed=seeds[episode])
            observations[episode], infos[episode], histories[episode] = observation, info, []
            trajectories[episode] = Trajectory(env_id=self.env_id, task_seed=seeds[episode], group=episode // k,
                                               task=info["task"], task_type=str(info.get("task_type", "")))
            running[slot] = episode

        for slot in range(min(len(self.envs), len(seeds))):
            start(slot)
        step_index = 0
        while running:
            slots = sorted(running)
            episodes = [running[slot] for slot in slots]
            prompts = [self._prompt(observations[e], infos[e], histories[e]) for e in episodes]
            responses = generate(prompts, stream_seed(Stream.GENERATION, self.config.seed, self.rank, iteration,
                                                      step_index))
            for slot, e, prompt, response in zip(slots, episodes, prompts, responses):
                admissible = infos[e]["admissible_actions"]
                command = parse_action(response, admissible)
                parsed = command is not None
                if command is None and unparseable == "random" and admissible:
                    command = rng.choice(admissible)
                if admissible and rng.random() < epsilon:
                    command, parsed = rng.choice(admissible), False
                generated = None
                if command is not None and not parsed:
                    generated, response = response, with_action(response, command)
                    if generated == response:
                        generated = None
                sent = command if command is not None else response
                log_reward = infos[e]["log_reward"]
                observation, reward, terminated, truncated, info = self.envs[slot].step(sent)
                trajectories[e].steps.append(Step(prompt=prompt, response=response,
                                                  action=command if command is not None else INVALID_ACTION,
                                                  parsed=parsed, illegal=bool(info["illegal"]), reward=float(reward),
                                                  log_reward=float(log_reward), generated=generated))
                histories[e].append(HistoryStep(observations[e]["text"], command or INVALID_ACTION))
                observations[e], infos[e] = observation, info
                if terminated or truncated:
                    self._finish(trajectories[e], observation, info, histories[e], terminated, truncated)
                    del observations[e], infos[e], histories[e]
                    start(slot)
            step_index += 1
        return trajectories

    def _prompt(self, observation: dict, info: dict, history: list[HistoryStep]) -> Prompt:
        return state_prompt(self.builder, observation, info, history)

    def _finish(self, trajectory: Trajectory, observation: dict, info: dict, history: list[HistoryStep],
                terminated: bool, truncated: bool) -> None:
        finish(trajectory, self.builder, observation, info, history, terminated, truncated)

    def expert_trajectory(self, seed: int, group: int) -> Trajectory:
        """The oracle's trajectory for a task (the paper's ground-truth injection), in the policy's response format."""
        if self._expert_env is None:
            strategy = self.config.collect.expert_strategy
            self._expert_env = self._make_env(**({"strategy": strategy} if strategy else {}))
        return play_expert(self._expert_env, self.builder, seed, group, self.env_id)

    def close(self) -> None:
        for env in self.envs + ([self._expert_env] if self._expert_env is not None else []):
            env.close()


def play_expert(env, builder: PromptBuilder, seed: int, group: int, env_id: str,
                expert_seed: int | None = None) -> Trajectory:
    """Roll the environment's oracle from reset(seed); responses are written in the prompt builder's JSON format.

    `expert_seed` reseeds a randomised oracle's own draws after the reset (an env with `seed_expert`, e.g. the
    formula games' "varied" oracle): the K plays of one task in a Div@K measurement draw independently. Without it
    the oracle's draws follow from the reset seed, so one task is always played one way.
    """
    observation, info = env.reset(seed=seed)
    if expert_seed is not None and callable(getattr(env.unwrapped, "seed_expert", None)):
        env.unwrapped.seed_expert(expert_seed)
    trajectory = Trajectory(env_id=env_id, task_seed=seed, group=group, task=info["task"],
                            task_type=str(info.get("task_type", "")), source="expert")
    history: list[HistoryStep] = []
    while True:
        prompt = state_prompt(builder, observation, info, history)
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
            finish(trajectory, builder, observation, info, history, terminated, truncated)
            return trajectory


def state_prompt(builder: PromptBuilder, observation: dict, info: dict, history: list[HistoryStep]) -> Prompt:
    """The prompt at a state: its task, the history so far, the admissible actions, its image and state text."""
    return builder.build(info["task"], history, info["admissible_actions"], observation["image"],
                         state_text=observation["text"])


def finish(trajectory: Trajectory, builder: PromptBuilder, observation: dict, info: dict,
           history: list[HistoryStep], terminated: bool, truncated: bool) -> None:
    """Record how an episode ended (policy and oracle alike): log R(z_n), the prompt at z_n, the flags."""
    trajectory.final_log_reward = float(info["log_reward"])
    trajectory.final_prompt = state_prompt(builder, observation, info, history)
    trajectory.terminated, trajectory.truncated = bool(terminated), bool(truncated)
    trajectory.success = bool(info["success"])


def policy_generate(policy, generation: GenerationConfig, greedy: bool = False) -> GenerateFn:
    """generate(prompts, seed) -> texts through VLMPolicy.generate with a run's `generation` settings, without
    gradients (training samples, evaluation samples or decodes greedily)."""
    import torch  # deferred: the collector itself needs no torch

    do_sample = not greedy and generation.temperature > 0

    def generate(prompts, seed: int) -> list[str]:
        with torch.no_grad():
            outputs = policy.generate(list(prompts), temperature=generation.temperature if do_sample else 1.0,
                                      top_p=generation.top_p, max_new_tokens=generation.max_new_tokens,
                                      do_sample=do_sample, seed=seed)
        return [output.text for output in outputs]
    return generate


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
