"""Exhaustive, exact search for card-game formulas; also completes a formula that is already half written.

`find_completion(prefix, cards, target, rules)` answers the oracle's question: which symbols, appended to the
formula written so far, make it a valid formula that uses every card exactly once and equals the target? It
returns a short suffix (a tuple of symbols), `()` when the prefix already is a solution, and None when no
completion exists (the deal has no solution, or the prefix is dead: bad syntax, a card used twice, ...).

How the search covers every formula (all binary trees, operator choices and parenthesisations):
- `_value_table(cards)` maps every value that some formula over exactly `cards` can take (all binary trees and
  operators, exact `Fraction` arithmetic, dynamic programming over sub-multisets) to its shortest renderings.
  A fresh formula is solvable iff the target is in the table of all cards.
- A prefix is parsed into a stack of frames, one per open parenthesis: (sum of the finished terms, sign of the
  current term, product of the current term so far, operator waiting for a factor). Any completion continues
  the innermost frame with factors and operators, closes it with ")", continues the next frame, and so on.
  Each factor is either one card or a parenthesised group, and a group can take any value of the table of the
  cards it uses, so searching over (cards of the factor, value from the table) covers every completion; only
  the parenthesis style of groups may differ, and the shortest rendering is kept for each reachable value.
  The outermost frame is searched for the target only (`_reach`); a term that has not started yet is a single
  table lookup there, since "t - a + b" = t - (a - b) makes the values after "t -" exactly t - (table values).
Results are cached with `lru_cache` keyed on the sorted cards (and prefix), so an oracle that asks at every step
pays once per deal. A 4-card table holds at most about 1,000 values; all 1,001 multisets of 1..4 card values
1..10 together take about 90 MB, which bounds the table cache.
"""
from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Iterable, Sequence

from envs.formula import MAX_CHARS, MAX_DEPTH, FormulaError, apply_operator

Cards = tuple[int, ...]  # a multiset of card values, sorted
Suffix = tuple[str, ...]
# (sum of finished terms, sign of the current term, current term so far or None, operator waiting for a factor)
Frame = tuple[Fraction, int, "Fraction | None", "str | None"]
_FRESH: Frame = (Fraction(0), 1, None, None)
# Precedence classes of a rendered expression: a lone number, a product/quotient, a sum/difference.
_ATOM, _PRODUCT, _SUM = 3, 2, 1


@dataclass(frozen=True)
class FormulaRules:
    """Which binary operators a formula may use, and whether it may use parentheses."""

    operators: str = "+-*/"
    parentheses: bool = True

    def __post_init__(self) -> None:
        if not self.operators or set(self.operators) - set("+-*/") or len(set(self.operators)) != len(self.operators):
            raise ValueError(f"operators must be distinct characters from '+-*/', got {self.operators!r}")


def find_completion(prefix: Sequence[str], cards: Iterable[int], target: int | Fraction,
                    rules: FormulaRules) -> Suffix | None:
    """Symbols that turn `prefix` into a solution (see module docstring); None when there are none."""
    return _completion(tuple(str(symbol) for symbol in prefix), _as_cards(cards), Fraction(target), rules)


def find_solution(cards: Iterable[int], target: int | Fraction, rules: FormulaRules) -> Suffix | None:
    """A shortest formula over exactly `cards` that equals `target`, or None."""
    return find_completion((), cards, target, rules)


def is_solvable(cards: Iterable[int], target: int | Fraction, rules: FormulaRules) -> bool:
    return Fraction(target) in _value_table(_as_cards(cards), rules)


def reachable_values(cards: Iterable[int], rules: FormulaRules) -> frozenset[Fraction]:
    """Every value some formula over exactly `cards` (each once) takes."""
    return frozenset(_value_table(_as_cards(cards), rules))


def _as_cards(cards: Iterable[int]) -> Cards:
    values = tuple(sorted(int(card) for card in cards))
    if not values or min(values) < 0:
        raise ValueError(f"cards must be a non-empty collection of non-negative integers, got {values!r}")
    return values


# ----- all formulas over a multiset of cards -------------------------------------------------------------
@lru_cache(maxsize=8192)
def _splits(cards: Cards) -> tuple[tuple[Cards, Cards], ...]:
    """Every (part, rest) with `part` a non-empty sub-multiset of `cards` (part == cards included)."""
    counts = sorted(Counter(cards).items())
    result = []
    for taken in itertools.product(*(range(count, -1, -1) for _, count in counts)):
        part = tuple(value for (value, _), k in zip(counts, taken) for _ in range(k))
        rest = tuple(value for (value, count), k in zip(counts, taken) for _ in range(count - k))
        if part:
            result.append((part, rest))
    return tuple(result)


