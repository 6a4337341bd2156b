"""Scripted stand-ins for an engine and a scorer, so stage logic is tested with known outcomes.

`ScriptedEngine` answers each sample from a function of (prompt text, sample stream seed), so
its outputs obey the real engines' rule: sample j of a request depends on seed + j only.
"""

from __future__ import annotations

import time
from typing import Callable

from pope_cli.shared.engines.base import Completion, Request, Sampling


class ScriptedEngine:
    def __init__(self, tokenizer, answer: Callable[[str, int], str], delay: float = 0.0):
        self.tokenizer = tokenizer
        self.answer = answer
        self.delay = delay
        self.calls: list[list[Request]] = []

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        self.calls.append(requests)
        time.sleep(self.delay)
        results = []
        for request in requests:
            prompt = self.tokenizer.decode(request.prompt_ids)
            texts = [self.answer(prompt, request.seed + j) for j in range(request.n)]
            ids = [self.tokenizer(t, add_special_tokens=False).input_ids[: sampling.max_new_tokens] for t in texts]
            results.append([Completion(i, t, "length" if len(i) >= sampling.max_new_tokens else "stop") for i, t in zip(ids, texts)])
        return results


class BoxScorer:
    """1.0 when the completion is exactly \\boxed{answer}, None when it has no box, else 0.0."""

    def score(self, completions: list[str], records: list[dict]) -> list[float | None]:
        return [None if "\\boxed{" not in c else float(c == "\\boxed{" + r["answer"] + "}") for c, r in zip(completions, records)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None
