"""The toy task's reward: a checked derivation and a math-verified boxed answer.

Use it as `--reward pope_cli.toy.reward:score`. The answer alone would be a poor reward here:
with ten possible answers a guess is right 10% of the time. So the score is 1.0 only when

1. every non-blank line but the last is a step `a<op>b=c` or several merged, `a<op>b<op>c=d`
   (the terse style, task.py; spaces ignored), and these steps are exactly the problem's steps
   k..n, each line with its correct result: k = 1 for an unguided
   prompt; for a guided one (the record has a `prefix`), the steps may start anywhere up to
   right after the given lines, so both restating the given lines and continuing after them
   count;
2. the last line is the `\\boxed{...}` answer, and math-verify (`pope_cli.shared.reward.checker.is_correct`)
   finds it equal to the gold answer.

Anything else scores 0.0; a record whose problem is not a toy problem scores None (unscorable).
"""

from __future__ import annotations

import re
from functools import lru_cache

from pope_cli.toy.task import solution_lines

_PROBLEM = re.compile(r"(\d)((?:[+*-]\d)+)")
_MERGED = re.compile(r"(\d)((?:[+*-]\d){2,})=(\d)")
_BOXED = re.compile(r"\\boxed\{[^{}]*\}")


def parse_problem(problem: object) -> tuple[int, list[tuple[str, int]]] | None:
    """`7*9-5` → (7, [("*", 9), ("-", 5)]), or None when it is not a toy problem."""
    match = _PROBLEM.fullmatch(problem.strip()) if isinstance(problem, str) else None
    if match is None:
        return None
    chain = match.group(2)
    return int(match.group(1)), [(chain[i], int(chain[i + 1])) for i in range(0, len(chain), 2)]


def given_steps(prefix: object, oracle: list[str]) -> int:
    """How many leading oracle steps the guided prompt's prefix hands over."""
    lines = _lines(prefix) if isinstance(prefix, str) else []
    given = 0
    while given < len(lines) and given < len(oracle) and lines[given] == oracle[given]:
        given += 1
    return given


def _lines(text: str) -> list[str]:
    """The non-blank lines without spaces, a merged line `a<op>b<op>c=d` written out as its single
    steps when d is its result (left as it is when not, so it matches no step)."""
    lines = []
    for line in (line.replace(" ", "") for line in text.splitlines() if line.strip()):
        merged = _MERGED.fullmatch(line)
        steps = solution_lines(*parse_problem(merged.group(1) + merged.group(2))) if merged else []
        lines.extend(steps if steps and steps[-1].endswith(f"={merged.group(3)}") else [line])
    return lines


def derivation_ok(completion: str, oracle: list[str], given: int) -> bool:
    """Whether the completion's steps are oracle steps k..n (k ≤ given) and a boxed line follows."""
    lines = _lines(completion)
    if not lines or not _BOXED.fullmatch(lines[-1]):
        return False
    steps = lines[:-1]
    first = len(oracle) - len(steps)
    return 0 <= first <= given and steps == oracle[first:]


def score(completion: str, record: dict) -> float | None:
    """1.0 for a correct derivation with the right boxed answer, 0.0 otherwise (see the module)."""
    parsed = parse_problem(record.get("problem"))
    gold = record.get("answer")
    if parsed is None or not isinstance(gold, str):
        return None
    if not isinstance(completion, str):
        return 0.0
    oracle = solution_lines(*parsed)
    if not derivation_ok(completion, oracle, given_steps(record.get("prefix"), oracle)):
        return 0.0
    boxed = [line for line in completion.splitlines() if line.strip()][-1].strip()
    return 1.0 if answer_matches(boxed, gold) else 0.0


@lru_cache(maxsize=4096)
def answer_matches(boxed: str, gold: str) -> bool:
    """math-verify on the boxed last line alone. derivation_ok leaves no other box in the
    completion, so this is its whole answer; and a toy answer is one digit, so each (box, gold)
    pair is checked once per process instead of once per sample (milliseconds each)."""
    from pope_cli.shared.reward.checker import is_correct

    return bool(is_correct(boxed, gold))
