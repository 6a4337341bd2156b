"""Unbiased pass@k, avg@n and the bootstrap summary."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from pope_cli.shared.metrics import pass_at_k, summarize


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The fraction of all k-subsets of the n samples that hold at least one correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_matches_closed_form_for_n_128():
    n = 128
    for c in (0, 1, 2, 5, 17, 64, 100, 127, 128):
        for k in (1, 2, 8, 16, 32, 64, 128):
            exact = 1 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_pass_at_1_is_the_success_rate():
    for n, c in [(1, 0), (1, 1), (16, 3), (128, 77)]:
        assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    values = [pass_at_k(1024, c, 512) for c in (0, 1, 2, 10, 512, 513, 1024)]
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in values)
    assert values[0] == 0.0 and values[-1] == 1.0 and values[-2] == 1.0
    assert values[1] == pytest.approx(0.5)  # one correct sample is in half of the 512-subsets
    assert values == sorted(values)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 5), (4, 1, 0), (4, 5, 1), (4, -1, 1), (0, 0, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


COUNTS = [(16, 0), (16, 3), (16, 16), (8, 1), (16, 9), (8, 0), (16, 12), (8, 5)]


def test_summarize_values_and_layout():
    summary = summarize(COUNTS, [1, 4, 8, 16], bootstrap=200)
    assert summary["problems"] == 8 and summary["samples"] == 104
    assert summary["avg@n"] == pytest.approx(sum(c / n for n, c in COUNTS) / 8)
    assert summary["pass@1"] == pytest.approx(summary["avg@n"])
    assert summary["pass@8"] == pytest.approx(sum(pass_at_k(n, c, 8) for n, c in COUNTS) / 8)
    assert "pass@16" not in summary  # larger than the smallest n
    assert set(summary["ci95"]) == {"avg@n", "pass@1", "pass@4", "pass@8"}
    assert json.loads(json.dumps(summary)) == summary


def test_bootstrap_interval_contains_mean_and_is_seeded():
    summary = summarize(COUNTS, [1, 8], bootstrap=500, seed=3)
    for name, (low, high) in summary["ci95"].items():
        assert low <= summary[name] <= high and low < high
    assert summarize(COUNTS, [1, 8], bootstrap=500, seed=3) == summary
    assert summarize(COUNTS, [1, 8], bootstrap=500, seed=4)["ci95"] != summary["ci95"]
    assert "ci95" not in summarize(COUNTS, [1], bootstrap=0)


def test_summarize_rejects_bad_input():
    with pytest.raises(ValueError):
        summarize([], [1])
    with pytest.raises(ValueError):
        summarize([(4, 5)], [1])
    with pytest.raises(ValueError):
        summarize([(4, 1)], [0])
