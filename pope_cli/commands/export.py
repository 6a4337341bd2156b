"""`pope export`: the options of ExportConfig (around the TrainConfig being exported) → run_export."""

from __future__ import annotations

from pope_cli.commands.common import print_table
from pope_cli.commands.options import stage_command
from pope_cli.stages.export.config import ExportConfig


@stage_command(ExportConfig)
def command(cfg: ExportConfig):
    from pope_cli.shared.models import check_model_loadable
    from pope_cli.shared.prompts import load_template, load_unguided_template
    from pope_cli.shared.reward.checker import validate_reward_spec
    from pope_cli.stages.export.writer import run_export

    validate_reward_spec(cfg.train.reward.spec)
    if cfg.train.model.model:  # else run_verl.sh reads $MODEL; a hub id is fetched where the export runs
        check_model_loadable(cfg.train.model.model, hub=False)
    load_unguided_template(cfg.train.prompt.unguided_template)
    if cfg.train.template:
        load_template(cfg.train.template)
    summary = run_export(cfg)
    rows = [(f"{split} rows ({kind})", count) for split in ("train", "val")
            for kind, count in summary["counts"][split].items()]
    print_table(f"export ({cfg.format})", rows + [("written", f"{summary['out']}: {', '.join(summary['files'])}")])
