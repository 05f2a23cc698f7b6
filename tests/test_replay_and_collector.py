"""The collector with scripted policies (no model needed), expert injection data, and the replay buffer."""
import json
import random

import numpy as np

from gflowvlm.collector import Collector, with_action
from gflowvlm.config import load_config
from gflowvlm.replay_buffer import ReplayBuffer
from gflowvlm.response_parser import parse_action
from gflowvlm.trajectory import Step, Trajectory
from gflowvlm.prompting import Prompt

NUMBERLINE = "gflowvlm/NumberLine-v0"


def config(**overrides):
    items = [f"{k}={v}" for k, v in overrides.items()]
    return load_config(None, ["env.id=" + NUMBERLINE, "env.image_size=32", "env.num_envs=4", *items])


def oracle_generate(collector):
    """Answers every prompt with the oracle's action by peeking at the env that produced it (test only)."""
    def generate(prompts, seed):
        answers = []
        active = [env for env in collector.envs if not env.unwrapped._finished]
        for env in active[: len(prompts)]:
            action = env.unwrapped.expert_action()
            answers.append(json.dumps({"thoughts": "move toward the target", "action": action}))
        return answers
    return generate


def test_oracle_policy_solves_every_task_and_records_steps():
    collector = Collector(config())
    trajectories = collector.collect(oracle_generate(collector), iteration=0)
    assert len(trajectories) == 4
    for trajectory in trajectories:
        assert trajectory.success and trajectory.terminated and not trajectory.truncated
        assert all(step.parsed and not step.illegal for step in trajectory.steps)
        assert trajectory.final_log_reward == np.log(100.0)  # distance 0: R = 100 / (0 + 1)
        assert len(trajectory.state_log_rewards()) == trajectory.length + 1
        assert trajectory.final_prompt is not None
        first = trajectory.steps[0].prompt.text
        assert first.startswith("Task:") and "History:" not in first
        if trajectory.length > 1:
            assert "History:" in trajectory.steps[1].prompt.text


def test_tasks_are_shared_by_k_samples_and_reproducible():
    collector = Collector(config(**{"collect.trajectories_per_task": 2}))
    seeds = collector.task_seeds(3)
    assert seeds[0] == seeds[1] and seeds[2] == seeds[3] and seeds[0] != seeds[2]
    assert seeds == Collector(config(**{"collect.trajectories_per_task": 2})).task_seeds(3)
    assert seeds != collector.task_seeds(4)
    other_rank = Collector(config(**{"collect.trajectories_per_task": 2}), rank=1)
    assert other_rank.task_seeds(3) != seeds  # each rank rolls its own tasks


def test_a_task_pool_replays_the_same_fixed_tasks_and_never_a_fresh_one():
    pooled = Collector(config(**{"collect.task_pool": 3, "collect.trajectories_per_task": 2}))
    rounds = [pooled.task_seeds(iteration) for iteration in range(40)]
    used = {seed for seeds in rounds for seed in seeds}
    assert len(used) == 3  # every group of every round plays one of the 3 fixed tasks, all of them in time
    assert all(seeds[0] == seeds[1] and seeds[2] == seeds[3] for seeds in rounds)  # K samples share the task
    fresh = Collector(config(**{"collect.trajectories_per_task": 2}))
    assert not used & {seed for iteration in range(40) for seed in fresh.task_seeds(iteration)}
    assert Collector(config(**{"collect.task_pool": 3}), rank=1).task_seeds(0)[0] in used  # one pool on all ranks


def test_blackjack_transitions_are_deterministic_per_task_seed():
    """What a task pool buys on Blackjack: the same task seed and the same actions give the same cards."""
    import gymnasium

    import envs  # noqa: F401

    def play(seed):
        env = gymnasium.make("gflowvlm/Blackjack-v0", image_size=32)
        texts = [env.reset(seed=seed)[0]["text"]]
        for _ in range(3):
            observation, _, terminated, truncated, _ = env.step("hit")
            texts.append(observation["text"])
            if terminated or truncated:
                break
        env.close()
        return texts

    assert play(12345) == play(12345)
    assert len({tuple(play(seed)) for seed in range(20)}) > 10  # other deals: other cards


