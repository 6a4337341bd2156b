"""The math answer check itself: math-verify on the tail of a completion against a bare gold answer.

This module is what the reward worker processes run. It is kept apart from `pope_cli.shared.reward.checker` so
the forkserver can preload it: importing math-verify (sympy, the ANTLR LaTeX parser) takes
seconds, and a worker forked from a preloaded, warmed-up server skips that cost each time one
is replaced after missing its deadline. Importing it in the parent (`is_correct`) is fine too.

Model output is only ever parsed: predictions go through LaTeX extraction alone, because
math-verify's plain-expression extractor hands the text to sympy's `parse_expr`, an `eval`.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

from math_verify import LatexExtractionConfig, parse, verify

# Its timeout warnings echo the whole completion (up to hundreds of kB) to stderr.
logging.getLogger("math_verify").setLevel(logging.ERROR)

# The answer rules (pinned by tests/test_reward.py):
# - boxed answers first; the last \boxed{} counts, but boxes close to it (under 10 characters
#   apart, or under 70 with and/or/comma/semicolon between) join it as one list answer
#   (math-verify's rule), so hedging between candidates scores wrong against a single gold;
# - without a box only anchored LaTeX counts ("final answer is $..$", "Answer: $..$"); a bare
#   `$x = 3$` mid-derivation or a plain-text "the answer is 7" is no answer (None);
# - predictions get math-verify's default normalization, as the gold does, so valid shorthands
#   like `\frac12` and `\sqrt3` parse.
_PRED_CONFIG = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)]
_GOLD_CONFIG = [LatexExtractionConfig()]

TAIL_CHARS = 6000


def answer_tail(text: str) -> str:
    """The part of a completion the math checker reads: only the end of it holds the final answer.

    Rule: the last TAIL_CHARS characters; but when the last `\\boxed` starts before that cut and at
    most 2 * TAIL_CHARS from the end, everything from that `\\boxed` on, so the cut never splits the
    final box. A box further back than that is ignored (the completion went on long after it).
    """
    cut = len(text) - TAIL_CHARS
    if cut <= 0:
        return text
    box = text.rfind("\\boxed", max(0, cut - TAIL_CHARS))
    return text[box:] if 0 <= box < cut else text[cut:]


def _alarm(seconds: int | None) -> int | None:
    """math-verify's timeouts use signal.alarm, which raises outside the main thread: drop them there."""
    return seconds if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse_gold(gold: str, alarm: int | None) -> list:
    # A box rather than `$..$`: it takes `$`, newlines and \text{..} that break inline math, and
    # math-verify unwraps a gold that is already boxed.
    return parse(f"\\boxed{{{gold}}}", extraction_config=_GOLD_CONFIG, parsing_timeout=alarm)


def check(completion: str, gold: str, timeout: int | None = 5) -> bool | None:
    """True/False when the completion's final answer does/doesn't match `gold`; None when it has none.

    `timeout` is math-verify's own per-step limit in whole seconds (main thread only); it is not a
    hard deadline for the whole call: that is what the worker pool in `pope_cli.shared.reward.checker` adds.
    """
    alarm = _alarm(timeout)
    pred = parse(
        answer_tail(completion), extraction_config=_PRED_CONFIG, extraction_mode="first_match", parsing_timeout=alarm
    )
    if not pred:
        return None
    return verify(_parse_gold(gold.strip(), alarm), pred, timeout_seconds=alarm)


# Compile the extraction regexes and load the ANTLR parser now, so that workers forked from the
# preloaded forkserver start warm.
check("\\boxed{\\frac{1}{2}}", "0.5")
