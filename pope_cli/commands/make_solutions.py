"""`pope make-solutions`: the options of SolutionsConfig → run_make_solutions, then a summary table."""

from __future__ import annotations

from pope_cli.commands.common import print_table, run_sampling_stage
from pope_cli.commands.options import stage_command
from pope_cli.stages.solutions import SolutionsConfig


@stage_command(SolutionsConfig)
def command(cfg: SolutionsConfig):
    from pope_cli.shared.prompts import load_unguided_template
    from pope_cli.shared.reward.checker import validate_reward_spec
    from pope_cli.stages.solutions import run_make_solutions

    validate_reward_spec(cfg.reward.spec)
    load_unguided_template(cfg.template)
    if cfg.dry_run:
        print_plan(cfg)
        return
    summary = run_sampling_stage("make-solutions", cfg, run_make_solutions)
    retries = ", ".join(f"{count} {cause}" for cause, count in sorted(summary["api_retries"].items())) or None
    rows = [("records", summary["problems"]), ("kept (had a solution)", summary["kept"]),
            ("solved", summary["solved"]), ("unsolved", summary["unsolved"]),
            ("samples drawn", f"{summary['samples']} of {summary['naive_samples']} at k for every problem"),
            ("tokens generated", summary["tokens"]), ("tokens/s (this run)", summary["tokens_per_second"])]
    if cfg.model.backend == "openai":
        rows.append(("API retries", retries or 0))
    print_table("make-solutions", rows + [
        ("time (s)", summary["seconds"]), ("written", f"{cfg.out}, {cfg.out}.unsolved.jsonl")])


def print_plan(cfg: SolutionsConfig) -> None:
    from pope_cli.stages.filter_plan import plan_make_solutions

    plan = plan_make_solutions(cfg)
    workers = "the servers together" if cfg.model.backend == "openai" else f"per worker x {plan['workers']}"
    speed = f"at {plan['gen_tokens_per_s']:g} tokens/s {workers}" if plan["gen_tokens_per_s"] else \
        "give --gen-tokens-per-s"
    print_table("make-solutions --dry-run (no model loaded)", [
        ("records", plan["records"]), ("kept (had a solution)", plan["kept"]), ("to sample", plan["problems"]),
        ("workers", plan["workers"]),
        (f"samples, worst case (all k = {cfg.k})", plan["worst_samples"]),
        (f"samples, expected ({100 * plan['assume_unsolved']:g}% unsolved)", plan["expected_samples"]),
        ("tokens at --max-new-tokens, worst / expected", f"{plan['worst_tokens']} / {plan['expected_tokens']}"),
        ("hours, worst / expected", f"{plan['worst_hours']} / {plan['expected_hours']} ({speed})"
         if plan["worst_hours"] is not None else speed),
    ])
