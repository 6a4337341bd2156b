"""`pope report`: the options of ReportConfig → run_report, then where the report is."""

from __future__ import annotations

from pope_cli.commands.common import print_table, written
from pope_cli.commands.options import stage_command
from pope_cli.stages.report.config import ReportConfig


@stage_command(ReportConfig)
def command(cfg: ReportConfig):
    from pope_cli.stages.report.writer import run_report

    result = run_report(cfg)
    print_table("report", [
        ("runs", ", ".join(result["runs"]) or "-"),
        ("evaluations", ", ".join(result["evals"]) or "-"),
        ("figures", ", ".join(figure["file"] for figure in result["figures"]) or "-"),
        ("written", written(cfg.out, "index.html", "report.md")),
    ])
