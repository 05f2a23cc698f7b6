"""EZPoints and Points24 (RL4VLM's `gym_cards`): write a formula over the cards that equals the target.

One game class, `CardFormulaEnv`, configured twice (rules from /work/shared/reference/papers.md and gym_cards):

| | EZPoints | Points24 |
|---|---|---|
| cards | 2 | 4 |
| actions | "1".."10", "+", "*", "=" (13) | "1".."10", "+", "-", "*", "/", "(", ")", "=" (17) |
| split "id" target | 12 | 24 |
| split "ood" target | uniform from 10, 11, 13, 14 | uniform from 20, 22, 26, 28 |
| formula at most | 5 symbols | 20 symbols |
| max_steps default | 6 | 21 |

Deal. Ranks 1..13 (shown A, 2..10, J, Q, K; A counts 1, J/Q/K count 10), suits only colour the image.
- EZPoints always has a solution, generated as RL4VLM does: the first card's rank is uniform in 2..13; the
  second card's value is target / first (when that is a whole number in 1..10) or target - first (when in
  1..10), each with probability 1/2 when both exist; a first card with neither option is redrawn (never happens
  for 12); the second card's rank is its value, and the two cards swap places with probability 1/2. For the
  target 12 this is exactly gym_cards' rule (multiply for first values 2, 3, 4, 6 half of the time, else add).
- Points24 deals four uniform ranks, so a deal may have no solution (73.1% of deals reach 24; the ood targets
  reach 20: 91.6%, 22: 71.2%, 26: 66.1%, 28: 70.1%). OOD keeps cards, actions and images identical and only
  changes the target stated in the task, so a policy that memorised "make 12/24" fails there.

Steps. Every command appends its symbol to the formula. A number that no unused card shows is not admissible
(`info["admissible_actions"]` lists only the numbers of unused cards, then every operator and "="): the formula
stays, `info["illegal"]` is True, rl4vlm reward -1, the episode goes on. Operators are always admissible (as in
gym_cards, a malformed formula only fails at "="). "=" ends the episode: the formula is evaluated exactly
(`envs.formula`, never `eval`) and solves the task iff it is valid, equals the target and uses every card exactly
once (two number actions in a row are invalid, not a two-digit number).

Horizon. gym_cards checks "formula longer than 5 (20)" before each action and then truncates with -1; because
its illegal actions append a blank, every step there lengthens the formula by one. So an episode gets
6 (21) steps in which "=" still counts, and the 7th (22nd) step is a forced -1 truncation whatever the agent
does. Here the horizon is those 6 (21) steps (`max_steps`), and the forced step's -1 is added to the reward of
the last step when it truncates, so rl4vlm returns equal gym_cards' returns. A truncated episode (no "=" within
the horizon) failed, in both reward modes: rl4vlm -1 as above, GFlowVLM the floor R = 0.01, what a wrong "="
earns. (Legal steps always lengthen the formula, so only illegal steps can stop it short; were a truncated live
prefix paid its partial credit, "write the smallest card, then send garbage" would earn a mean R of 0.13 on
Points24 and 0.51 on EZPoints, against the random policy's 0.01 and 0.04.)

GFlowVLM reward (positive, `log_reward` defined for every state):
- "=" with a solution: R = 10 (`SOLVED_REWARD`);
- "=" with anything else, or truncation: the floor R = 0.01 (`FLOOR_REWARD`);
- `info["log_reward"]` of a state before the end (the intermediate reward of forward-looking and
  [DONE]-parameterised flows): R = 0.01 + 1.0 * (cards used / cards) when the formula can still be completed
  into a solution (a live prefix, decided by `envs.formula_solver`), so a correct formula not yet submitted has
  1.01; else the floor. Only "=" turns that credit into a reward.
The solved reward is ten times the best partial credit, so sampling proportional to R favours real solutions.

Oracle. `expert_action()` asks the solver for a completion of the current formula over the unused cards (all
binary trees, operators and parenthesisations, exact arithmetic) and emits its next symbol; it emits "=" when
the formula is already a solution, when no completion exists (unsolvable deal or dead prefix) or when the
completion would not fit in the remaining steps.

The oracle's `strategy`: "shortest" (default) always writes the solver's one shortest formula, so a deal with
several solutions is always written the same way (EZPoints' "3 * 4" never as "4 * 3"). "varied" starts each
episode with a symbol drawn uniformly from those that begin some solution that fits the horizon (each distinct
card value, and "(" where parentheses exist), then completes it the shortest way: its SFT data show every
solution order, which a diversity measure (Div@K) needs to be able to credit. The draw uses its own generator,
seeded from the episode's `np_random` after the deal, so a seeded reset deals the same cards in both strategies
and one task is always written the same way; `seed_expert(seed)` reseeds it (what the oracle row's Div@K does, so
its K plays of a task draw independently).
"""
from __future__ import annotations

