"""`pope sft`: supervised fine-tuning of a policy on (unguided prompt → response) examples.

The loss is the mean negative log-likelihood of the response tokens (EOS included) over a
step's `examples_per_step` sequences; the prompt and the padding are never a target, and their
logits are never built. Micro-batches only split the forward/backward: each one's loss is
divided by the whole step's token count, so the gradient does not depend on their size. The
examples are drawn in seeded shuffled epochs, the step's examples being a pure function of
(seed, step), so a resumed run needs no data position. Each row of `metrics.jsonl` holds the
step's loss, token accuracy (argmax = target) and mean token entropy, all measured in the
step's forward before its update.

Why our own loop rather than TRL's SFTTrainer: the policy, optimizer, checkpoint and `final/`
code of `pope train` (`stages/train/policy.py`, `checkpoint.py`) already gives complete-or-absent
checkpoints with every RNG and optimizer state, a SIGKILL-safe resume that reproduces the
uninterrupted run, and a `final/` that `pope train --model` and `pope eval --model` load. Using
it here keeps one resume format and one LoRA/full policy builder for every stage; SFTTrainer
would add a dependency (TRL is not one today) with its own checkpoint layout and resume rules,
for a loop that is a few dozen lines. One process only: no torchrun data parallelism here.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from pope_cli.shared.errors import PopeError
from pope_cli.shared.claim import claim_output
from pope_cli.shared.config import MODEL_RESUME_IGNORED
from pope_cli.shared.outputs import JsonlAppender, atomic_write_json, atomic_write_jsonl, load_jsonl_repairing, manifest
from pope_cli.shared.models import dtype_record
from pope_cli.shared.seeding import derive_seed
from pope_cli.shared.trackers import OUTPUTS as TRACKER_OUTPUTS
from pope_cli.shared.engines.base import Sampling
from pope_cli.stages.sft.completions import PolicyCompletions
from pope_cli.stages.sft.config import SftConfig
from pope_cli.stages.train.batch import Batch, Sample, collate
from pope_cli.stages.train.watch import RunWatch

# Options a rerun may change without changing what the finished steps computed.
RESUME_IGNORED = (*MODEL_RESUME_IGNORED, "overwrite", "steps", "epochs", "save_every", "keep", "reward.workers")


def response_token_stats(model, batch: Batch, autocast_dtype=None) -> dict[str, torch.Tensor]:
    """Per-token NLL (with grad), entropy, argmax hits and mask, each (B, C), at the response columns."""
    width = batch.input_ids.shape[1] - batch.start  # C
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
    device_type = batch.input_ids.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                       logits_to_keep=width + 1, use_cache=False).logits[:, :-1]  # (B, C, V)
    targets = batch.input_ids[:, batch.start:]  # (B, C)
    logp_all = torch.log_softmax(logits.float(), dim=-1)  # (B, C, V)
    nll = -logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, C)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, C)
        hits = (logits.argmax(-1) == targets).float()  # (B, C)
    return {"nll": nll, "entropy": entropy, "hits": hits, "mask": batch.loss_mask[:, batch.start:].float()}


def sft_step(model, optimizer, scheduler, samples: list[Sample], micro_batch_size: int, pad_id: int, device,
             max_grad_norm: float, autocast_dtype=None) -> dict:
    """One optimizer step on `samples`; returns its metrics. A non-finite loss or gradient skips the update."""
    from pope_cli.stages.train.parallel import grad_norm

    tokens = sum(len(s.completion) for s in samples)
    sums = {"nll": 0.0, "entropy": 0.0, "hits": 0.0}
    optimizer.zero_grad(set_to_none=True)
    for start in range(0, len(samples), micro_batch_size):
        stats = response_token_stats(model, collate(samples[start:start + micro_batch_size], pad_id).to(device),
                                     autocast_dtype)
        loss = (stats["nll"] * stats["mask"]).sum() / tokens
        loss.backward()
        for key in sums:
            sums[key] += float((stats[key].detach() * stats["mask"]).sum())
    norm = grad_norm(model, max_grad_norm)
    finite = math.isfinite(norm) and math.isfinite(sums["nll"])
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    lr = scheduler.get_last_lr()[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
        scheduler.step()
    return {"loss": sums["nll"] / tokens if finite else None, "token_accuracy": sums["hits"] / tokens,
            "entropy": sums["entropy"] / tokens, "grad_norm": norm if finite else None, "lr": lr,
            "nan_skipped": int(not finite), "sequences": len(samples), "tokens": tokens}


def step_indices(count: int, per_step: int, seed: int, step: int) -> list[int]:
    """The examples of `step` (0-based): positions step*per_step... of a stream of seeded shuffled epochs."""
    picked, orders = [], {}
    for position in range(step * per_step, (step + 1) * per_step):
        epoch = position // count
        if epoch not in orders:
            orders[epoch] = list(range(count))
            random.Random(derive_seed(seed, "sft-order", epoch)).shuffle(orders[epoch])
        picked.append(orders[epoch][position % count])
    return picked


def total_steps(cfg: SftConfig, count: int) -> int:
    return cfg.steps or max(1, math.ceil(cfg.epochs * count / cfg.examples_per_step))


def build_examples(cfg: SftConfig, make_engine: Callable, make_scorer: Callable, tokenizer) -> tuple[list[dict], dict]:
    from pope_cli.shared.runtime import PromptBuilder
    from pope_cli.stages.sft.data import guided_sample_examples, oracle_examples

    if cfg.source == "oracle":
        examples = oracle_examples(cfg)
        return examples, {"problems": len(examples), "kept": len(examples)}
    engine = make_engine()
    with make_scorer() as scorer:
        return guided_sample_examples(cfg, engine, scorer, PromptBuilder(tokenizer, cfg.prompt, cfg.template))


def encode_examples(examples: list[dict], tokenizer, prompt_opts) -> list[Sample]:
    """Unguided prompt ids → response ids + EOS, for every example."""
    from pope_cli.shared.runtime import PromptBuilder

    prompts = PromptBuilder(tokenizer, prompt_opts)
    eos = tokenizer.eos_token_id
    return [Sample(prompts.unguided(e), tokenizer(e["response"], add_special_tokens=False).input_ids + [eos], 1.0)
            for e in examples]


def _validate_input(cfg: SftConfig) -> None:
    """Read the input once before anything is written: a bad file must leave no run behind."""
    from pope_cli.shared.data import read_prefix_records
    from pope_cli.shared.runtime import PromptBuilder
    from pope_cli.stages.sft.data import oracle_examples

    prompts = PromptBuilder(None, cfg.prompt, cfg.template)
    if cfg.source == "oracle":
        prompts.check_records(oracle_examples(cfg), cfg.data, "unguided")
    else:
        prompts.check_records(read_prefix_records(cfg.data), cfg.data, "guided", "unguided")


def _prepare(cfg: SftConfig, resuming: bool) -> tuple[Path | None, int, list[dict]]:
    """Where the claimed RUN stands: the checkpoint to resume from, its step, the metric rows up to it."""
    from pope_cli.stages.train.checkpoint import latest_checkpoint

    out = Path(cfg.out)
    checkpoint = latest_checkpoint(out) if resuming else None
    done = json.loads((checkpoint / "state.json").read_text())["step"] if checkpoint else 0
    rows = [row for row in load_jsonl_repairing(out / "metrics.jsonl") if row["step"] <= done] if resuming else []
    return checkpoint, done, rows


def _outputs(out: Path) -> list[Path]:
    return [out / name for name in ("metrics.jsonl", "checkpoints", "final", "sft_data.jsonl", "sft_data.counts.json",
                                    "manifest.json", *TRACKER_OUTPUTS)]


def _examples(cfg: SftConfig, make_engine, make_scorer, tokenizer) -> tuple[list[dict], dict]:
    """The run's examples: built once and kept in RUN/sft_data.jsonl, which a resume reads back."""
    path = Path(cfg.out) / "sft_data.jsonl"
    counts_path = Path(cfg.out) / "sft_data.counts.json"
    if path.exists() and counts_path.exists():
        return [json.loads(line) for line in path.read_text().splitlines()], json.loads(counts_path.read_text())
    examples, counts = build_examples(cfg, make_engine, make_scorer, tokenizer)
    if not examples:
        raise PopeError(f"{cfg.data}: no SFT example: none of the {counts.get('samples', 0)} guided samples was correct "
                        "(raise --n, or check --reward and the prefixes)")
    atomic_write_jsonl(path, examples)
    atomic_write_json(counts_path, counts)
    return examples, counts


