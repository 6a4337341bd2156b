"""`pope filter-hard`: the options of FilterHardConfig → run_filter_hard, then a summary table."""

from __future__ import annotations

from pope_cli.commands.common import print_table, run_sampling_stage, written
from pope_cli.commands.options import stage_command
from pope_cli.stages.filter_hard import FilterHardConfig


@stage_command(FilterHardConfig)
def command(cfg: FilterHardConfig):
    from pope_cli.shared.prompts import load_unguided_template
    from pope_cli.shared.reward.checker import validate_reward_spec
    from pope_cli.stages.filter_hard import run_filter_hard

    validate_reward_spec(cfg.reward.spec)
    load_unguided_template(cfg.prompt.unguided_template)
    if cfg.dry_run:
        print_plan(cfg)
        return
    summary = run_sampling_stage("filter-hard", cfg, run_filter_hard)
    print_table("filter-hard", [
        ("problems", summary["problems"]), ("hard", summary["hard"]), ("easy", summary["easy"]),
        ("samples drawn", f"{summary['samples']} of {summary['naive_samples']} a naive filter draws"),
        ("tokens generated", summary["tokens"]), ("tokens/s (this run)", summary["tokens_per_second"]),
        ("time (s)", summary["seconds"]), ("written", written(cfg.out, "hard.jsonl", "easy.jsonl")),
    ])


def print_plan(cfg: FilterHardConfig) -> None:
    from pope_cli.stages.filter_plan import plan_filter_hard

    plan = plan_filter_hard(cfg)
    speed = f"at {plan['gen_tokens_per_s']:g} tokens/s per worker x {plan['workers']}" if plan["gen_tokens_per_s"] else \
        "give --gen-tokens-per-s"
    print_table("filter-hard --dry-run (no model loaded)", [
        ("problems", plan["problems"]), ("workers", plan["workers"]),
        ("samples, worst case (all k)", plan["worst_samples"]),
        (f"samples, expected ({100 * plan['assume_hard']:g}% hard)", plan["expected_samples"]),
        ("tokens at --max-new-tokens, worst / expected", f"{plan['worst_tokens']} / {plan['expected_tokens']}"),
        ("hours, worst / expected", f"{plan['worst_hours']} / {plan['expected_hours']} ({speed})"
         if plan["worst_hours"] is not None else speed),
    ])
