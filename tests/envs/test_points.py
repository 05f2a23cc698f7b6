"""EZPoints and Points24: deals, rules, rewards, horizon, splits, oracle and images."""
from __future__ import annotations

import math
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the environments)
from envs.formula_solver import find_solution
from envs.points import FLOOR_REWARD, PROGRESS_REWARD, SOLVED_REWARD, EZPointsEnv, Points24Env

EZ, P24 = "gflowvlm/EZPoints-v0", "gflowvlm/Points24-v0"


def make(env_id: str, **kwargs):
    return gym.make(env_id, **kwargs).unwrapped


def play(env, actions):
    """Step through `actions`; returns the list of (reward, terminated, truncated, info)."""
    results = []
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        results.append((reward, terminated, truncated, info))
    return results


def run_oracle(env, seed, options=None):
    _, info = env.reset(seed=seed, options=options)
    total = 0.0
    while True:
        _, reward, terminated, truncated, info = env.step(env.expert_action())
        total += reward
        if terminated or truncated:
            return total, info


# ----- registration, action sets (gymnasium's checker: test_check_env.py) ----------------------------------------
def test_action_vocabularies_and_horizons():
    ez, p24 = make(EZ), make(P24)
    assert isinstance(ez, EZPointsEnv) and isinstance(p24, Points24Env)
    assert ez.action_vocabulary == tuple(str(n) for n in range(1, 11)) + ("+", "*", "=")
    assert p24.action_vocabulary == tuple(str(n) for n in range(1, 11)) + ("+", "-", "*", "/", "(", ")", "=")
    assert (len(ez.action_vocabulary), len(p24.action_vocabulary)) == (13, 17)
    assert (ez.max_steps, p24.max_steps) == (6, 21)
    assert make(EZ, max_steps=9).max_steps == 9


def test_admissible_actions_list_only_unused_numbers():
    env = make(P24)
    _, info = env.reset(seed=0, options={"cards": [3, 12, 3, 1]})
    assert info["admissible_actions"] == ["1", "3", "10", "+", "-", "*", "/", "(", ")", "="]
    _, _, _, _, info = env.step("3")
    assert info["admissible_actions"][:3] == ["1", "3", "10"]
    _, _, _, _, info = env.step("+")
    _, _, _, _, info = env.step("3")
    assert info["admissible_actions"][:2] == ["1", "10"]
    assert set(info["admissible_actions"]) <= set(env.action_vocabulary)


# ----- deals and splits ------------------------------------------------------------------------------------
@pytest.mark.parametrize("split, targets", [("id", {12}), ("ood", {10, 11, 13, 14})])
def test_ezpoints_deals_always_have_a_solution(split, targets):
    env = make(EZ, split=split)
    seen_targets, pairs, face_cards = Counter(), Counter(), Counter()
    for seed in range(400):
        env.reset(seed=seed)
        assert env.target in targets
        assert find_solution(env.values, env.target, env.rules) is not None, (env.ranks, env.target)
        assert all(1 <= rank <= 13 for rank in env.ranks)
        seen_targets[env.target] += 1
        pairs[tuple(sorted(env.values))] += 1
        face_cards.update(rank for rank in env.ranks if rank > 10)
    assert set(seen_targets) == targets
    assert sum(face_cards.values()) > 0  # face cards are dealt (and count 10)
    if split == "id":
        assert pairs[(3, 4)] > 0 and pairs[(5, 7)] > 0  # both the product and the sum rule occur


def test_ezpoints_rejects_targets_it_cannot_deal():
    env = make(EZ)
    with pytest.raises(ValueError, match="cannot deal"):
        env.reset(seed=0, options={"target": 97})
    env.reset(seed=0, options={"target": 100})
    assert sorted(env.values) == [10, 10]


@pytest.mark.parametrize("split, targets", [("id", {24}), ("ood", {20, 22, 26, 28})])
def test_points24_deals(split, targets):
    env = make(P24, split=split)
    solvable, seen = Counter(), Counter()
    for seed in range(150):
        env.reset(seed=seed)
        assert env.target in targets and len(env.ranks) == 4
        assert all(1 <= rank <= 13 for rank in env.ranks) and max(env.values) <= 10
        seen[env.target] += 1
        solvable[find_solution(env.values, env.target, env.rules) is not None] += 1
    assert set(seen) == targets
    assert solvable[True] > 80 and solvable[False] > 10  # no solution is guaranteed


