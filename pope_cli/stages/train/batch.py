"""One step's data: the prompt mix, the rollouts, and the padded tensors the loss sees.

The mix. Each kind of prompt (guided copies of hard problems, unguided copies, easy problems)
comes from its own stream: seeded shuffled epochs over its records, whose whole state is an
(epoch, index) position, so a resumed run draws exactly what an uninterrupted one would. How
many prompts of each kind a step takes is a fixed function of the step number (cumulative
rounding of the target fractions), so the long-run proportions are exact even when a step's
count is not a whole share.

The tensors. A training row is prompt + completion, prompts left-padded and completions
right-padded to a common width, so every row's completion starts at the same column. The loss
mask is True exactly on completion tokens (EOS included): the prompt, the oracle prefix inside
it and the padding are never a target.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from pope_cli.shared.engines.base import Completion, Engine, Request, Sampling
from pope_cli.shared.errors import PopeError
from pope_cli.shared.seeding import derive_seed

KINDS = ("guided", "unguided", "easy")


@dataclass
class Item:
    """One prompt of a step: which kind it is and the record it was built from."""

    kind: str
    record: dict


class Stream:
    """Seeded shuffled epochs over records; the position (epoch, index) is the whole state."""

    def __init__(self, name: str, records: list[dict], seed: int, epoch: int = 0, index: int = 0):
        self.name, self.records, self.seed = name, records, seed
        self.epoch, self.index = epoch, index
        self._order = self._shuffled(epoch)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.records)))
        random.Random(derive_seed(self.seed, "data", self.name, epoch)).shuffle(order)
        return order

    def take(self, count: int) -> list[dict]:
        taken = []
        for _ in range(count):
            if self.index == len(self.records):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            taken.append(self.records[self._order[self.index]])
            self.index += 1
        return taken

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}


def _round(x: float) -> int:
    return math.floor(x + 0.5)


class DataMix:
    """Which prompts each step trains on, for `--mode pope | grpo | guided` and `--easy`, mixed in
    (`easy_fraction` of every step) or first (`curriculum`: steps 0..curriculum-1 all easy, the
    later ones none)."""

    def __init__(self, hard: list[dict], easy: list[dict], mode: str, guided_ratio: float, easy_fraction: float,
                 prompts_per_step: int, seed: int, state: dict | None = None, curriculum: int = 0):
        guided = [r for r in hard if r.get("prefix")]
        if mode in ("pope", "guided") and not guided:
            raise PopeError(f"--mode {mode}: no prefix record has a non-empty prefix", exit_code=2)
        pools = {"guided": guided if mode in ("pope", "guided") else [],
                 "unguided": hard if mode in ("pope", "grpo") else [],
                 "easy": easy if easy_fraction > 0 or curriculum > 0 else []}
        state = state or {}
        self.streams = {kind: Stream(kind, records, seed, **state.get(kind, {}))
                        for kind, records in pools.items() if records}
        self.prompts_per_step = prompts_per_step
        self.easy_fraction = easy_fraction if "easy" in self.streams else 0.0
        self.curriculum = curriculum if "easy" in self.streams else 0
        self.guided_share = guided_ratio / (1 + guided_ratio) if mode == "pope" else float(mode == "guided")

    def _before(self, steps: int) -> dict[str, int]:
        """How many prompts of each kind the first `steps` steps took, in all."""
        total = steps * self.prompts_per_step
        easy = (min(steps, self.curriculum) * self.prompts_per_step if self.curriculum
                else _round(total * self.easy_fraction))
        guided = _round((total - easy) * self.guided_share)
        return {"guided": guided, "unguided": total - easy - guided, "easy": easy}

    def counts(self, step: int) -> dict[str, int]:
        """How many prompts of each kind step `step` (0-based) takes."""
        before, after = self._before(step), self._before(step + 1)
        return {kind: after[kind] - before[kind] for kind in KINDS}

    def draw(self, step: int) -> list[Item]:
        return [Item(kind, record) for kind, count in self.counts(step).items() if count
                for record in self.streams[kind].take(count)]

    def state(self) -> dict:
        return {kind: stream.state() for kind, stream in self.streams.items()}


@dataclass
class Rollout:
    """A step's prompts, their sampled groups and scores; rewards (P, n) as a tensor."""

    items: list[Item]
    prompts: list[list[int]]
    completions: list[list[Completion]]
    rewards: torch.Tensor  # (P, n)
    correct: torch.Tensor  # (P, n) bool
    oracle: torch.Tensor | None = None  # (P, n) bool: the sample is the problem's oracle solution, not the policy's

    def __post_init__(self):
        if self.oracle is None:
            self.oracle = torch.zeros_like(self.correct, dtype=torch.bool)

    def sampled(self, rows: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards and correctness of the policy's own samples in `rows` (all groups by default), flat."""
        rows = list(range(len(self.items))) if rows is None else rows
        own = ~self.oracle[rows]
        return self.rewards[rows][own], self.correct[rows][own]


def rollout(items: list[Item], prompts: list[list[int]], engine: Engine, scorer, sampling: Sampling,
            group_size: int, seed: int, step: int, first: int = 0,
            oracle: list[Completion | None] | None = None, oracle_n: int = 0) -> tuple[Rollout, dict]:
    """Sample `group_size` completions per prompt and score them; returns (rollout, timings).

    Request seeds are a function of (seed, step, prompt index in the step) only, so a resumed
    run samples the same streams, and so do N ranks each given the prompts from index `first`
    on. A reward of None (unparseable) counts as 0. Where `oracle` gives a prompt a completion
    (the problem's oracle solution), the group's last `oracle_n` samples are that completion
    instead of sampled ones, scored by the same scorer.
    """
    oracle = oracle or [None] * len(prompts)
    requests = [Request(p, group_size - oracle_n * (o is not None), derive_seed(seed, "rollout", step, first + i))
                for i, (p, o) in enumerate(zip(prompts, oracle))]
    started = time.perf_counter()
    groups = [group + [o] * oracle_n if o is not None else group
              for group, o in zip(engine.generate(requests, sampling), oracle)]
    generated = time.perf_counter()
    texts = [c.text for group in groups for c in group]
    records = [item.record for item in items for _ in range(group_size)]
    scores = scorer.score(texts, records)
    scored = time.perf_counter()
    flat = torch.tensor([0.0 if s is None else float(s) for s in scores])  # (P·n,)
    hits = torch.tensor([s is not None and s >= 1.0 for s in scores])  # (P·n,)
    shape = (len(items), group_size)
    from_oracle = torch.tensor([[o is not None and j >= group_size - oracle_n for j in range(group_size)]
                                for o in oracle], dtype=torch.bool).view(shape)  # (P, n)
    result = Rollout(items, prompts, groups, flat.view(shape), hits.view(shape), from_oracle)
    return result, {"generate": generated - started, "score": scored - generated}


def joined(parts: list[Rollout]) -> Rollout:
    """The rollouts of consecutive blocks of a step's prompts as one."""
    return Rollout([item for part in parts for item in part.items], [p for part in parts for p in part.prompts],
                   [group for part in parts for group in part.completions],
                   torch.cat([part.rewards for part in parts]), torch.cat([part.correct for part in parts]),
                   torch.cat([part.oracle for part in parts]))


@dataclass
class Sample:
    """One training sequence: a prompt, a completion the policy sampled, its advantage."""

    prompt: list[int]
    completion: list[int]
    advantage: float
    sampler_logprobs: list[float] | None = None
    """The engine's log-prob of each completion token (for the rollout correction), if it gave them."""
    oracle: bool = False
    """The completion is the problem's oracle solution (`--oracle-rollouts`), not a policy sample."""


def training_samples(result: Rollout, advantages: torch.Tensor, trained_groups: torch.Tensor,
                     mask_truncated: bool) -> list[Sample]:
    """The sequences that enter the backward pass: those of `trained_groups` (P,) bool, minus
    completions that hit the length limit when `mask_truncated`, minus empty completions."""
    samples = []
    for g, (prompt, group) in enumerate(zip(result.prompts, result.completions)):
        if not trained_groups[g]:
            continue
        for j, completion in enumerate(group):
            if not completion.token_ids or (mask_truncated and completion.finish_reason == "length"):
                continue
            samples.append(Sample(prompt, list(completion.token_ids), float(advantages[g, j]), completion.logprobs,
                                  bool(result.oracle[g, j])))
    return samples


@dataclass
class Batch:
    """Padded tensors for a list of samples; completions occupy columns `start:`."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    loss_mask: torch.Tensor  # (B, L) bool, True exactly on completion tokens incl. EOS
    advantages: torch.Tensor  # (B,)
    start: int  # first completion column = the prompt width

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device),
                     self.advantages.to(device), self.start)


def collate(samples: list[Sample], pad_id: int) -> Batch:
    prompt_width = max(len(s.prompt) for s in samples)
    width = prompt_width + max(len(s.completion) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)  # (B, L)
    loss_mask = torch.zeros((len(samples), width), dtype=torch.bool)  # (B, L)
    for i, s in enumerate(samples):
        first, end = prompt_width - len(s.prompt), prompt_width + len(s.completion)
        input_ids[i, first:end] = torch.tensor(s.prompt + s.completion)
        attention_mask[i, first:end] = 1
        loss_mask[i, prompt_width:end] = True
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32)  # (B,)
    return Batch(input_ids, attention_mask, loss_mask, advantages, prompt_width)


def rollout_metrics(result: Rollout, has_signal: torch.Tensor) -> tuple[dict, set]:
    """Per-kind reward and signal fractions, lengths, truncation; hard ids solved unguided."""
    by_kind: dict[str, list[int]] = defaultdict(list)
    for g, item in enumerate(result.items):
        by_kind[item.kind].append(g)
    metrics: dict = {}
    for kind in KINDS:
        rows = by_kind.get(kind, [])
        metrics[f"reward/{kind}"] = result.sampled(rows)[0].mean().item() if rows else None
        metrics[f"signal/{kind}"] = has_signal[rows].float().mean().item() if rows else None
        metrics[f"prompts/{kind}"] = len(rows)
    own = [c for group, from_oracle in zip(result.completions, result.oracle.tolist())
           for c, o in zip(group, from_oracle) if not o]
    lengths = [len(c.token_ids) for c in own]
    truncated = [c.finish_reason == "length" for c in own]
    metrics["reward/all"] = result.sampled()[0].mean().item()
    if bool(result.oracle.any()):
        metrics["oracle/groups"] = int(result.oracle.any(dim=1).sum())
        metrics["oracle/reward"] = result.rewards[result.oracle].mean().item()
    metrics["groups_without_signal"] = int((~has_signal).sum())
    metrics["response_length"] = sum(lengths) / len(lengths)
    metrics["response_length_max"] = max(lengths)
    metrics["truncation_rate"] = sum(truncated) / len(truncated)
    metrics["gen_tokens"] = sum(lengths)
    solved = {result.items[g].record["id"] for g in by_kind.get("unguided", []) if bool(result.sampled([g])[1].any())}
    return metrics, solved
