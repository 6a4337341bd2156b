"""The policy update of one step: log-probs of the sampled completions, the loss, the optimizer.

A step's training sequences are split into mini-batches (one optimizer step each) and those
into micro-batches (one forward/backward each, for memory). Each micro-batch loss is taken with
its mini-batch's token and sequence counts, so the accumulated gradient is exactly the
mini-batch gradient whatever the micro-batch size.

Old log-probs: with a single optimizer step per batch the policy that sampled is the policy
being differentiated, so the ratio is exactly 1 and `old_logp = logp.detach()` costs nothing.
Only with several optimizer steps per batch (`updates_per_step` > 1 or several mini-batches)
are the log-probs computed once, before the first update, by a no-grad forward. An oracle row
(`--oracle-rollouts`) has old log-probs 0 in every update: its behaviour probability is taken as
1 (loss.py), and it stays out of the rollout correction, which measures the sampler.

On N ranks every rank holds the whole step's samples and walks the same mini-batches; each
rank takes every N-th sequence of a mini-batch. The loss denominators (tokens, sequences) are
the whole mini-batch's, and DDP and FSDP2 average gradients over ranks, so each rank's loss is
multiplied by N: the reduced gradient is then the one-process mini-batch gradient.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch

from pope_cli.shared.distributed import SOLO, Ranks
from pope_cli.shared.seeding import derive_seed
from pope_cli.stages.train.batch import Batch, Sample, collate
from pope_cli.stages.train.logprobs import completion_logprobs
from pope_cli.stages.train.loss import LossSettings, policy_loss, rollout_weights
from pope_cli.stages.train.parallel import accumulating, grad_norm


@dataclass(frozen=True)
class UpdateSettings:
    loss: LossSettings
    temperature: float
    updates_per_step: int = 1
    mini_batch_size: int | None = None
    """Sequences per optimizer step; None = the whole batch."""
    micro_batch_size: int = 8
    max_grad_norm: float = 1.0
    autocast_dtype: torch.dtype | None = None
    """bf16 compute on GPU; None computes in the weights' dtype."""
    logprob_chunk: int = 0
    """Positions whose logits exist at once (logprobs.py); 0 builds them all."""
    rollout_is: str = "none"
    """The rollout correction (loss.rollout_weights), resolved: never `auto`."""
    rollout_is_cap: float = 2.0
    rollout_is_min: float = 0.5