def test_reset_is_deterministic_and_validates_options():
    env = make(P24)
    env.reset(seed=42)
    first = (env.ranks, env.suits, env.target)
    env.reset(seed=42)
    assert (env.ranks, env.suits, env.target) == first
    with pytest.raises(ValueError, match="cards"):
        env.reset(options={"cards": [1, 2, 3]})
    with pytest.raises(ValueError, match="cards"):
        env.reset(options={"cards": [1, 2, 3, 14]})
    with pytest.raises(ValueError, match="target"):
        env.reset(options={"target": 0})
    with pytest.raises(ValueError, match="unknown"):
        env.reset(options={"deck": 1})
    with pytest.raises(ValueError, match="split"):
        make(P24, split="test")


# ----- rules and rewards -----------------------------------------------------------------------------------
def test_text_task_and_fields():
    env = make(EZ)
    observation, info = env.reset(seed=0, options={"cards": [3, 13]})
    assert observation["text"] == "cards 3 K, formula empty"
    assert "12" in info["task"] and "J, Q, K count as 10" in info["task"]
    observation, *_ = env.step("3")
    observation, *_ = env.step("*")
    assert observation["text"] == "cards 3 K, formula 3 *"
    assert env.state_fields() == {"cards": [3, 10], "current formula": "3 *"}
    env.reset(seed=0, options={"cards": [3, 13], "target": 13})
    assert "equals 13" in env.task()


@pytest.mark.parametrize("bad", ["5", "9", "10", "11", "0", "x", "3 + 4", "", None, 7])
def test_unavailable_number_or_garbage_is_illegal_and_keeps_the_state(bad):
    env = make(EZ, reward="rl4vlm")
    env.reset(seed=0, options={"cards": [3, 4]})
    env.step("3")
    observation, reward, terminated, truncated, info = env.step(bad)
    assert info["illegal"] and reward == -1.0 and not terminated and not truncated
    assert env.formula == ["3"] and observation["text"] == "cards 3 4, formula 3"
    gflow = make(EZ, reward="gflowvlm")
    gflow.reset(seed=0, options={"cards": [3, 4]})
    _, reward, _, _, info = gflow.step(bad)
    assert info["illegal"] and reward == 0.0 and gflow.formula == []


def test_used_up_numbers_are_illegal():
    env = make(P24, reward="rl4vlm")
    env.reset(seed=0, options={"cards": [6, 6, 2, 2]})
    results = play(env, ["6", "*", "6", "-", "6"])
    assert [r[3]["illegal"] for r in results] == [False, False, False, False, True]
    assert results[-1][0] == -1.0 and env.formula == ["6", "*", "6", "-"]
    assert "6" not in results[-1][3]["admissible_actions"]


def test_commands_are_normalised():
    env = make(EZ, reward="rl4vlm")
    env.reset(seed=0, options={"cards": [3, 4]})
    _, _, _, _, info = env.step("  3 ")
    assert not info["illegal"] and env.formula == ["3"]


@pytest.mark.parametrize("reward_mode, expected", [("rl4vlm", [0.0, 0.0, 0.0, 10.0]),
                                                   ("gflowvlm", [0.0, 0.0, 0.0, SOLVED_REWARD])])
def test_correct_formula_is_rewarded(reward_mode, expected):
    env = make(EZ, reward=reward_mode)
    env.reset(seed=0, options={"cards": [3, 4]})
    results = play(env, ["3", "*", "4", "="])
    assert [r[0] for r in results] == pytest.approx(expected)
    reward, terminated, truncated, info = results[-1]
    assert terminated and not truncated and info["success"]
    assert info["log_reward"] == pytest.approx(math.log(SOLVED_REWARD))
    assert env.state_text() == "cards 3 4, formula 3 * 4 ="


@pytest.mark.parametrize("cards, actions", [
    ([3, 4], ["3", "+", "4", "="]),  # valid but 7
    ([3, 4], ["3", "*", "="]),  # malformed
    ([3, 4], ["="]),  # empty
    ([6, 2], ["6", "*", "2", "+", "="]),  # operator at the end
])
def test_wrong_formula_ends_with_penalty(cards, actions):
    for reward_mode, penalty in (("rl4vlm", -1.0), ("gflowvlm", FLOOR_REWARD)):
        env = make(EZ, reward=reward_mode)
        env.reset(seed=0, options={"cards": cards})
        reward, terminated, _, info = play(env, actions)[-1]
        assert terminated and not info["success"] and reward == pytest.approx(penalty)


