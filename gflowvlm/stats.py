"""Statistics of evaluation results, as pure functions: the Wilson score interval and Div@K.

Wilson rather than the normal approximation p +- z sqrt(p(1-p)/n): at 0/n and n/n (common here: an untrained model
solves nothing, an oracle-like policy solves everything) the normal interval collapses to a single point, while the
Wilson interval stays honest about how few episodes were run and never leaves [0, 1].
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

# The two-sided 95% quantile of the standard normal distribution.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion successes / trials (95% for the default z)."""
    if isinstance(successes, bool) or isinstance(trials, bool):
        raise ValueError("successes and trials must be integers, not booleans")
    if trials <= 0:
        raise ValueError(f"the Wilson interval needs at least one trial, got trials={trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, trials], got {successes} of {trials}")
    if not z > 0 or not math.isfinite(z):
        raise ValueError(f"z must be a positive finite number, got {z}")
    p = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half_width = z * math.sqrt(p * (1.0 - p) / trials + z2 / (4 * trials * trials)) / denominator
    # Exact bounds at the edges: the formula gives 0 / 1 there up to rounding.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == trials else min(1.0, centre + half_width)
    return low, high


def distinct_successes(samples: Iterable[tuple[bool, Sequence[str]]]) -> int:
    """S_i: how many DIFFERENT successful trajectories (action sequences) are among one task's samples."""
    return len({tuple(actions) for success, actions in samples if success})


def div_at_k(tasks: Iterable[Iterable[tuple[bool, Sequence[str]]]]) -> float | None:
    """Div@K of GFlowVLM: sum_i S_i 1(S_i >= 1) / sum_i 1(S_i >= 1).

    `tasks` holds, per task, its K samples as (success, action sequence). S_i counts the distinct successful action
    sequences of task i; tasks without any success are left out of both sums. The result is None (undefined, 0/0)
    when no task has a success. With K = 1 every counted task has S_i = 1, so Div@1 is 1.0 whenever anything
    succeeds: it carries no information, which is why the evaluation reports null for K = 1.
    """
    counts = [distinct_successes(samples) for samples in tasks]
    solved = [count for count in counts if count >= 1]
    if not solved:
        return None
    return sum(solved) / len(solved)


# Two-sided 95% quantiles of Student's t distribution, t_{0.975, df} for df = 1..30 (beyond 30 the normal's is
# within 2%). A table rather than scipy: the project does not depend on scipy for one quantile.
_T_975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
          2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
          2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the multiplier of the standard error in a two-sided 95% t interval."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df!r}")
    return _T_975[df - 1] if df <= len(_T_975) else Z_95


def mean_interval(values: Sequence[float]) -> tuple[float, tuple[float, float] | None]:
    """(mean, 95% t interval of the mean) over independent runs (seeds); the interval is None for one value.

    mean +- t_{0.975, n-1} * s / sqrt(n), s the sample standard deviation (n - 1 in the denominator). With 3 seeds
    the multiplier is 4.30: three seeds only separate methods whose gap is large against their spread.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_interval needs at least one value")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"mean_interval needs finite values, got {values}")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = t_quantile_975(n - 1) * math.sqrt(variance / n)
    return mean, (mean - half, mean + half)


def paired_difference(outcomes: str, baseline: str) -> tuple[float, tuple[float, float] | None]:
    """(mean, 95% t interval) of the per-episode difference between two rows evaluated on the same episodes.

    `outcomes`, `baseline`: one '1' (solved) or '0' per episode, in the same task order (evaluation.summarize's
    "outcomes"). The difference of the two success rates is the mean of d_i = a_i - b_i; its interval is
    mean +- t_{0.975, n-1} * s_d / sqrt(n). Pairing removes the luck of the tasks both rows share (the same Blackjack
    deal is lost by any play), so it separates rows whose own Wilson intervals overlap. Where every d_i is equal the
    interval is that value: the rows differ (or agree) on every episode. None for one episode.
    """
    if len(outcomes) != len(baseline):
        raise ValueError(f"paired rows need the same episodes, got {len(outcomes)} and {len(baseline)} outcomes")
    if not outcomes:
        raise ValueError("paired_difference needs at least one episode")
    if set(outcomes) - {"0", "1"} or set(baseline) - {"0", "1"}:
        raise ValueError("outcomes must be strings of '0' and '1'")
    return mean_interval([int(a) - int(b) for a, b in zip(outcomes, baseline)])
