"""`pope sft`: the options of SftConfig → run_sft, then a summary table."""

from __future__ import annotations

import sys

from pope_cli.commands.common import print_table, written
from pope_cli.commands.options import stage_command
from pope_cli.stages.sft.config import SftConfig


@stage_command(SftConfig)
def command(cfg: SftConfig):
    from pope_cli.shared.models import check_model_ref
    from pope_cli.shared.prompts import load_template, load_unguided_template
    from pope_cli.shared.reward.checker import validate_reward_spec
    from pope_cli.shared.runtime import engine_factory, scorer_factory
    from pope_cli.stages.sft.trainer import run_sft

    validate_reward_spec(cfg.reward.spec)
    check_model_ref(cfg.model.model)
    load_unguided_template(cfg.prompt.unguided_template)
    if cfg.template:
        load_template(cfg.template)
    summary = run_sft(cfg, engine_factory(cfg.model), scorer_factory(cfg.reward),
                      say=lambda message: print(message, file=sys.stderr, flush=True))
    data = summary["data"]
    kept = f"{data['kept']} examples from {data['problems']} problems"
    if "samples" in data:
        kept += f" ({data['kept']} of {data['samples']} guided samples correct, {data['problems_kept']} problems)"
    print_table("sft", [
        ("data", kept),
        ("steps", f"{summary['steps']} (resumed after {summary['resumed_from']})"),
        ("loss first / last", " / ".join("-" if v is None else f"{v:.4f}" for v in (summary["first_loss"], summary["last_loss"]))),
        ("time (s)", summary["seconds"]),
        ("written", written(cfg.out, "metrics.jsonl", "final")),
    ])