def test_every_card_must_be_used_and_digits_do_not_concatenate():
    env = make(P24, reward="rl4vlm")
    env.reset(seed=0, options={"cards": [3, 8, 1, 1]})
    reward, terminated, _, info = play(env, ["3", "*", "8", "="])[-1]  # 24 without the two aces
    assert terminated and reward == -1.0 and not info["success"]
    env.reset(seed=0, options={"cards": [2, 4, 1, 1]})
    # RL4VLM's eval read "2" "4" as 24 (24 * 1 / 1); here two numbers in a row are an invalid formula.
    reward, terminated, _, info = play(env, ["2", "4", "*", "1", "/", "1", "="])[-1]
    assert terminated and reward == -1.0 and not info["success"]
    env.reset(seed=0, options={"cards": [3, 3, 8, 8]})
    reward, _, _, info = play(env, "8 / ( 3 - 8 / 3 ) =".split())[-1]
    assert reward == 10.0 and info["success"]  # exact arithmetic: 8 / (3 - 8/3) is 24


def test_ezpoints_truncates_after_six_steps():
    env = make(EZ, reward="rl4vlm")
    env.reset(seed=0, options={"cards": [3, 4]})
    results = play(env, ["3", "+", "+", "+", "+", "+"])
    assert [r[2] for r in results] == [False] * 5 + [True]
    assert not any(r[1] for r in results)
    assert [r[0] for r in results] == [0.0] * 5 + [-1.0]  # gym_cards' forced -1 step, folded in
    with pytest.raises(RuntimeError):
        env.step("=")
    env.reset(seed=0, options={"cards": [3, 4]})
    reward, terminated, truncated, _ = play(env, ["9", "9", "9", "9", "9", "9"])[-1]
    assert truncated and reward == -2.0  # illegal (-1) plus the truncation (-1)
    env.reset(seed=0, options={"cards": [3, 4]})
    results = play(env, ["9", "9", "3", "*", "4", "="])  # "=" on the 6th step still counts
    assert results[-1][1] and not results[-1][2] and results[-1][0] == 10.0


def test_points24_truncates_after_twenty_one_steps():
    env = make(P24, reward="gflowvlm")
    env.reset(seed=0, options={"cards": [3, 3, 8, 8]})
    results = play(env, ["("] * 21)
    assert [r[2] for r in results] == [False] * 20 + [True]
    assert [r[0] for r in results[:-1]] == [0.0] * 20
    assert results[-1][0] == pytest.approx(FLOOR_REWARD)  # truncated without "=": a failure, the floor
    assert results[-1][3]["log_reward"] == pytest.approx(math.log(FLOOR_REWARD))


def test_truncation_keeps_no_partial_credit_but_intermediate_states_do():
    env = make(EZ, reward="gflowvlm")
    env.reset(seed=0, options={"cards": [3, 4]})
    results = play(env, ["3", "*", "4", "9", "9", "9"])   # a solution written, then stalled with illegal "9"s
    credits = [math.exp(info["log_reward"]) for *_, info in results]
    whole = FLOOR_REWARD + PROGRESS_REWARD
    assert credits[:5] == pytest.approx([FLOOR_REWARD + PROGRESS_REWARD / 2] * 2 + [whole] * 3)  # forward-looking
    reward, terminated, truncated, _ = results[-1]
    assert truncated and not terminated
    assert reward == pytest.approx(FLOOR_REWARD) and credits[-1] == pytest.approx(FLOOR_REWARD)


def test_gflowvlm_partial_credit_along_a_solution():
    env = make(EZ, reward="gflowvlm")
    _, info = env.reset(seed=0, options={"cards": [3, 4]})
    rewards = [math.exp(info["log_reward"])]
    for action in ["3", "*", "4"]:
        _, reward, _, _, info = env.step(action)
        assert reward == 0.0  # the GFlowVLM reward arrives at the end only
        rewards.append(math.exp(info["log_reward"]))
    half, whole = FLOOR_REWARD + PROGRESS_REWARD / 2, FLOOR_REWARD + PROGRESS_REWARD
    assert rewards == pytest.approx([FLOOR_REWARD, half, half, whole])
    _, reward, _, _, info = env.step("=")
    assert reward == pytest.approx(SOLVED_REWARD) and SOLVED_REWARD >= 5 * whole
    env.reset(seed=0, options={"cards": [3, 4]})
    _, _, _, _, info = env.step("3")
    _, _, _, _, info = env.step("+")  # 3 + 4 can never be 12: a dead prefix
    assert math.exp(info["log_reward"]) == pytest.approx(FLOOR_REWARD)


