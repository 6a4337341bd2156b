"""Rewards: score completions against records, in worker processes with a hard per-call deadline.

`--reward math` (the default) checks the final answer with math-verify (`pope_cli.shared.reward.worker`);
`--reward module:function` calls a user's `fn(completion, record) -> float | bool | None`.

Why processes: model output is hostile input. `\\boxed{9^{9^{9^{9^9}}}}` or a deeply nested
expression can keep sympy busy far past any sensible limit, partly inside C code where no alarm
reaches it, and math-verify's own timeouts (`signal.alarm`) only work in a main thread. So each
check runs in a small pool of our own worker processes; one that misses its deadline is killed
and replaced (concurrent.futures cannot kill a stuck worker). Workers are forked from a
`forkserver` that has the checker preloaded: forking the parent itself (torch loaded, threads
running) is unsafe, and a fresh interpreter would pay the multi-second math-verify import on
every restart.

Answer rules for `math` (tail cap, boxes, gold wrapping): see `pope_cli.shared.reward.worker`.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.connection import wait

from pope_cli.shared.errors import PopeError

# A starting worker re-runs the parent's __main__ script (multiprocessing does), which may import
# torch: boot gets its own limit, so the per-check deadline measures checks only.
BOOT_TIMEOUT = 60.0


def is_correct(completion: str, gold: str) -> bool | None:
    """In-process math check: True/False, or None when no final answer was found.

    No hard deadline: only math-verify's own 5 s alarms, and those only in the main thread.
    """
    from pope_cli.shared.reward import worker as reward_worker

    return reward_worker.check(completion, gold)


def _resolve(spec: str):
    """Import the function named by `module:function`; the current directory is searched last."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PopeError(f"--reward: expected 'math' or 'module:function', got {spec!r}", exit_code=2)
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise PopeError(f"--reward: cannot import module '{module_name}': {error}", exit_code=2) from None
    fn = vars(module).get(attr)
    if not callable(fn):
        raise PopeError(f"--reward: module '{module_name}' has no function '{attr}'", exit_code=2)
    return fn


def validate_reward_spec(spec: str) -> None:
    """Raise PopeError (exit code 2) unless `spec` is 'math' or an importable module:function."""
    if spec != "math":
        _resolve(spec)


def _score_fn(spec: str, alarm: int):
    if spec != "math":
        return _resolve(spec)
    from pope_cli.shared.reward import worker as reward_worker

    return lambda completion, record: reward_worker.check(completion, str(record["answer"]), alarm)


def _run(fn, completion: str, record: dict) -> tuple[float | None, bool]:
    """(score, raised): an exception in the scoring function scores None and is reported."""
    try:
        value = fn(completion, record)
        return (None if value is None else float(value)), False
    except Exception:
        return None, True


def _serve(conn, spec: str, alarm: int) -> None:
    """Worker main loop: score (completion, record) jobs until the parent sends None or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; daemonic workers die with it
    fn = _score_fn(spec, alarm)
    conn.send("ready")
    try:
        for job in iter(conn.recv, None):
            conn.send(_run(fn, *job))
    except EOFError:  # the parent went away
        pass


class _Worker:
    """One scoring process, the parent's end of its pipe, and the job in flight (index, deadline)."""

    def __init__(self, ctx, args: tuple):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        self.job: tuple[int, float] | None = None

    def wait_ready(self) -> _Worker:
        try:
            if self.conn.poll(BOOT_TIMEOUT) and self.conn.recv() == "ready":
                return self
        except (EOFError, OSError):
            pass
        self.kill()
        raise RuntimeError(f"a reward worker did not start within {BOOT_TIMEOUT:.0f} s (see its error above)")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


class Scorer:
    """Scores completions against records in worker processes with a hard per-call deadline.

    `score` returns, per sample: math: 1.0 / 0.0 / None (None = no final answer found, gold in
    `record["answer"]`); custom: `float(fn(completion, record))` or None. A deadline miss (or a
    worker that died) scores 0.0 and counts in `deadline_misses`; an exception inside the scoring
    function scores None and counts in `errors`. A sample is correct when its score >= 1.0.
    `workers=0` scores in-process, without the deadline (for debugging).
    """

    def __init__(self, spec: str = "math", workers: int = 2, timeout: float = 5.0):
        if workers < 0 or timeout <= 0:
            raise ValueError(f"need workers >= 0 and timeout > 0, got {workers} and {timeout}")
        validate_reward_spec(spec)
        self.spec, self.timeout = spec, timeout
        self.deadline_misses = 0
        self.errors = 0
        # math-verify's own alarms take whole seconds; half the deadline lets most hostile inputs
        # come back as "wrong" before the hard kill, which costs a worker restart.
        self._alarm = max(1, int(timeout / 2))
        self._workers: list[_Worker] = []
        if workers == 0:
            self._fn = _score_fn(spec, self._alarm)
            return
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["pope_cli.shared.reward.worker"])
        self._workers = [_Worker(self._ctx, (spec, self._alarm)) for _ in range(workers)]
        for worker in self._workers:  # they boot in parallel
            worker.wait_ready()

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, (self.spec, self._alarm)).wait_ready()

    def _tally(self, result: tuple[float | None, bool]) -> float | None:
        value, raised = result
        self.errors += raised
        return value

    def score(self, completions: list[str], records: list[dict]) -> list[float | None]:
        """Scores in input order; the checks are spread over the workers."""
        if len(completions) != len(records):
            raise ValueError(f"{len(completions)} completions for {len(records)} records")
        if not self._workers:
            return [self._tally(_run(self._fn, c, r)) for c, r in zip(completions, records)]
        results: list[float | None] = [None] * len(completions)
        todo = list(reversed(range(len(completions))))
        while todo or any(w.job for w in self._workers):
            for i, worker in enumerate(self._workers):
                if worker.job is None and todo:
                    index = todo.pop()
                    self._workers[i] = self._send(worker, index, (completions[index], records[index]))
            self._collect(results)
        return results

    def _send(self, worker: _Worker, index: int, job: tuple) -> _Worker:
        """Hand `job` to `worker`, or to a fresh one if it died while idle; returns the one used."""
        try:
            worker.conn.send(job)
        except OSError:
            worker.kill()
            worker = self._spawn()
            worker.conn.send(job)
        worker.job = (index, time.monotonic() + self.timeout)
        return worker

    def _collect(self, results: list) -> None:
        """Wait for the next result or deadline; store what came back, replace what is overdue."""
        busy = [w for w in self._workers if w.job]
        first_deadline = min(w.job[1] for w in busy)
        ready = wait([w.conn for w in busy], timeout=max(0.0, first_deadline - time.monotonic()))
        now = time.monotonic()
        for i, worker in enumerate(self._workers):
            if worker.job is None:
                continue
            index, deadline = worker.job
            if worker.conn in ready:
                try:
                    results[index] = self._tally(worker.conn.recv())
                    worker.job = None
                    continue
                except (EOFError, OSError):
                    pass  # the worker died mid-check: same as a miss
            elif now < deadline:
                continue
            self.deadline_misses += 1
            results[index] = 0.0
            worker.kill()
            self._workers[i] = self._spawn()

    def close(self) -> None:
        """Stop the workers (politely, then by force)."""
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in self._workers:
            worker.proc.join(timeout=1.0)
            worker.kill()
        self._workers = []

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
