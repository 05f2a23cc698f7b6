"""Every env draws every reachable state at every supported image size, as a uint8 H x W x 3 image of that size.

Sizes are sampled over 32..512 with fixed generators, always with both edges and odd sizes next to them;
states come from uniformly random admissible play over several seeds (and, for Blackjack, the longest hands).
ALFWorld plays generated games of every floor-plan size class on the real engine. The issue that asked for this:
ALFWorld at 64 px (every tiny ALFWorld config's size) raised "math domain error" on scenes whose receptacle holds
many objects, because the status text under the board could grow taller than the whole image.
"""
from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the environments)
from envs.alfworld.render import ReceptacleView, SceneView, _status_lines, draw_scene
from envs.render import canvas

EDGES = (32, 33, 511, 512)


def sample_sizes(seed: int, count: int) -> list[int]:
    """The edges plus `count` sizes drawn over 32..512, at least one of them odd."""
    rng = np.random.default_rng(seed)
    drawn = [int(size) for size in rng.integers(32, 513, size=count)]
    drawn[0] |= 1
    return sorted(set(EDGES) | set(drawn))


def check(env, observation, size: int) -> None:
    image = observation["image"]
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (size, size, 3)
    assert env.observation_space.contains(observation)


def play_randomly(env, seed: int, size: int, max_steps: int | None = None, options=None) -> int:
    """One episode of random admissible commands; checks every observation; returns the steps played."""
    rng = np.random.default_rng(seed)
    observation, info = env.reset(seed=seed, options=options)
    check(env, observation, size)
    steps = 0
    while max_steps is None or steps < max_steps:
        observation, _, terminated, truncated, info = env.step(str(rng.choice(info["admissible_actions"])))
        check(env, observation, size)
        steps += 1
        if terminated or truncated:
            break
    return steps


# (env id, split, episodes per size). Long episodes (NumberLine ood: up to 100 steps) get fewer.
CARD_CASES = [
    ("gflowvlm/NumberLine-v0", "id", 4), ("gflowvlm/NumberLine-v0", "ood", 1),
    ("gflowvlm/Blackjack-v0", "id", 6), ("gflowvlm/Blackjack-v0", "ood", 3),
    ("gflowvlm/EZPoints-v0", "id", 4), ("gflowvlm/EZPoints-v0", "ood", 2),
    ("gflowvlm/Points24-v0", "id", 3), ("gflowvlm/Points24-v0", "ood", 2),
    ("gflowvlm/FrozenLake-v0", "id", 3), ("gflowvlm/FrozenLake-v0", "ood", 2),
]


@pytest.mark.parametrize("env_id, split, episodes", CARD_CASES)
def test_card_envs_draw_every_state_at_every_size(env_id, split, episodes):
    offset = CARD_CASES.index((env_id, split, episodes))
    for size in sample_sizes(seed=offset, count=4):
        env = gym.make(env_id, split=split, image_size=size).unwrapped
        for episode in range(episodes):
            play_randomly(env, seed=1000 * offset + 10 * size + episode, size=size)
        if env_id == "gflowvlm/Blackjack-v0":
            # The longest hand: 2 2 and nine aces never bust, so ten hits fill a row with eleven cards.
            long_hand = {"dealer": [10, 10], "player": [2, 2], "next_cards": [1] * 9}
            observation, _ = env.reset(options=long_hand)
            for _ in range(env.max_steps):
                observation, *_ = env.step("hit")
                check(env, observation, size)
            assert len(env.player) == 2 + env.max_steps


def crowded_view(objects: int) -> SceneView:
    """The densest scene the generator makes (22 receptacles) with `objects` on the agent's receptacle."""
    receptacles = [ReceptacleView(f"cabinet {i}", True, i % 3 == 0) for i in range(1, 23)]
    return SceneView("put two clean spraybottles in the garbagecan", receptacles, "cabinet 3",
                     [f"spraybottle {i}" for i in range(1, objects + 1)], ["soapbottle 12 (hot, cold, clean)"])


@pytest.mark.parametrize("objects", [0, 6, 55])
def test_alfworld_drawing_fits_any_crowd_at_any_size(objects):
    """The root cause, without the engine: the status text is capped at 40% of the image, so the board never
    gets a height of zero or less (which math.sqrt refused) however many objects the agent sees."""
    view = crowded_view(objects)
    for size in sorted(set(range(16, 130, 7)) | set(EDGES) | {64, 300}):
        image = draw_scene(view, size)
        assert image.dtype == np.uint8 and image.shape == (size, size, 3)


def test_alfworld_status_cut_keeps_where_and_holds_and_counts_the_rest():
    _, draw = canvas(8)
    view = crowded_view(40)
    lines = _status_lines(draw, view, 60, 6, max_lines=4)
    assert len(lines) <= 4
    assert lines[0].startswith("At: ") and any(line.startswith("Holds: ") for line in lines)
    assert any("more" in line for line in lines)   # "+N more" says the list was cut
    assert len(_status_lines(draw, view, 60, 6)) > 4   # uncut, the same status needs more lines
    assert _status_lines(draw, crowded_view(1), 600, 6, max_lines=4) == _status_lines(draw, crowded_view(1), 600, 6)


# ----- ALFWorld, on the real engine ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> str:
    from envs.alfworld.generator import GenerationRequest, generate

    out = str(tmp_path_factory.mktemp("alfworld_rendering"))
    for size_class in ("small", "medium", "large"):
        generate(out, GenerationRequest("id", seed=0, size=size_class), 3)
    return out


def size_class(game_file: str) -> str:
    """The floor plan's size class, from the ALFRED folder name <task>-<Obj>-None-<Parent>-<plan>/<trial>/."""
    from envs.alfworld.scenes import size_class_of

    return size_class_of(int(os.path.basename(os.path.dirname(os.path.dirname(game_file))).rsplit("-", 1)[1]))


@pytest.mark.alfworld
def test_alfworld_draws_every_state_of_every_size_class_at_every_size(scenes):
    sizes = sorted(set(sample_sizes(seed=7, count=2)) | {64})   # 64: the tiny configs' size, where it crashed
    played = 0
    for index, size in enumerate(sizes):
        env = gym.make("gflowvlm/ALFWorld-v0", data_dir=scenes, split="id", image_size=size).unwrapped
        by_class: dict[str, list[int]] = {}
        for game, entry in enumerate(env.game_entries):
            by_class.setdefault(size_class(entry.game_file), []).append(game)
        assert sorted(by_class) == ["large", "medium", "small"]
        for games in by_class.values():   # one game of each size class per image size, a different one each time
            game = games[index % len(games)]
            played += play_randomly(env, seed=game + 100 * size, size=size, max_steps=8,
                                    options={"game_index": game})
        env.close()
    assert played >= 8 * len(sizes)   # at least one long enough episode per size
