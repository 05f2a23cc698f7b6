"""No sequence of illegal or unparseable replies earns more than an env's random policy, in either reward mode.

Three agents play the same fixed seeds of every env (so the figures are deterministic):
- garbage: every reply is unparseable text or an illegal command (what the collector sends under the
  `unparseable="illegal"` fallback); the state never changes, so the episode runs out the step limit;
- stall: uniformly random admissible commands for a random number of steps, then garbage to the end, i.e.
  illegal replies used to dodge the rest of an episode (a half-played Blackjack hand, a half-written formula);
- random: a uniformly random admissible command every step.
Each is scored by its mean return (in the env's reward mode) and its mean final `info["log_reward"]` (the
GFlowVLM log R(x), reported in both modes). A SubTB run once learned that a stalled Blackjack hand was scored a
draw (R = 10, above the random policy's 6.0) and stopped answering legally; these tests keep that shut.

"Below" is measured with a margin robust to sampling noise: the random agent's mean minus the adversary's must
exceed three standard errors of the per-seed differences (the agents are paired by seed). Where the adversary
ends at the env's floor reward (the least R the env pays), nothing can be lower: there it must sit exactly on
the floor in every episode and be no better than random on any seed. A stall, whose prefix is random play, must
be no better than random on any seed where the cut-off episode is scored the floor, else not better on average.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the environments)
from envs.base import MIN_LOG_REWARD
from envs.points import FLOOR_REWARD

# Unparseable text and commands that no env admits (each step asserts the env called it illegal).
GARBAGE = ("I am not JSON", "", None, "(invalid)", 42, '{"action": "fly"}', "hit me twice", "0", b"\xff")
Z = 3.0  # standard errors of the difference by which the random agent must beat an adversary


@dataclass
class Scores:
    returns: np.ndarray
    log_rewards: np.ndarray


def play(env, seed: int, agent: str) -> tuple[float, float]:
    """One episode: (return, final info["log_reward"])."""
    rng = np.random.default_rng(seed)
    # The stall point has its own generator, so a stall agent plays exactly the random agent's episode until then.
    stall_from = int(np.random.default_rng([seed, 1]).integers(0, env.max_steps)) if agent == "stall" else 0
    _, info = env.reset(seed=seed)
    total, step = 0.0, 0
    while True:
        garbage = agent == "garbage" or (agent == "stall" and step >= stall_from)
        command = GARBAGE[step % len(GARBAGE)] if garbage else str(rng.choice(info["admissible_actions"]))
        _, reward, terminated, truncated, info = env.step(command)
        assert info["illegal"] == garbage, command
        total += reward
        step += 1
        if terminated or truncated:
            assert not (garbage and terminated)   # garbage never ends an episode, only the step limit does
            return total, info["log_reward"]


def score(env, agent: str, seeds) -> Scores:
    results = np.array([play(env, seed, agent) for seed in seeds])
    return Scores(results[:, 0], results[:, 1])


def assert_below(adversary: np.ndarray, random: np.ndarray, what: str) -> None:
    """Strictly below on average, by more than Z standard errors of the per-seed differences (the agents are
    paired by seed: same deals, and a stall agent's prefix is the random agent's own moves)."""
    gap = random - adversary
    noise = gap.std(ddof=1) / math.sqrt(len(gap))
    assert gap.mean() > Z * noise and gap.mean() > 0, \
        f"{what}: adversary {adversary.mean():.4f}, random {random.mean():.4f}, noise {noise:.4f}"


def assert_not_above(adversary: np.ndarray, random: np.ndarray, what: str) -> None:
    """Not better on average than random by more than Z standard errors (where the two can tie)."""
    gap = random - adversary
    noise = gap.std(ddof=1) / math.sqrt(len(gap))
    assert gap.mean() >= -Z * noise, f"{what}: adversary {adversary.mean():.4f}, random {random.mean():.4f}"


def assert_dominated(adversary: np.ndarray, random: np.ndarray, what: str) -> None:
    """No better than random on every single seed (no noise to allow for)."""
    worse = np.flatnonzero(adversary > random + 1e-9 * np.abs(random))
    assert worse.size == 0, f"{what}: better than random on seeds {worse[:5]}"


def assert_on_floor(scores: np.ndarray, floor: float, what: str) -> None:
    assert np.allclose(scores, floor, rtol=1e-9, atol=0), f"{what}: off the floor {floor}: {scores[:5]}"


def check_garbage(garbage: Scores, random: Scores, mode: str, floor: float | None, ties: bool, what: str):
    """Garbage below random: strictly (by Z standard errors) in rl4vlm returns, which charge every illegal step;
    for log R and gflowvlm returns too, unless garbage ends on the env's floor: then it is on the floor in every
    episode (nothing is lower), random never below it, and random above it on average unless `ties`."""
    if mode == "rl4vlm":
        assert_below(garbage.returns, random.returns, f"{what} rl4vlm return")
    metrics = [("log R", garbage.log_rewards, random.log_rewards, floor)]
    if mode == "gflowvlm":
        metrics.append(("gflowvlm return", garbage.returns, random.returns,
                        None if floor is None else math.exp(floor)))
    for name, adversary, baseline, low in metrics:
        if low is None:
            assert_below(adversary, baseline, f"{what} {name}")
            continue
        assert_dominated(adversary, baseline, f"{what} {name}")
        assert_on_floor(adversary, low, f"{what} {name}")
        if not ties:
            assert baseline.mean() > adversary.mean(), f"{what} {name}: random never leaves the floor"


def check_stall(stall: Scores, random: Scores, mode: str, floor: float | None, what: str) -> None:
    """A stall after random moves: the rest of its episode pays -1 per illegal step in rl4vlm, never more than
    random's rest, so its return is no better on any seed; where the cut-off episode is scored the floor it is
    no better on any seed in log R either; elsewhere (NumberLine: the distance stays) not better on average."""
    if mode == "rl4vlm":
        assert_dominated(stall.returns, random.returns, f"{what} rl4vlm return")
    if floor is not None:
        assert_dominated(stall.log_rewards, random.log_rewards, f"{what} log R")
        if mode == "gflowvlm":
            assert_dominated(stall.returns, random.returns, f"{what} gflowvlm return")
        return
    assert_not_above(stall.log_rewards, random.log_rewards, f"{what} log R")
    if mode == "gflowvlm":
        assert_not_above(stall.returns, random.returns, f"{what} gflowvlm return")


# (env id, split, seeds, the env's floor log R where garbage ends on it, whether random may tie it there).
# Blackjack's garbage forfeits the hand (R = 1e-10); the formula games' garbage never submits (R = 0.01), the
# least they pay, and their random policy solves too rarely (EZPoints: 1-3 deals in 500, Points24: none) to leave
# the floor robustly on average, so there a tie is allowed (their rl4vlm returns are still strictly below).
# FrozenLake's garbage is cut off by the horizon at the start, which the gym adapter scores the floor (R = 1e-10);
# random play mostly falls into a hole (R = 1), so it is above the floor on average on both map sizes.
CARD_CASES = [
    ("gflowvlm/NumberLine-v0", "id", range(200), None, False),
    ("gflowvlm/NumberLine-v0", "ood", range(40), None, False),
    ("gflowvlm/Blackjack-v0", "id", range(300), MIN_LOG_REWARD, False),
    ("gflowvlm/Blackjack-v0", "ood", range(300), MIN_LOG_REWARD, False),
    ("gflowvlm/EZPoints-v0", "id", range(200), math.log(FLOOR_REWARD), True),
    ("gflowvlm/EZPoints-v0", "ood", range(200), math.log(FLOOR_REWARD), True),
    ("gflowvlm/Points24-v0", "id", range(80), math.log(FLOOR_REWARD), True),
    ("gflowvlm/Points24-v0", "ood", range(80), math.log(FLOOR_REWARD), True),
    ("gflowvlm/FrozenLake-v0", "id", range(60), MIN_LOG_REWARD, False),
    ("gflowvlm/FrozenLake-v0", "ood", range(20), MIN_LOG_REWARD, False),
]


@pytest.mark.parametrize("mode", ["rl4vlm", "gflowvlm"])
@pytest.mark.parametrize("env_id, split, seeds, floor, ties", CARD_CASES)
def test_garbage_and_stalling_never_beat_the_random_policy(env_id, split, seeds, floor, ties, mode):
    env = gym.make(env_id, split=split, reward=mode, image_size=32).unwrapped
    random, garbage, stall = (score(env, agent, seeds) for agent in ("random", "garbage", "stall"))
    check_garbage(garbage, random, mode, floor, ties, f"{env_id} {split} garbage")
    check_stall(stall, random, mode, floor, f"{env_id} {split} stall")
    if mode == "gflowvlm":   # the return is exactly the terminal reward, truncated or not
        for agent in (random, garbage, stall):
            assert np.allclose(agent.returns, np.exp(agent.log_rewards), rtol=1e-9, atol=0)


def test_a_stalled_blackjack_hand_is_a_loss_not_a_draw():
    """The regression: ten illegal replies used to leave the hand open and score it a draw (R = 10)."""
    for mode, expected_return in (("gflowvlm", 1e-10), ("rl4vlm", -11.0)):
        env = gym.make("gflowvlm/Blackjack-v0", reward=mode, image_size=32).unwrapped
        _, info = env.reset(options={"dealer": [10, 7], "player": [10, 6]})   # a hand that standing loses
        assert info["log_reward"] == pytest.approx(math.log(10.0))   # an open hand: the paper's non-final value
        total = 0.0
        for step in range(1, 11):
            obs, reward, terminated, truncated, info = env.step("I am not JSON")
            total += reward
            assert info["illegal"] and not terminated and truncated == (step == 10)
            if step < 10:   # the hand is still open: its intermediate value stays the paper's
                assert info["log_reward"] == pytest.approx(math.log(10.0))
        assert info["log_reward"] == pytest.approx(MIN_LOG_REWARD) and not info["success"]
        assert total == pytest.approx(expected_return, rel=1e-9)   # rl4vlm: ten illegal -1s and the loss's -1
        assert env.outcome == -1 and obs["text"].endswith("you lose: the hand ran out of steps")


@pytest.mark.parametrize("env_id, cards", [("gflowvlm/EZPoints-v0", [3, 4]),
                                           ("gflowvlm/Points24-v0", [3, 3, 8, 8])])
def test_a_stalled_formula_keeps_no_partial_credit(env_id, cards):
    """Writing one good card and then stalling used to keep the live prefix's partial credit at truncation."""
    env = gym.make(env_id, reward="gflowvlm", image_size=32).unwrapped
    env.reset(seed=0, options={"cards": cards})
    _, reward, _, _, info = env.step(str(cards[-1]))
    assert reward == 0.0 and math.exp(info["log_reward"]) > FLOOR_REWARD   # an intermediate state's credit
    while True:
        _, reward, terminated, truncated, info = env.step("I am not JSON")
        if terminated or truncated:
            break
    assert truncated and reward == pytest.approx(FLOOR_REWARD)
    assert info["log_reward"] == pytest.approx(math.log(FLOOR_REWARD))


