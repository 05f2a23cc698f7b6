"""Blackjack: Gymnasium's rules (natural=False, sab=False), rewards, oracles against the exact odds, images."""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.toy_text.blackjack import BlackjackEnv as GymnasiumBlackjack

import envs  # noqa: F401  (registers the environments)
from envs import blackjack_exact as exact
from envs.base import MIN_LOG_REWARD
from envs.blackjack import BASIC_STRATEGY, BlackjackEnv


def make(split: str = "id", reward: str = "rl4vlm", image_size: int = 64, strategy: str = "basic") -> BlackjackEnv:
    return BlackjackEnv(split=split, reward=reward, image_size=image_size, strategy=strategy)


# ----- the rules -----------------------------------------------------------------------------------------------
def test_same_deals_and_results_as_gymnasium_blackjack():
    """A seed deals the same cards as Gymnasium's BlackjackEnv(natural=False, sab=False), and the same
    actions give the same rewards: the rules are Gymnasium's, not Blackjack-v1's sab=True."""
    ours, theirs = make(), GymnasiumBlackjack(natural=False, sab=False)
    for seed in range(500):
        ours.reset(seed=seed)
        their_obs, _ = theirs.reset(seed=seed)
        assert their_obs == (ours.player_total(), ours.dealer[0], int(ours.player_soft()))
        done = False
        while not done:
            command = ours.expert_action()
            _, reward, terminated, _, _ = ours.step(command)
            their_obs, their_reward, their_terminated, _, _ = theirs.step(1 if command == "hit" else 0)
            assert (reward, terminated) == (their_reward, their_terminated)
            assert their_obs[0] == ours.player_total()
            done = terminated


def test_usable_ace_counts_eleven_until_it_would_bust():
    env = make()
    obs, _ = env.reset(options={"dealer": [10, 7], "player": [1, 6], "next_cards": [10]})
    assert obs["text"] == "dealer shows 10, your cards A 6 (total 17, soft)"
    obs, reward, terminated, truncated, info = env.step("hit")
    assert obs["text"] == "dealer shows 10, your cards A 6 10 (total 17)"
    assert (reward, terminated, truncated, info["illegal"]) == (0.0, False, False, False)
    assert env.player_total() == 17 and not env.player_soft()


def test_two_aces_make_soft_twelve():
    env = make()
    obs, _ = env.reset(options={"dealer": [5, 5], "player": [1, 1]})
    assert obs["text"] == "dealer shows 5, your cards A A (total 12, soft)"


def test_bust_ends_with_minus_one_and_the_dealer_does_not_play():
    env = make()
    env.reset(options={"dealer": [10, 6], "player": [10, 6], "next_cards": [10, 5]})
    obs, reward, terminated, truncated, info = env.step("hit")
    assert (reward, terminated, truncated, info["success"]) == (-1.0, True, False, False)
    assert env.dealer == [10, 6]
    assert obs["text"] == "dealer shows 10, your cards 10 6 10 (total 26, bust), you lose"


@pytest.mark.parametrize("dealer, next_cards, player, expected_reward, dealer_cards", [
    ([10, 7], [5], [10, 9], 1.0, [10, 7]),  # dealer stands on hard 17
    ([10, 7], [5], [10, 7], 0.0, [10, 7]),  # equal totals draw
    ([10, 8], [5], [10, 7], -1.0, [10, 8]),
    ([10, 6], [5], [10, 10], -1.0, [10, 6, 5]),  # dealer draws on 16
    ([10, 6], [10], [10, 2], 1.0, [10, 6, 10]),  # dealer bust is a player win, even on 12
    ([1, 6], [5], [10, 8], 1.0, [1, 6]),  # soft 17 stands in split id (Gymnasium)
    ([1, 1], [5], [10, 8], 1.0, [1, 1, 5]),  # soft 12 draws; A A 5 is soft 17 and stands
])
def test_stand_plays_the_dealer_to_seventeen(dealer, next_cards, player, expected_reward, dealer_cards):
    env = make()
    env.reset(options={"dealer": dealer, "player": player, "next_cards": next_cards})
    obs, reward, terminated, truncated, info = env.step("stand")
    assert (reward, terminated, truncated) == (expected_reward, True, False)
    assert env.dealer == dealer_cards and info["success"] == (expected_reward == 1.0)
    assert obs["text"].startswith(f"dealer cards {' '.join('A' if c == 1 else str(c) for c in dealer_cards)}")


