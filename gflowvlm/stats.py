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
