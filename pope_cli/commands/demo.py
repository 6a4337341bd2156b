"""`pope demo`: the options of DemoConfig → run_demo, then the comparison table."""

from __future__ import annotations

import os
import sys

from pope_cli.commands.common import written
from pope_cli.commands.options import stage_command
from pope_cli.stages.demo import DemoConfig


@stage_command(DemoConfig)
def command(cfg: DemoConfig):
    from pope_cli.stages.demo import run_demo

    if sys.stderr.isatty():  # one live table of the running commands; in a pipe, a plain line per phase
        from pathlib import Path

        from pope_cli.shared.live import LiveView

        with LiveView("pope demo", Path(cfg.out)) as view:
            results = run_demo(cfg, say=view.message, watch=view.show)
    else:
        results = run_demo(cfg)
    print_results(results, cfg)


def print_results(results: dict, cfg) -> None:
    from rich.console import Console
    from rich.table import Table

    ks = [k for k in cfg.eval_k if k != 1]
    heldout = results["heldout_filter"]
    k = 128 if cfg.heldout == "shipped" else cfg.k
    table = Table(title=f"held-out hard problems ({heldout['hard']} of {heldout['problems']} never solved by the start "
                        f"model in {k} samples), n={cfg.eval_n} samples each, % correct")
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
    for arm, modes in results["arms"].items():
        if "guided_own_template" in modes:
            console.print(f"{arm}, guided under its own template: avg@{cfg.eval_n} "
                          f"{_pct(modes['guided_own_template'].get('avg@n'))}")
    console.print(f"wrote {written(cfg.out, 'results.json', 'curves.png', 'report/index.html')} in "
                  f"{results['seconds']['total']:.0f} s")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"
