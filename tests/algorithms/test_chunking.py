"""algorithms.gflownet.chunk_by_group: the forward-sized chunks of a batch never split a task group (Var-TB compares a
task's samples with each other), close at about max_steps, keep the order, and count an empty trajectory as one row
(its final state is still scored)."""
from __future__ import annotations

import numpy as np
import pytest

from gflowvlm.algorithms.gflownet import chunk_by_group
from gflowvlm.prompting import Prompt
from gflowvlm.trajectory import Step, Trajectory

IMAGE = np.zeros((4, 4, 3), dtype=np.uint8)


def trajectory(length: int, group: int, task_seed: int | None = None, env_id: str = "gflowvlm/NumberLine-v0",
               name: str = "") -> Trajectory:
    steps = [Step(prompt=Prompt(f"{name} step {i}", IMAGE), response="{}", action="+", parsed=True, illegal=False,
                  reward=0.0, log_reward=0.0) for i in range(length)]
    return Trajectory(env_id=env_id, task_seed=group if task_seed is None else task_seed, group=group, steps=steps,
                      task=name)


def key(t: Trajectory) -> tuple[str, int, int]:
    return (t.env_id, t.task_seed, t.group)


def cost(chunk: list[Trajectory]) -> int:
    return sum(max(1, t.length) for t in chunk)


def batch(group_lengths: list[list[int]]) -> list[Trajectory]:
    """Trajectories in group order, group g holding one trajectory per length in group_lengths[g]."""
    return [trajectory(n, g, name=f"g{g}t{i}")
            for g, lengths in enumerate(group_lengths) for i, n in enumerate(lengths)]


def check_invariants(trajectories: list[Trajectory], chunks: list[list[Trajectory]], max_steps: int) -> None:
    assert all(chunks), "no empty chunk"
    # Every trajectory exactly once, in order (the input lists each group contiguously).
    assert [t.task for chunk in chunks for t in chunk] == [t.task for t in trajectories]
    # A group lies in exactly one chunk.
    homes: dict[tuple[str, int, int], int] = {}
    for index, chunk in enumerate(chunks):
        for t in chunk:
            assert homes.setdefault(key(t), index) == index, f"group {key(t)} split over chunks"
    for index, chunk in enumerate(chunks):
        if cost(chunk) > max_steps:  # over the limit only as one group too large on its own
            assert len({key(t) for t in chunk}) == 1, f"chunk {index} holds several groups over max_steps"
        if index + 1 < len(chunks):  # closed only because the next group would not fit
            first_key = key(chunks[index + 1][0])
            next_group = [t for t in chunks[index + 1] if key(t) == first_key]
            assert cost(chunk) + cost(next_group) > max_steps


def test_whole_groups_fill_chunks_up_to_max_steps():
    trajectories = batch([[3, 3], [2, 2], [4], [1, 1, 1]])  # group costs 6, 4, 4, 3
    chunks = chunk_by_group(trajectories, max_steps=10)
    assert [[t.task for t in chunk] for chunk in chunks] == [["g0t0", "g0t1", "g1t0", "g1t1"],
                                                             ["g2t0", "g3t0", "g3t1", "g3t2"]]
    check_invariants(trajectories, chunks, 10)


def test_a_group_larger_than_max_steps_is_a_chunk_of_its_own_not_split():
    trajectories = batch([[2], [5, 6], [1]])  # the middle group alone costs 11 > 4
    chunks = chunk_by_group(trajectories, max_steps=4)
    assert [[t.task for t in chunk] for chunk in chunks] == [["g0t0"], ["g1t0", "g1t1"], ["g2t0"]]
    check_invariants(trajectories, chunks, 4)


def test_a_zero_length_trajectory_counts_as_one_step():
    trajectories = batch([[0], [0], [0], [0, 0]])
    chunks = chunk_by_group(trajectories, max_steps=2)
    # Counted as 0 steps, everything would fit in one chunk; counted as 1, two groups of one fill a chunk.
    assert [[t.task for t in chunk] for chunk in chunks] == [["g0t0", "g1t0"], ["g2t0"], ["g3t0", "g3t1"]]
    check_invariants(trajectories, chunks, 2)
    assert [[t.task for t in chunk] for chunk in chunk_by_group(batch([[0, 5], [0]]), max_steps=6)] == [
        ["g0t0", "g0t1"], ["g1t0"]]  # 1 + 5 = 6 fits exactly; one more does not


def test_groups_are_told_apart_by_env_task_seed_and_group_index():
    same_group_index = [trajectory(2, 0, task_seed=7, name="a"), trajectory(2, 0, task_seed=8, name="b"),
                        trajectory(2, 0, task_seed=7, env_id="gflowvlm/Blackjack-v0", name="c")]
    chunks = chunk_by_group(same_group_index, max_steps=2)
    assert [[t.task for t in chunk] for chunk in chunks] == [["a"], ["b"], ["c"]]


def test_interleaved_members_are_gathered_in_order_of_first_appearance():
    a0, b0, a1, c0, b1 = (trajectory(1, g, name=name) for g, name in [(0, "a0"), (1, "b0"), (0, "a1"), (2, "c0"),
                                                                     (1, "b1")])
    chunks = chunk_by_group([a0, b0, a1, c0, b1], max_steps=100)
    assert [[t.task for t in chunk] for chunk in chunks] == [["a0", "a1", "b0", "b1", "c0"]]
    chunks = chunk_by_group([a0, b0, a1, c0, b1], max_steps=2)
    assert [[t.task for t in chunk] for chunk in chunks] == [["a0", "a1"], ["b0", "b1"], ["c0"]]


def test_empty_batch_gives_no_chunks():
    assert chunk_by_group([], max_steps=8) == []


@pytest.mark.parametrize("seed", range(20))
def test_random_batches_keep_every_invariant(seed):
    rng = np.random.default_rng(seed)
    group_lengths = [list(rng.integers(0, 7, size=rng.integers(1, 5))) for _ in range(rng.integers(1, 12))]
    trajectories = batch([[int(n) for n in lengths] for lengths in group_lengths])
    max_steps = int(rng.integers(1, 20))
    check_invariants(trajectories, chunk_by_group(trajectories, max_steps), max_steps)