def _join(left: tuple[int, Suffix], operator: str, right: tuple[int, Suffix], parentheses: bool) -> Suffix | None:
    """`left operator right` ((class, tokens) each) with the parentheses precedence needs; None if not allowed."""
    (left_class, left_tokens), (right_class, right_tokens) = left, right
    own_class = _SUM if operator in "+-" else _PRODUCT
    wrap_left = left_class < own_class
    # a - (b - c) and a / (b / c) need the group; a + (b - c) and a * (b / c) do not (exact arithmetic).
    wrap_right = right_class < own_class or (right_class == own_class and operator in "-/")
    if (wrap_left or wrap_right) and not parentheses:
        return None
    if wrap_left:
        left_tokens = ("(",) + left_tokens + (")",)
    if wrap_right:
        right_tokens = ("(",) + right_tokens + (")",)
    return left_tokens + (operator,) + right_tokens


@lru_cache(maxsize=8192)
def _value_table(cards: Cards, rules: FormulaRules) -> dict[Fraction, dict[int, Suffix]]:
    """value -> {precedence class: shortest rendering} over every formula using exactly `cards`.

    One rendering per class, not just the shortest: without parentheses "2 + 2" cannot be a factor while the
    equally long "2 * 2" can, so dropping either would lose values such as 2 * 2 * 5.
    """
    if len(cards) == 1:
        return {Fraction(cards[0]): {_ATOM: (str(cards[0]),)}}
    table: dict[Fraction, dict[int, Suffix]] = {}
    for left_cards, right_cards in _splits(cards):
        if not right_cards:
            continue
        right_table = _value_table(right_cards, rules)
        for left_value, left_renderings in _value_table(left_cards, rules).items():
            for right_value, right_renderings in right_table.items():
                for operator in rules.operators:
                    if operator == "/" and right_value == 0:
                        continue
                    renderings = table.setdefault(apply_operator(left_value, operator, right_value), {})
                    own_class = _SUM if operator in "+-" else _PRODUCT
                    for left in left_renderings.items():
                        for right in right_renderings.items():
                            known = renderings.get(own_class)
                            if known is not None and len(known) <= len(left[1]) + len(right[1]) + 1:
                                continue
                            rendered = _join(left, operator, right, rules.parentheses)
                            if rendered is not None and (known is None or len(rendered) < len(known)):
                                renderings[own_class] = rendered
    return {value: renderings for value, renderings in table.items() if renderings}


def _rendering(renderings: dict[int, Suffix], after_minus: bool = False) -> Suffix:
    """The shortest of a value's renderings; after "-" a sum needs a group (only used with parentheses)."""
    options = [("(",) + tokens + (")",) if after_minus and kind == _SUM else tokens
               for kind, tokens in renderings.items()]
    return min(options, key=len)


@lru_cache(maxsize=8192)
def _factors(cards: Cards, rules: FormulaRules) -> dict[Fraction, Suffix]:
    """Values a single factor over exactly `cards` can take: one card, or a parenthesised group."""
    if len(cards) == 1:
        return {Fraction(cards[0]): (str(cards[0]),)}
    if not rules.parentheses:
        return {}
    return {value: ("(",) + _rendering(renderings) + (")",)
            for value, renderings in _value_table(cards, rules).items()}


# ----- completing a prefix ------------------------------------------------------------------------------
def _take_factor(frame: Frame, value: Fraction) -> Frame | None:
    """The frame after a factor of `value` arrives; None on division by zero."""
    total, sign, term, waiting = frame
    if term is None:
        return total, sign, value, None
    try:
        return total, sign, apply_operator(term, str(waiting), value), None
    except FormulaError:
        return None


def _parse_prefix(prefix: Suffix, cards: Cards, rules: FormulaRules) -> tuple[tuple[Frame, ...], Cards] | None:
    """(frames, cards not used yet) after reading `prefix`, or None when no completion can make it valid."""
    if sum(len(symbol) + 1 for symbol in prefix) > MAX_CHARS:  # `evaluate` would reject the completed formula
        return None
    frames: list[Frame] = [_FRESH]
    unused = Counter(cards)
    for symbol in prefix:
        total, sign, term, waiting = frames[-1]
        wants_factor = term is None or waiting is not None
        if symbol and all(char in "0123456789" for char in symbol):
            number = int(symbol)
            if not wants_factor or unused[number] == 0:
                return None
            unused[number] -= 1
            frame = _take_factor(frames[-1], Fraction(number))
            if frame is None:
                return None
            frames[-1] = frame
        elif symbol == "(" and rules.parentheses and wants_factor:
            if len(frames) > MAX_DEPTH:  # deeper than `evaluate` accepts (this also bounds the recursion)
                return None
            frames.append(_FRESH)
        elif symbol == ")" and rules.parentheses and not wants_factor and len(frames) > 1:
            frames.pop()
            frame = _take_factor(frames[-1], total + sign * term)
            if frame is None:
                return None
            frames[-1] = frame
        elif symbol in rules.operators and len(symbol) == 1 and not wants_factor:
            if symbol in "*/":
                frames[-1] = (total, sign, term, symbol)
            else:
                frames[-1] = (total + sign * term, 1 if symbol == "+" else -1, None, None)
        else:
            return None
    return tuple(frames), tuple(sorted(unused.elements()))