def test_ood_dealer_hits_soft_seventeen_only():
    env = make("ood")
    env.reset(options={"dealer": [1, 6], "player": [10, 8], "next_cards": [3]})
    _, reward, *_ = env.step("stand")
    assert env.dealer == [1, 6, 3] and reward == -1.0  # soft 17 + 3 = soft 20 beats 18
    env.reset(options={"dealer": [10, 7], "player": [10, 8], "next_cards": [3]})
    _, reward, *_ = env.step("stand")
    assert env.dealer == [10, 7] and reward == 1.0  # hard 17 still stands
    assert "hits a soft 17" in env.task() and "hits a soft 17" not in make("id").task()


def test_a_natural_is_not_special():
    env = make()
    env.reset(options={"dealer": [10, 1], "player": [1, 10]})
    _, reward, *_ = env.step("stand")
    assert reward == 0.0  # two naturals draw; a natural wins only +1 when it wins
    env.reset(options={"dealer": [10, 9], "player": [1, 10]})
    assert env.step("stand")[1] == 1.0


@pytest.mark.parametrize("command", ["fold", "", "hit me", "double", None, 1, 0, 0.5, ["hit"]])
def test_illegal_command_keeps_the_state_and_never_raises(command):
    for reward_mode, expected in (("rl4vlm", -1.0), ("gflowvlm", 0.0)):
        env = make(reward=reward_mode)
        before, _ = env.reset(options={"dealer": [9, 9], "player": [5, 6]})
        obs, reward, terminated, truncated, info = env.step(command)
        assert info["illegal"] and reward == expected and not terminated and not truncated
        assert obs["text"] == before["text"] and np.array_equal(obs["image"], before["image"])
        assert env.player == [5, 6]


@pytest.mark.parametrize("command", ["HIT", " Stand ", b"hit"])
def test_commands_are_normalized(command):
    env = make()
    env.reset(options={"dealer": [9, 9], "player": [5, 6], "next_cards": [2]})
    assert not env.step(command)[4]["illegal"]


@pytest.mark.parametrize("reward_mode, last_reward", [("gflowvlm", 1e-10), ("rl4vlm", -1.0)])
def test_a_hand_unfinished_after_ten_steps_is_truncated_as_a_loss(reward_mode, last_reward):
    env = make(reward=reward_mode)
    # 2 2 and nine aces: soft 15, 16, ... then hard 12 after eight hits, hard 13 after nine; never a bust.
    env.reset(options={"dealer": [9, 9], "player": [2, 2], "next_cards": [1] * 9})
    assert env.max_steps == 10
    results = [env.step("hit") for _ in range(8)] + [env.step("wait"), env.step("hit")]
    flags = [(terminated, truncated) for _, _, terminated, truncated, _ in results]
    assert flags == [(False, False)] * 9 + [(False, True)]
    illegal_reward = -1.0 if reward_mode == "rl4vlm" else 0.0
    assert [r for _, r, *_ in results[:-1]] == [0.0] * 8 + [illegal_reward]
    assert [info["log_reward"] for *_, info in results[:-1]] == pytest.approx([math.log(10.0)] * 9)  # still open
    obs, reward, _, _, info = results[-1]
    # Forfeited, not a draw: a draw (R = 10) would pay stalling more than the random policy's mean R of 6.0.
    assert reward == pytest.approx(last_reward, rel=1e-9) and not info["success"]
    assert info["log_reward"] == pytest.approx(MIN_LOG_REWARD) and env.outcome == -1 and env.forfeited
    assert obs["text"].endswith("you lose: the hand ran out of steps") and "dealer shows 9" in obs["text"]
    assert not env.dealer_revealed   # the dealer never played the hand


def test_reset_options_are_validated():
    env = make()
    for bad in ({"dealer": [10]}, {"dealer": [10, 11]}, {"player": [10]}, {"player": [10, 10, 5]},
                {"player": "A6"}, {"next_cards": [0]}, {"player": [1.0, 6]}, {"shoe": [1]}):
        with pytest.raises(ValueError):
            env.reset(options=bad)
    with pytest.raises(ValueError):
        BlackjackEnv(strategy="card counting")
    with pytest.raises(ValueError):
        BlackjackEnv(split="train")


