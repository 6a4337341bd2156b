"""`--guidance`: how much of a hard problem's oracle prefix its guided prompt shows, step by step.

- fixed (POPE, the default): the prefix `make-prefixes` chose, at every step.
- anneal (the hint annealed to nothing, as in UFT): at step s (0-based) of a run with
  `--anneal-steps` S, the share of the chosen prefix shown is a(s) = max(0, 1 - s/S), and the
  guided prompt holds the first floor(T * a(s)) tokens of it (T: the chosen prefix's tokens under
  the policy's tokenizer), decoded back to text. Once that is 0 tokens the guided copy is the
  problem's unguided prompt, still counted (and logged) as a guided copy. The prefix shown is
  always a beginning of the oracle solution, as in POPE.
- adaptive (guide only the groups that fail, as BREAD and Guide-GRPO do, and shorten the guide as
  it is learnt): a problem's guided copy is drawn (its slot is left empty otherwise, so the step
  has fewer prompts) only while the last unguided group of that problem had no correct sample
  (none yet counts as none). Its prefix starts at the rung make-prefixes chose and steps one rung
  shorter on make-prefixes' ladder (the record's `ladder`) after each step whose guided group of
  it solved more than `--guidance-shorten-at` of its samples; the first rung is the shortest.
  The state (last unguided outcome, current rung, per problem) is part of the checkpoint.

Logged per step: `guidance/prefix_share` a(s) (anneal; 1 otherwise), `guidance/prefix_fraction`,
the mean over the step's guided prompts of the shown prefix's share of the solution's tokens, and
for adaptive `guidance/guided_skipped` (guided copies left out) and `guidance/shortened`.
"""

from __future__ import annotations

import math

GUIDANCE_MODES = ("fixed", "anneal", "adaptive")


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
        if share >= 1.0:
            return record
        kept = self.kept(record, share)
        if kept == len(self.tokens(record)):
            return record
        if kept == 0:
            return None
        return {**record, "prefix": self.tokenizer.decode(self.tokens(record)[:kept])}

    def fraction(self, record: dict, share: float) -> float:
        """The shown prefix's share of the solution's tokens."""
        if share >= 1.0:
            return float(record.get("prefix_fraction", 0.0))
        tokens = self.tokens(record)
        return float(record.get("prefix_fraction", 0.0)) * (self.kept(record, share) / len(tokens) if tokens else 0.0)


class AdaptiveGuidance:
    """The adaptive rule's state and decisions, over the records of one run."""

    def __init__(self, shorten_at: float, state: dict | None = None):
        self.shorten_at = shorten_at
        state = state or {}
        self.unguided_solved: dict[str, bool] = dict(state.get("unguided_solved", {}))
        self.rung: dict[str, int] = dict(state.get("rung", {}))

    def state(self) -> dict:
        return {"unguided_solved": dict(sorted(self.unguided_solved.items())), "rung": dict(sorted(self.rung.items()))}

    def wanted(self, record: dict) -> bool:
        """Whether the problem's guided copy is drawn: its last unguided group solved nothing."""
        return not self.unguided_solved.get(record["id"], False)

    def current_rung(self, record: dict) -> int:
        return self.rung.get(record["id"], record["rung"])

    def record(self, record: dict) -> dict:
        """`record` with the prefix of its current rung (and that rung's share of the solution)."""
        rung = self.current_rung(record)
        if rung == record["rung"]:
            return record
        chars, tokens = record["ladder"][rung - 1]
        return {**record, "prefix": record["prefix"][:chars],
                "prefix_fraction": tokens / record["solution_tokens"] if record.get("solution_tokens") else 0.0}

    def observe(self, kind: str, record: dict, solved: list[bool]) -> bool:
        """Take a group's outcome; True when it shortened the problem's prefix."""
        if kind == "unguided":
            self.unguided_solved[record["id"]] = any(solved)
            return False
        rung = self.current_rung(record)
        if kind != "guided" or rung <= 1 or sum(solved) <= self.shorten_at * len(solved):
            return False
        self.rung[record["id"]] = rung - 1
        return True