def test_unparseable_fallbacks_and_exploration():
    garbage = lambda prompts, seed: ["I am not JSON"] * len(prompts)  # noqa: E731
    random_fallback = Collector(config()).collect(garbage, 0, unparseable="random")
    steps = [s for t in random_fallback for s in t.steps]
    assert all(not s.parsed and not s.illegal and s.action in ("+", "-") for s in steps)
    illegal = Collector(config()).collect(garbage, 0, unparseable="illegal")
    assert all(t.truncated and t.length == 10 for t in illegal)  # the state never changes until truncation
    assert all(s.illegal and s.action == "(invalid)" for t in illegal for s in t.steps)
    always_plus = lambda prompts, seed: ['{"thoughts": "up", "action": "+"}'] * len(prompts)  # noqa: E731
    explored = Collector(config()).collect(always_plus, 0, epsilon=1.0)
    for step in (s for t in explored for s in t.steps):
        assert not step.parsed and parse_action(step.response, ["+", "-"]) == step.action  # text matches the move


def test_a_rewritten_response_keeps_the_models_own_text_for_transcripts(tmp_path):
    """A fallback's action is scored in the response, and the transcript still shows what the model wrote."""
    from gflowvlm.evaluation import write_transcript
    from gflowvlm.run_logger import format_trajectories

    replies = iter(['{"thoughts": "jump far", "action": "jump"}', '{"thoughts": "up", "action": "+"}'] * 50)
    generate = lambda prompts, seed: [next(replies) for _ in prompts]  # noqa: E731
    trajectories = Collector(config(**{"env.num_envs": 1})).collect(generate, 0, unparseable="random")
    steps = trajectories[0].steps
    fallback, parsed = steps[0], steps[1]
    assert not fallback.parsed and fallback.generated == '{"thoughts": "jump far", "action": "jump"}'
    assert fallback.response == with_action(fallback.generated, fallback.action) and fallback.action in ("+", "-")
    assert parsed.parsed and parsed.generated is None and parsed.response == '{"thoughts": "up", "action": "+"}'
    no_action_field = Collector(config()).collect(lambda prompts, seed: ["not JSON"] * len(prompts), 0)
    assert all(s.generated is None and s.response == "not JSON" for t in no_action_field for s in t.steps)

    for text in (write_transcript(trajectories[:1], tmp_path).read_text(), format_trajectories(trajectories[:1])):
        assert "response (the model's own): " + fallback.generated in text
        assert "response (as scored, its action replaced by the one taken): " + fallback.response in text
        assert "response: " + parsed.response in text

    buffer = ReplayBuffer(capacity=2)  # replay states carry the field through a checkpoint
    assert buffer.add(trajectories[0])
    restored = ReplayBuffer(0)
    restored.load_state_dict(json.loads(json.dumps(buffer.state_dict())))
    assert restored.sample(1, random.Random(0))[0].steps[0].generated == fallback.generated


def test_with_action_rewrites_only_the_value():
    response = '{"thoughts": "the action is +", "action": "+"}'
    assert with_action(response, "-") == '{"thoughts": "the action is +", "action": "-"}'
    assert with_action("no json", "-") == "no json"


def test_expert_trajectory_is_in_the_response_format():
    collector = Collector(config())
    trajectory = collector.expert_trajectory(seed=123, group=0)
    assert trajectory.source == "expert" and trajectory.success
    for step in trajectory.steps:
        assert parse_action(step.response, ["+", "-"]) == step.action
        assert json.loads(step.response)["thoughts"]


def make_trajectory(seed, actions, log_reward):
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    steps = [Step(prompt=Prompt(f"p{i}", image + i), response=a, action=a, parsed=True, illegal=False, reward=0.0,
                  log_reward=0.0) for i, a in enumerate(actions)]
    return Trajectory(env_id=NUMBERLINE, task_seed=seed, group=0, steps=steps, final_log_reward=log_reward,
                      final_prompt=Prompt("end", image))


