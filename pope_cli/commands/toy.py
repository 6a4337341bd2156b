"""`pope toy`: the embedded testbed's problem sets and its from-scratch pretraining."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from pope_cli.commands.common import SeedOpt, print_table, user_errors
from pope_cli.toy.task import RARE_RATE, STAR_RATE

app = typer.Typer(
    name="toy",
    help="The toy testbed: chain arithmetic mod 10 and a ~1M-parameter model that runs on CPU.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command("make-data", no_args_is_help=True)
def make_data(
    out: Annotated[str, typer.Option(help="Output directory (easy.jsonl, hard_pool.jsonl, heldout.jsonl, mix.jsonl).")],
    seed: SeedOpt = 0,
    n_easy: Annotated[int, typer.Option(help="Easy problems (solved by the shipped model).")] = 64,
    n_hard: Annotated[int, typer.Option(help="Hard problems in the training pool.")] = 256,
    n_heldout: Annotated[int, typer.Option(help="Held-out hard problems for evaluation, disjoint from the pool.")] = 64,
):
    """Write seeded toy problem sets; mix.jsonl is easy + hard pool, shuffled, for filter-hard."""
    with user_errors():
        from pope_cli.config import bad_option
        from pope_cli.toy.task import write_problem_sets

        for option, value in (("--n-easy", n_easy), ("--n-hard", n_hard), ("--n-heldout", n_heldout)):
            if value < 0:
                raise bad_option(option, "must be >= 0")
        counts = write_problem_sets(out, seed, n_easy, n_hard, n_heldout)
        print_table("toy make-data", [(f"{out}/{name}", rows) for name, rows in counts.items()])


@app.command("pretrain", no_args_is_help=True)
def pretrain(
    out: Annotated[str, typer.Option(help="Output model directory (safetensors, config, tokenizer, pretrain.json).")],
    seed: SeedOpt = 0,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 900,
    batch_size: Annotated[int, typer.Option(help="Freshly drawn easy problems per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 1e-3,
    warmup: Annotated[int, typer.Option(help="Linear warmup steps before the cosine decay.")] = 50,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    star_rate: Annotated[float, typer.Option(help="Share of easy problems with one '*' step (by 2 or 3, rarely by 4-9).")] = STAR_RATE,
    rare_rate: Annotated[float, typer.Option(help="Share of those '*' steps by 4-9: how well the model learns the hard '*' table.")] = RARE_RATE,
    copy_rate: Annotated[float, typer.Option(help="Share of restate examples whose given lines hold a '*' by 4-9 (teaches copying them).")] = 0.15,
    chunks: Annotated[int, typer.Option(help="Length-sorted pieces per batch (less padding; gradients accumulate).")] = 4,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 2,
    log_every: Annotated[int, typer.Option(help="Print the mean loss every N steps.")] = 50,
):
    """Pretrain the toy model from scratch on easy problems (unguided and both guided formats)."""
    with user_errors():
        from pope_cli.toy.pretrain import PretrainConfig, pretrain as run_pretrain

        cfg = PretrainConfig(out=out, seed=seed, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                             weight_decay=weight_decay, star_rate=star_rate, rare_rate=rare_rate, copy_rate=copy_rate, chunks=chunks, threads=threads,
                             log_every=log_every)
        summary = run_pretrain(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
        print_table("toy pretrain", [
            ("parameters", summary["params"]), ("final loss", summary["final_loss"]),
            ("time (s)", summary["seconds"]), ("written", out),
        ])
