"""Rewards for the trainer tests: `--reward train_rewards:NAME` (this directory is on sys.path)."""

import time


def starts_lower(completion: str, record: dict) -> float:
    """1.0 when the completion starts with a lowercase letter: ~1/4 of a random char model's
    first tokens, so groups have signal and a tiny model climbs it in a few dozen steps.

    >>> starts_lower("abc", {}), starts_lower("Abc", {}), starts_lower("", {})
    (1.0, 0.0, 0.0)
    """
    return float(bool(completion) and completion[0].islower())


def slow_starts_lower(completion: str, record: dict) -> float:
    """starts_lower, slowed down so a subprocess run can be killed between checkpoints."""
    time.sleep(0.01)
    return starts_lower(completion, record)


def always_zero(completion: str, record: dict) -> float:
    """Every group all-equal: no learning signal anywhere."""
    return 0.0