def sequence_logprobs(model, batch: Batch, temperature: float, entropy_grad: bool = False,
                      autocast_dtype: torch.dtype | None = None, chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies (B, C) at the completion columns of `batch`.

    Position ids count real tokens only, as `generate` does for left-padded prompts, so a
    completion is scored at the positions it was sampled at. Only the C + 1 positions that
    predict completion tokens go through the LM head (the prompt's logits are never built), and
    with `chunk` > 0 only `chunk` positions' logits at a time (logprobs.py).
    """
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
    device_type = batch.input_ids.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        return completion_logprobs(model, batch.input_ids, batch.attention_mask, position_ids, batch.start,
                                   temperature, entropy_grad, chunk)


def _pad_rows(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width, device=rows[0].device)  # (B, C)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


@torch.no_grad()
def frozen_logprobs(score: Callable[[Batch], torch.Tensor], samples: list[Sample], pad_id: int, device,
                    micro_batch_size: int, ranks: Ranks = SOLO) -> list[torch.Tensor]:
    """Per-sample log-probs (one 1-D tensor per completion) under a model that won't change;
    each rank scores its share and the ranks exchange them."""
    mine: dict[int, torch.Tensor] = {}
    for part in ranks.micro_batches(by_length(samples, list(range(len(samples)))), micro_batch_size):
        # An idle rank still scores a sequence: a sharded model's forward is a collective.
        logp = score(collate([samples[i] for i in part or [0]], pad_id).to(device))  # (B, C)
        mine.update({i: logp[k, :len(samples[i].completion)].float() for k, i in enumerate(part)})
    if ranks.world > 1:
        parts = ranks.gather({i: logp.cpu() for i, logp in mine.items()})
        mine = {i: logp.to(device) for part in parts for i, logp in part.items()}
    return [mine[i] for i in range(len(samples))]


class Accumulator:
    """Sums of the per-token metrics over every micro-batch of the step."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.maxes: dict[str, float] = {}
        """Keys ending in `_max` keep their largest value instead of a sum."""

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            if key.endswith("_max"):
                self.maxes[key] = max(self.maxes.get(key, float(value)), float(value))
            else:
                self.sums[key] = self.sums.get(key, 0.0) + float(value)

    def total(self, ranks: Ranks) -> "Accumulator":
        """The sums (and maxima) over all ranks."""
        merged = Accumulator()
        merged.sums = ranks.sum(self.sums)
        for part in ranks.gather(self.maxes):
            merged.add(part)
        return merged

    def fraction(self, key: str, of: str) -> float | None:
        return self.sums[key] / self.sums[of] if self.sums.get(of) else None

    def per_token(self, key: str) -> float | None:
        tokens = self.sums.get("tokens", 0.0)
        return self.sums[key] / tokens if tokens and key in self.sums else None


def policy_update(model, optimizer, samples: list[Sample], settings: UpdateSettings, pad_id: int, device,
                  seed: int, reference: Callable[[Batch], torch.Tensor] | None = None, ranks: Ranks = SOLO) -> dict:
    """Train on `samples` (the whole step's, on every rank); returns the step's update metrics.

    `reference` scores a batch under the starting model (needed when kl_coef > 0). A mini-batch
    whose loss or gradient norm is not finite is skipped (gradients dropped, no optimizer step)
    and counted in `nan_skipped`; loss and norm are the whole mini-batch's, so every rank
    decides alike.
    """
    n = len(samples)
    mini = min(settings.mini_batch_size or n, n)
    epochs = settings.updates_per_step

    def score(batch: Batch) -> torch.Tensor:
        return sequence_logprobs(model, batch, settings.temperature, False, settings.autocast_dtype,
                                 settings.logprob_chunk)[0]

    several_steps = epochs * math.ceil(n / mini) > 1
    micro = settings.micro_batch_size
    old = frozen_logprobs(score, samples, pad_id, device, micro, ranks) if several_steps else None
    ref = frozen_logprobs(reference, samples, pad_id, device, micro, ranks) if settings.loss.kl_coef else None
    acc, losses, norms, skipped, tokens = Accumulator(), [], [], 0, 0
    for epoch in range(epochs):
        order = list(range(n))
        if mini < n:
            generator = torch.Generator().manual_seed(derive_seed(seed, "minibatch", epoch))
            order = torch.randperm(n, generator=generator).tolist()
        for first in range(0, n, mini):
            chunk = order[first:first + mini]
            part = _backward(model, samples, chunk, old, ref, settings, pad_id, device, acc, ranks)
            whole = ranks.sum(part)
            loss, tokens = whole["loss"], tokens + int(whole["tokens"])
            norm = grad_norm(model, settings.max_grad_norm)
            if not (math.isfinite(loss) and math.isfinite(norm)):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss)
            norms.append(norm)
    acc = acc.total(ranks)
    return {
        "loss": sum(losses) / len(losses) if losses else None,
        "grad_norm": sum(norms) / len(norms) if norms else None,
        "optimizer_steps": len(losses), "nan_skipped": skipped,
        "entropy": acc.per_token("entropy"), "kl": acc.per_token("kl") if ref is not None else None,
        "clip_fraction": _clip_fraction(acc), "clip_low_fraction": acc.per_token("clipped_low"),
        "clip_high_fraction": acc.per_token("clipped_high"), "ratio_mean": acc.per_token("ratio"),
        "trained_sequences": n, "train_tokens": tokens,
        "train/pad_fraction": _pad_fraction(acc, "cells"),
        "train/pad_fraction_unsorted": _pad_fraction(acc, "cells_unsorted"),
        "mismatch/kl": acc.fraction("mismatch_kl", "mismatch_tokens"),
        "mismatch/ratio_mean": acc.fraction("mismatch_ratio", "mismatch_tokens"),
        "mismatch/ratio_max": acc.maxes.get("mismatch_ratio_max"),
        "mismatch/masked_fraction": acc.fraction("mismatch_masked", "mismatch_tokens"),
        **oracle_metrics(acc),
    }


ORACLE_METRICS = ("oracle/weight_mean", "oracle/weight_max", "oracle/clip_fraction", "oracle/loss_share",
                  "oracle/entropy", "oracle/tokens")


def oracle_metrics(acc: Accumulator) -> dict:
    """The oracle tokens' importance weights (mean, max), the share the clip stopped, their share of
    the surrogate's absolute size, their entropy; None in a step without oracle tokens."""
    if not acc.sums.get("oracle_tokens"):
        return dict.fromkeys(ORACLE_METRICS)
    return {"oracle/weight_mean": acc.fraction("oracle_weight", "oracle_tokens"),
            "oracle/weight_max": acc.maxes.get("oracle_weight_max"),
            "oracle/clip_fraction": acc.fraction("oracle_clipped", "oracle_tokens"),
            "oracle/loss_share": acc.fraction("oracle_loss_abs", "loss_abs"),
            "oracle/entropy": acc.fraction("oracle_entropy", "oracle_tokens"),
            "oracle/tokens": int(acc.sums["oracle_tokens"])}


def _pad_fraction(acc: Accumulator, cells: str) -> float | None:
    """The padding share of the micro-batches' (rows x width) cells."""
    return 1 - acc.sums["real_cells"] / acc.sums[cells] if acc.sums.get(cells) else None


def by_length(samples: list[Sample], indices: list[int]) -> list[int]:
    """`indices` ordered by sequence length (stable), so that micro-batches cut from the order
    hold sequences of similar length and little padding."""
    return sorted(indices, key=lambda i: len(samples[i].prompt) + len(samples[i].completion))


def _cells(samples: list[Sample], parts: list[list[int]]) -> int:
    """Cells of the padded (rows x width) tensors `collate` builds for these micro-batches."""
    return sum(len(part) * (max(len(samples[i].prompt) for i in part) + max(len(samples[i].completion) for i in part))
               for part in parts if part)


def _clip_fraction(acc: Accumulator) -> float | None:
    low, high = acc.per_token("clipped_low"), acc.per_token("clipped_high")
    return None if low is None else low + high


def _backward(model, samples: list[Sample], chunk: list[int], old, ref, settings: UpdateSettings, pad_id: int, device,
              acc: Accumulator, ranks: Ranks) -> dict[str, float]:
    """Accumulate this rank's part of the gradient of one mini-batch (the gradients are reduced
    over ranks in its last backward); returns this rank's part of the loss and its tokens.

    The micro-batches are cut from the mini-batch sorted by length: the gradient is the same sum
    over the same sequences with the mini-batch's denominators, with less padding to compute."""
    num_tokens = sum(len(samples[i].completion) for i in chunk)
    total, processed = 0.0, 0
    parts = ranks.micro_batches(by_length(samples, chunk), settings.micro_batch_size)
    unsorted = ranks.micro_batches(chunk, settings.micro_batch_size)
    acc.add({"cells": _cells(samples, parts), "cells_unsorted": _cells(samples, unsorted),
             "real_cells": sum(len(samples[i].prompt) + len(samples[i].completion) for part in parts for i in part)})
    for k, part in enumerate(parts):
        with accumulating(model) if k < len(parts) - 1 else contextlib.nullcontext():
            if not part:
                _idle_backward(model, samples[chunk[0]], settings, pad_id, device)
                continue
            batch = collate([samples[i] for i in part], pad_id).to(device)
            logp, entropy = sequence_logprobs(model, batch, settings.temperature, settings.loss.entropy_coef != 0,
                                              settings.autocast_dtype, settings.logprob_chunk)  # (B, C), (B, C)
            width = logp.shape[1]
            old_logp = _pad_rows([old[i] for i in part], width) if old is not None else logp.detach()  # (B, C)
            has_oracle = any(samples[i].oracle for i in part)  # asked of the samples: no device sync
            oracle = torch.tensor([samples[i].oracle for i in part], device=logp.device)  # (B,)
            old_logp = torch.where(oracle.unsqueeze(1), 0.0, old_logp)  # (B, C)
            ref_logp = _pad_rows([ref[i] for i in part], width) if ref is not None else None  # (B, C)
            mask = batch.loss_mask[:, batch.start:]  # (B, C)
            weights = _rollout_correction([samples[i] for i in part], old_logp, mask & ~oracle.unsqueeze(1), settings,
                                          acc)
            loss, metrics = policy_loss(logp, old_logp, batch.advantages, mask, settings.loss, ref_logp=ref_logp,
                                        entropy=entropy, num_seqs=len(chunk), num_tokens=num_tokens,
                                        is_weights=weights, oracle=oracle if has_oracle else None)
            (loss * ranks.world).backward()
        acc.add(metrics)
        total += loss.detach().item()
        processed += int(batch.attention_mask.sum())
    return {"loss": total, "tokens": processed}


def _rollout_correction(part: list[Sample], train_logp: torch.Tensor, mask: torch.Tensor, settings: UpdateSettings,
                        acc: Accumulator) -> torch.Tensor | None:
    """The rollout correction's weights (B, C) for a micro-batch, its mismatch sums added to
    `acc`; None when the engine returned no log-probs or the correction is off. The trainer's
    side is the policy that sampled (old log-probs), so the weights do not change between the
    updates of one step. `mask` leaves out the oracle rows, which get weight 1."""
    if any(s.sampler_logprobs is None and not s.oracle for s in part):
        return None
    sampler = _pad_rows([torch.tensor(s.sampler_logprobs if not s.oracle else [0.0] * len(s.completion),
                                      device=train_logp.device) for s in part], train_logp.shape[1])  # (B, C)
    weights, mismatch = rollout_weights(train_logp, sampler, mask, settings.rollout_is, settings.rollout_is_cap,
                                        settings.rollout_is_min)
    acc.add({**mismatch, "mismatch_tokens": mask.sum()})
    return None if settings.rollout_is == "none" else weights


def _idle_backward(model, sample: Sample, settings: UpdateSettings, pad_id: int, device) -> None:
    """A zero-loss forward/backward for a rank with no sequence in this micro-batch: the
    gradient reduction needs every rank."""
    batch = collate([sample], pad_id).to(device)
    logp, _ = sequence_logprobs(model, batch, settings.temperature, False, settings.autocast_dtype,
                                settings.logprob_chunk)
    (logp.sum() * 0.0).backward()


def reference_scorer(model, frozen_copy, settings: UpdateSettings) -> Callable[[Batch], torch.Tensor]:
    """Scores a batch under the starting model: the base with the adapter disabled for a peft
    model (no second copy), else `frozen_copy`, a copy taken before training."""
    def score(batch: Batch) -> torch.Tensor:
        target = frozen_copy if frozen_copy is not None else model
        context = model.disable_adapter() if frozen_copy is None else contextlib.nullcontext()
        with context:
            return sequence_logprobs(target, batch, settings.temperature, False, settings.autocast_dtype,
                                     settings.logprob_chunk)[0]
    return score