def test_log_reward_is_finite_and_positive_everywhere():
    env = make(P24, reward="gflowvlm")
    rng = np.random.default_rng(0)
    for seed in range(20):
        _, info = env.reset(seed=seed)
        done = False
        while not done:
            assert math.isfinite(info["log_reward"]) and math.exp(info["log_reward"]) >= FLOOR_REWARD - 1e-12
            action = str(rng.choice(list(env.action_vocabulary)))
            _, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            assert reward >= 0.0
        assert reward == pytest.approx(math.exp(info["log_reward"]))


# ----- oracle ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["id", "ood"])
def test_oracle_solves_every_ezpoints_deal(split):
    env = make(EZ, split=split, reward="rl4vlm")
    for seed in range(300):
        total, info = run_oracle(env, seed)
        assert info["success"] and total == 10.0, (seed, env.ranks, env.formula)


@pytest.mark.parametrize("split", ["id", "ood"])
def test_oracle_solves_every_solvable_points24_deal(split):
    env = make(P24, split=split, reward="rl4vlm")
    solved = Counter()
    for seed in range(120):
        _, info = env.reset(seed=seed)
        solvable = find_solution(env.values, env.target, env.rules) is not None
        total, info = run_oracle(env, seed)
        assert info["success"] == solvable, (seed, env.ranks, env.formula)
        assert total == (10.0 if solvable else -1.0)
        solved[solvable] += 1
    assert solved[True] > 60 and solved[False] > 5


def test_oracle_gives_up_gracefully_on_an_unsolvable_deal():
    env = make(P24)
    env.reset(seed=0, options={"cards": [1, 1, 1, 1]})
    assert env.expert_action() == "="
    assert "No formula" in env.expert_thoughts() and "24" in env.expert_thoughts()
    _, reward, terminated, _, info = env.step("=")
    assert terminated and not info["success"]


def test_oracle_thoughts_explain_the_plan():
    env = make(EZ)
    env.reset(seed=0, options={"cards": [3, 4]})
    assert env.expert_action() == "3"
    assert env.expert_thoughts() == "3 * 4 = 12, so I write 3 first."
    env.step("3")
    assert env.expert_thoughts() == "3 * 4 = 12, so I write * next."
    env.step("*")
    env.step("4")
    assert env.expert_action() == "="
    assert "uses every card once" in env.expert_thoughts()
    env.step("=")
    with pytest.raises(RuntimeError):
        env.expert_action()


def test_oracle_continues_an_agents_prefix_and_abandons_dead_ones():
    env = make(P24, reward="rl4vlm")
    env.reset(seed=0, options={"cards": [3, 3, 8, 8]})
    play(env, ["(", "8"])  # not how the oracle would start, but still completable
    while not env._finished:
        env.step(env.expert_action())
    assert env.is_success() and env.formula[:2] == ["(", "8"]
    env.reset(seed=0, options={"cards": [3, 3, 8, 8]})
    play(env, ["3", "+"])
    assert env.expert_action() == "=" and "cannot be completed" in env.expert_thoughts()


def test_oracle_respects_the_remaining_steps():
    env = make(P24, max_steps=6)
    env.reset(seed=0, options={"cards": [3, 3, 8, 8]})  # its only solution has 9 symbols
    assert env.expert_action() == "=" and "more steps" in env.expert_thoughts()
    env = make(P24, max_steps=8)
    env.reset(seed=0, options={"cards": [6, 4, 1, 1]})  # 6 * 4 * 1 * 1 fits in 7 symbols + "="
    total, info = run_oracle(env, 0, options={"cards": [6, 4, 1, 1]})
    assert info["success"]


