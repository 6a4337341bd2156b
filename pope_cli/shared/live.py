"""A live terminal view of commands running side by side (`pope demo`'s phases), read from the
lines each command writes to its log: the sampling stages' `NAME: done/total unit (what a unit is)`
and the trainer's `step s/total | reward g .. u .. e .. | hard solved unguided n this step, m ever | ...`.

`LiveView` is a rich Live table on stderr, updated by `show(phase, jobs)`; only for a terminal
(in a pipe the demo prints its plain phase lines instead).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

PROGRESS = re.compile(r"^(?P<what>[\w-]+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+)(?: \(.*\))?$")
STEP = re.compile(r"^step (?P<done>\d+)/(?P<total>\d+) \| reward g (?P<g>\S+) u (?P<u>\S+) e (?P<e>\S+) \| "
                  r"hard solved unguided (?P<step>\d+) this step, (?P<ever>\d+) ever")
TAIL_BYTES = 8192


@dataclass
class Job:
    """One command of a phase and its process state."""

    argv: list[str]
    log: Path
    started: float | None = None
    ended: float | None = None
    returncode: int | None = None

    def state(self) -> str:
        if self.started is None:
            return "queued"
        if self.returncode is None:
            return "running"
        return "done" if self.returncode == 0 else f"failed ({self.returncode})"

    def elapsed(self, now: float) -> float:
        return 0.0 if self.started is None else (self.ended or now) - self.started


@dataclass
class Status:
    done: int
    total: int
    unit: str
    detail: str = ""


def parse_status(text: str) -> Status | None:
    """The latest progress of a log's text, or None before its first progress line."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if match := STEP.match(line):
            detail = f"reward g {match['g']} u {match['u']} e {match['e']} · hard solved unguided {match['ever']}"
            return Status(int(match["done"]), int(match["total"]), "steps", detail)
        if match := PROGRESS.match(line):
            return Status(int(match["done"]), int(match["total"]), match["unit"])
    return None


def log_status(path: Path) -> Status | None:
    if not path.exists():
        return None
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - TAIL_BYTES))
        return parse_status(handle.read().decode("utf-8", errors="replace"))


COMMAND_GROUPS = {"toy"}  # pope's sub-apps, whose command is their second word


def command_of(argv: list[str]) -> str:
    """`pope train` for `train data.jsonl ...`, `pope toy make-data` for the toy group's command."""
    return "pope " + " ".join(argv[:2] if argv[0] in COMMAND_GROUPS else argv[:1])


def output_of(argv: list[str]) -> str:
    """What a command writes, for its row: its --out, else its first argument."""
    return argv[argv.index("--out") + 1] if "--out" in argv else (argv[1] if len(argv) > 1 else "")


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


class LiveView:
    """The rich Live table of a phase's commands: progress, detail, elapsed time."""

    def __init__(self, title: str, root: Path | None = None):
        from rich.console import Console
        from rich.live import Live

        self.title, self.root, self.started = title, root, time.time()
        self.console = Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> "LiveView":
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.live.stop()

    def message(self, text: str) -> None:
        self.console.print(text)

    def show(self, phase: str, jobs: list[Job]) -> None:
        self.live.update(self.table(phase, jobs, time.time()))

    def table(self, phase: str, jobs: list[Job], now: float):
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        table = Table(title=f"{self.title} · phase {phase} · {_clock(now - self.started)} elapsed", title_justify="left")
        for column, justify in (("command", "left"), ("output", "left"), ("progress", "left"), ("done", "right"),
                                ("latest", "left"), ("elapsed", "right"), ("state", "left")):
            table.add_column(column, justify=justify, no_wrap=column != "latest")
        for job in jobs:
            status = log_status(job.log) if job.started is not None else None
            total = status.total if status and status.total else None
            completed = status.done if status else 0
            bar = ProgressBar(total=total or 1, completed=completed if total else 0, width=20)
            done = f"{completed}/{total} {status.unit}" if status and total else "-"
            output = output_of(job.argv)
            if self.root is not None and output.startswith(str(self.root)):
                output = output[len(str(self.root)):].lstrip("/") or "."
            table.add_row(command_of(job.argv), output, bar, done, status.detail if status else "",
                          _clock(job.elapsed(now)), job.state())
        return table
