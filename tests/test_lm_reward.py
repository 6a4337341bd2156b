"""pope_cli.lm.reward: the stated answer ("The answer is N." or a box), checked as a number; no fallback."""

from __future__ import annotations

import pytest

from pope_cli.lm.reward import score
from pope_cli.shared.reward.checker import Scorer

RECORD = {"problem": "Maya has 12 apples. She picks 30 more apples. How many apples does Maya have now?",
          "answer": "42"}

ACCEPTED = [
    "Maya has 12 + 30 = 42 apples. The answer is 42.",
    "The answer is: 42",
    "The answer is $42.",
    "The answer is 42.0.",
    "The answer is **42**.",
    "**The answer is 42.**",
    "The answer is 42 apples.",
    "So the final answer is 42",
    "Answer: 42",
    "The answer is \\boxed{42}.",
    "Maya has 12 + 30 = 42 apples, so the result is $\\boxed{42}$",
    "The answer is 12 + 30 = 42.",
    "the answer is that Maya has 42 apples.",
    "The answer is 40. Wait, she picks 30, so 12 + 30 = 42. The answer is 42.",
    "THE ANSWER IS 42",
    "The answer is N = 42.",
    "The answer is 42, the apples Maya has.",
    "The answer is 42\nThanks for asking!",
]

REJECTED = [
    "The answer is 41.",
    "The answer is 42.5.",
    "The answer is 42.000.000",
    "The answer is 4,2.",
    "The answer is N.",
    "The answer is forty-two.",
    "Maya has 12 + 30 = 42 apples.",
    "42",
    "The answer is 42. Wait, I made a mistake: the answer is 43.",
    "The answer is \\boxed{24}, since 12 + 30 = 42",
    "The answer is 24 apples, not 12 + 30 = 42. Then Maya has 42.",
    "Maya has 42 apples. The answer is",
    "",
]


@pytest.mark.parametrize("completion", ACCEPTED)
def test_right_answers_stated_in_other_forms_are_accepted(completion):
    assert score(completion, RECORD) == 1.0


@pytest.mark.parametrize("completion", REJECTED)
def test_wrong_or_unstated_answers_are_rejected(completion):
    assert score(completion, RECORD) == 0.0


def test_the_right_number_in_the_working_is_not_an_answer():
    # The last number is the gold one, and a last-number fallback would take it.
    assert score("She had 12 and picked 30, so 12 + 30 = 42", RECORD) == 0.0


def test_larger_numbers_with_thousands_separators():
    assert score("The answer is 1,042.", {"answer": "1042"}) == 1.0
    assert score("The answer is 1,043.", {"answer": "1042"}) == 0.0


def test_a_gold_answer_that_is_not_a_number_is_unscorable():
    assert score("The answer is 42.", {"answer": "x + 1"}) is None
    assert score("The answer is 42.", {}) is None


def test_selectable_as_a_reward_spec():
    with Scorer("pope_cli.lm.reward:score", workers=1, timeout=5.0) as scorer:
        assert scorer.score(["The answer is 42.", "The answer is 41.", "12 + 30 = 42"], [RECORD] * 3) == [1.0, 0.0, 0.0]
