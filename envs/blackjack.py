"""Blackjack (RL4VLM's `gym_cards`): Gymnasium's `BlackjackEnv(natural=False, sab=False)` rules, as images.

Rules (see /work/shared/reference/papers.md and `envs.blackjack_exact`, which computes their exact odds):
- infinite deck: every card is drawn from [1, 2, ..., 9, 10, 10, 10, 10] (ace = 1, 10/J/Q/K = 10); the dealer
  gets one face-up and one hidden card, then the player two cards (Gymnasium's dealing order, so a seed deals
  the same hands as Gymnasium's env);
- "hit" draws a card: over 21 (an ace counts 11 only while that does not bust) ends the episode with -1,
  otherwise the reward is 0 and the episode goes on; "stand" ends it: the dealer draws while under 17 (a soft
  17 stands in split "id", as Gymnasium; split "ood" is the common casino variant where the dealer hits soft
  17; the papers have no Blackjack OOD split), then +1 win (a dealer bust is a win), 0 draw, -1 loss. A natural
  21 is not special. At most 10 steps (the papers' limit).
- A command other than "hit" / "stand" is illegal: the hand stays, rl4vlm reward -1, the episode goes on.
- A hand not finished by the step limit (10 steps without a stand or a bust: in practice only reached through
  illegal steps) is forfeited: it is a loss, rl4vlm -1 added to that last step, GFlowVLM R = 1e-10, and the
  text says so. Otherwise an agent that never answers legally would keep the hand from the dealer and be
  scored a draw (R = 10), better than the uniformly random policy (exactly: wins 28.1%, draws 4.3%, mean
  R = 6.04, mean log R = -14.6): stalling must never pay.
- GFlowVLM reward on the rl4vlm outcome r: R = max(1e-10, (r + 1) * 10): win 20, draw 10, loss 1e-10.
  `info["log_reward"]` of a state where the hand is still open is log 10, the paper's reward of a non-final
  hit (the intermediate reward forward-looking and [DONE]-parameterised flows use); once the hand is decided
  (including by forfeit) it is log R of the outcome. Hands played to the end are untouched by the forfeit, so
  `envs.blackjack_exact`'s figures (best win rate 43.16%, stand-at-17 40.77%) are still this env's.
- success = the episode ended in a win.

The oracle (`strategy`): "basic" (default) is textbook basic strategy restricted to hit/stand (the table below,
which equals the policy maximising expected reward for these rules, for both splits); "stand17" is the
papers' off-policy rule; "max_win" is the exact policy maximising P(win) (the papers' success metric),
computed by `envs.blackjack_exact` for the split's dealer rule.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from envs import blackjack_exact, render
from envs.base import VLMEnv

ACTIONS = ("stand", "hit")
DECK = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10)
SPLIT_RULES = {"id": blackjack_exact.STANDARD_RULES, "ood": blackjack_exact.OOD_RULES}
STRATEGIES = ("basic", "stand17", "max_win")
MIN_RANK_WIDTH = 6  # pixels: narrower cards are drawn without their rank

# Basic strategy, hit (H) or stand (S), for the dealer's up-card 2 3 4 5 6 7 8 9 10 A.
# Standard textbook play without doubling or splitting; `tests/envs/test_blackjack.py` checks it equals the exact
# expected-reward optimum of `blackjack_exact` for both dealer rules.
_UP_CARD_COLUMNS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 1)
_BASIC_HARD = {
    **{total: "H H H H H H H H H H" for total in range(4, 12)},  # no card can bust 11 or less
    12: "H H S S S H H H H H",
    13: "S S S S S H H H H H",
    14: "S S S S S H H H H H",
    15: "S S S S S H H H H H",
    16: "S S S S S H H H H H",
    **{total: "S S S S S S S S S S" for total in range(17, 22)},
}
_BASIC_SOFT = {
    **{total: "H H H H H H H H H H" for total in range(12, 18)},  # a soft hand cannot bust on one card
    18: "S S S S S S S H H H",
    **{total: "S S S S S S S S S S" for total in range(19, 22)},
}


def _parse_table() -> dict[tuple[int, bool, int], str]:
    table: dict[tuple[int, bool, int], str] = {}
    for soft, rows in ((False, _BASIC_HARD), (True, _BASIC_SOFT)):
        for total, row in rows.items():
            for up_card, letter in zip(_UP_CARD_COLUMNS, row.split()):
                table[(total, soft, up_card)] = "hit" if letter == "H" else "stand"
    return table


BASIC_STRATEGY = _parse_table()


def rank_name(card: int) -> str:
    return "A" if card == 1 else str(card)


class BlackjackEnv(VLMEnv):
    """One hand of Blackjack against the dealer; see the module docstring for the exact rules."""

    def __init__(self, split: str = "id", reward: str = "gflowvlm", image_size: int = 300,
                 render_mode: str | None = None, max_steps: int | None = None, strategy: str = "basic"):
        super().__init__(split=split, reward=reward, image_size=image_size, render_mode=render_mode,
                         max_steps=max_steps)
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown Blackjack strategy {strategy!r}; choose one of {list(STRATEGIES)}")
        self.strategy = strategy
        self.rules = SPLIT_RULES[split]
        self._max_win = (blackjack_exact.optimal_decisions("win", self.rules) if strategy == "max_win" else {})
        self.dealer: list[int] = [1, 1]
        self.player: list[int] = [1, 1]
        self.outcome: int | None = None  # +1 / 0 / -1 once the hand is decided
        self.forfeited = False  # the step limit ended the hand before a stand or a bust (scored a loss)
        self.dealer_revealed = False  # the hidden card is shown only after the player stands
        self._next_cards: list[int] = []
        self._card_fonts: dict[tuple[int, int, str], Any] = {}

    # ----- rules -------------------------------------------------------------------------------------------
    def default_max_steps(self) -> int:
        return 10

    def _draw_card(self) -> int:
        if self._next_cards:
            return self._next_cards.pop(0)
        return int(self.np_random.choice(DECK))

    def _reset_state(self, options: dict[str, Any] | None) -> None:
        """Options (for tests and demonstrations): "dealer" [up, hidden], "player" (two or more cards, not
        bust) and "next_cards" (the cards the next draws take, before random ones)."""
        options = dict(options or {})
        unknown = set(options) - {"dealer", "player", "next_cards"}
        if unknown:
            raise ValueError(f"unknown Blackjack reset options {sorted(unknown)}; "
                             f"allowed: 'dealer', 'player', 'next_cards'")
        self._next_cards = _cards_option(options, "next_cards", min_cards=0)
        dealer = _cards_option(options, "dealer", min_cards=2, max_cards=2) if "dealer" in options else None
        player = _cards_option(options, "player", min_cards=2) if "player" in options else None
        if player is not None and blackjack_exact.hand_value(player)[0] > 21:
            raise ValueError(f"option 'player' must not be bust, got {player}")
        self.dealer = dealer if dealer is not None else [self._draw_card(), self._draw_card()]
        self.player = player if player is not None else [self._draw_card(), self._draw_card()]
        # Gymnasium's reset then picks a suit (and, for a 10, a face) for its picture of the up-card. The picks
        # are discarded here, but taking them keeps the random stream aligned: a seed then deals and plays
        # exactly as Gymnasium's BlackjackEnv, which the tests use to check the rules against the original.
        self.np_random.choice(["C", "D", "H", "S"])
        if self.dealer[0] == 10:
            self.np_random.choice(["J", "Q", "K"])
        self.outcome = None
        self.forfeited = False
        self.dealer_revealed = False

    def admissible_actions(self) -> list[str]:
        return list(ACTIONS)

    def _apply(self, command: str) -> tuple[float, bool]:
        if command == "hit":
            self.player.append(self._draw_card())
            if self.player_total() > 21:
                self.outcome = -1
                return -1.0, True
            return 0.0, False
        self.dealer_revealed = True
        while self.rules.dealer_draws(*blackjack_exact.hand_value(self.dealer)):
            self.dealer.append(self._draw_card())
        player, dealer = self.player_total(), self.dealer_total()
        self.outcome = 1 if dealer > 21 or player > dealer else (0 if player == dealer else -1)
        return float(self.outcome), True

    def _on_truncation(self) -> float:
        # An unfinished hand is lost, so illegal replies cannot keep it away from the dealer (see the docstring).
        self.outcome, self.forfeited = -1, True
        return -1.0

    def player_total(self) -> int:
        return blackjack_exact.hand_value(self.player)[0]

    def player_soft(self) -> bool:
        return blackjack_exact.hand_value(self.player)[1]

    def dealer_total(self) -> int:
        return blackjack_exact.hand_value(self.dealer)[0]

    def log_reward(self) -> float:
        if self.outcome is None:
            return math.log(10.0)
        return math.log(max(1e-10, (self.outcome + 1) * 10.0))

    def is_success(self) -> bool:
        return self.outcome == 1

    # ----- text --------------------------------------------------------------------------------------------
    def task(self) -> str:
        dealer_rule = "draws until 17 or more" if not self.rules.hits_soft_17 else \
            "draws until 17 or more and also hits a soft 17"
        return ("Win a hand of Blackjack: finish closer to 21 than the dealer without going over 21. "
                "Say \"hit\" to take a card or \"stand\" to stop; an ace counts 11 unless that goes over 21. "
                f"When you stand, the dealer {dealer_rule}.")

    def state_text(self) -> str:
        player = f"your cards {_card_list(self.player)} ({self._total_words()})"
        if self.dealer_revealed:
            dealer_total = self.dealer_total()
            dealer = f"dealer cards {_card_list(self.dealer)} (total {dealer_total}" + \
                (", bust)" if dealer_total > 21 else ")")
        else:
            dealer = f"dealer shows {rank_name(self.dealer[0])}"
        text = f"{dealer}, {player}"
        if self.forfeited:
            text += ", you lose: the hand ran out of steps"
        elif self.outcome is not None:
            text += {1: ", you win", 0: ", draw", -1: ", you lose"}[self.outcome]
        return text

    def image_caption(self) -> str:
        """The cards drawn, nothing else: `draw` shows no totals, outcome or step limit, so reading them off
        the image would be arithmetic (or guessing), not reading. The hidden card is implied by "shows"."""
        dealer = f"dealer cards {_card_list(self.dealer)}" if self.dealer_revealed else \
            f"dealer shows {rank_name(self.dealer[0])}"
        return f"{dealer}, your cards {_card_list(self.player)}"

    def _total_words(self) -> str:
        total = self.player_total()
        if total > 21:
            return f"total {total}, bust"
        return f"total {total}, soft" if self.player_soft() else f"total {total}"

    # ----- oracle ------------------------------------------------------------------------------------------
    def expert_action(self) -> str:
        self._require_running()
        key = (self.player_total(), self.player_soft(), self.dealer[0])
        if self.strategy == "stand17":
            return blackjack_exact.stand_at_17(*key)
        if self.strategy == "max_win":
            return self._max_win[key].action
        return BASIC_STRATEGY[key]

    def expert_thoughts(self) -> str:
        action = self.expert_action()
        total, soft, up_card = self.player_total(), self.player_soft(), self.dealer[0]
        hand = f"I have {'soft' if soft else 'hard'} {total} and the dealer shows {rank_name(up_card)}."
        if self.strategy == "stand17":
            reason = "I stand at 17 or more and hit below 17"
        elif self.strategy == "max_win":
            decision = self._max_win[(total, soft, up_card)]
            reason = (f"Standing wins {decision.stand.win:.1%} of the time and hitting wins "
                      f"{decision.hit.win:.1%}")
        else:
            reason = _basic_reason(total, soft, up_card, action)
        return f"{hand} {reason}, so I {action}."

    def _require_running(self) -> None:
        if self._finished or self.outcome is not None:
            raise RuntimeError("the episode has ended, so there is no expert action; call reset() first")

    # ----- image -------------------------------------------------------------------------------------------
    def draw(self) -> np.ndarray:
        size = self.image_size
        image, draw = render.canvas(size, color=(21, 101, 52))
        small = size < 128
        if not small:
            label_font = render.font(max(8, size // 16))
            draw.text((0.04 * size, 0.03 * size), "Dealer", fill=(255, 255, 255), font=label_font)
            draw.text((0.04 * size, 0.52 * size), "Player", fill=(255, 255, 255), font=label_font)
        dealer_cards: list[int | None] = list(self.dealer) if self.dealer_revealed else [self.dealer[0], None]
        # (top, height) of each card row as fractions of the image; small images drop the labels, so the
        # rows take the whole height and the ranks stay as large as possible.
        dealer_row, player_row = ((0.03, 0.44), (0.53, 0.44)) if small else ((0.1, 0.36), (0.59, 0.36))
        for cards, (top, height) in ((dealer_cards, dealer_row), (list(self.player), player_row)):
            self._draw_row(draw, cards, top * size, height * size)
        return render.to_array(image)

    def _draw_row(self, draw, cards: list[int | None], top: float, height: float) -> None:
        """Cards side by side, centred; a long hand gets narrower cards (then no gaps) so that it always fits.
        Hands that long are rare (eight or more cards); on a tiny image their ranks may become unreadable."""
        size, count = self.image_size, len(cards)
        gap = max(1, round(0.02 * size))
        if (size - gap * (count + 1)) // count < MIN_RANK_WIDTH:
            gap = 0
        card_height = round(height)
        card_width = max(1, min(round(0.72 * card_height), (size - gap * (count + 1)) // count))
        left = (size - len(cards) * card_width - (len(cards) - 1) * gap) // 2
        outline = max(1, size // 150)
        for index, card in enumerate(cards):
            x0, y0 = left + index * (card_width + gap), round(top)
            box = (x0, y0, x0 + card_width - 1, y0 + card_height - 1)
            if card is None:  # the dealer's hidden card: a plain back, hatched when there is room
                draw.rectangle(box, fill=(160, 30, 40), outline=(255, 255, 255), width=outline)
                if size >= 128:
                    inset = max(3, card_width // 6)
                    draw.rectangle((box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset),
                                   outline=(240, 200, 200), width=outline)
                continue
            draw.rectangle(box, fill=(255, 255, 255), outline=(0, 0, 0), width=outline)
            if card_width < MIN_RANK_WIDTH:
                continue  # no glyph fits; the smallest font would spill onto the neighbouring cards
            rank = rank_name(card)
            draw.text(((box[0] + box[2] + 1) / 2, (box[1] + box[3] + 1) / 2), rank, fill=(0, 0, 0),
                      font=self._card_font(card_width, card_height, rank), anchor="mm")

    def _card_font(self, card_width: int, card_height: int, rank: str):
        """The font in which `rank` fills the card (so a narrow card in a long hand still shows a one-digit
        rank large); cached, since fitting costs a search over sizes."""
        key = (card_width, card_height, rank)
        if key not in self._card_fonts:
            _, draw = render.canvas(16)
            self._card_fonts[key] = render.fit_font(draw, rank, 0.86 * card_width - 2, 0.6 * card_height)
        return self._card_fonts[key]


def _card_list(cards: list[int]) -> str:
    return " ".join(rank_name(card) for card in cards)


def _cards_option(options: dict[str, Any], name: str, min_cards: int, max_cards: int | None = None) -> list[int]:
    cards = options.get(name, [])
    if isinstance(cards, (str, bytes)) or not hasattr(cards, "__iter__"):
        raise ValueError(f"option {name!r} must be a list of card ranks 1..10, got {cards!r}")
    cards = list(cards)
    count_ok = len(cards) >= min_cards and (max_cards is None or len(cards) <= max_cards)
    ranks_ok = all(not isinstance(c, bool) and isinstance(c, (int, np.integer)) and 1 <= c <= 10 for c in cards)
    if not count_ok or not ranks_ok:
        count = f"{min_cards}" if max_cards == min_cards else f"at least {min_cards}"
        raise ValueError(f"option {name!r} must be {count} card ranks in 1..10 (ace = 1), got {cards!r}")
    return [int(c) for c in cards]


def _basic_reason(total: int, soft: bool, up_card: int, action: str) -> str:
    """Why basic strategy plays `action`, in one of a few fixed sentences (the table's regions)."""
    dealer = rank_name(up_card)
    weak_dealer = 2 <= up_card <= 6
    if action == "hit":
        if soft or total <= 11:
            return "No single card can bust my hand and my total is too low to stand on"
        if total == 12 and weak_dealer:
            return f"Only a 10 busts a 12, and a dealer showing {dealer} rarely busts"
        return f"The dealer's {dealer} is strong and will likely beat {total}"
    if total >= 17 and not soft:
        return f"A hard {total} would bust too often if I hit"
    if soft:
        return f"A soft {total} is strong enough against the dealer's {dealer}"
    return f"Hitting {total} risks a bust, and the dealer's {dealer} is weak and may bust"
