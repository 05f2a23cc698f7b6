"""Safe, exact evaluation of card-game formulas such as "8 / ( 3 - 8 / 3 )".

Model output reaches this module (an agent writes the formula symbol by symbol), so it never uses `eval`/`exec`:
a small tokenizer and a recursive-descent parser compute the value with `fractions.Fraction`, which makes
8 / (3 - 8 / 3) exactly 24 (Python floats give 23.999999999999996, and RL4VLM's `eval` scored it as wrong).

Grammar (binary operators only, the usual precedence, left-associative):

    formula := term (("+" | "-") term)*
    term    := factor (("*" | "/") factor)*
    factor  := NUMBER | "(" formula ")"

Decisions, all of which make a formula invalid rather than raising:
- no unary signs: "-3 + 5", "+3" and "3 * -4" are invalid (the card games have only binary operators);
- numbers are runs of decimal digits, at most `MAX_DIGITS` long; whitespace separates tokens, so "1 0" is two
  numbers in a row (invalid) while "10" is ten. A formula given as a sequence of symbols (the env's action
  history, e.g. ["1", "0"]) is read the same way: each symbol is its own token, because RL4VLM's number actions
  are one token each and two number actions in a row do not form a number;
- empty input, any other character ("=", letters, "_", quotes, ...), unbalanced parentheses, an operator at
  either end, division by zero, nesting deeper than `MAX_DEPTH` and input longer than `MAX_CHARS` characters.

`evaluate()` returns a `FormulaResult` (value or error, plus the numbers used in order, so that callers can
check the "every card exactly once" rule); it never raises. `tokenize()` raises `FormulaError` (a ValueError).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Sequence, Union

OPERATORS = frozenset("+-*/")
PARENTHESES = frozenset("()")
MAX_CHARS = 1000
MAX_DIGITS = 6
# 32 levels are far more than any card game needs and keep the parser's recursion (3 frames a level) shallow.
MAX_DEPTH = 32

Token = Union[int, str]


class FormulaError(ValueError):
    """A formula that cannot be read or evaluated; the message names the problem."""


@dataclass(frozen=True)
class FormulaResult:
    value: Fraction | None  # exact value; None when the formula is invalid
    numbers: tuple[int, ...]  # the numbers the formula contains, in order (empty when it cannot be tokenized)
    error: str | None  # one line naming the problem; None when the formula is valid

    @property
    def ok(self) -> bool:
        return self.error is None

    def uses_exactly(self, cards: Iterable[int]) -> bool:
        """Whether the formula contains each of `cards` exactly once (as a multiset) and nothing else."""
        return Counter(self.numbers) == Counter(int(card) for card in cards)


def tokenize(formula: str | Sequence[str]) -> list[Token]:
    """Numbers as ints, operators and parentheses as one-character strings; raises FormulaError."""
    text = _as_text(formula)
    tokens: list[Token] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char.isspace():
            index += 1
        elif char in "0123456789":
            end = index
            while end < len(text) and text[end] in "0123456789":
                end += 1
            if end - index > MAX_DIGITS:
                raise FormulaError(f"number at position {index} has more than {MAX_DIGITS} digits")
            tokens.append(int(text[index:end]))
            index = end
        elif char in OPERATORS or char in PARENTHESES:
            tokens.append(char)
            index += 1
        else:
            raise FormulaError(f"unexpected character {char!r} at position {index}")
    if not tokens:
        raise FormulaError("empty formula")
    return tokens


def evaluate(formula: str | Sequence[str]) -> FormulaResult:
    """The exact value of `formula` and the numbers it uses; invalid input gives a result with `error` set."""
    try:
        tokens = tokenize(formula)
    except FormulaError as error:
        return FormulaResult(None, (), str(error))
    numbers = tuple(token for token in tokens if isinstance(token, int))
    try:
        value = _Parser(tokens).parse()
    except FormulaError as error:
        return FormulaResult(None, numbers, str(error))
    return FormulaResult(value, numbers, None)


def apply_operator(left: Fraction, operator: str, right: Fraction) -> Fraction:
    """`left operator right` exactly; raises FormulaError on division by zero."""
    if operator == "+":
        return left + right
    if operator == "-":
        return left - right
    if operator == "*":
        return left * right
    if operator == "/":
        if right == 0:
            raise FormulaError("division by zero")
        return left / right
    raise FormulaError(f"unknown operator {operator!r}")


def _as_text(formula: str | Sequence[str]) -> str:
    if isinstance(formula, str):
        text = formula
    elif isinstance(formula, Sequence) and all(isinstance(symbol, str) for symbol in formula):
        # Spaces keep adjacent symbols apart: ["1", "0"] is two numbers, not ten.
        if sum(len(symbol) + 1 for symbol in formula) > MAX_CHARS + 1:
            raise FormulaError(f"formula is longer than {MAX_CHARS} characters")
        text = " ".join(formula)
    else:
        raise FormulaError(f"a formula must be a string or a sequence of strings, got {type(formula).__name__}")
    if len(text) > MAX_CHARS:
        raise FormulaError(f"formula is longer than {MAX_CHARS} characters")
    return text


def _describe(token: Token | None) -> str:
    return "the end" if token is None else repr(str(token))


class _Parser:
    """Recursive descent over the grammar in the module docstring, computing the value as it goes."""

    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.position = 0
        self.depth = 0

    def parse(self) -> Fraction:
        value = self._formula()
        if self.position < len(self.tokens):
            token = self.tokens[self.position]
            if token == ")":
                raise FormulaError(f"unbalanced parentheses: unexpected ')' at token {self.position}")
            self._unexpected("an operator")
        return value

    def _unexpected(self, expected: str) -> None:
        token = self._peek()
        if isinstance(token, int) and self.position > 0 and isinstance(self.tokens[self.position - 1], int):
            raise FormulaError(f"two numbers in a row at token {self.position}")
        raise FormulaError(f"expected {expected} at token {self.position}, got {_describe(token)}")

    def _peek(self) -> Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _formula(self) -> Fraction:
        value = self._term()
        while self._peek() in ("+", "-"):
            operator = self.tokens[self.position]
            self.position += 1
            value = apply_operator(value, str(operator), self._term())
        return value

    def _term(self) -> Fraction:
        value = self._factor()
        while self._peek() in ("*", "/"):
            operator = self.tokens[self.position]
            self.position += 1
            value = apply_operator(value, str(operator), self._factor())
        return value

    def _factor(self) -> Fraction:
        token = self._peek()
        if isinstance(token, int):
            self.position += 1
            return Fraction(token)
        if token == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise FormulaError(f"parentheses nested deeper than {MAX_DEPTH} levels")
            self.position += 1
            value = self._formula()
            if self._peek() is None:
                raise FormulaError("unbalanced parentheses: missing ')' at the end")
            if self._peek() != ")":
                self._unexpected("')' or an operator")
            self.position += 1
            self.depth -= 1
            return value
        self._unexpected("a number or '('")
        raise AssertionError("unreachable: _unexpected always raises")