import math
import random
from abc import abstractmethod
from collections import Counter
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from envs import render
from envs.base import VLMEnv
from envs.formula import evaluate
from envs.formula_solver import FormulaRules, Suffix, find_completion

SOLVED_REWARD = 10.0
PROGRESS_REWARD = 1.0
FLOOR_REWARD = 0.01
NUMBER_ACTIONS = tuple(str(number) for number in range(1, 11))
STRATEGIES = ("shortest", "varied")  # the oracles (module docstring); env_factory reads this list
SUITS = ("H", "S", "D", "C")
RANK_LABELS = {1: "A", 11: "J", 12: "Q", 13: "K"}
TABLE_GREEN = (53, 101, 77)
RED, BLACK, WHITE = (200, 30, 30), (20, 20, 20), (255, 255, 255)


def card_value(rank: int) -> int:
    return min(int(rank), 10)


def rank_label(rank: int) -> str:
    return RANK_LABELS.get(int(rank), str(rank))


class CardFormulaEnv(VLMEnv):
    """The shared card-formula game; subclasses set the class attributes and the deal."""

    game_name: str
    n_cards: int
    rules: FormulaRules
    max_formula_length: int
    split_targets: dict[str, tuple[int, ...]]

    def __init__(self, split: str = "id", reward: str = "gflowvlm", image_size: int = 300,
                 render_mode: str | None = None, max_steps: int | None = None, strategy: str = "shortest"):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown {self.game_name} strategy {strategy!r}; choose one of {list(STRATEGIES)}")
        super().__init__(split=split, reward=reward, image_size=image_size, render_mode=render_mode,
                         max_steps=max_steps)
        self.strategy = strategy
        self._expert_rng = random.Random(0)  # reseeded at every reset (module docstring)
        parentheses = ("(", ")") if self.rules.parentheses else ()
        self.action_vocabulary: tuple[str, ...] = NUMBER_ACTIONS + tuple(self.rules.operators) + parentheses + ("=",)
        self.target = self.split_targets[split][0]
        self.ranks: tuple[int, ...] = ()
        self.suits: tuple[str, ...] = ()
        self.formula: list[str] = []
        self.submitted = False
        self.correct = False
        self.timed_out = False  # truncated without "=": scored as a failure
        self._unused: Counter[int] = Counter()
        self._plan: Suffix | None = None  # the whole formula the oracle is writing, so its steps agree

    @abstractmethod
    def _deal(self, target: int) -> list[int]:
        """The ranks of a new deal for `target`, drawn with `self.np_random`."""

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(card_value(rank) for rank in self.ranks)

    # ----- rules -------------------------------------------------------------------------------------------
    def default_max_steps(self) -> int:
        return self.max_formula_length + 1

    def _reset_state(self, options: dict[str, Any] | None) -> None:
        options = dict(options or {})
        unknown = set(options) - {"cards", "target"}
        if unknown:
            raise ValueError(f"unknown {self.game_name} reset options {sorted(unknown)}; allowed: 'cards', 'target'")
        targets = self.split_targets[self.split]
        target = int(targets[int(self.np_random.integers(len(targets)))])
        if "target" in options:
            target = options["target"]
            if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 < target <= 10_000:
                raise ValueError(f"option 'target' must be an integer in [1, 10000], got {target!r}")
        ranks = self._option_ranks(options["cards"]) if "cards" in options else self._deal(int(target))
        self.target = int(target)
        self.ranks = tuple(ranks)
        self.suits = tuple(SUITS[int(i)] for i in self.np_random.integers(len(SUITS), size=self.n_cards))
        self.formula = []
        self.submitted = self.correct = self.timed_out = False
        self._unused = Counter(self.values)
        self._plan = None
        if self.strategy == "varied":  # drawn after the deal and suits, so they stay those of "shortest"
            self._expert_rng = random.Random(int(self.np_random.integers(2**62)))

    def _option_ranks(self, cards: Any) -> list[int]:
        try:
            ranks = [rank for rank in cards]
        except TypeError:
            ranks = []
        if len(ranks) != self.n_cards or not all(
                isinstance(rank, (int, np.integer)) and not isinstance(rank, bool) and 1 <= rank <= 13
                for rank in ranks):
            raise ValueError(f"option 'cards' must be {self.n_cards} ranks, integers in [1, 13], got {cards!r}")
        return [int(rank) for rank in ranks]

    def admissible_actions(self) -> list[str]:
        numbers = [str(value) for value in sorted(value for value, count in self._unused.items() if count > 0)]
        return numbers + [action for action in self.action_vocabulary if action not in NUMBER_ACTIONS]

    def _on_truncation(self) -> float:
        # gym_cards spends one more step truncating with -1; it is folded into the last step here. The unfinished
        # formula is a failure (module docstring), so stalling with illegal steps cannot keep its partial credit.
        self.timed_out = True
        return -1.0

    def _apply(self, command: str) -> tuple[float, bool]:
        if command == "=":
            result = evaluate(self.formula)
            self.submitted = True
            self.correct = bool(result.ok and result.value == self.target and result.uses_exactly(self.values))
            return (SOLVED_REWARD if self.correct else -1.0), True
        if command in NUMBER_ACTIONS:
            self._unused[int(command)] -= 1
        self.formula.append(command)
        return 0.0, False

    def log_reward(self) -> float:
        if self.submitted or self.timed_out:
            return math.log(SOLVED_REWARD if self.correct else FLOOR_REWARD)
        if self._completion() is None:
            return math.log(FLOOR_REWARD)
        used = self.n_cards - sum(self._unused.values())
        return math.log(FLOOR_REWARD + PROGRESS_REWARD * used / self.n_cards)

    def is_success(self) -> bool:
        return self.submitted and self.correct

    def _completion(self) -> Suffix | None:
        return find_completion(self.formula, self.values, self.target, self.rules)

    # ----- text --------------------------------------------------------------------------------------------
    def formula_text(self) -> str:
        return " ".join(self.formula + (["="] if self.submitted else []))

    def task(self) -> str:
        symbols = ", ".join(self.rules.operators) + (", parentheses" if self.rules.parentheses else "")
        return (f"Use the {self.n_cards} cards to write a formula that equals {self.target}. Use every card "
                f"exactly once; A counts as 1 and J, Q, K count as 10. Each action appends a number or a symbol "
                f"({symbols}) to the formula; choose = to finish.")

    def state_text(self) -> str:
        labels = " ".join(rank_label(rank) for rank in self.ranks)
        return f"cards {labels}, formula {self.formula_text() or 'empty'}"

    def state_fields(self) -> dict[str, Any]:
        return {"cards": list(self.values), "current formula": " ".join(self.formula)}

    # ----- oracle ------------------------------------------------------------------------------------------
    def _expert_plan(self) -> tuple[str, Suffix | None]:
        """(next command, the completion it follows or None when giving up)."""
        if self._finished:
            raise RuntimeError("the episode has ended, so there is no expert action; call reset() first")
        written = tuple(self.formula)
        if self._plan is not None and self._plan[:len(written)] == written:
            completion: Suffix | None = self._plan[len(written):]
        else:
            steps_left = self.max_steps - self.steps_taken
            completion = self._varied_start(steps_left) if self.strategy == "varied" and not written else None
            completion = completion or self._completion()
            self._plan = None if completion is None else written + completion
        steps_left = self.max_steps - self.steps_taken
        if completion is None or not completion or len(completion) + 1 > steps_left:
            return "=", completion
        return completion[0], completion

    def _varied_start(self, steps_left: int) -> Suffix | None:
        """A whole formula that starts with a symbol drawn uniformly from those beginning a solution that fits in
        `steps_left` steps with its "=", completed the shortest way; None when no solution fits."""
        firsts = [str(value) for value in sorted(set(self.values))] + (["("] if self.rules.parentheses else [])
        options = []
        for first in firsts:
            rest = find_completion([first], self.values, self.target, self.rules)
            if rest is not None and len(rest) + 2 <= steps_left:
                options.append((first, *rest))
        return self._expert_rng.choice(options) if options else None

    def seed_expert(self, seed: int) -> None:
        """Reseed the varied oracle's draws for the rest of this episode (the K plays of one task in Div@K draw
        apart; reset() seeds them from the deal). Call it before the oracle's first action."""
        self._expert_rng = random.Random(int(seed))
        self._plan = None

    def expert_action(self) -> str:
        return self._expert_plan()[0]

    def expert_thoughts(self) -> str:
        action, completion = self._expert_plan()
        cards = " and ".join(str(value) for value in self.values)
        written = " ".join(self.formula)
        if completion == ():
            return f"{written} = {self.target} uses every card once, so I finish with =."
        if completion is None and not self.formula:
            return f"No formula with the cards {cards} makes {self.target}, so I give up with =."
        if completion is None:
            return f"The formula {written} cannot be completed to make {self.target}, so I end it with =."
        full = " ".join(self.formula + list(completion))
        if action == "=":
            return f"{full} = {self.target} needs more steps than I have left, so I end it with =."
        return f"{full} = {self.target}, so I write {action} {'next' if self.formula else 'first'}."

    # ----- image -------------------------------------------------------------------------------------------
    def draw(self) -> np.ndarray:
        image = _card_layer(self.ranks, self.suits, self.image_size).copy()
        draw = ImageDraw.Draw(image)
        size = self.image_size
        x, box_width, box_height = 0.04 * size, 0.92 * size, 0.095 * size
        label_font = render.fit_font(draw, "Formula:", box_width, box_height)
        draw.text((x, 0.69 * size), "Formula:", fill=WHITE, font=label_font)
        for row, line in enumerate(_formula_lines(draw, self.formula_text(), box_width, box_height, label_font)):
            font = min(render.fit_font(draw, line, box_width, box_height), label_font, key=lambda f: f.size)
            draw.text((x, (0.795 + 0.1 * row) * size), line, fill=WHITE, font=font)
        return render.to_array(image)


