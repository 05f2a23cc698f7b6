"""The safe formula evaluator (envs.formula) and the formula solver (envs.formula_solver)."""
from __future__ import annotations

import builtins
import itertools
import os
import random
import time
from collections import Counter
from fractions import Fraction

import pytest

from envs.formula import MAX_CHARS, MAX_DEPTH, FormulaError, evaluate, tokenize
from envs.formula_solver import (FormulaRules, _value_table, find_completion, find_solution, is_solvable,
                                 reachable_values)

POINTS24 = FormulaRules("+-*/", parentheses=True)
EZPOINTS = FormulaRules("+*", parentheses=False)


# ----- evaluator: valid formulas ---------------------------------------------------------------------------
@pytest.mark.parametrize("formula, expected", [
    ("7", 7),
    ("3 + 4", 7),
    ("3*4", 12),
    ("2 + 3 * 4", 14),
    ("(2 + 3) * 4", 20),
    ("10 - 4 - 3", 3),  # left-associative
    ("64 / 4 / 2", 8),
    ("2 * 9 / 3 * 4", 24),
    ("1 / 3 + 1 / 6", Fraction(1, 2)),
    ("((((7))))", 7),
    ("  6 *( 5- 1) ", 24),
    ("10 - (4 - 3)", 9),
    ("0 * 5", 0),
    (["10", "*", "2", "+", "4"], 24),
    (("(", "1", "+", "2", ")", "*", "8"), 24),
])
def test_valid_formulas_evaluate_exactly(formula, expected):
    result = evaluate(formula)
    assert result.ok and result.error is None
    assert isinstance(result.value, Fraction)
    assert result.value == expected


def test_exact_rationals_where_floats_fail():
    result = evaluate("8 / (3 - 8 / 3)")
    assert result.value == 24 and result.value.denominator == 1
    assert 8 / (3 - 8 / 3) != 24  # the float arithmetic RL4VLM's eval used gets this wrong
    assert evaluate("5 * (5 - 1 / 5)").value == 24
    assert evaluate("1 / 3 * 3").value == 1


def test_numbers_used_are_reported_in_order():
    result = evaluate("8 / (3 - 8 / 3)")
    assert result.numbers == (8, 3, 8, 3)
    assert result.uses_exactly([3, 3, 8, 8])
    assert not result.uses_exactly([3, 8, 8])
    assert not result.uses_exactly([3, 3, 8, 8, 1])
    assert evaluate(["10", "+", "2"]).numbers == (10, 2)


# ----- evaluator: invalid input ----------------------------------------------------------------------------
@pytest.mark.parametrize("formula, problem", [
    ("", "empty"),
    ("   ", "empty"),
    ([], "empty"),
    ("1/0", "division by zero"),
    ("1/(2-2)", "division by zero"),
    ("(5 - 5) / (3 - 3)", "division by zero"),
    ("(1+2", "unbalanced"),
    ("((1+2)*3", "unbalanced"),
    ("1+2)", "unbalanced"),
    (")(", "expected"),
    ("()", "expected a number"),
    ("3 4", "two numbers in a row"),
    (["1", "0"], "two numbers in a row"),
    ("(3 4)", "two numbers in a row"),
    ("+3", "expected a number"),
    ("-3 + 5", "expected a number"),
    ("3 * -4", "expected a number"),
    ("3 +", "expected a number"),
    ("*", "expected a number"),
    ("2 ** 3", "expected a number"),
    ("12 = 12", "unexpected character"),
    ("3.5 * 2", "unexpected character"),
    ("1e3", "unexpected character"),
    ("0x10", "unexpected character"),
    ("abc", "unexpected character"),
    ("__import__('os').system('x')", "unexpected character"),
    ("9999999 + 1", "digits"),
])
def test_invalid_formulas_give_a_clear_error(formula, problem):
    result = evaluate(formula)
    assert not result.ok and result.value is None
    assert problem in result.error
    assert "\n" not in result.error


@pytest.mark.parametrize("not_a_formula", [None, 12, 3.5, [1, 2], ["3", 4], b"3+4", {"a": 1}])
def test_non_text_input_is_invalid_not_an_exception(not_a_formula):
    result = evaluate(not_a_formula)
    assert not result.ok and "string" in result.error


def test_tokenize_raises_value_error_subclass():
    assert tokenize("10*(2+3)") == [10, "*", "(", 2, "+", 3, ")"]
    assert tokenize(["1", "0"]) == [1, 0]
    with pytest.raises(ValueError, match="unexpected character"):
        tokenize("3 $ 4")
    assert issubclass(FormulaError, ValueError)


def test_nesting_limit():
    deepest = "(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH
    assert evaluate(deepest).value == 1
    too_deep = "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1)
    assert "nested deeper" in evaluate(too_deep).error


