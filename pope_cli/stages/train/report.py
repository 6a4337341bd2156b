"""What a training run tells the user while it runs: a rich live line on a terminal, one plain
line per step in a pipe (both on stderr; the data goes to RUN/metrics.jsonl)."""

from __future__ import annotations

import sys


def start_notes(cfg) -> list[str]:
    """What a run's options do that its user may not expect: the dtype `auto` chose, a warmup the run
    never finishes, a budget longer than the model's context."""
    from pope_cli.shared.runtime import say_budget, say_dtype

    notes: list[str] = []
    say_dtype(notes.append, "train", cfg.model, trains=True)
    if cfg.warmup_steps >= cfg.steps:
        notes.append(f"train: --warmup-steps {cfg.warmup_steps} is not less than --steps {cfg.steps}: the learning rate "
                     f"never reaches --lr {cfg.lr:g} (it peaks at {cfg.lr * cfg.steps / (cfg.warmup_steps + 1):.2g} in "
                     "the last step); lower --warmup-steps")
    say_budget(notes.append, "train", cfg.model, cfg.sampling.max_new_tokens)
    return notes


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def step_line(row: dict, total: int) -> str:
    """A one-line summary of a metrics row."""
    parts = [f"step {row['step']}/{total}",
             f"reward g {_fmt(row['reward/guided'])} u {_fmt(row['reward/unguided'])} e {_fmt(row['reward/easy'])}",
             f"hard solved unguided {row['solved_unguided/step']} this step, {row['solved_unguided/ever']} ever",
             f"len {_fmt(row['response_length'], 0)}", f"trunc {_fmt(row['truncation_rate'])}",
             f"ent {_fmt(row['entropy'])}", f"gnorm {_fmt(row['grad_norm'])}", f"lr {row['lr']:.1e}",
             f"gen {_fmt(row['time/generate_s'], 1)}s train {_fmt(row['time/train_s'], 1)}s"]
    if row.get("nan_skipped"):
        parts.append(f"SKIPPED {row['nan_skipped']} non-finite update(s)")
    evals = [f"{key.removeprefix('eval/')} {value:.3f}" for key, value in row.items()
             if key.startswith("eval/") and isinstance(value, float)]
    return " | ".join(parts + evals)


class StepReporter:
    """A live progress line on a terminal; plain lines otherwise; nothing when `silent` (the
    ranks of a torchrun launch other than rank 0)."""

    def __init__(self, total: int, done: int, stream=None, silent: bool = False):
        self.total = total
        self.stream = stream or sys.stderr
        self.silent = silent
        self.progress = None
        if self.stream.isatty() and not silent:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("train"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.description}"),
                                     console=Console(file=self.stream))
            self.task = self.progress.add_task("", total=total, completed=done)
            self.progress.start()

    def message(self, text: str) -> None:
        if self.silent:
            return
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def step(self, row: dict) -> None:
        if self.silent:
            return
        line = step_line(row, self.total)
        if self.progress is not None:
            # The step's reward per kind and hard problems solved: the rest would push the bar off a narrow terminal.
            self.progress.update(self.task, completed=row["step"], description=" | ".join(line.split(" | ")[1:3]))
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
