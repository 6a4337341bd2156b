"""Pretraining the toy model from scratch on easy problems, in the three prompt formats.

Each batch is freshly drawn easy problems (seeded stream). Half are unguided; the other half
are guided twins with the first j lines of the solution given (j uniform in 1..n), split
evenly between the two guided templates: after `guided.txt` the target response re-derives the
whole solution (the given lines, then the rest), after `guided-no-restate.txt` it is only the
lines after the given ones. So the model follows either instruction, as an instruct model
would. A share of the restate examples (`copy_rate`) holds a `*` by 4-9 among its given lines,
which only copying gets right: a real LLM copies a partial solution readily, and without these
examples the tiny model re-derives the given lines with its weak `*` table instead. Prompts are
built with the pipeline's own template filling and chat encoding (`pope_cli.shared.prompts`), so
the model sees exactly the prompts the pipeline will send it.

`read_terse` (0 for the shipped model) makes a model that reads a person's style without writing
it: that share of the guided examples that are not copy examples give their lines in the terse
style (two steps a line, the intermediate result left out: `task.solution_lines`), j of them
covering the first min(2j, n) steps, j uniform in 1..ceil(n/2). The restate response copies those
lines as given and goes on one step a line; the no-restate one is only the lines after them. No
response is ever a terse line the model was not shown, so it writes one step a line on its own.

The loss is next-token cross-entropy on response tokens only (the closing `<|end|>` included),
averaged over the batch's response tokens. AdamW with linear warmup, then cosine decay to 0.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from pope_cli.shared.config import bad_option, seed_option
from pope_cli.shared.options import option
from pope_cli.shared.outputs import publish_modes
from pope_cli.toy.task import RARE_RATE, STAR_RATE, make_record, sample_easy, solution_lines

TEMPLATES_DIR = Path(__file__).parent / "templates"


@dataclass
class PretrainConfig:
    """`pope toy pretrain`: the data, optimiser and schedule of the toy model's pretraining."""

    out: str = option(help="Output model directory (safetensors, config, tokenizer, pretrain.json).", metavar="DIR")
    seed: int = seed_option()
    steps: int = option(900, "Optimiser steps.")
    batch_size: int = option(64, "Freshly drawn easy problems per step.")
    lr: float = option(1e-3, "Peak AdamW learning rate.")
    warmup: int = option(50, "Linear warmup steps before the cosine decay.")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    star_rate: float = option(STAR_RATE, "Share of easy problems with one '*' step (by 2 or 3, rarely by 4-9).")
    rare_rate: float = option(RARE_RATE, "Share of those '*' steps by 4-9: how well the model learns the hard '*' table.")
    copy_rate: float = option(0.15, "Share of restate examples whose given lines hold a '*' by 4-9 (teaches copying them).")
    read_terse: float = option(0.0, "Share of the other guided examples whose given lines are terse (two steps a "
                                    "line), the response one step a line: a model that reads a person's style "
                                    "but does not write it.")
    chunks: int = option(4, "Length-sorted pieces per batch (less padding; gradients accumulate).")
    threads: int = option(2, "torch CPU threads.")
    log_every: int = option(50, "Print the mean loss every N steps.")

    def __post_init__(self):
        for flag, value in (("--steps", self.steps), ("--batch-size", self.batch_size),
                            ("--chunks", self.chunks), ("--threads", self.threads)):
            if value < 1:
                raise bad_option(flag, "must be at least 1")
        if self.lr <= 0:
            raise bad_option("--lr", "must be > 0")
        if self.warmup < 0:
            raise bad_option("--warmup", "must be >= 0")
        for flag, value in (("--star-rate", self.star_rate), ("--rare-rate", self.rare_rate),
                            ("--copy-rate", self.copy_rate), ("--read-terse", self.read_terse)):
            if not 0 <= value <= 1:
                raise bad_option(flag, "must be in [0, 1]")


def load_templates() -> dict:
    """The shipped templates, loaded and checked by the pipeline's own loaders."""
    from pope_cli.shared.prompts import load_template, load_unguided_template

    return {
        "unguided": load_unguided_template(str(TEMPLATES_DIR / "unguided.txt")),
        "guided": load_template(str(TEMPLATES_DIR / "guided.txt")),
        "guided-no-restate": load_template(str(TEMPLATES_DIR / "guided-no-restate.txt")),
    }


