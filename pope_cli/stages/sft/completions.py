"""`pope sft --log-completions N`: what the policy itself writes as it trains.

SFT samples nothing, so on a logging step the policy answers the unguided prompts of the first N
examples (the same prompts every time, so the rows show one answer changing over the steps),
with the run's sampling options and the seed (seed, "sft-log", step). Each answer is scored by
the run's reward, so the rows say when the model starts solving what it is taught. The rows
have train's completions.jsonl columns (kind "unguided"), so `pope report` shows them alike.
"""

from __future__ import annotations

from pope_cli.shared.engines.base import Request, Sampling
from pope_cli.shared.seeding import derive_seed
from pope_cli.stages.train.batch import Sample
from pope_cli.stages.train.watch import PROMPT_TAIL_CHARS


class PolicyCompletions:
    """The `completions(step, count)` callback of `RunWatch` for an SFT run."""

    def __init__(self, engine, scorer, examples: list[dict], samples: list[Sample], sampling: Sampling, seed: int):
        self.engine, self.scorer, self.sampling, self.seed = engine, scorer, sampling, seed
        self.examples, self.samples = examples, samples

    def __call__(self, step: int, count: int) -> list[dict]:
        picked = range(min(count, len(self.examples)))
        seed = derive_seed(self.seed, "sft-log", step)
        requests = [Request(self.samples[i].prompt, 1, seed + i) for i in picked]
        completions = [group[0] for group in self.engine.generate(requests, self.sampling)]
        records = [{k: self.examples[i][k] for k in ("id", "problem", "answer")} for i in picked]
        rewards = self.scorer.score([c.text for c in completions], records)
        decode = self.engine.tokenizer.decode
        return [{"step": step, "kind": "unguided", "problem_id": record["id"],
                 "prompt_tail": decode(request.prompt_ids)[-PROMPT_TAIL_CHARS:], "completion": completion.text,
                 "reward": float(reward or 0.0), "length": len(completion.token_ids),
                 "truncated": completion.finish_reason == "length"}
                for request, completion, record, reward in zip(requests, completions, records, rewards)]