# ----- rewards -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dealer, player, command, next_cards, log_r", [
    ([10, 7], [10, 9], "stand", [], math.log(20.0)),
    ([10, 7], [10, 7], "stand", [], math.log(10.0)),
    ([10, 8], [10, 7], "stand", [], MIN_LOG_REWARD),
    ([10, 8], [10, 7], "hit", [10], MIN_LOG_REWARD),
])
def test_gflowvlm_reward_is_the_shaped_outcome(dealer, player, command, next_cards, log_r):
    env = make(reward="gflowvlm")
    _, info = env.reset(options={"dealer": dealer, "player": player, "next_cards": next_cards})
    assert info["log_reward"] == pytest.approx(math.log(10.0))  # before the end: a non-final hit's value
    _, reward, terminated, _, info = env.step(command)
    assert terminated and info["log_reward"] == pytest.approx(log_r)
    assert reward == pytest.approx(max(1e-10, math.exp(log_r)), rel=1e-9)


def test_gflowvlm_non_final_hit_and_return_equal_terminal_reward():
    env = make(reward="gflowvlm")
    env.reset(options={"dealer": [10, 7], "player": [2, 3], "next_cards": [4, 10]})
    _, reward, terminated, _, info = env.step("hit")
    assert (reward, terminated) == (0.0, False) and info["log_reward"] == pytest.approx(math.log(10.0))
    for seed in range(200):
        env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(env.expert_action())
            total += reward
            done = terminated or truncated
        assert total == pytest.approx(math.exp(info["log_reward"]))
        assert total == pytest.approx({1: 20.0, 0: 10.0, -1: 1e-10}[env.outcome])


# ----- hidden card ---------------------------------------------------------------------------------------------
def test_hidden_card_is_never_shown_while_the_episode_runs():
    env = make(image_size=300)
    views = []
    for hidden in (2, 9):
        obs, _ = env.reset(options={"dealer": [10, hidden], "player": [3, 4], "next_cards": [5]})
        hit_obs, *_ = env.step("hit")
        views.append((obs, hit_obs))
    for first, second in zip(*views):
        assert first["text"] == second["text"] and np.array_equal(first["image"], second["image"])
    final, *_ = env.step("stand")
    assert final["text"].startswith("dealer cards 10 9")
    assert not np.array_equal(final["image"], views[1][1]["image"])


# ----- oracles and exact odds ----------------------------------------------------------------------------------
def test_exact_odds_reproduce_the_reference_figures():
    best = exact.evaluate_policy(exact.policy_from_table(exact.optimal_policy("win")))
    stand17 = exact.evaluate_policy(exact.stand_at_17)
    stand = exact.evaluate_policy(exact.always_stand)
    assert (round(best.win * 100, 2), round(best.draw * 100, 2)) == (43.16, 8.66)
    assert (round(stand17.win * 100, 2), round(stand17.draw * 100, 2)) == (40.77, 10.52)
    assert round(stand.win * 100, 2) == 38.07
    for outcome in (best, stand17, stand):
        assert outcome.win + outcome.draw + outcome.loss + outcome.truncated == pytest.approx(1.0, abs=1e-12)
        assert outcome.truncated < 1e-9


def _dealer_by_enumeration(cards: tuple[int, ...], rules: exact.DealerRules) -> dict[int, float]:
    """An independent brute force: walk every dealer card sequence, scoring hands from the card list."""
    total = sum(cards)
    soft = 1 in cards and total + 10 <= 21
    total += 10 if soft else 0
    if total > 21:
        return {22: 1.0}
    if not (total < 17 or (rules.hits_soft_17 and total == 17 and soft)):
        return {total: 1.0}
    finals: dict[int, float] = {}
    for card in range(1, 11):
        for final, p in _dealer_by_enumeration(cards + (card,), rules).items():
            finals[final] = finals.get(final, 0.0) + p * (4 / 13 if card == 10 else 1 / 13)
    return finals


@pytest.mark.parametrize("rules", [exact.STANDARD_RULES, exact.OOD_RULES])
def test_dealer_distribution_matches_brute_force(rules):
    for up_card in (1, 2, 6, 10):
        ours = exact.dealer_final_distribution(up_card, rules)
        reference = _dealer_by_enumeration((up_card,), rules)
        assert ours.keys() == reference.keys()
        for final, p in reference.items():
            assert ours[final] == pytest.approx(p, abs=1e-12)
    # The well-known infinite-deck, stand-on-soft-17 dealer bust rate showing a 6.
    assert exact.dealer_final_distribution(6)[22] == pytest.approx(0.4232, abs=5e-5)


