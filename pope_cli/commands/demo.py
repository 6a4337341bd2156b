"""`pope demo`: options → DemoConfig → run_demo, then the comparison table."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from pope_cli.commands.common import SeedOpt, user_errors


def command(
    out: Annotated[str, typer.Option(help="Output directory: every stage's files, results.json, curves.png, logs/.")] = "pope-demo",
    full: Annotated[bool, typer.Option("--full", help="Add GRPO on easy + hard (interference) and POPE with the no-restate template.")] = False,
    seed: SeedOpt = 0,
    model: Annotated[Optional[str], typer.Option(help="Starting model (default: the toy model shipped with pope).")] = None,
    steps: Annotated[int, typer.Option(help="RL steps per training arm.")] = 250,
    prompts_per_step: Annotated[int, typer.Option(help="Prompts per RL step.")] = 16,
    group_size: Annotated[int, typer.Option(help="Completions per prompt.")] = 8,
    lr: Annotated[float, typer.Option(help="Learning rate (full fine-tuning of the toy model).")] = 2e-4,
    n_easy: Annotated[int, typer.Option(help="Easy problems mixed into the filter-hard input.")] = 64,
    n_hard: Annotated[int, typer.Option(help="Hard problems in the training pool before filtering.")] = 192,
    n_heldout: Annotated[int, typer.Option(help="Held-out candidates; filter-hard keeps those the start model never solves.")] = 128,
    k: Annotated[int, typer.Option(help="filter-hard samples per problem, for the pool and the held-out set.")] = 128,
    prefix_n: Annotated[int, typer.Option(help="make-prefixes samples per rung.")] = 16,
    eval_n: Annotated[int, typer.Option(help="Evaluation samples per problem and mode.")] = 32,
    parallel: Annotated[int, typer.Option(help="Commands of one phase (filters, training arms, evaluations) run at once, one CPU thread each.")] = 2,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start again instead of resuming an earlier demo in --out.")] = False,
):
    """Run the four stages on the embedded toy model: plain GRPO vs POPE, evaluated on held-out hard problems."""
    with user_errors():
        from pope_cli.config import DemoConfig
        from pope_cli.demo import run_demo

        cfg = DemoConfig(out=out, model=model, seed=seed, full=full, steps=steps, prompts_per_step=prompts_per_step,
                         group_size=group_size, lr=lr, n_easy=n_easy, n_hard=n_hard, prefix_n=prefix_n, n_heldout=n_heldout, k=k, eval_n=eval_n,
                         parallel=parallel, overwrite=overwrite)
        results = run_demo(cfg)
        print_results(results, cfg)


def print_results(results: dict, cfg) -> None:
    from rich.console import Console
    from rich.table import Table

    ks = [k for k in cfg.eval_k if k != 1]
    hard = results["heldout_filter"]["hard"]
    table = Table(title=f"held-out hard problems ({hard} of {cfg.n_heldout} never solved by the start model in "
                        f"{cfg.k} samples), n={cfg.eval_n} samples each, % correct")
    table.add_column("arm", style="bold", no_wrap=True)
    for mode in ("unguided", "guided"):
        table.add_column(f"{mode}\navg@{cfg.eval_n}", justify="right")
        for k in ks:
            table.add_column(f"{mode}\npass@{k}", justify="right")
    table.add_column("train: hard solved\nunguided (ever)", justify="right")
    table.add_column("train: steps with\nunguided reward", justify="right")
    for arm, modes in results["arms"].items():
        cells = []
        for mode in ("unguided", "guided"):
            metrics = modes.get(mode, {})
            cells += [_pct(metrics.get("avg@n"))] + [_pct(metrics.get(f"pass@{k}")) for k in ks]
        training = results["training"].get(arm, {})
        for fact in ("hard_solved_unguided_ever", "steps_with_unguided_signal"):
            cells.append(str(training[fact]) if fact in training else "-")
        table.add_row(arm, *cells)
    # A log file gets rich's 80 columns, too narrow for the arm names and nine columns of numbers.
    console = Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=130)
    console.print(table)
    console.print(f"wrote {cfg.out}/results.json and {cfg.out}/curves.png in {results['seconds']['total']:.0f} s")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"
