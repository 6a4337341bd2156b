"""The real-LM testbed's reward: the answer the completion states, checked against the gold number.

Use it as `--reward pope_cli.lm.reward:score`. The templates ask the model to end with "The
answer is N."; a small model says it in several ways, so a stated answer is any of

- "The answer is 42", "the final answer is: 42", "Answer: 42", "answer = 42";
- a `\\boxed{42}`.

The last stated answer in the completion is its answer, and only it: a completion that states
none scores 0.0 even when the right number appears in its working (a last-number fallback would
reward guesses, and long chains of small numbers make those right surprisingly often). The
statement's value is read up to the end of its sentence or line, without markdown and LaTeX
wrappers (`**42**`, `$42$`, `\\boxed{42}`, `\\text{}`), as its first number, or the result when
that number starts a sum ("The answer is 12 + 5 = 17"): "42 apples", "$42", "42.0" and "that she has 42" give 42, "1,042"
gives 1042; "N", "forty-two" and "42.000.000" give none. It is right when it equals the gold answer as a
number. A record whose gold answer is not a number scores None (unscorable).
"""

from __future__ import annotations

import re

_STATEMENT = re.compile(r"\banswer\s*(?:is\b|:|=)|\\boxed\{", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n|$")
_WRAPPERS = re.compile(r"\\boxed\{|\\text\{|\\mathrm\{|\\\(|\\\)|\\\[|\\\]|[*$`{}]")
_NUMBER = re.compile(r"-?\d[\d,.]*")
# What a number may look like once a sentence's "." or "," after it is dropped: 1042, 1,042, 42.0.
_WELL_FORMED = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
# "12 + 30 = 42" after the first number: the statement restates a sum, and its result is the answer.
_CHAIN = re.compile(rf"(?:\s*[-+*/×x]\s*{_NUMBER.pattern})+\s*=\s*({_NUMBER.pattern})")
_GOLD = re.compile(r"-?\d+(?:\.\d+)?")


def stated_answer(completion: str) -> str | None:
    """The text of the last stated answer, up to the end of its sentence or line; None if none."""
    statements = list(_STATEMENT.finditer(completion))
    if not statements:
        return None
    start = statements[-1].end()
    end = _SENTENCE_END.search(completion, start).start()
    return completion[start:end]


def answer_number(statement: str) -> float | None:
    """The number a statement gives (see the module docstring), or None."""
    text = _WRAPPERS.sub(" ", statement)
    first = _NUMBER.search(text)
    if first is None:
        return None
    chain = _CHAIN.match(text, first.end())
    return _value(chain.group(1) if chain else first.group())


def _value(number: str) -> float | None:
    """"1,042" → 1042.0; None for what is no single number ("200.000.000", "1,2")."""
    number = number.rstrip(".,")
    return float(number.replace(",", "")) if _WELL_FORMED.fullmatch(number) else None


def score(completion: str, record: dict) -> float | None:
    """1.0 when the last stated answer equals the gold number, 0.0 otherwise; None when the gold
    answer is not a number."""
    gold = str(record.get("answer", "")).strip()
    if not _GOLD.fullmatch(gold):
        return None
    if not isinstance(completion, str):
        return 0.0
    statement = stated_answer(completion)
    value = answer_number(statement) if statement is not None else None
    return 1.0 if value is not None and value == float(gold) else 0.0