@pytest.mark.parametrize("rules", [exact.STANDARD_RULES, exact.OOD_RULES])
def test_basic_strategy_table_is_the_expected_reward_optimum(rules):
    optimum = exact.optimal_policy("expected", rules)
    assert BASIC_STRATEGY == optimum


def _simulate(strategy: str, split: str, episodes: int, first_seed: int) -> tuple[float, float]:
    env = make(split=split, image_size=16, strategy=strategy)
    env.reset(seed=first_seed)
    wins = draws = 0
    for _ in range(episodes):
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.expert_action())
            done = terminated or truncated
        wins += reward == 1.0
        draws += terminated and reward == 0.0
        env.reset()
    return wins / episodes, draws / episodes


@pytest.mark.parametrize("split", ["id", "ood"])
@pytest.mark.parametrize("strategy, exact_policy", [
    ("stand17", lambda rules: exact.stand_at_17),
    ("basic", lambda rules: exact.policy_from_table(BASIC_STRATEGY)),
    ("max_win", lambda rules: exact.policy_from_table(exact.optimal_policy("win", rules))),
])
def test_oracle_win_rate_matches_the_exact_odds(strategy, exact_policy, split):
    episodes = 20_000
    rules = exact.STANDARD_RULES if split == "id" else exact.OOD_RULES
    expected = exact.evaluate_policy(exact_policy(rules), rules)
    win, draw = _simulate(strategy, split, episodes, first_seed=1000)
    tolerance = 3 * math.sqrt(expected.win * (1 - expected.win) / episodes)  # 3 standard errors, about 1.05 %
    print(f"\n{strategy:8s} {split:3s}: simulated win {win:.2%} draw {draw:.2%} over {episodes} episodes; "
          f"exact win {expected.win:.2%} draw {expected.draw:.2%}; tolerance +-{tolerance:.2%}")
    assert abs(win - expected.win) < tolerance
    assert abs(draw - expected.draw) < 3 * math.sqrt(expected.draw * (1 - expected.draw) / episodes)


def test_expert_actions_and_thoughts():
    env = make(strategy="basic")
    env.reset(options={"dealer": [10, 7], "player": [10, 6]})
    assert env.expert_action() == "hit"
    assert env.expert_thoughts() == ("I have hard 16 and the dealer shows 10. The dealer's 10 is strong and will "
                                     "likely beat 16, so I hit.")
    env.reset(options={"dealer": [4, 7], "player": [10, 2]})
    assert env.expert_action() == "stand" and "may bust" in env.expert_thoughts()
    env.reset(options={"dealer": [9, 7], "player": [1, 7]})
    assert env.expert_action() == "hit" and env.expert_thoughts().startswith("I have soft 18")
    env17 = make(strategy="stand17")
    env17.reset(options={"dealer": [6, 7], "player": [10, 6]})
    assert env17.expert_action() == "hit"
    assert env17.expert_thoughts() == ("I have hard 16 and the dealer shows 6. I stand at 17 or more and hit "
                                       "below 17, so I hit.")
    env17.reset(options={"dealer": [1, 7], "player": [1, 6]})
    assert env17.expert_action() == "stand" and "dealer shows A" in env17.expert_thoughts()
    best = make(strategy="max_win")
    best.reset(options={"dealer": [10, 7], "player": [10, 6]})
    assert best.expert_action() == "stand" and "wins" in best.expert_thoughts()
    best.step("stand")
    with pytest.raises(RuntimeError):
        best.expert_action()


# ----- images --------------------------------------------------------------------------------------------------
def test_a_very_long_hand_still_draws_at_the_smallest_size():
    env = make(image_size=16)
    obs, _ = env.reset(options={"dealer": [2, 2], "player": [1] * 11 + [10] * 1})
    assert obs["image"].shape == (16, 16, 3) and "total 21" in obs["text"]


