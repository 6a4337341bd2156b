"""`--guidance`: how much of a hard problem's oracle prefix its guided prompt shows, step by step.

- fixed (POPE, the default): the prefix `make-prefixes` chose, at every step.
- anneal (the hint annealed to nothing, as in UFT): at step s (0-based) of a run with
  `--anneal-steps` S, the share of the chosen prefix shown is a(s) = max(0, 1 - s/S), and the
  guided prompt holds the first floor(T * a(s)) tokens of it (T: the chosen prefix's tokens under
  the policy's tokenizer), decoded back to text. Once that is 0 tokens the guided copy is the
  problem's unguided prompt, still counted (and logged) as a guided copy. The prefix shown is
  always a beginning of the oracle solution, as in POPE.

Logged per step: `guidance/prefix_share` a(s) and `guidance/prefix_fraction`, the mean over the
step's guided prompts of the shown prefix's share of the solution's tokens (the chosen rung's
`prefix_fraction` times the share of its tokens kept).
"""

from __future__ import annotations

import math

GUIDANCE_MODES = ("fixed", "anneal")


def prefix_share(mode: str, step: int, anneal_steps: int) -> float:
    """a(s): the share of the chosen prefix a guided prompt of step `step` (0-based) shows."""
    return max(0.0, 1.0 - step / anneal_steps) if mode == "anneal" else 1.0


class ShownPrefixes:
    """The guided records as a step shows them: the prefix cut to its share, in tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._tokens: dict[str, list[int]] = {}

    def tokens(self, record: dict) -> list[int]:
        if record["id"] not in self._tokens:
            self._tokens[record["id"]] = self.tokenizer(record["prefix"], add_special_tokens=False).input_ids
        return self._tokens[record["id"]]

    def kept(self, record: dict, share: float) -> int:
        """How many of the chosen prefix's tokens a prompt at `share` keeps."""
        tokens = self.tokens(record)
        return len(tokens) if share >= 1.0 else math.floor(len(tokens) * share)

    def record(self, record: dict, share: float) -> dict | None:
        """`record` with its prefix cut to `share`; None when nothing of it is left."""
        kept = self.kept(record, share)
        if kept == len(self.tokens(record)):
            return record
        if kept == 0:
            return None
        return {**record, "prefix": self.tokenizer.decode(self.tokens(record)[:kept])}

    def fraction(self, record: dict, share: float) -> float:
        """The shown prefix's share of the solution's tokens."""
        tokens = self.tokens(record)
        return float(record.get("prefix_fraction", 0.0)) * (self.kept(record, share) / len(tokens) if tokens else 0.0)
