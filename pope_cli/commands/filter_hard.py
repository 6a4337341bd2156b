"""`pope filter-hard`: the options of FilterHardConfig → run_filter_hard, then a summary table."""

from __future__ import annotations

from pope_cli.commands.common import print_table
from pope_cli.commands.options import stage_command
from pope_cli.stages.filter_hard import FilterHardConfig


@stage_command(FilterHardConfig)
def command(cfg: FilterHardConfig):
    """Sample each problem up to k times and keep the ones the model never solves."""
    from pope_cli.shared.models import check_model_ref
    from pope_cli.shared.prompts import load_unguided_template
    from pope_cli.shared.reward.checker import validate_reward_spec
    from pope_cli.shared.runtime import engine_factory, progress_reporter, scorer_factory
    from pope_cli.stages.filter_hard import run_filter_hard

    validate_reward_spec(cfg.reward.spec)
    check_model_ref(cfg.model.model)
    load_unguided_template(cfg.prompt.unguided_template)
    with progress_reporter("filter-hard", total=0) as progress:
        summary = run_filter_hard(cfg, engine_factory(cfg.model), scorer_factory(cfg.reward), progress)
    print_table("filter-hard", [
        ("problems", summary["problems"]), ("hard", summary["hard"]), ("easy", summary["easy"]),
        ("samples drawn", f"{summary['samples']} of {summary['naive_samples']} a naive filter draws"),
        ("tokens generated", summary["tokens"]), ("tokens/s (this run)", summary["tokens_per_second"]),
        ("time (s)", summary["seconds"]), ("written", f"{cfg.out}/hard.jsonl, {cfg.out}/easy.jsonl"),
    ])
