"""`pope train`: the options of TrainConfig and DryRunConfig (and a --config file under them) → run_train."""

from __future__ import annotations

import typer

from pope_cli.commands.common import print_table, written
from pope_cli.commands.options import stage_command
from pope_cli.stages.train.config import DryRunConfig, TrainConfig


@stage_command(TrainConfig, DryRunConfig)
def command(cfg: TrainConfig, dry: DryRunConfig):
    from pope_cli.shared.distributed import main_process
    from pope_cli.shared.models import check_model_ref
    from pope_cli.shared.reward.checker import validate_reward_spec

    validate_reward_spec(cfg.reward.spec)
    check_model_ref(cfg.model.model)
    if dry.enabled:
        from pope_cli.stages.train.dryrun import dry_run

        typer.echo(dry_run(cfg, dry))
        return
    from pope_cli.stages.train.trainer import run_train

    summary = run_train(cfg)
    if not main_process():
        return  # under torchrun, rank 0 reports for all
    print_table("train", [
        ("steps", f"{summary['steps']} ({summary['trained_this_run']} this run, resumed after {summary['resumed_from']})"),
        ("hard problems solved unguided (ever)", summary["solved_unguided_ever"]),
        ("last reward guided / unguided / easy", " / ".join("-" if v is None else f"{v:.3f}" for v in summary["last_reward"].values())),
        ("time (s)", summary["seconds"]),
        ("written", written(cfg.out, "metrics.jsonl", "final")),
    ])
