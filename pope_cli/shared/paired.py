"""Paired differences across seeds: the mean, a 95% bootstrap interval, and the seeds going the expected way.

A claim such as "POPE beats plain GRPO" is a difference between two arms run with the same seed;
each seed gives one paired difference d_i. The interval is the percentile bootstrap of the mean
over seeds. With up to `EXACT_SEEDS` seeds the bootstrap distribution is computed exactly, by
walking every multiset of seeds with its multinomial weight (6,435 multisets for 8 seeds), so
the interval is deterministic and can be checked by hand; beyond that it is sampled.

The count of seeds that agree is taken against the direction the claim expects ("+", "-", or
"<=" for "no gain", where a tie agrees), not against the mean's own sign: a claim the data
contradicts in every seed counts 0 seeds, not all of them.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

EXACT_SEEDS = 10
DIRECTIONS = {"+": lambda d: d > 0, "-": lambda d: d < 0, "<=": lambda d: d <= 0, ">=": lambda d: d >= 0}


def agrees(difference: float, direction: str) -> bool:
    """Whether one seed's paired difference goes the expected way."""
    return DIRECTIONS[direction](difference)


def _quantile(distribution: list[tuple[float, float]], q: float) -> float:
    """The smallest value whose cumulative weight reaches q, of (value, weight) pairs summing to 1."""
    total = 0.0
    for value, weight in sorted(distribution):
        total += weight
        if total >= q - 1e-12:
            return value
    return max(value for value, _ in distribution)


def _exact(diffs: list[float]) -> list[tuple[float, float]]:
    n = len(diffs)
    out = []
    for combo in itertools.combinations_with_replacement(range(n), n):
        counts = Counter(combo)
        weight = math.factorial(n) / math.prod(math.factorial(c) for c in counts.values()) / n ** n
        out.append((sum(diffs[i] for i in combo) / n, weight))
    return out


def _sampled(diffs: list[float], rounds: int, seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    n = len(diffs)
    return [(sum(rng.choice(diffs) for _ in range(n)) / n, 1 / rounds) for _ in range(rounds)]


def paired_difference(treated: list[float], reference: list[float], direction: str, rounds: int = 20000,
                      seed: int = 0) -> dict:
    """mean of treated_i - reference_i, its 95% bootstrap interval, and in how many seeds the
    difference goes `direction` ("agree") out of how many ("seeds")."""
    if len(treated) != len(reference) or not treated:
        raise ValueError(f"need paired values, got {len(treated)} and {len(reference)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    diffs = [a - b for a, b in zip(treated, reference)]
    mean = sum(diffs) / len(diffs)
    distribution = _exact(diffs) if len(diffs) <= EXACT_SEEDS else _sampled(diffs, rounds, seed)
    return {"mean": mean, "ci95": [_quantile(distribution, 0.025), _quantile(distribution, 0.975)],
            "agree": sum(agrees(d, direction) for d in diffs), "seeds": len(diffs), "diffs": diffs}
