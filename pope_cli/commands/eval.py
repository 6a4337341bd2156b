"""`pope eval`: the options of EvalConfig → run_eval, then a side-by-side table."""

from __future__ import annotations

import sys

from pope_cli.commands.options import stage_command
from pope_cli.stages.evaluate import EvalConfig


@stage_command(EvalConfig)
def command(cfg: EvalConfig):
    from pope_cli.shared.models import check_model_ref
    from pope_cli.shared.prompts import load_template, load_unguided_template
    from pope_cli.shared.reward.checker import validate_reward_spec
    from pope_cli.shared.runtime import engine_factory, notice, progress_reporter, scorer_factory
    from pope_cli.shared.workers.factory import plan_workers
    from pope_cli.stages.evaluate import run_eval

    validate_reward_spec(cfg.reward.spec)
    for name in cfg.models:
        check_model_ref(name)
    load_unguided_template(cfg.prompt.unguided_template)
    if cfg.template:
        load_template(cfg.template)
    plan = plan_workers(cfg.model, cfg.parallel)
    if plan is not None:
        print(f"eval: {plan.describe()}", file=sys.stderr)
    with progress_reporter("eval", total=0, unit="units", detail=f"a model's {cfg.n} samples of a problem in a mode") \
            as progress:
        summary = run_eval(cfg, lambda opts: engine_factory(opts, plan, cfg.api)(), scorer_factory(cfg.reward), progress,
                           say=notice)
    print_summary(summary)


def print_summary(summary: dict) -> None:
    """Metrics down, one column per (model, mode); a model is named by as much of its path as tells
    it from the others. avg@n is the unbiased pass@1, so pass@1 gets no row of its own."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from pope_cli.stages.report.inputs import labels

    names = dict(zip(summary["models"], labels([Path(model) for model in summary["models"]], "--model")))
    columns = [(names[model], mode, metrics) for model, modes in summary["models"].items()
               for mode, metrics in modes.items()]
    table = Table(title=f"eval (n={summary['n']}, % correct [95% CI])")
    table.add_column("metric", style="bold")
    for model, mode, _ in columns:
        table.add_column(f"{model}\n{mode}", justify="right")
    table.add_row("avg@n = pass@1", *[_cell(metrics, "avg@n") for _, _, metrics in columns])
    for name in [f"pass@{k}" for k in summary["ks"] if k != 1]:
        table.add_row(name, *[_cell(metrics, name) for _, _, metrics in columns])
    for name in ("problems", "unparseable", "truncated"):
        table.add_row(name, *[str(metrics.get(name, "-")) for _, _, metrics in columns])
    Console().print(table)


def _cell(metrics: dict, name: str) -> str:
    value = metrics.get(name)
    if value is None:
        return "-"
    interval = metrics.get("ci95", {}).get(name)
    return f"{100 * value:.2f}" + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")