def test_replay_keeps_top_k_per_task_without_duplicates():
    buffer = ReplayBuffer(capacity=2)
    assert buffer.add(make_trajectory(1, ["+"], 1.0))
    assert not buffer.add(make_trajectory(1, ["+"], 1.0))  # same action sequence: a duplicate object
    assert buffer.add(make_trajectory(1, ["-", "+"], 3.0))
    assert buffer.add(make_trajectory(1, ["+", "+"], 2.0))  # evicts the worst (1.0)
    assert not buffer.add(make_trajectory(1, ["-", "-"], 0.5))  # worse than everything kept
    assert buffer.add(make_trajectory(2, ["+"], 0.1))  # another task has its own slots
    assert len(buffer) == 3
    sampled = buffer.sample(3, random.Random(0))
    assert {t.final_log_reward for t in sampled} == {3.0, 2.0, 0.1}
    assert all(t.source == "replay" for t in sampled)

    restored = ReplayBuffer(0)
    restored.load_state_dict(json.loads(json.dumps(buffer.state_dict())))  # JSON-able, no pickle
    assert len(restored) == 3 and restored.capacity == 2
    again = restored.sample(3, random.Random(0))
    assert [t.action_sequence() for t in again] == [t.action_sequence() for t in sampled]
    assert np.array_equal(again[0].steps[0].prompt.image, sampled[0].steps[0].prompt.image)


def test_replay_state_written_with_the_removed_done_response_field_still_loads():
    buffer = ReplayBuffer(capacity=2)
    buffer.add(make_trajectory(1, ["+", "-"], 1.0))
    state = json.loads(json.dumps(buffer.state_dict()))
    for step in state["trajectories"][0]["steps"]:
        step["done_response"] = False  # what checkpoints held before Step lost the field
    restored = ReplayBuffer(0)
    restored.load_state_dict(state)
    [trajectory] = restored.sample(1, random.Random(0))
    assert trajectory.action_sequence() == ("+", "-") and not hasattr(trajectory.steps[0], "done_response")


def test_replay_evicts_the_oldest_task_beyond_max_tasks():
    buffer = ReplayBuffer(capacity=2, max_tasks=2)
    for seed in (1, 2, 3):
        buffer.add(make_trajectory(seed, ["+"], 1.0))
    assert {t.task_seed for t in buffer.sample(10, random.Random(0))} == {2, 3}  # task 1 was evicted
    buffer.add(make_trajectory(2, ["-"], 2.0))  # task 2 used again: task 3 is now the oldest
    buffer.add(make_trajectory(4, ["+"], 1.0))
    assert {t.task_seed for t in buffer.sample(10, random.Random(1))} == {2, 4}


def test_freed_slots_start_the_next_episode_and_results_keep_seed_order():
    collector = Collector(config(**{"env.num_envs": 2, "collect.episodes": 6}))
    seeds = collector.task_seeds(0)
    assert len(seeds) == 6
    batch_sizes = []

    def scripted(prompts, seed):
        batch_sizes.append(len(prompts))
        return ['{"thoughts": "up", "action": "+"}'] * len(prompts)

    trajectories = collector.collect(scripted, iteration=0)
    assert [t.task_seed for t in trajectories] == seeds and all(t.length >= 1 for t in trajectories)
    assert max(batch_sizes) == 2  # never more prompts than environments
    # every call is full while at least two episodes are left to play: the batch only shrinks at the very end
    full_calls = sum(size == 2 for size in batch_sizes)
    assert full_calls >= sum(t.length for t in trajectories) // 2 - max(t.length for t in trajectories)
    # the same episodes as when each one is played alone, with its own fresh environment
    for seed, trajectory in zip(seeds, trajectories):
        alone = Collector(config(**{"env.num_envs": 1})).collect(scripted, iteration=0, seeds=[seed])[0]
        assert alone.action_sequence() == trajectory.action_sequence()
        assert alone.final_log_reward == trajectory.final_log_reward
