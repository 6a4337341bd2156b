"""`pope report`'s options: which run and eval directories, and where the report goes."""

from __future__ import annotations

from dataclasses import dataclass

from pope_cli.shared.config import bad_option
from pope_cli.shared.options import option


@dataclass
class ReportConfig:
    """`pope report`: figures, report.md and a self-contained index.html from runs and evals."""

    dirs: list[str] = option(help="Run directories (metrics.jsonl, from pope train) and eval directories (summary.json, "
                                  "from pope eval), in any mix; several runs overlay in one figure.",
                             argument=True, metavar="DIR...")
    out: str = option(help="Report directory: one PNG per figure, report.md, index.html, manifest.json.", metavar="DIR")
    completions: int = option(3, "Latest logged completions (RUN/completions.jsonl) shown per run and prompt kind.")
    smooth: int = option(10, "Training curves: moving average over this many steps (1 = the raw values).")

    def __post_init__(self):
        if not self.dirs:
            raise bad_option("DIR", "give at least one run or eval directory")
        if self.completions < 0:
            raise bad_option("--completions", "must be >= 0")
        if self.smooth < 1:
            raise bad_option("--smooth", "must be at least 1")
