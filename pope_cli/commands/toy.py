"""`pope toy`: the embedded testbed's problem sets and its from-scratch pretraining."""

from __future__ import annotations

import sys

from pope_cli.commands.common import print_table, written
from pope_cli.commands.options import stage_command
from pope_cli.commands.registry import Command, subcommands
from pope_cli.toy.pretrain import PretrainConfig
from pope_cli.toy.task import ProblemSetsConfig

app = subcommands("toy", "The toy testbed: chain arithmetic mod 10 and a ~1M-parameter model that runs on CPU.")


@app.command("make-data", no_args_is_help=True, cls=Command)
@stage_command(ProblemSetsConfig)
def make_data(cfg: ProblemSetsConfig):
    """Write seeded toy problem sets; mix.jsonl is easy + hard pool, shuffled, for filter-hard."""
    from pope_cli.toy.task import write_problem_sets

    counts = write_problem_sets(cfg.out, cfg.seed, cfg.n_easy, cfg.n_hard, cfg.n_heldout, cfg.oracle_style, cfg.overwrite)
    print_table("toy make-data", [(written(cfg.out, name), rows) for name, rows in counts.items()])


@app.command("pretrain", no_args_is_help=True, cls=Command)
@stage_command(PretrainConfig)
def pretrain(cfg: PretrainConfig):
    """Pretrain the toy model from scratch on easy problems (unguided and both guided formats)."""
    from pope_cli.toy.pretrain import pretrain as run_pretrain

    summary = run_pretrain(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    print_table("toy pretrain", [
        ("parameters", summary["params"]), ("final loss", summary["final_loss"]),
        ("time (s)", summary["seconds"]), ("written", cfg.out),
    ])