def run_sft(cfg: SftConfig, make_engine: Callable, make_scorer: Callable,
            say: Callable[[str], None] = lambda message: None) -> dict:
    """Build the examples (or read them back) and train (or resume) the run in `cfg.out`."""
    from transformers.utils import logging as hf_logging

    from pope_cli.shared.models import load_tokenizer
    from pope_cli.shared.runtime import resolved_autos

    hf_logging.disable_progress_bar()  # checkpoint saves would draw a bar each
    started = time.time()
    _validate_input(cfg)
    out = Path(cfg.out)
    with claim_output(cfg.out, out / "config.json", cfg, _outputs(out), cfg.overwrite, RESUME_IGNORED,
                      resolved_autos(cfg.model)) as claim:
        checkpoint, done, rows = _prepare(cfg, claim.resuming)
        tokenizer = load_tokenizer(cfg.model.model, cfg.model.trust_remote_code)  # checks the model before any write
        claim.started()
        atomic_write_json(out / "config.json", asdict(cfg))
        atomic_write_jsonl(out / "metrics.jsonl", rows)
        return _train(cfg, out, checkpoint, done, rows, tokenizer, make_engine, make_scorer, say, started)


def _train(cfg: SftConfig, out: Path, checkpoint, done: int, rows: list[dict], tokenizer, make_engine, make_scorer,
           say, started: float) -> dict:
    from pope_cli.shared.runtime import say_dtype
    from pope_cli.stages.train.checkpoint import load_training_state, save_checkpoint
    from pope_cli.stages.train.policy import build_policy, make_optimizer, save_final

    examples, counts = _examples(cfg, make_engine, make_scorer, tokenizer)
    steps = total_steps(cfg, len(examples))
    if done >= steps and (out / "final").is_dir():
        return _summary(cfg, rows, counts, steps, done, started)
    torch.manual_seed(cfg.seed)
    policy = build_policy(cfg, checkpoint)
    samples = encode_examples(examples, policy.tokenizer, cfg.prompt)
    optimizer, scheduler = make_optimizer(cfg, policy.model, policy.autocast_dtype is not None)
    if checkpoint:
        load_training_state(checkpoint, policy.model, optimizer, scheduler)
    say_dtype(say, "sft", cfg.model, trains=True)
    say(f"pope sft: {'resuming after step ' + str(done) if done else 'starting'}; {len(samples)} examples "
        f"({cfg.source}), {steps} steps of {cfg.examples_per_step}, {'LoRA' if cfg.lora else 'full'}, lr {cfg.lr:g}")
    with contextlib.ExitStack() as stack:
        metrics_file = stack.enter_context(JsonlAppender(out / "metrics.jsonl"))
        watch = RunWatch(cfg, out, asdict(cfg), done, say)
        stack.callback(watch.close)
        completions = _policy_completions(cfg, policy, examples, samples, make_scorer, stack)
        for step in range(done, steps):
            step_started = time.perf_counter()
            batch = [samples[i] for i in step_indices(len(samples), cfg.examples_per_step, cfg.seed, step)]
            row = {"step": step + 1, "epoch": (step + 1) * cfg.examples_per_step / len(samples),
                   **sft_step(policy.model, optimizer, scheduler, batch, cfg.micro_batch_size, policy.pad_id,
                              policy.device, cfg.max_grad_norm, policy.autocast_dtype),
                   "time/step_s": time.perf_counter() - step_started}
            metrics_file.write([row])
            watch.step(row, completions)
            rows.append(row)
            if (step + 1) % cfg.save_every == 0 or step + 1 == steps:
                save_checkpoint(out, step + 1, policy.model, policy.tokenizer, optimizer, scheduler,
                                {"examples": len(samples)}, cfg.keep)
    save_final(policy, out, merge=False)
    summary = _summary(cfg, rows, counts, steps, done, started)
    atomic_write_json(out / "manifest.json", manifest("sft", asdict(cfg), started, summary, model=cfg.model.model,
                                                      seed=cfg.seed, precision=dtype_record(cfg.model)))
    return summary


def _policy_completions(cfg: SftConfig, policy, examples, samples, make_scorer, stack) -> PolicyCompletions | None:
    """The logged completions' maker, with a scorer that `stack` closes; None without --log-completions."""
    if not cfg.log_completions:
        return None
    from pope_cli.shared.engines.hf import HFEngine

    engine = HFEngine(policy.model, policy.tokenizer, cfg.model.batch_size, policy.autocast_dtype)
    sampling = Sampling(cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_new_tokens)
    return PolicyCompletions(engine, stack.enter_context(make_scorer()), examples, samples, sampling, cfg.seed)


def _summary(cfg: SftConfig, rows: list[dict], counts: dict, steps: int, done: int, started: float) -> dict:
    first, last = (rows[0], rows[-1]) if rows else ({}, {})
    return {"steps": steps, "resumed_from": done, "data": counts, "first_loss": first.get("loss"),
            "last_loss": last.get("loss"), "last_token_accuracy": last.get("token_accuracy"),
            "seconds": round(time.time() - started, 1), "out": cfg.out}
