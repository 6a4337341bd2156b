"""The seeds' statistics helper against bootstrap distributions worked out by hand."""

from __future__ import annotations

import pytest

from pope_cli.shared.paired import agrees, paired_difference


def test_three_seeds_match_the_hand_computed_exact_bootstrap():
    # Differences -1, 2, 5. The 27 equally likely resamples give means -1 (1 of 27), 0 (3), 1 (6),
    # 2 (7), 3 (6), 4 (3), 5 (1): the cumulative weight first reaches 2.5% at -1 (1/27 = 3.7%)
    # and 97.5% only at 5 (26/27 = 96.3% at 4).
    result = paired_difference([1.0, 5.0, 9.0], [2.0, 3.0, 4.0], "+")
    assert result["mean"] == pytest.approx(2.0) and result["diffs"] == [-1.0, 2.0, 5.0]
    assert result["ci95"] == [-1.0, 5.0]
    assert (result["agree"], result["seeds"]) == (2, 3)


def test_a_consistent_gain_has_an_interval_above_zero():
    # Differences 1, 3: resample means 1 (1/4), 2 (1/2), 3 (1/4), so the interval is [1, 3].
    assert paired_difference([2.0, 4.0], [1.0, 1.0], "+")["ci95"] == [1.0, 3.0]
    result = paired_difference([3.0, 3.0, 3.0, 5.0], [1.0, 1.0, 1.0, 1.0], "+")
    # Differences 2, 2, 2, 4: a resample's mean is 2 + x/2, x = draws of the 4 ~ Binomial(4, 1/4):
    # P(0) = 81/256 = 31.6%, P(<=3) = 255/256 = 99.6%, so the 97.5% point is at 3 draws: 3.5.
    assert result["mean"] == pytest.approx(2.5) and result["ci95"] == [2.0, 3.5]
    assert result["agree"] == 4


def test_seeds_are_counted_against_the_expected_direction_not_the_means_sign():
    # differences -1, -2, +1: the mean is negative; a claim expecting a gain agrees in one seed only
    result = paired_difference([0.0, 0.0, 1.0], [1.0, 2.0, 0.0], "+")
    assert result["mean"] == pytest.approx(-2 / 3) and result["agree"] == 1
    assert paired_difference([0.0, 0.0, 1.0], [1.0, 2.0, 0.0], "-")["agree"] == 2
    # "no gain": a tie agrees, any gain does not
    assert paired_difference([1.0, 1.0, 2.0], [1.0, 0.0, 3.0], "<=")["agree"] == 2
    assert agrees(0.0, "<=") and not agrees(0.0, "+") and not agrees(0.0, "-")
    with pytest.raises(ValueError, match="direction"):
        paired_difference([1.0], [0.0], ">")


def test_many_seeds_are_sampled_reproducibly_and_unpaired_values_are_refused():
    treated, reference = [float(i % 3) for i in range(12)], [0.5] * 12
    first = paired_difference(treated, reference, "+", rounds=2000, seed=1)
    assert first == paired_difference(treated, reference, "+", rounds=2000, seed=1)
    assert first["ci95"][0] < first["mean"] < first["ci95"][1]
    with pytest.raises(ValueError, match="paired"):
        paired_difference([1.0], [1.0, 2.0], "+")