# ----- ALFWorld, on the real engine ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def alfworld_data(tmp_path_factory) -> str:
    from envs.alfworld.generator import GenerationRequest, generate

    out = str(tmp_path_factory.mktemp("alfworld_garbage"))
    generate(out, GenerationRequest("id", seed=0, size="small"), 6)   # one game per task type
    return out


@pytest.mark.alfworld
def test_alfworld_garbage_never_beats_the_random_policy(alfworld_data):
    """Garbage leaves the agent where it started (no progress, the floor R = 0.01, and rl4vlm's -1 per step);
    random admissible play picks things up and sometimes wins. (Illegal steps change nothing that the legal
    "look" does not, so a stall after some progress buys nothing a legal one would not; it is not played here.)"""
    from envs.alfworld.env import HORIZON, MIN_REWARD

    # rl4vlm's -1 per illegal step puts garbage 35 below any legal play, so a few seeds show it; the floor
    # comparison needs random play that makes progress, which 3 of these 16 episodes do.
    for mode, seeds in (("rl4vlm", range(6)), ("gflowvlm", range(16))):
        env = gym.make("gflowvlm/ALFWorld-v0", data_dir=alfworld_data, split="id", reward=mode,
                       image_size=32).unwrapped
        random, garbage = score(env, "random", seeds), score(env, "garbage", seeds)
        check_garbage(garbage, random, mode, math.log(MIN_REWARD), False, f"ALFWorld {mode} garbage")
        if mode == "rl4vlm":
            assert np.allclose(garbage.returns, -1.0 * HORIZON) and (random.returns >= 0).all()
        env.close()
