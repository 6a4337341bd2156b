"""What a training run (`pope train`, `pope sft`) sends beyond metrics.jsonl: rows to the
trackers, completions to RUN/completions.jsonl (and to the trackers as a table). Rank 0 alone
holds a `RunWatch`.

`--log-completions N --log-every K`: on every K-th step, N completions, which the stage makes.
`pope train` takes N of the step's own samples, round-robin over the prompt kinds (the first
sample of a guided, an unguided and an easy group, then the next groups, then second samples),
so each kind shows even when N is small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pope_cli.shared.outputs import JsonlAppender, atomic_write_jsonl, load_jsonl_repairing
from pope_cli.shared.trackers import Trackers
from pope_cli.stages.train.batch import KINDS, Rollout

COMPLETIONS = "completions.jsonl"
COLUMNS = ["step", "kind", "problem_id", "prompt_tail", "completion", "reward", "length", "truncated"]
PROMPT_TAIL_CHARS = 200


def picked(result: Rollout, count: int) -> list[tuple[int, int]]:
    """(group, sample) pairs of `count` of the policy's completions (oracle rollouts are not its),
    round-robin over kinds, groups, samples."""
    by_kind = {kind: [g for g, item in enumerate(result.items) if item.kind == kind] for kind in KINDS}
    groups = [g for rank in range(len(result.items)) for kind in KINDS if rank < len(by_kind[kind])
              for g in [by_kind[kind][rank]]]
    width = max((len(group) for group in result.completions), default=0)
    return [(g, j) for j in range(width) for g in groups
            if j < len(result.completions[g]) and not bool(result.oracle[g, j])][:count]


def completion_rows(step: int, result: Rollout, count: int, decode: Callable[[list[int]], str]) -> list[dict]:
    """The logged completions of a step, as completions.jsonl rows."""
    rows = []
    for g, j in picked(result, count):
        completion = result.completions[g][j]
        rows.append({"step": step, "kind": result.items[g].kind, "problem_id": result.items[g].record["id"],
                     "prompt_tail": decode(result.prompts[g])[-PROMPT_TAIL_CHARS:], "completion": completion.text,
                     "reward": float(result.rewards[g, j]), "length": len(completion.token_ids),
                     "truncated": completion.finish_reason == "length"})
    return rows


class RunWatch:
    """Trackers and logged completions of one run, resumed after step `done`."""

    def __init__(self, cfg, out: Path, config: dict, done: int, warn: Callable[[str], None]):
        self.count, self.every = cfg.log_completions, cfg.log_every
        self.trackers = Trackers(cfg.trackers, out, config, warn) if cfg.trackers.report_to else None
        self.file = None
        path = out / COMPLETIONS
        if path.exists() or self.count:
            # Completions of steps after the checkpoint were lost with the process: drawn again.
            atomic_write_jsonl(path, [row for row in load_jsonl_repairing(path) if row["step"] <= done])
        if self.count:
            self.file = JsonlAppender(path)

    def step(self, row: dict, completions: Callable[[int, int], list[dict]]) -> None:
        """Send `row`; on a logging step, also `completions(step, count)` (completions.jsonl rows)."""
        step = row["step"]
        if self.file is not None and step % self.every == 0:
            rows = completions(step, self.count)
            self.file.write(rows)
            if self.trackers is not None:
                self.trackers.table(step, "completions", COLUMNS, [[r[c] for c in COLUMNS] for r in rows])
        if self.trackers is not None:
            self.trackers.log(step, row)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.trackers is not None:
            self.trackers.close()
