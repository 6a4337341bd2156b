"""Runs the tests start in a subprocess and stop part-way: wait for a moment of the run (a file
holding so many lines), then SIGKILL it there, or leave it running for a Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent


def lines_in(path: Path, count: int) -> Callable[[], bool]:
    """A `ready` condition: `path` holds at least `count` lines."""
    return lambda: path.exists() and path.read_bytes().count(b"\n") >= count


def started_until(argv: list[str], ready: Callable[[], bool], timeout: float = 120, **popen) -> subprocess.Popen:
    """Start `argv` (from the repository root unless `cwd=` says otherwise) and return it, still
    running, once `ready()` holds; fails if the run ends or `timeout` passes first."""
    proc = subprocess.Popen(argv, **{"cwd": REPO, **popen})
    deadline = time.time() + timeout
    while proc.poll() is None and not ready():
        assert time.time() < deadline, f"not ready after {timeout} s"
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the moment it was to be stopped at"
    return proc


def killed_when(argv: list[str], ready: Callable[[], bool], timeout: float = 120, **popen) -> None:
    """Start `argv` and SIGKILL it as soon as `ready()` holds (which must happen before it ends)."""
    proc = started_until(argv, ready, timeout, **popen)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def python(script: str) -> list[str]:
    return [sys.executable, "-c", script]