def _keep_shorter(results: dict[Fraction, Suffix], head: Suffix, tails: dict[Fraction, Suffix]) -> None:
    for value, tail in tails.items():
        known = results.get(value)
        if known is None or len(head) + len(tail) < len(known):
            results[value] = head + tail


def _fresh_term_outcomes(total: Fraction, sign: int, cards: Cards,
                         rules: FormulaRules) -> dict[Fraction, Suffix] | None:
    """Outcomes of a frame waiting for the first factor of a term, straight from the value table.

    "t - a + b" is t - (a - b): flipping the signs of the top-level terms maps the formulas over the cards onto
    themselves, so after "t -" the reachable values are exactly t - (table values). Rendering a sum after "-"
    needs a group, so without parentheses this shortcut only serves "+" (None tells the caller to search).
    """
    if sign < 0 and not rules.parentheses:
        return None
    outcomes: dict[Fraction, Suffix] = {}
    for value, renderings in _value_table(cards, rules).items():
        outcomes[total + sign * value] = _rendering(renderings, after_minus=sign < 0)
    return outcomes


@lru_cache(maxsize=65536)
def _frame_outcomes(frame: Frame, cards: Cards, rules: FormulaRules) -> dict[Fraction, Suffix]:
    """value of this frame -> shortest symbols found that finish it (without its ")") using exactly `cards`."""
    total, sign, term, waiting = frame
    results: dict[Fraction, Suffix] = {}
    if term is not None and waiting is None:
        if not cards:
            return {total + sign * term: ()}
        for operator in rules.operators:
            _keep_shorter(results, (operator,), _frame_outcomes(_after_operator(frame, operator), cards, rules))
        return results
    if not cards:
        return results
    if term is None:
        fresh = _fresh_term_outcomes(total, sign, cards, rules)
        if fresh is not None:
            return fresh
    for part, rest in _splits(cards):
        for value, tokens in _factors(part, rules).items():
            following = _take_factor(frame, value)
            if following is not None:
                _keep_shorter(results, tokens, _frame_outcomes(following, rest, rules))
    return results


def _after_operator(frame: Frame, operator: str) -> Frame:
    total, sign, term, _ = frame
    if operator in "*/":
        return total, sign, term, operator
    return total + sign * term, 1 if operator == "+" else -1, None, None


def _shorter(best: Suffix | None, head: Suffix, tail: Suffix | None) -> Suffix | None:
    if tail is None or (best is not None and len(head) + len(tail) >= len(best)):
        return best
    return head + tail


@lru_cache(maxsize=65536)
def _reach(frame: Frame, cards: Cards, target: Fraction, rules: FormulaRules) -> Suffix | None:
    """Shortest symbols found that finish the outermost frame with exactly `cards` so that it equals `target`.

    The same search as `_frame_outcomes`, aimed at one value: a fresh term is a single table lookup.
    """
    total, sign, term, waiting = frame
    best: Suffix | None = None
    if term is not None and waiting is None:
        if not cards:
            return () if total + sign * term == target else None
        for operator in rules.operators:
            best = _shorter(best, (operator,), _reach(_after_operator(frame, operator), cards, target, rules))
        return best
    if not cards:
        return None
    if term is None and (sign > 0 or rules.parentheses):
        renderings = _value_table(cards, rules).get((target - total) / sign)
        return None if renderings is None else _rendering(renderings, after_minus=sign < 0)
    for part, rest in _splits(cards):
        for value, tokens in _factors(part, rules).items():
            following = _take_factor(frame, value)
            if following is not None:
                best = _shorter(best, tokens, _reach(following, rest, target, rules))
    return best


@lru_cache(maxsize=65536)
def _close_frames(frames: tuple[Frame, ...], cards: Cards, target: Fraction, rules: FormulaRules) -> Suffix | None:
    """Symbols that finish every open frame, innermost first, so that the whole formula equals `target`."""
    if len(frames) == 1:
        return _reach(frames[0], cards, target, rules)
    best: Suffix | None = None
    for part, rest in ((), cards), *_splits(cards):
        for value, tokens in _frame_outcomes(frames[-1], part, rules).items():
            outer = _take_factor(frames[-2], value)
            if outer is not None:
                best = _shorter(best, tokens + (")",), _close_frames(frames[:-2] + (outer,), rest, target, rules))
    return best


@lru_cache(maxsize=65536)
def _completion(prefix: Suffix, cards: Cards, target: Fraction, rules: FormulaRules) -> Suffix | None:
    table = _value_table(cards, rules)
    if target not in table:  # no formula over these cards reaches the target, whatever the prefix
        return None
    if not prefix:
        return _rendering(table[target])
    parsed = _parse_prefix(prefix, cards, rules)
    if parsed is None:
        return None
    frames, unused = parsed
    return _close_frames(frames, unused, target, rules)
