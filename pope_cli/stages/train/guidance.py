"""`--guidance`: how much of a hard problem's oracle prefix its guided prompt shows, step by step.

- fixed (POPE, the default): the prefix `make-prefixes` chose, at every step.
- anneal (the hint annealed to nothing, UFT's schedule): at step s (0-based) of a run with
  `--anneal-steps` S, the guided prompt of a problem shows the longest beginning of its oracle
  solution, in whole text units (lines and sentences, `prompts.split_solution`, whatever
  make-prefixes' `--split`), that holds at most a(s) * D of the solution's tokens, where a(s) =
  max(0, 1 - s/S) and D is the token share of the whole derivation: every unit but the last,
  which states the answer and is never shown. So step 0 shows the whole derivation, whatever rung
  make-prefixes chose, and the prefix loses a unit each time a(s) * D falls below its share; a
  unit is never cut in the middle (a line without its result would read as a wrong one). Once
  not even the first unit fits, the guided copy is the problem's unguided prompt, still counted
  (and logged) as a guided copy. A record needs its `solution`; one with a single unit has no
  derivation to show.
- adaptive (guide only the groups that fail, as BREAD and Guide-GRPO do, and shorten the guide as
  it is learnt): a problem's guided copy is drawn (its slot is left empty otherwise, so the step
  has fewer prompts) only while the last unguided group of that problem had no correct sample
  (none yet counts as none). Its prefix starts at the rung make-prefixes chose and steps one rung
  shorter on make-prefixes' ladder (the record's `ladder`) after each step whose guided group of
  it solved more than `--guidance-shorten-at` of its samples; the first rung is the shortest.
  The state (last unguided outcome, current rung, per problem) is part of the checkpoint.

Logged per step: `guidance/prefix_share` a(s) (anneal; 1 otherwise), `guidance/prefix_fraction`,
the mean over the step's guided prompts of the shown prefix's share of the solution's tokens (for
fixed, the chosen prefix's `prefix_fraction`), and
for adaptive `guidance/guided_skipped` (guided copies left out) and `guidance/shortened`.
"""

from __future__ import annotations

from pope_cli.shared.prompts import Rung, prefix_ladder, split_solution

GUIDANCE_MODES = ("fixed", "anneal", "adaptive")


def prefix_share(mode: str, step: int, anneal_steps: int) -> float:
    """a(s): the share of the chosen prefix a guided prompt of step `step` (0-based) shows."""
    return max(0.0, 1.0 - step / anneal_steps) if mode == "anneal" else 1.0


class AnnealedPrefixes:
    """`--guidance anneal`: each record's whole-unit derivation prefixes, and the one a share shows."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._rungs: dict[str, list[Rung]] = {}

    def rungs(self, record: dict) -> list[Rung]:
        """The solution's beginnings of 1, 2, ..., n-1 of its n units, shortest first (the last unit never)."""
        if record["id"] not in self._rungs:
            solution = str(record.get("solution") or "")
            units = split_solution(solution)
            self._rungs[record["id"]] = prefix_ladder(units, self.tokenizer, 1.0, solution)[:-1] if units else []
        return self._rungs[record["id"]]

    def shown(self, record: dict, share: float) -> Rung | None:
        """The longest rung within `share` of the derivation's token share; None when none fits."""
        rungs = self.rungs(record)
        if not rungs:
            return None
        limit = share * rungs[-1].fraction
        fitting = [rung for rung in rungs if rung.fraction <= limit + 1e-12]
        return fitting[-1] if fitting else None

    def record(self, record: dict, share: float) -> dict | None:
        """`record` with the prefix a prompt at `share` shows; None when nothing is shown."""
        rung = self.shown(record, share)
        return None if rung is None else {**record, "prefix": rung.text, "prefix_fraction": rung.fraction}


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
