"""Rewards: score completions against records, in worker processes with a hard per-call deadline.

`--reward math` (the default) checks the final answer with math-verify (`pope_cli.shared.reward.worker`);
`--reward module:function` calls a user's `fn(completion, record) -> float | bool | None`.

Why processes: model output is hostile input. `\\boxed{9^{9^{9^{9^9}}}}` or a deeply nested
expression can keep sympy busy far past any sensible limit, partly inside C code where no alarm
reaches it, and math-verify's own timeouts (`signal.alarm`) only work in a main thread. So each
check runs in a small pool of our own worker processes; one that misses its deadline is killed
and replaced (concurrent.futures cannot kill a stuck worker). Workers are forked by our own fork
server (`pope_cli.shared.reward.forkserver`), a fresh interpreter with the checker loaded:
forking the caller itself (torch loaded, threads running) is unsafe, multiprocessing's spawn
and forkserver re-run the caller's `__main__` in every child, and a fresh interpreter per worker
would pay the seconds-long math-verify import on every restart.

Answer rules for `math` (tail cap, boxes, gold wrapping): see `pope_cli.shared.reward.worker`.
"""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, wait

from pope_cli.shared.errors import PopeError

# The fork server's start (a fresh interpreter importing math-verify, or a user's reward module
# with its own imports) gets its own limit, so the per-check deadline measures checks only.
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


def score_fn(spec: str, alarm: int):
    """The function a worker calls: math-verify's check, or the user's `module:function`."""
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


def serve(conn: Connection, fn) -> None:
    """Worker main loop: score (completion, record) jobs until the parent sends None or goes away."""
    try:
        for job in iter(conn.recv, None):
            conn.send(_run(fn, *job))
    except (EOFError, OSError):  # the parent went away
        pass


class _ForkServer:
    """Our fork server process and the socket we ask it for workers on.

    One per (reward, alarm) and process, kept until exit, as multiprocessing keeps its
    forkserver: a second scorer (the next model `pope eval` scores) starts in milliseconds.
    """

    _running: dict[tuple[str, int], _ForkServer] = {}
    _lock = threading.Lock()

    @classmethod
    def shared(cls, spec: str, alarm: int) -> _ForkServer:
        with cls._lock:
            server = cls._running.get((spec, alarm))
            # A process forked from ours (a data loader's worker) must not share our socket.
            if server is None or server.owner != os.getpid() or server.proc.poll() is not None:
                server = cls._running[(spec, alarm)] = cls(spec, alarm)
                atexit.register(server.close)
            return server

    def __init__(self, spec: str, alarm: int):
        ours, theirs = socket.socketpair()
        # The caller's import path, so a reward module found here is found there too.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
        self.proc = subprocess.Popen([sys.executable, "-m", "pope_cli.shared.reward.forkserver", str(theirs.fileno()),
                                      spec, str(alarm)], pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self.control, self.owner = ours, os.getpid()
        self.control.settimeout(BOOT_TIMEOUT)
        answer = self._line()
        self.control.settimeout(None)
        if answer != "ready":
            self.close()
            why = answer[len("error "):] if answer.startswith("error ") else self._died()
            raise PopeError(f"--reward: the reward worker process could not start: {why}")

    def _line(self) -> str:
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = self.control.recv(256)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, OSError):
            pass
        return data.decode(errors="replace").strip()

    def _died(self) -> str:
        code = self.proc.poll()
        if code is None:
            return f"no answer within {BOOT_TIMEOUT:.0f} s"
        return f"it exited with code {code} (its error is above)"

    def fork(self) -> tuple[int, Connection]:
        """A new worker: its pid and our end of its pipe."""
        ours, theirs = socket.socketpair()
        try:
            with self._lock:
                socket.send_fds(self.control, [b"w"], [theirs.fileno()])
                pid = self._line()
        except OSError:
            pid = ""
        finally:
            theirs.close()
        if not pid.isdigit():
            ours.close()
            raise PopeError(f"--reward: the reward worker process stopped: {self._died()}")
        return int(pid), Connection(ours.detach())

    def close(self) -> None:
        """End of file tells the server to kill its workers and exit."""
        if self.control.fileno() == -1:
            return
        self.control.close()
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Worker:
    """One scoring process, the parent's end of its pipe, and the job in flight (index, deadline)."""

    def __init__(self, server: _ForkServer):
        self.server = server
        self.pid, self.conn = server.fork()
        self.job: tuple[int, float] | None = None

    def kill(self) -> None:
        # A live server reaps its workers only when asked for the next one: until then the pid is ours.
        if self.server.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
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
        self._server: _ForkServer | None = None
        if workers == 0:
            self._fn = score_fn(spec, self._alarm)
            return
        self._server = _ForkServer.shared(spec, self._alarm)
        self._workers = [self._spawn() for _ in range(workers)]

    def _spawn(self) -> _Worker:
        return _Worker(self._server)

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
        """Stop the workers (the fork server stays, for the next scorer)."""
        for worker in self._workers:
            worker.kill()
        self._workers = []

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
