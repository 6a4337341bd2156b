"""Engines for worker processes in tests: picklable, importable by a spawned child, no model.

`CharEngine` answers like `fakes.ScriptedEngine` (sample j depends on the prompt and seed + j
only) but decodes prompt ids with a plain vocabulary list, so a worker needs neither torch nor
transformers. It can SIGKILL its own process on a chosen problem, once (a marker file records
that it did) or every time, or raise there as a CUDA error would. `EnvEngine` answers with the environment its process saw.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pope_cli.shared.engines.base import Completion, Request, Sampling


def answer_every_third(prompt: str, stream: int) -> str:
    """'easy' problems are solved on every third stream; the others never."""
    if "easy" in prompt and stream % 3 == 0:
        return "\\boxed{7}"
    return "\\boxed{0}" if stream % 2 else "no answer"


class CharEngine:
    def __init__(self, vocab: list[str], delay: float = 0.0, kill_on: str | None = None,
                 kill_marker: str | None = None, raise_on: str | None = None):
        self.vocab = vocab
        self.raise_on = raise_on
        self.index = {token: i for i, token in enumerate(vocab)}
        self.delay = delay
        self.kill_on = kill_on
        self.kill_marker = kill_marker
        self.tokenizer = None

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        time.sleep(self.delay)
        results = []
        for request in requests:
            prompt = "".join(self.vocab[i] for i in request.prompt_ids)
            self._maybe_die(prompt)
            if self.raise_on is not None and self.raise_on in prompt:
                raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
            texts = [answer_every_third(prompt, request.seed + j) for j in range(request.n)]
            ids = [[self.index[c] for c in text][:sampling.max_new_tokens] for text in texts]
            results.append([Completion(i, t, "length" if len(i) >= sampling.max_new_tokens else "stop")
                            for i, t in zip(ids, texts)])
        return results

    def _maybe_die(self, prompt: str) -> None:
        if self.kill_on is None or self.kill_on not in prompt:
            return
        if self.kill_marker is not None:
            marker = Path(self.kill_marker)
            if marker.exists():
                return
            marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def char_engine(vocab: list[str], delay: float = 0.0, kill_on: str | None = None, kill_marker: str | None = None,
                raise_on: str | None = None):
    return CharEngine(vocab, delay, kill_on, kill_marker, raise_on)


class EnvEngine:
    """Each completion's text: the CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS of this process."""

    tokenizer = None

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        seen = f"{os.environ.get('CUDA_VISIBLE_DEVICES')}|{os.environ.get('OMP_NUM_THREADS')}"
        time.sleep(0.2)  # long enough that the other worker takes the next batch
        return [[Completion([], seen, "stop") for _ in range(r.n)] for r in requests]


def env_engine():
    return EnvEngine()
