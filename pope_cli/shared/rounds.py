"""Adaptive sampling in rounds, shared by filter-hard, make-prefixes and eval.

Each problem is a `Job` that asks for one request at a time (a prompt, n samples, a seed) and
sees the scored completions before deciding what to ask next: stop at the first correct sample,
climb to the next prefix rung, or finish. `run_rounds` keeps the engine full by packing the
current requests of many jobs into one `generate` call per round, and hands each job back the
moment it is done so the stage can write its record at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

from pope_cli.shared.engines.base import Completion, Engine, Request, Sampling


class Job(Protocol):
    def next_request(self) -> tuple[Request, dict] | None:
        """The next request and the record to score its completions against; None when done."""
        ...

    def observe(self, completions: list[Completion], scores: list[float | None]) -> None:
        ...


class Scorer(Protocol):
    def score(self, completions: list[str], records: list[dict]) -> list[float | None]:
        ...


@dataclass
class RoundStats:
    """Totals over a run of rounds, for the end-of-stage table."""

    samples: int = 0
    tokens: int = 0
    generate_seconds: float = 0.0
    score_seconds: float = 0.0


def run_rounds(jobs: Iterable[Job], engine: Engine, sampling: Sampling, scorer: Scorer,
               rows_per_round: int, on_done: Callable[[Job], None],
               stats: RoundStats | None = None) -> RoundStats:
    """Drive every job to completion, at most about `rows_per_round` samples per engine call.

    Jobs enter in the order given and `on_done` is called in a fixed order within a round, so
    the same inputs give the same sequence of calls. An engine of many workers
    (`workers.pool.PooledEngine`) drives the jobs itself, without lock-step rounds.
    """
    stats = stats or RoundStats()
    drive = getattr(engine, "drive", None)
    if drive is not None:
        return drive(jobs, sampling, scorer, rows_per_round, on_done, stats)
    pending: Iterator[Job] = iter(jobs)
    active: list[tuple[Job, Request, dict]] = []
    while True:
        _refill(active, pending, rows_per_round, on_done)
        if not active:
            return stats
        started = time.perf_counter()
        results = engine.generate([request for _, request, _ in active], sampling)
        stats.generate_seconds += time.perf_counter() - started
        active, seconds = score_and_advance(active, results, scorer, stats, on_done)
        stats.score_seconds += seconds


def score_and_advance(items: list[tuple[Job, Request, dict]], results: list[list[Completion]], scorer: Scorer,
                      stats: RoundStats, on_done: Callable[[Job], None]) -> tuple[list, float]:
    """Score a generated batch, let each job see its samples, and return the follow-up requests of
    the jobs not done (the others go to `on_done`) with the seconds scoring took."""
    texts = [c.text for completions in results for c in completions]
    records = [record for (_, request, record) in items for _ in range(request.n)]
    started = time.perf_counter()
    scores = scorer.score(texts, records)
    seconds = time.perf_counter() - started
    stats.samples += len(texts)
    stats.tokens += sum(c.tokens for completions in results for c in completions)
    offset, follow_ups = 0, []
    for (job, request, _), completions in zip(items, results):
        job.observe(completions, scores[offset:offset + request.n])
        offset += request.n
        follow_up = job.next_request()
        if follow_up is None:
            on_done(job)
        else:
            follow_ups.append((job, *follow_up))
    return follow_ups, seconds


def _refill(active: list, pending: Iterator[Job], rows_per_round: int, on_done: Callable[[Job], None]) -> None:
    """Admit new jobs until the round holds about `rows_per_round` samples."""
    rows = sum(request.n for _, request, _ in active)
    while rows < rows_per_round:
        job = next(pending, None)
        if job is None:
            return
        first = job.next_request()
        if first is None:
            on_done(job)
            continue
        active.append((job, *first))
        rows += first[0].n
