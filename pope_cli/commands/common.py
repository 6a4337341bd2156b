"""The one place user errors become exit codes, the end-of-stage table, and a sampling stage's run."""

from __future__ import annotations

import contextlib
import sys

import typer

from pope_cli.shared.errors import PopeError


def fail(error: PopeError) -> typer.Exit:
    """Print a user error as one line on stderr and return the Exit to raise."""
    print(f"error: {error}", file=sys.stderr)
    return typer.Exit(code=error.exit_code)


@contextlib.contextmanager
def user_errors():
    """Turn a PopeError into one stderr line and its exit code, and Ctrl-C into a resume hint.

    Every stage writes each finished record before taking the next, so an interrupted run has
    lost at most the work in flight and the same command picks up where it stopped.
    """
    try:
        yield
    except PopeError as error:
        raise fail(error) from None
    except KeyboardInterrupt as interrupt:
        hint = getattr(interrupt, "hint", "finished work is saved; rerun the same command to resume")
        print(f"interrupted: {hint}", file=sys.stderr)
        raise typer.Exit(code=130) from None


def written(out: str, *names: str) -> str:
    """The files a stage wrote in its output directory, as a summary lists them (`--out run/` too)."""
    from pathlib import Path

    return ", ".join(str(Path(out) / name) for name in names)


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    """The end-of-stage summary: a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for name, value in rows:
        table.add_row(name, "-" if value is None else str(value))
    Console().print(table)


def run_sampling_stage(name: str, cfg, run):
    """`run(cfg, make_engine, make_scorer, progress)` of a stage that samples problems in rounds
    (filter-hard, make-solutions): the model checked, the workers planned (and said), a progress line."""
    from pope_cli.shared.models import check_model_ref
    from pope_cli.shared.runtime import engine_factory, notice, progress_reporter, scorer_factory
    from pope_cli.shared.workers.factory import plan_workers

    check_model_ref(cfg.model.model)
    plan = plan_workers(cfg.model, cfg.parallel)
    if plan is not None:
        print(f"{name}: {plan.describe()}", file=sys.stderr)
    with progress_reporter(name, total=0) as progress:
        return run(cfg, engine_factory(cfg.model, plan, cfg.api), scorer_factory(cfg.reward), progress, notice)
