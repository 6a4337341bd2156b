"""Accuracy metrics for sampled completions: avg@n, unbiased pass@k and bootstrap intervals.

Each problem contributes (n, c): n samples, c of them correct. Problems may have different n.
`summarize` returns a JSON-ready dict whose metric names ("avg@n", "pass@8") are the same
strings at the top level and under "ci95", so a reader finds a value and its interval alike.
"""

from __future__ import annotations

import numpy as np


def _check_counts(n: int, c: int) -> None:
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"need n >= 1 and 0 <= c <= n, got n={n}, c={c}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod(1 - k/j for j in n-c+1..n), which never forms the binomials and so
    neither overflows nor loses precision for large n.
    """
    _check_counts(n, c)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _per_problem(counts: list[tuple[int, int]], ks: list[int]) -> np.ndarray:
    """One row per problem: c/n, then pass@k for each k."""
    rows = []
    for n, c in counts:
        _check_counts(n, c)
        rows.append([c / n] + [pass_at_k(n, c, k) for k in ks])
    return np.array(rows, dtype=float)


def _bootstrap(values: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """Percentile 95% interval of each column's mean, resampling problems; shape (2, columns)."""
    rng = np.random.default_rng(seed)
    count = len(values)
    means = np.array([values[rng.integers(0, count, count)].mean(axis=0) for _ in range(rounds)])
    return np.percentile(means, [2.5, 97.5], axis=0)


def summarize(counts: list[tuple[int, int]], ks: list[int], bootstrap: int = 1000, seed: int = 0) -> dict:
    """Summarize per-problem (n, c) counts.

    Returns `{"problems": P, "samples": N, "avg@n": ..., "pass@1": ..., "pass@8": ..., "ci95":
    {"avg@n": [lo, hi], "pass@1": [lo, hi], ...}}`: each metric is the mean over problems of
    its per-problem value, and "ci95" a seeded percentile bootstrap over problems. A k larger
    than the smallest n is left out; `bootstrap=0` leaves out "ci95".
    """
    if not counts:
        raise ValueError("no problems to summarize")
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {ks}")
    min_n = min(n for n, _ in counts)
    ks = sorted({k for k in ks if k <= min_n})
    names = ["avg@n"] + [f"pass@{k}" for k in ks]
    values = _per_problem(counts, ks)
    summary = {"problems": len(counts), "samples": sum(n for n, _ in counts)}
    summary.update(zip(names, values.mean(axis=0).tolist()))
    if bootstrap > 0:
        low, high = _bootstrap(values, bootstrap, seed).tolist()
        summary["ci95"] = {name: [lo, hi] for name, lo, hi in zip(names, low, high)}
    return summary
