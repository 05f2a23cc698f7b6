"""Wilson score interval against its closed form and textbook values; Div@K on hand-built samples."""
from __future__ import annotations

import math

import pytest

from gflowvlm.stats import Z_95, distinct_successes, div_at_k, wilson_interval


def closed_form(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """(k + z^2/2 -+ z sqrt(k (n - k) / n + z^2 / 4)) / (n + z^2): the same interval written another way."""
    root = z * math.sqrt(k * (n - k) / n + z * z / 4)
    return (k + z * z / 2 - root) / (n + z * z), (k + z * z / 2 + root) / (n + z * z)


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (0, 10), (10, 10), (5, 10), (1, 3), (37, 100), (999, 1000)])
def test_wilson_matches_the_closed_form(k, n):
    low, high = wilson_interval(k, n)
    expected_low, expected_high = closed_form(k, n)
    assert low == pytest.approx(max(0.0, expected_low), abs=1e-12)
    assert high == pytest.approx(min(1.0, expected_high), abs=1e-12)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_textbook_values():
    # Published 95% Wilson intervals (e.g. Newcombe 1998, Table I): 0/10, 10/10, 5/10, 81/263.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=5e-5)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)


def test_wilson_edges_are_exact_and_width_shrinks_with_n():
    assert wilson_interval(0, 50)[0] == 0.0
    assert wilson_interval(50, 50)[1] == 1.0
    widths = [high - low for low, high in (wilson_interval(n // 2, n) for n in (10, 100, 1000))]
    assert widths[0] > widths[1] > widths[2]
    # A wider z gives a wider interval.
    assert wilson_interval(5, 10, z=2.576)[0] < wilson_interval(5, 10)[0]


@pytest.mark.parametrize("k, n", [(0, 0), (1, 0), (-1, 5), (6, 5), (True, 5)])
def test_wilson_rejects_impossible_counts(k, n):
    with pytest.raises(ValueError):
        wilson_interval(k, n)


def test_distinct_successes_ignores_failures_and_duplicates():
    samples = [(True, ("+", "+")), (True, ("+", "+")), (True, ("-", "+", "+", "+")), (False, ("-", "-")),
               (False, ("+", "+"))]
    assert distinct_successes(samples) == 2
    assert distinct_successes([(False, ("+",))] * 3) == 0
    # Lists and tuples of the same actions are the same trajectory.
    assert distinct_successes([(True, ["a", "b"]), (True, ("a", "b"))]) == 1


def test_div_at_k_averages_over_solved_tasks_only():
    task_a = [(True, ("+",)), (True, ("+",)), (True, ("-", "+", "+")), (False, ("-",))]  # S = 2
    task_b = [(True, ("stand",)), (True, ("hit", "stand")), (True, ("hit", "hit", "stand")), (True, ("stand",))]  # 3
    task_c = [(False, ("+",))] * 4  # unsolved: counts in neither sum
    task_d = [(True, ("+",))] * 4  # S = 1
    assert div_at_k([task_a, task_b, task_c, task_d]) == pytest.approx((2 + 3 + 1) / 3)
    assert div_at_k([task_c]) is None
    assert div_at_k([]) is None
    # K = 1: every solved task counts 1.
    assert div_at_k([[(True, ("a",))], [(False, ("b",))], [(True, ("c",))]]) == 1.0


def test_mean_interval_is_the_t_interval_over_seeds():
    from gflowvlm.stats import mean_interval, t_quantile_975

    mean, (low, high) = mean_interval([0.5, 0.6, 0.7])
    half = 4.302653 * 0.1 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n), s = 0.1
    assert mean == pytest.approx(0.6) and low == pytest.approx(0.6 - half) and high == pytest.approx(0.6 + half)
    assert mean_interval([0.3]) == (0.3, None)
    assert mean_interval([0.4, 0.4, 0.4])[1] == pytest.approx((0.4, 0.4))
    assert t_quantile_975(1) == pytest.approx(12.706205) and t_quantile_975(200) == Z_95
    with pytest.raises(ValueError):
        mean_interval([])
    with pytest.raises(ValueError):
        mean_interval([0.1, float("nan")])
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_paired_difference_is_the_t_interval_of_per_episode_differences():
    import random

    from gflowvlm.stats import paired_difference, t_quantile_975

    rng = random.Random(0)
    for n in (2, 3, 10, 1000):
        a = "".join(rng.choice("01") for _ in range(n))
        b = "".join(rng.choice("01") for _ in range(n))
        diffs = [int(x) - int(y) for x, y in zip(a, b)]
        mean = sum(diffs) / n
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        half = t_quantile_975(n - 1) * sd / math.sqrt(n)
        got_mean, (low, high) = paired_difference(a, b)
        assert got_mean == pytest.approx(mean) and (low, high) == pytest.approx((mean - half, mean + half))
        assert got_mean == pytest.approx(a.count("1") / n - b.count("1") / n)  # the difference of the rates
    # Pairing is what separates two rows that share most outcomes: one extra win in 40 episodes on the same tasks
    # (z for df > 30).
    base = "1" * 20 + "0" * 20
    better = "1" * 21 + "0" * 19
    assert paired_difference(better, base) == (pytest.approx(0.025), pytest.approx((-0.0240, 0.0740), abs=1e-3))
    assert paired_difference("1", "0") == (1.0, None)
    for a, b in (("10", "1"), ("", ""), ("12", "10")):
        with pytest.raises(ValueError):
            paired_difference(a, b)
