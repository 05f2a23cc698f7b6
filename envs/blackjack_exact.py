"""Exact win / draw / loss probabilities of hit-or-stand Blackjack policies on the infinite deck.

The rules are those of `envs.blackjack` (Gymnasium's `BlackjackEnv(natural=False, sab=False)`): every card is
drawn independently, ranks 1..9 with probability 1/13 each and 10 with probability 4/13; the player sees the
dealer's up-card, may hit until bust (a loss at once) or stand; the dealer then draws to 17 (standing on soft 17,
or hitting it under `DealerRules(hits_soft_17=True)`, the OOD split) and the totals are compared. A player's
two-card 21 is no special hand; a dealer bust is a player win.

Because the deck is infinite, the future of a hand depends only on (total, soft, dealer up-card), so a policy is a
function of those three and everything is a small recursion with memoisation. The step limit of the env
(`max_steps`, 10 by default) is modelled too: a hit that survives on the last allowed step truncates the episode,
reported apart as `truncated` (the env scores such a forfeited hand a loss; its probability is below 1e-9 for
sensible policies, so the win and draw figures do not depend on how it is scored).

Reference figures for the standard rules (papers.md), reproduced here to 0.01 %: the best hit/stand policy wins
43.16 % (draws 8.66 %), "stand at 17 or more" wins 40.77 % (draws 10.52 %), always standing wins 38.07 %.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

RANKS = tuple(range(1, 11))
# Infinite deck: 10, J, Q, K all count 10, hence four times the weight of any other rank.
CARD_PROBABILITY = {rank: (4 / 13 if rank == 10 else 1 / 13) for rank in RANKS}
BUST = 22  # every busted total is reported as 22: only "bust or not" matters for the outcome

# policy(total, soft, dealer_up_card) -> "hit" | "stand"; `soft` means an ace currently counts 11.
Policy = Callable[[int, bool, int], str]


@dataclass(frozen=True)
class DealerRules:
    """How the dealer plays once the player stands."""

    hits_soft_17: bool = False  # False: stands on every 17 (Gymnasium, split "id"); True: split "ood"

    def dealer_draws(self, total: int, soft: bool) -> bool:
        return total < 17 or (self.hits_soft_17 and total == 17 and soft)


STANDARD_RULES = DealerRules(hits_soft_17=False)
OOD_RULES = DealerRules(hits_soft_17=True)


@dataclass(frozen=True)
class Outcome:
    """Probabilities of how an episode ends; they sum to 1."""

    win: float
    draw: float
    loss: float
    truncated: float = 0.0

    def __add__(self, other: "Outcome") -> "Outcome":
        return Outcome(self.win + other.win, self.draw + other.draw, self.loss + other.loss,
                       self.truncated + other.truncated)

    def scaled(self, weight: float) -> "Outcome":
        return Outcome(self.win * weight, self.draw * weight, self.loss * weight, self.truncated * weight)

    @property
    def expected_reward(self) -> float:
        return self.win - self.loss


ZERO = Outcome(0.0, 0.0, 0.0)


def add_card(total: int, soft: bool, card: int) -> tuple[int, bool]:
    """The hand after drawing `card`: an ace counts 11 when that does not bust, and a soft hand that would
    bust falls back to counting its ace as 1 (this is Gymnasium's `sum_hand` / `usable_ace`)."""
    total += card
    if card == 1 and total + 10 <= 21:
        return total + 10, True
    if total > 21 and soft:
        return total - 10, False
    return total, soft


def hand_value(cards: list[int] | tuple[int, ...]) -> tuple[int, bool]:
    """(total, soft) of a hand of ranks 1..10."""
    total, soft = 0, False
    for card in cards:
        total, soft = add_card(total, soft, card)
    return total, soft


@lru_cache(maxsize=None)
def _dealer_finals(total: int, soft: bool, rules: DealerRules) -> tuple[tuple[int, float], ...]:
    """Distribution of the dealer's final total (17..21 or BUST) from a hand that must still play on."""
    if total > 21:
        return ((BUST, 1.0),)
    if not rules.dealer_draws(total, soft):
        return ((total, 1.0),)
    finals: dict[int, float] = {}
    for card, p_card in CARD_PROBABILITY.items():
        for final, p_final in _dealer_finals(*add_card(total, soft, card), rules):
            finals[final] = finals.get(final, 0.0) + p_card * p_final
    return tuple(sorted(finals.items()))


def dealer_final_distribution(up_card: int, rules: DealerRules = STANDARD_RULES) -> dict[int, float]:
    """P(dealer's final total) given the up-card; the hidden card and all later draws are random. Key 22 = bust."""
    if up_card not in RANKS:
        raise ValueError(f"dealer up-card must be a rank in 1..10, got {up_card!r}")
    return dict(_dealer_finals(*add_card(0, False, up_card), rules))


@lru_cache(maxsize=None)
def _stand_outcome(player_total: int, up_card: int, rules: DealerRules) -> Outcome:
    win = draw = loss = 0.0
    for final, p in _dealer_finals(*add_card(0, False, up_card), rules):
        if final == BUST or final < player_total:
            win += p
        elif final == player_total:
            draw += p
        else:
            loss += p
    return Outcome(win, draw, loss)


def stand_outcome(player_total: int, up_card: int, rules: DealerRules = STANDARD_RULES) -> Outcome:
    """Outcome of standing now on `player_total` (<= 21) against `up_card`."""
    if not 2 <= player_total <= 21:
        raise ValueError(f"a standing player total must be in 2..21, got {player_total!r}")
    return _stand_outcome(player_total, up_card, rules)


def _initial_hands() -> dict[tuple[int, bool], float]:
    """Distribution of the player's two-card (total, soft)."""
    hands: dict[tuple[int, bool], float] = {}
    for first, p_first in CARD_PROBABILITY.items():
        for second, p_second in CARD_PROBABILITY.items():
            hand = hand_value((first, second))
            hands[hand] = hands.get(hand, 0.0) + p_first * p_second
    return hands


def _check_action(action: str, total: int, soft: bool, up_card: int) -> str:
    if action not in ("hit", "stand"):
        raise ValueError(f"policy returned {action!r} for (total={total}, soft={soft}, up={up_card}); "
                         f"expected 'hit' or 'stand'")
    return action


def evaluate_hand(policy: Policy, total: int, soft: bool, up_card: int, rules: DealerRules = STANDARD_RULES,
                  steps_left: int | None = None) -> Outcome:
    """Outcome of following `policy` from one player hand; `steps_left` None means no step limit."""
    memo: dict[tuple[int, bool, int | None], Outcome] = {}

    def play(total: int, soft: bool, steps_left: int | None) -> Outcome:
        key = (total, soft, steps_left)
        if key in memo:
            return memo[key]
        if _check_action(policy(total, soft, up_card), total, soft, up_card) == "stand":
            result = _stand_outcome(total, up_card, rules)
        else:
            result = ZERO
            remaining = None if steps_left is None else steps_left - 1
            for card, p_card in CARD_PROBABILITY.items():
                new_total, new_soft = add_card(total, soft, card)
                if new_total > 21:
                    branch = Outcome(0.0, 0.0, 1.0)
                elif remaining == 0:
                    branch = Outcome(0.0, 0.0, 0.0, 1.0)
                else:
                    branch = play(new_total, new_soft, remaining)
                result = result + branch.scaled(p_card)
        memo[key] = result
        return result

    if steps_left is not None and steps_left < 1:
        raise ValueError(f"steps_left must be at least 1 (or None), got {steps_left!r}")
    return play(total, soft, steps_left)


def evaluate_policy(policy: Policy, rules: DealerRules = STANDARD_RULES, max_steps: int | None = 10) -> Outcome:
    """Exact outcome probabilities of a whole episode (random deal) under `policy`."""
    result = ZERO
    for up_card, p_up in CARD_PROBABILITY.items():
        for (total, soft), p_hand in _initial_hands().items():
            result = result + evaluate_hand(policy, total, soft, up_card, rules, max_steps).scaled(p_up * p_hand)
    return result


@dataclass(frozen=True)
class Decision:
    """The best action in one state, with what standing and what hitting (then playing on optimally) give."""

    action: str
    stand: Outcome
    hit: Outcome


def optimal_decisions(objective: str = "win",
                      rules: DealerRules = STANDARD_RULES) -> dict[tuple[int, bool, int], Decision]:
    """The best stationary hit/stand decision for every (total, soft, up-card), without a step limit.

    objective "win" maximises P(win) (the success rate the papers report); "expected" maximises E[reward] =
    P(win) - P(loss) (textbook basic strategy). Ties go to "stand".
    """
    if objective not in ("win", "expected"):
        raise ValueError(f"unknown objective {objective!r}; choose 'win' or 'expected'")
    return dict(_optimal_decisions(objective, rules))


@lru_cache(maxsize=None)
def _optimal_decisions(objective: str, rules: DealerRules) -> tuple[tuple[tuple[int, bool, int], Decision], ...]:
    def score(outcome: Outcome) -> float:
        return outcome.win if objective == "win" else outcome.expected_reward

    # Solve in an order where every successor of a hand is already solved: hard 21..11 can only become
    # higher hard totals, soft hands become higher soft ones or hard 12+, and hard 10..4 anything above.
    order = [(t, False) for t in range(21, 10, -1)] + [(t, True) for t in range(21, 11, -1)] \
        + [(t, False) for t in range(10, 3, -1)]
    decisions: list[tuple[tuple[int, bool, int], Decision]] = []
    for up_card in RANKS:
        best: dict[tuple[int, bool], Outcome] = {}
        for total, soft in order:
            stand = _stand_outcome(total, up_card, rules)
            hit = ZERO
            for card, p_card in CARD_PROBABILITY.items():
                new_total, new_soft = add_card(total, soft, card)
                branch = Outcome(0.0, 0.0, 1.0) if new_total > 21 else best[(new_total, new_soft)]
                hit = hit + branch.scaled(p_card)
            action = "hit" if score(hit) > score(stand) + 1e-12 else "stand"
            decisions.append(((total, soft, up_card), Decision(action, stand, hit)))
            best[(total, soft)] = hit if action == "hit" else stand
    return tuple(decisions)


def optimal_policy(objective: str = "win", rules: DealerRules = STANDARD_RULES) -> dict[tuple[int, bool, int], str]:
    """The action part of `optimal_decisions`: (total, soft, up-card) -> "hit" | "stand"."""
    return {key: decision.action for key, decision in optimal_decisions(objective, rules).items()}


def policy_from_table(table: dict[tuple[int, bool, int], str]) -> Policy:
    def policy(total: int, soft: bool, up_card: int) -> str:
        return table[(total, soft, up_card)]
    return policy


def stand_at_17(total: int, soft: bool, up_card: int) -> str:
    """The papers' off-policy rule: stand at 17 or more, else hit."""
    return "stand" if total >= 17 else "hit"


def always_stand(total: int, soft: bool, up_card: int) -> str:
    return "stand"


if __name__ == "__main__":
    for rules_name, rules in (("id (dealer stands on soft 17)", STANDARD_RULES),
                              ("ood (dealer hits soft 17)", OOD_RULES)):
        print(rules_name)
        for name, policy in (("optimal (max win)", policy_from_table(optimal_policy("win", rules))),
                             ("optimal (max expected reward)", policy_from_table(optimal_policy("expected", rules))),
                             ("stand at 17", stand_at_17), ("always stand", always_stand)):
            o = evaluate_policy(policy, rules)
            print(f"  {name:32s} win {o.win:.4%}  draw {o.draw:.4%}  loss {o.loss:.4%}  truncated {o.truncated:.2e}")