def _formula_lines(draw: ImageDraw.ImageDraw, text: str, width: float, height: float, label_font: Any) -> list[str]:
    """The formula on one line, or on two when one line would need a font much smaller than the label's."""
    words = text.split()
    if len(words) < 2 or render.fit_font(draw, text, width, height).size >= 0.7 * label_font.size:
        return [text] if text else []
    middle = (len(words) + 1) // 2
    return [" ".join(words[:middle]), " ".join(words[middle:])]


@lru_cache(maxsize=256)
def _card_layer(ranks: tuple[int, ...], suits: tuple[str, ...], size: int) -> Image.Image:
    """The table with the cards in a row (drawn once per deal and size; formulas are drawn on a copy)."""
    image, draw = render.canvas(size, TABLE_GREEN)
    count = max(1, len(ranks))
    margin, gap = 0.04 * size, 0.04 * size
    card_width = (size - 2 * margin - (count - 1) * gap) / count
    card_height = min(1.45 * card_width, 0.6 * size)
    card_width = min(card_width, card_height / 1.45)
    left = (size - count * card_width - (count - 1) * gap) / 2
    top = 0.05 * size
    # One font for every card, sized so that the widest label ("10") fills most of a card.
    font = render.fit_font(draw, "10", 0.88 * card_width, 0.6 * card_height)
    for index, (rank, suit) in enumerate(zip(ranks, suits)):
        x0 = left + index * (card_width + gap)
        box = (x0, top, x0 + card_width, top + card_height)
        draw.rounded_rectangle(box, radius=max(1, card_width / 10), fill=WHITE, outline=BLACK,
                               width=max(1, size // 150))
        color = RED if suit in ("H", "D") else BLACK
        draw.text((x0 + card_width / 2, top + card_height / 2), rank_label(rank), fill=color, font=font, anchor="mm")
    return image


class EZPointsEnv(CardFormulaEnv):
    """Two cards, + and *, target 12 (ood: 10, 11, 13 or 14); always solvable."""

    game_name = "EZPoints"
    n_cards = 2
    rules = FormulaRules(operators="+*", parentheses=False)
    max_formula_length = 5
    split_targets = {"id": (12,), "ood": (10, 11, 13, 14)}

    def _deal(self, target: int) -> list[int]:
        if not any(any(_second_values(target, value)) for value in range(2, 11)):
            raise ValueError(f"EZPoints cannot deal two cards that make {target}; choose a target in [3, 100] "
                             f"that is a sum or product of two card values")
        while True:
            first = int(self.np_random.integers(2, 14))
            product, total = _second_values(target, card_value(first))
            if product is None and total is None:
                continue
            if product is not None and total is not None:
                second = product if self.np_random.random() < 0.5 else total
            else:
                second = product if product is not None else total
            ranks = [first, int(second)]
            return ranks[::-1] if self.np_random.random() < 0.5 else ranks


def _second_values(target: int, first_value: int) -> tuple[int | None, int | None]:
    """(target / first, target - first), each None unless it is a card value in 1..10."""
    product = target // first_value if target % first_value == 0 and 1 <= target // first_value <= 10 else None
    total = target - first_value if 1 <= target - first_value <= 10 else None
    return product, total


class Points24Env(CardFormulaEnv):
    """Four cards, + - * / and parentheses, target 24 (ood: 20, 22, 26 or 28); not always solvable."""

    game_name = "Points24"
    n_cards = 4
    rules = FormulaRules(operators="+-*/", parentheses=True)
    max_formula_length = 20
    split_targets = {"id": (24,), "ood": (20, 22, 26, 28)}

    def _deal(self, target: int) -> list[int]:
        return [int(rank) for rank in self.np_random.integers(1, 14, size=self.n_cards)]