@pytest.mark.parametrize("env_id, seeds", [(EZ, 200), (P24, 60)])
def test_varied_oracle_deals_the_same_cards_and_solves_what_shortest_solves(env_id, seeds):
    shortest, varied = make(env_id, reward="rl4vlm"), make(env_id, reward="rl4vlm", strategy="varied")
    for seed in range(seeds):
        _, short_info = run_oracle(shortest, seed)
        total, info = run_oracle(varied, seed)
        assert (varied.ranks, varied.suits, varied.target) == (shortest.ranks, shortest.suits, shortest.target)
        assert info["success"] == short_info["success"], (seed, varied.ranks, varied.formula)
        assert total == (10.0 if info["success"] else -1.0)


def test_varied_oracle_writes_both_orders_of_a_deal_and_is_seeded():
    env = make(EZ, strategy="varied")
    formulas = Counter()
    for seed in range(40):
        total, info = run_oracle(env, seed, options={"cards": [3, 4]})
        assert info["success"]
        formulas[" ".join(env.formula)] += 1
    assert set(formulas) == {"3 * 4", "4 * 3"} and min(formulas.values()) >= 10  # about half each
    firsts = []
    for _ in range(2):  # the same seed draws the same start
        env.reset(seed=7, options={"cards": [3, 4]})
        firsts.append(env.expert_action())
        assert env.expert_thoughts().endswith(f"so I write {firsts[-1]} first.")
    assert firsts[0] == firsts[1]
    env.reset(seed=0, options={"cards": [6, 6]})  # one distinct card value: one way to start
    assert env.expert_action() == "6"
    starts = set()
    for expert_seed in range(20):  # reseeded after the reset: plays of ONE task draw apart
        env.reset(seed=7, options={"cards": [3, 4]})
        env.seed_expert(expert_seed)
        starts.add(env.expert_action())
    assert starts == {"3", "4"}


def test_varied_oracle_respects_the_remaining_steps_and_the_shortest_is_the_default():
    env = make(P24, max_steps=6, strategy="varied")
    env.reset(seed=0, options={"cards": [3, 3, 8, 8]})  # no solution fits in 6 steps, whatever the start
    assert env.expert_action() == "=" and "more steps" in env.expert_thoughts()
    assert make(EZ).strategy == "shortest"
    with pytest.raises(ValueError, match="unknown EZPoints strategy 'longest'"):
        make(EZ, strategy="longest")


# ----- images ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", [EZ, P24])
@pytest.mark.parametrize("size", [64, 300])
def test_images_show_cards_and_formula(env_id, size):
    env = make(env_id, image_size=size)
    cards = [2, 13] if env_id == EZ else [2, 13, 5, 1]
    observation, _ = env.reset(seed=0, options={"cards": cards})
    image = observation["image"]
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    card_area, formula_area = image[: int(0.66 * size)], image[int(0.79 * size):]
    white = np.all(card_area > 240, axis=-1)
    assert white.mean() > 0.15  # the card faces
    ink = (card_area.max(axis=-1) < 120) | ((card_area[..., 0] > 150) & (card_area[..., 1] < 100))
    assert ink.sum() > len(cards) * 3  # the rank labels (black or red)
    observation, *_ = env.step(str(env.values[0]))
    after = observation["image"]
    assert not np.array_equal(after[int(0.79 * size):], formula_area)  # the formula is drawn below
    assert np.array_equal(after[: int(0.66 * size)], card_area)
    other, _ = env.reset(seed=0, options={"cards": [3] + cards[1:]})
    assert not np.array_equal(other["image"][: int(0.66 * size)], card_area)  # ranks tell deals apart


def test_long_formula_still_renders():
    env = make(P24, image_size=64)
    env.reset(seed=0, options={"cards": [3, 3, 8, 8]})
    for action in ["("] * 10 + ["8", "/", "(", "3", "-", "8", "/", "3", ")"]:
        observation, *_ = env.step(action)
    assert observation["image"].shape == (64, 64, 3)


def test_runaway_parentheses_do_not_crash_a_long_episode():
    env = make(P24, max_steps=60)
    env.reset(seed=0, options={"cards": [1, 5, 5, 5]})
    results = play(env, ["("] * 40)
    assert not any(r[1] or r[2] for r in results)
    # Nested deeper than the evaluator accepts, so it can never become a valid formula.
    assert results[-1][3]["log_reward"] == pytest.approx(math.log(FLOOR_REWARD))
    assert env.expert_action() == "="
