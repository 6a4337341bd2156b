"""The driver side of the workers: an `Engine` that deals batches of requests out to a pool.

`drive` has `run_rounds`' contract (jobs in, `on_done` per finished job, `RoundStats` out) but no
lock-step rounds: each job's next request joins a queue the moment its last one is scored, and
every idle worker takes the next batch of about `rows_per_batch` samples from it, follow-up
requests of admitted jobs first, then new jobs. A worker holds up to `DEPTH` batches, so it
generates while the driver scores. A worker that dies is reported with the problems it held;
those batches go back to the front of the queue and a fresh worker takes its place, up to
`max_restarts` times in all. Since each request carries its seeds, nothing depends on which
worker drew it: the files are those of one in-process engine.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from pope_cli.shared.engines.base import Completion, Request, Sampling
from pope_cli.shared.errors import PopeError
from pope_cli.shared.rounds import Job, RoundStats, Scorer, score_and_advance

DEPTH = 2
"""Batches queued per worker: one generating, one waiting, so no worker idles while the driver scores."""


def report_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class _Batch:
    slot: int
    items: list[tuple[Job, Request, dict]]

    def problems(self) -> str:
        ids = [str(record.get("id", "?")) for _, _, record in self.items]
        return ", ".join(dict.fromkeys(ids))


@dataclass
class _State:
    pending: Iterator[Job]
    ready: deque = field(default_factory=deque)
    held: dict[int, _Batch] = field(default_factory=dict)
    next_id: int = 0
    restarts: int = 0


class PooledEngine:
    """An engine made of `workers` worker processes or actors behind one backend
    (`local.LocalBackend`, `ray_backend.RayBackend`).

    `open_backend` is called at the start of every `drive` and the backend closed at its end, so
    no worker outlives the stage (or the Ctrl-C) that needed it; `max_restarts` bounds the
    restarts within one `drive`.
    """

    def __init__(self, tokenizer, open_backend: Callable, workers: int, max_restarts: int = 3,
                 report: Callable[[str], None] = report_line):
        self.tokenizer = tokenizer
        self.open_backend = open_backend
        self.workers = workers
        self.max_restarts = max_restarts
        self.report = report

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        """Per request its completions, like any engine (one `drive` over one-shot jobs)."""
        jobs = [_OneShot(request) for request in requests]
        self.drive(jobs, sampling, _NoScorer(), max(1, sum(r.n for r in requests) // self.workers), lambda job: None)
        return [job.completions for job in jobs]

    def drive(self, jobs: Iterable[Job], sampling: Sampling, scorer: Scorer, rows_per_batch: int,
              on_done: Callable[[Job], None], stats: RoundStats | None = None) -> RoundStats:
        stats = stats or RoundStats()
        state = _State(iter(jobs))
        backend = self.open_backend()
        started, scoring = time.perf_counter(), 0.0
        finished = False
        try:
            for slot in range(self.workers):
                backend.start(slot)
            while True:
                self._fill(backend, state, rows_per_batch, on_done, sampling)
                if not state.held:
                    finished = True
                    break
                for event in backend.wait():
                    batch = state.held.pop(event.batch_id, None) if event.batch_id is not None else None
                    if event.error is not None:
                        self._recover(backend, state, event, batch)
                    else:
                        scoring += self._observe(batch, event.results, scorer, state, on_done, stats)
        finally:
            backend.close(kill=not finished)
            stats.generate_seconds += time.perf_counter() - started - scoring
            stats.score_seconds += scoring
        return stats

    def _fill(self, backend, state: _State, rows_per_batch: int, on_done, sampling: Sampling) -> None:
        """Give every worker with room a batch, as long as there is work."""
        for _ in range(DEPTH):
            for slot in range(self.workers):
                if sum(b.slot == slot for b in state.held.values()) >= DEPTH:
                    continue
                items = self._take(state, rows_per_batch, on_done)
                if not items:
                    return
                batch_id, state.next_id = state.next_id, state.next_id + 1
                state.held[batch_id] = _Batch(slot, items)
                backend.submit(slot, batch_id, [request for _, request, _ in items], sampling)

    @staticmethod
    def _take(state: _State, rows_per_batch: int, on_done) -> list:
        items, rows = [], 0
        while rows < rows_per_batch:
            if state.ready:
                item = state.ready.popleft()
            else:
                job = next(state.pending, None)
                if job is None:
                    break
                first = job.next_request()
                if first is None:
                    on_done(job)
                    continue
                item = (job, *first)
            items.append(item)
            rows += item[1].n
        return items

    @staticmethod
    def _observe(batch: _Batch, results, scorer: Scorer, state: _State, on_done, stats: RoundStats) -> float:
        """Score a finished batch, let each job see its samples, queue follow-ups; the seconds scoring took."""
        follow_ups, seconds = score_and_advance(batch.items, results, scorer, stats, on_done)
        # Follow-ups first: an admitted job finishes (and is written) before new ones start.
        state.ready.extendleft(reversed(follow_ups))
        return seconds

    def _recover(self, backend, state: _State, event, batch: _Batch | None) -> None:
        """Put a dead worker's batches back at the front of the queue and restart it, or stop."""
        lost = [(event.batch_id, batch)] if batch else []
        lost += [(i, state.held.pop(i)) for i in [i for i, b in state.held.items() if b.slot == event.slot]]
        lost.sort(key=lambda pair: pair[0])
        for _, lost_batch in reversed(lost):
            state.ready.extendleft(reversed(lost_batch.items))
        holding = "; ".join(b.problems() for _, b in lost) or "no problem"
        message = f"{backend.describe(event.slot)} failed ({event.error}) holding {holding}"
        if state.restarts >= self.max_restarts:
            raise PopeError(f"{message}; stopping after {state.restarts} restart(s) (--max-restarts). Finished work "
                            "is saved: rerun the same command to resume")
        state.restarts += 1
        self.report(f"{message}: its work goes back to the queue; restarting it "
                    f"(restart {state.restarts} of at most {self.max_restarts})")
        backend.start(event.slot)


class _OneShot:
    """A job of one request, for `generate`."""

    def __init__(self, request: Request):
        self.request, self.asked, self.completions = request, False, []

    def next_request(self):
        if self.asked:
            return None
        self.asked = True
        return self.request, {}

    def observe(self, completions, scores) -> None:
        self.completions = completions


class _NoScorer:
    def score(self, completions: list[str], records: list[dict]) -> list[None]:
        return [None] * len(completions)