@pytest.mark.parametrize("size", [64, 300])
def test_images_have_the_declared_shape_and_show_the_cards(size):
    env = make(image_size=size)
    first, _ = env.reset(options={"dealer": [10, 7], "player": [1, 6]})
    assert first["image"].shape == (size, size, 3) and first["image"].dtype == np.uint8
    assert env.observation_space.contains(first)
    other_up, _ = env.reset(options={"dealer": [9, 7], "player": [1, 6]})
    other_hand, _ = env.reset(options={"dealer": [10, 7], "player": [1, 5]})
    long_hand, _ = env.reset(options={"dealer": [10, 7], "player": [2, 2, 2, 2, 1, 1, 3]})
    frames = [first["image"], other_up["image"], other_hand["image"], long_hand["image"]]
    for i in range(len(frames)):
        for j in range(i + 1, len(frames)):
            assert not np.array_equal(frames[i], frames[j])
    green = (first["image"][..., 1] > first["image"][..., 0] + 40).mean()
    assert green > 0.3  # the table


# ----- gymnasium plumbing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["id", "ood"])
@pytest.mark.parametrize("reward", ["rl4vlm", "gflowvlm"])
def test_reset_gives_the_action_names(split, reward):  # gymnasium's checker: test_check_env.py
    env = gym.make("gflowvlm/Blackjack-v0", split=split, reward=reward, image_size=64)
    _, info = env.reset(seed=0)
    assert info["admissible_actions"] == ["stand", "hit"]


def test_same_seed_same_episode():
    def rollout(seed):
        env = gym.make("gflowvlm/Blackjack-v0", reward="rl4vlm", image_size=64)
        obs, _ = env.reset(seed=seed)
        texts, frames = [obs["text"]], [obs["image"]]
        for command in ["hit", "hit", "stand"]:
            obs, _, terminated, *_ = env.step(command)
            texts.append(obs["text"])
            frames.append(obs["image"])
            if terminated:
                break
        return texts, np.stack(frames)

    texts_a, frames_a = rollout(11)
    texts_b, frames_b = rollout(11)
    assert texts_a == texts_b and np.array_equal(frames_a, frames_b)
    assert len({make(image_size=16).reset(seed=s)[0]["text"] for s in range(10)}) > 1


def test_make_vec_runs_two_blackjack_tables():
    vec = gym.make_vec("gflowvlm/Blackjack-v0", num_envs=2, vectorization_mode="sync", image_size=64)
    obs, _ = vec.reset(seed=0)
    assert obs["image"].shape == (2, 64, 64, 3) and isinstance(obs["text"], tuple)
    _, reward, terminated, _, _ = vec.step(("stand", "stand"))
    assert list(terminated) == [True, True] and reward.shape == (2,)
    vec.close()


# ----- what the image shows (caption pre-training's target) -----------------------------------------------------
def test_image_caption_names_the_drawn_cards_and_nothing_else():
    env = make()
    env.reset(options={"dealer": [10, 6], "player": [10, 6], "next_cards": [10, 5]})
    assert env.image_caption() == "dealer shows 10, your cards 10 6"
    env.step("hit")  # bust: the dealer's card stays hidden, the text adds the total and the outcome
    assert env.image_caption() == "dealer shows 10, your cards 10 6 10"
    env.reset(options={"dealer": [1, 6], "player": [10, 8], "next_cards": [5]})
    env.step("stand")
    assert env.image_caption() == "dealer cards A 6, your cards 10 8"


def test_image_caption_is_a_function_of_the_image_where_the_text_is_not():
    """Over random play (illegal replies included, so hands also run out of steps), equal images always have equal
    image captions and different images different ones; the state text gives some image two captions."""
    env = make(image_size=64)
    rng = np.random.default_rng(0)
    by_image: dict[bytes, set[str]] = {}
    texts_by_image: dict[bytes, set[str]] = {}
    for episode in range(300):
        obs, _ = env.reset(seed=episode)
        done = False
        while True:
            key = obs["image"].tobytes()
            by_image.setdefault(key, set()).add(env.image_caption())
            texts_by_image.setdefault(key, set()).add(obs["text"])
            if done:
                break
            obs, _, terminated, truncated, _ = env.step(str(rng.choice(["hit", "stand", "fold", "hit me"])))
            done = terminated or truncated
    assert all(len(captions) == 1 for captions in by_image.values())
    assert len({next(iter(captions)) for captions in by_image.values()}) == len(by_image)
    assert any(len(texts) > 1 for texts in texts_by_image.values())
