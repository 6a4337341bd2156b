"""`pope make-prefixes`: the options of PrefixConfig → run_make_prefixes, then a summary table."""

from __future__ import annotations

import sys

from pope_cli.commands.common import print_table
from pope_cli.commands.options import stage_command
from pope_cli.stages.prefixes import PrefixConfig


@stage_command(PrefixConfig)
def command(cfg: PrefixConfig):
    from pope_cli.shared.models import check_model_ref
    from pope_cli.shared.reward.checker import validate_reward_spec
    from pope_cli.shared.runtime import engine_factory, notice, progress_reporter, scorer_factory
    from pope_cli.shared.workers.factory import plan_workers
    from pope_cli.stages.prefixes import run_make_prefixes

    validate_reward_spec(cfg.reward.spec)
    check_model_ref(cfg.model.model)
    plan = plan_workers(cfg.model, cfg.parallel) if cfg.fixed_fraction is None else None
    if plan is not None:
        print(f"make-prefixes: {plan.describe()}", file=sys.stderr)
    with progress_reporter("make-prefixes", total=0) as progress:
        summary = run_make_prefixes(cfg, engine_factory(cfg.model, plan, cfg.api), scorer_factory(cfg.reward), progress,
                                    say=notice)
    print_table("make-prefixes", summary_rows(summary, cfg))


def summary_rows(summary: dict, cfg) -> list[tuple[str, object]]:
    """The table: outcomes, the chosen fractions and their histogram, cost and files."""
    skipped_ids = summary["no_solution_ids"]
    shown = ", ".join(skipped_ids[:5]) + (", …" if len(skipped_ids) > 5 else "")
    rows = [("problems", summary["problems"])]
    if cfg.fixed_fraction is None:
        rows += [("found", summary["found"]), ("not found, kept largest rung", summary["not_found_kept"]),
                 ("not found, dropped", summary["dropped"])]
    else:
        rows += [("fixed fraction", summary["fixed"])]
    no_solution = "no solution, kept without a prefix" if cfg.no_solution == "keep" else "skipped: no solution"
    rows += [(no_solution, f"{len(skipped_ids)} ({shown})" if skipped_ids else 0),
             ("skipped: first unit over the cap", summary["no_rung"]),
             ("prefix fraction", _distribution_text(summary["fraction"]))]
    most = max([b["count"] for b in summary["fraction_histogram"]] + [1])
    rows += [(f"  {100 * b['from']:.0f}–{100 * b['to']:.0f}%", f"{b['count']:>5} {'█' * round(20 * b['count'] / most)}")
             for b in summary["fraction_histogram"]]
    rows += [("samples drawn", summary["samples"]), ("tokens/s (this run)", summary["tokens_per_second"]),
             ("time (s)", summary["seconds"]),
             ("written", f"{cfg.out} ({summary['usable']} with a prefix), {cfg.out}.skipped.jsonl, {cfg.out}.stats.jsonl")]
    return rows


def _distribution_text(fraction: dict | None) -> str | None:
    if fraction is None:
        return None
    return f"mean {fraction['mean']:.3f} · median {fraction['median']:.3f} · min {fraction['min']:.3f} · max {fraction['max']:.3f}"
