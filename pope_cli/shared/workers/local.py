"""Workers as processes on this machine: spawned (never forked: CUDA and threads do not survive a
fork), each with its own environment, talking to the driver over a pipe.

A worker's death shows as its pipe closing or its process sentinel firing; either way `wait`
reports it as an event with the exit code, and `start` brings up a fresh process in its place.
"""

from __future__ import annotations

import multiprocessing
import os
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_any

from pope_cli.shared.workers.plan import Slot
from pope_cli.shared.workers.worker import EngineSpec, serve

STOP_SECONDS = 10.0


@dataclass
class Event:
    """What came back from a worker: a finished batch, or a failure (`error` set)."""

    slot: int
    batch_id: int | None
    results: list | None = None
    seconds: float = 0.0
    error: str | None = None


@contextmanager
def environment(values: dict[str, str]):
    """os.environ with `values` set, for the moment a child process is spawned (it copies it)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class LocalBackend:
    def __init__(self, spec: EngineSpec, slots: list[Slot]):
        self.spec = spec
        self.slots = {slot.index: slot for slot in slots}
        self.context = multiprocessing.get_context("spawn")
        self.processes: dict = {}
        self.pipes: dict = {}
        self.failed: list[Event] = []

    def describe(self, slot: int) -> str:
        gpus = self.slots[slot].gpus
        return f"worker {slot}" + (f" (GPU {','.join(gpus)})" if gpus else "")

    def start(self, slot: int) -> None:
        info = self.slots[slot]
        parent, child = self.context.Pipe()
        with environment(info.environment()):
            process = self.context.Process(target=serve, args=(child, self.spec), daemon=True,
                                           name=f"pope-worker-{slot}")
            process.start()
        child.close()
        self.processes[slot], self.pipes[slot] = process, parent

    def submit(self, slot: int, batch_id: int, requests, sampling) -> None:
        try:
            self.pipes[slot].send((batch_id, requests, sampling))
        except OSError:
            self.failed.append(Event(slot, batch_id, error=self._death(slot)))

    def wait(self) -> list[Event]:
        """Block until at least one worker answers or dies."""
        if self.failed:
            events, self.failed = self.failed, []
            return events
        by_handle = {}
        for slot, pipe in self.pipes.items():
            by_handle[pipe] = slot
            by_handle[self.processes[slot].sentinel] = slot
        events = []
        for slot in dict.fromkeys(by_handle[h] for h in wait_any(list(by_handle))):
            pipe = self.pipes[slot]
            try:
                if not pipe.poll():
                    raise EOFError
                batch_id, results, detail = pipe.recv()
            except (EOFError, OSError):
                events.append(Event(slot, None, error=self._death(slot)))
                continue
            if results is None:
                events.append(Event(slot, batch_id, error=detail))
                self._reap(slot)
            else:
                events.append(Event(slot, batch_id, results, detail))
        return events

    def _death(self, slot: int) -> str:
        code = self._reap(slot)
        return f"exited with code {code}" + (f" (signal {-code})" if code is not None and code < 0 else "")

    def _reap(self, slot: int) -> int | None:
        process = self.processes[slot]
        process.join(STOP_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()
        self.pipes[slot].close()
        return process.exitcode

    def close(self, kill: bool = False) -> None:
        """Stop every worker: ask idle ones to exit, or (`kill`, on an error or Ctrl-C) kill them."""
        for slot, pipe in self.pipes.items():
            try:
                pipe.send(None)
            except OSError:
                pass
        for slot, process in self.processes.items():
            process.join(0 if kill else STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        self.processes, self.pipes = {}, {}