def training_text(rng: random.Random, templates: dict, cfg: PretrainConfig) -> tuple[str, str]:
    """One (user message, target response) pair: an easy problem in one of the three formats."""
    from pope_cli.shared.prompts import guided_text, unguided_text

    form = rng.choice(["unguided", "unguided", "guided", "guided-no-restate"])
    copy = form == "guided" and rng.random() < cfg.copy_rate
    steps = sample_easy(rng, 1.0, 1.0) if copy else sample_easy(rng, cfg.star_rate, cfg.rare_rate)
    record = make_record("", "toy-easy", *steps)
    lines = record["solution"].split("\n")  # the step lines, then the boxed answer
    if form == "unguided":
        return unguided_text(templates["unguided"], record["problem"]), record["solution"]
    if not copy and cfg.read_terse and rng.random() < cfg.read_terse:
        return terse_given(rng, templates, form, record, *steps)
    # A copy example gives its one `*` by 4-9 among the given lines, so the restated line is
    # right only if copied: without these the model recomputes given lines with its weak table.
    first = 1 + [op for op, _ in steps[1]].index("*") if copy else 1
    given = rng.randint(first, len(lines) - 1)
    prefix = "\n".join(lines[:given])
    if form == "guided":
        return guided_text(templates["guided"], record["problem"], prefix), record["solution"]
    return guided_text(templates[form], record["problem"], prefix), "\n".join(lines[given:])


def terse_given(rng: random.Random, templates: dict, form: str, record: dict, start: int,
                steps: list[tuple[str, int]]) -> tuple[str, str]:
    """A guided example whose given lines are terse and whose response goes on one step a line."""
    from pope_cli.shared.prompts import guided_text

    terse = solution_lines(start, steps, "terse")
    given = rng.randint(1, len(terse))
    covered = min(2 * given, len(steps))
    rest = record["solution"].split("\n")[covered:]  # the record's own steps-style lines, then the answer
    response = terse[:given] + rest if form == "guided" else rest
    return guided_text(templates[form], record["problem"], "\n".join(terse[:given])), "\n".join(response)


def make_batch(rng: random.Random, templates: dict, tokenizer, cfg: PretrainConfig) -> list:
    """The step's examples as length-sorted chunks of (input_ids, attention_mask, labels).

    Each chunk is right-padded to its own longest row, with labels -100 outside responses:
    unguided rows are about half as long as guided ones, so one padded tensor would waste
    nearly half its positions on padding.
    """

    from pope_cli.shared.prompts import encode_prompt

    rows = []
    for _ in range(cfg.batch_size):
        text, response = training_text(rng, templates, cfg)
        prompt = encode_prompt(tokenizer, text)
        target = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt + target, len(prompt)))
    rows.sort(key=lambda row: len(row[0]))
    size = math.ceil(len(rows) / cfg.chunks)
    return [pad_rows(rows[i:i + size], tokenizer.pad_token_id) for i in range(0, len(rows), size)]


def pad_rows(rows: list[tuple[list[int], int]], pad_id: int):
    """(ids, prompt length) rows → input_ids, attention_mask, labels: (B, T) each."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
        mask[i, :len(ids)] = 1
    return input_ids, mask, labels


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_step(model, chunks: list) -> float:
    """Backpropagate the mean cross-entropy over all response tokens of the step's chunks.

    Logits at position t predict the token at t + 1. Returns the loss.
    """
    import torch.nn.functional as F

    total = sum(int((labels[:, 1:] != -100).sum()) for _, _, labels in chunks)
    step_loss = 0.0
    for input_ids, mask, labels in chunks:
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                               ignore_index=-100, reduction="sum") / total
        loss.backward()
        step_loss += loss.item()
    return step_loss


def pretrain(cfg: PretrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train the toy model and save it (weights, config, tokenizer, pretrain.json) in `cfg.out`."""
    import torch
    from transformers import Qwen2ForCausalLM

    from pope_cli.toy.model import toy_config
    from pope_cli.toy.tokenizer import build_tokenizer

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer()
    model = Qwen2ForCausalLM(toy_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup, cfg.steps))
    rng, templates = random.Random(f"toy-pretrain-{cfg.seed}"), load_templates()
    model.train()
    started, recent = time.perf_counter(), []
    for step in range(cfg.steps):
        optimizer.zero_grad(set_to_none=True)
        loss = train_step(model, make_batch(rng, templates, tokenizer, cfg))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        recent.append(loss)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            log(f"step {step + 1}/{cfg.steps}  loss {sum(recent) / len(recent):.4f}  "
                f"{time.perf_counter() - started:.0f}s")
            recent = []
    summary = {"config": asdict(cfg), "params": sum(p.numel() for p in model.parameters()),
               "seconds": round(time.perf_counter() - started, 1), "final_loss": round(loss, 5)}
    save(model, tokenizer, Path(cfg.out), summary)
    return summary


def save(model, tokenizer, out: Path, summary: dict) -> None:
    """A standard HF model directory (safetensors), plus pretrain.json saying how it was made."""
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "pretrain.json").write_text(json.dumps(summary, indent=2) + "\n")
    publish_modes(out)  # safetensors writes its files 0600