def test_huge_inputs_are_rejected_fast():
    started = time.perf_counter()
    for huge in ("1+" * 500_000 + "1", "(" * 1_000_000, "9" * 1_000_000, ["1", "+"] * 300_000 + ["1"]):
        result = evaluate(huge)
        assert not result.ok and "longer than" in result.error
    longest_allowed = "+".join(["1"] * (MAX_CHARS // 2))
    assert evaluate(longest_allowed).value == MAX_CHARS // 2
    assert time.perf_counter() - started < 1.0


def test_injection_strings_never_execute(monkeypatch):
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError("must not be called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "compile", forbidden)
    monkeypatch.setattr(os, "system", forbidden)
    for attack in ("__import__('os').system('x')", "exec('1')", "eval('2+2')", "(lambda: 1)()",
                   "1 + __builtins__", "open('/etc/passwd').read()", "1; import os", "[1, 2][0]", "1 if 1 else 2",
                   "2 + 2 # comment", "\x00", "1\n+1\n;os.system('x')"):
        result = evaluate(attack)
        assert not result.ok and result.value is None
    assert calls == []


def _random_tree(rng: random.Random, leaves: int):
    if leaves == 1:
        number = rng.randint(0, 12)
        return str(number), Fraction(number)
    split = rng.randint(1, leaves - 1)
    left_text, left_value = _random_tree(rng, split)
    right_text, right_value = _random_tree(rng, leaves - split)
    operator = rng.choice("+-*/")
    if operator == "/" and right_value == 0:
        operator = "*"
    value = {"+": left_value + right_value, "-": left_value - right_value, "*": left_value * right_value,
             "/": left_value / right_value if right_value else None}[operator]
    return f"({left_text} {operator} {right_text})", value


def test_random_fully_parenthesised_trees_match_their_value():
    rng = random.Random(7)
    for _ in range(300):
        text, value = _random_tree(rng, rng.randint(1, 7))
        assert evaluate(text).value == value


def test_random_symbol_soup_never_raises():
    rng = random.Random(11)
    alphabet = list("0123456789+-*/() ") + ["10", "=", "x", "_", "'"]
    outcomes = Counter()
    for _ in range(3000):
        soup = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        result = evaluate(soup)
        assert (result.value is None) == (result.error is not None)
        outcomes[result.ok] += 1
    assert outcomes[True] > 0 and outcomes[False] > 0


# ----- solver ----------------------------------------------------------------------------------------------
def _brute_values(numbers: tuple[Fraction, ...], operators: str) -> set[Fraction]:
    """The classic independent search: combine any two numbers, recurse (every binary tree, with parentheses)."""
    if len(numbers) == 1:
        return {numbers[0]}
    values: set[Fraction] = set()
    for i, j in itertools.permutations(range(len(numbers)), 2):
        rest = tuple(n for k, n in enumerate(numbers) if k not in (i, j))
        a, b = numbers[i], numbers[j]
        for operator in operators:
            if operator == "/" and b == 0:
                continue
            combined = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[operator]
            values |= _brute_values(rest + (combined,), operators)
    return values


def _is_solution(formula, cards, target) -> bool:
    result = evaluate(list(formula))
    return result.ok and result.value == target and result.uses_exactly(cards)


@pytest.mark.parametrize("cards", [(3, 8), (2, 2, 3), (1, 5, 7), (4, 4, 10), (6, 6, 6), (1, 2, 3, 4), (3, 3, 8, 8)])
def test_value_table_matches_independent_brute_force(cards):
    expected = _brute_values(tuple(Fraction(c) for c in cards), "+-*/")
    assert reachable_values(cards, POINTS24) == expected


def _paren_free_values(cards, operators: str) -> set[Fraction]:
    """Values of every formula without parentheses: all card orders and operator sequences, evaluated."""
    values = set()
    for order in set(itertools.permutations(cards)):
        for chosen in itertools.product(operators, repeat=len(cards) - 1):
            symbols = [str(order[0])]
            for operator, card in zip(chosen, order[1:]):
                symbols += [operator, str(card)]
            result = evaluate(symbols)
            if result.ok:
                values.add(result.value)
    return values


@pytest.mark.parametrize("operators", ["+*", "+-*/", "-/", "*-"])
def test_value_table_without_parentheses_matches_enumeration(operators):
    rng = random.Random(len(operators))
    for _ in range(30):
        cards = [rng.randint(0, 6) for _ in range(rng.randint(1, 4))]
        expected = _paren_free_values(cards, operators)
        assert reachable_values(cards, FormulaRules(operators, parentheses=False)) == expected, cards
    # "2 + 2" and "2 * 2" are equally short; only the product can be multiplied further without parentheses.
    assert find_solution([2, 2, 5], 20, FormulaRules("+*", parentheses=False)) == ("2", "*", "2", "*", "5")


def test_classic_deals():
    solution = find_solution([3, 3, 8, 8], 24, POINTS24)
    assert solution is not None and _is_solution(solution, [3, 3, 8, 8], 24)
    assert "(" in solution  # 8 / (3 - 8 / 3) is the only way
    assert _is_solution(find_solution([1, 5, 5, 5], 24, POINTS24), [1, 5, 5, 5], 24)
    assert find_solution([1, 1, 1, 1], 24, POINTS24) is None
    assert not is_solvable([1, 1, 1, 1], 24, POINTS24)
    assert find_solution([3, 4], 12, EZPOINTS) == ("3", "*", "4")
    assert find_solution([5, 7], 12, EZPOINTS) == ("5", "+", "7")
    assert find_solution([5, 7], 35, FormulaRules("+", parentheses=False)) is None


def test_solvability_agrees_with_brute_force_on_many_deals():
    rng = random.Random(3)
    deals = [tuple(rng.randint(1, 10) for _ in range(4)) for _ in range(25)]
    for deal in deals:
        brute = Fraction(24) in _brute_values(tuple(Fraction(c) for c in deal), "+-*/")
        solution = find_solution(deal, 24, POINTS24)
        assert (solution is not None) == brute, deal
        if solution is not None:
            assert _is_solution(solution, deal, 24)


def test_completions_of_prefixes():
    cards = [3, 3, 8, 8]
    for prefix in (["8"], ["8", "/"], ["8", "/", "("], ["8", "/", "(", "3", "-"], ["("], ["(", "("]):
        completion = find_completion(prefix, cards, 24, POINTS24)
        assert completion is not None and _is_solution(prefix + list(completion), cards, 24), prefix
    whole = list(find_solution(cards, 24, POINTS24))
    assert find_completion(whole, cards, 24, POINTS24) == ()
    for dead in (["3"], ["8", "+"], ["8", "8"], ["+"], [")"], ["8", "/", "(", "3", "-", "3"], ["9"], ["x"]):
        assert find_completion(dead, cards, 24, POINTS24) is None, dead
    assert find_completion(["3", "*"], [3, 4], 12, EZPOINTS) == ("4",)
    assert find_completion(["3", "+"], [3, 4], 12, EZPOINTS) is None
    assert find_completion(["("], [3, 4], 12, EZPOINTS) is None  # no parentheses in EZPoints


def test_prefixes_nested_beyond_the_evaluator_limit_are_dead():
    assert find_completion(["("] * MAX_DEPTH, [1, 5, 5, 5], 24, POINTS24) is not None
    started = time.perf_counter()
    assert find_completion(["("] * (MAX_DEPTH + 1), [1, 5, 5, 5], 24, POINTS24) is None
    assert find_completion(["("] * 5000, [1, 5, 5, 5], 24, POINTS24) is None
    assert time.perf_counter() - started < 0.5


def _brute_completion_exists(prefix, cards, target, rules, max_extra) -> bool:
    """Try every grammatical suffix of up to `max_extra` symbols (independent of the solver's frames)."""
    unused = Counter(cards) - Counter(int(s) for s in prefix if s.isdigit())
    symbols = list(rules.operators) + (["(", ")"] if rules.parentheses else [])

    def search(suffix: list[str], unused: Counter) -> bool:
        if _is_solution(prefix + suffix, cards, target):
            return True
        if len(suffix) == max_extra:
            return False
        last = (prefix + suffix)[-1] if prefix + suffix else None
        after_operand = last is not None and (last.isdigit() or last == ")")
        options = [s for s in symbols if (s in rules.operators or s == ")") == after_operand]
        if not after_operand:
            options += [str(v) for v in sorted(unused) if unused[v] > 0]
        for symbol in options:
            following = unused.copy()
            if symbol.isdigit():
                following[int(symbol)] -= 1
            if search(suffix + [symbol], following):
                return True
        return False

    return search([], unused)


@pytest.mark.parametrize("rules, trials", [(POINTS24, 80), (FormulaRules("+-*/", parentheses=False), 60)])
def test_completion_is_exhaustive_against_brute_force(rules, trials):
    rng = random.Random(5)
    checked = Counter()
    for _ in range(trials):
        cards = [rng.randint(1, 6) for _ in range(3)]
        target = rng.choice(sorted(reachable_values(cards, rules)))
        solution = list(find_solution(cards, target, rules))
        prefix = solution[:rng.randint(0, len(solution))]
        if rng.random() < 0.5 and prefix:  # perturb: a different symbol at the end
            prefix[-1] = rng.choice(["+", "-", "*", "/", "(", ")"] + [str(c) for c in cards])
        completion = find_completion(prefix, cards, target, rules)
        if completion is not None:
            assert _is_solution(prefix + list(completion), cards, target)
            assert rules.parentheses or not {"(", ")"} & set(completion)
        budget = 7 if completion is None else len(completion)
        assert _brute_completion_exists(prefix, cards, target, rules, budget) == (completion is not None), \
            (cards, target, prefix, completion)
        checked[completion is not None] += 1
    assert checked[True] > 15 and checked[False] > 10


def test_solver_is_cached_and_fast():
    cards = (2, 5, 7, 9)
    _value_table.cache_clear()
    started = time.perf_counter()
    find_solution(cards, 24, POINTS24)
    cold = time.perf_counter() - started
    hits = _value_table.cache_info().hits
    find_completion(["2"], cards, 23, POINTS24)
    assert _value_table.cache_info().hits > hits
    assert cold < 1.0


def test_rules_are_validated():
    with pytest.raises(ValueError, match="operators"):
        FormulaRules("+^")
    with pytest.raises(ValueError, match="operators"):
        FormulaRules("")
    with pytest.raises(ValueError, match="cards"):
        find_solution([], 24, POINTS24)
