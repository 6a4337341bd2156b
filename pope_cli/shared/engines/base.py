"""The generation interface every engine implements, and the seeding rule they share.

A request is one prompt (token ids) with `n` samples and a seed. Sample `j` of a request with
seed `s` is drawn from the random stream `s + j` and from nothing else: the same sample comes
out whatever else is in the batch, whatever the batch size, and after a resume. Stages use that
to make a killed-and-rerun job produce exactly the files of an uninterrupted one.

A prompt is token ids; the stages' prompts are `Prompt`s, ids that also keep the chat messages they
were rendered from, for an engine that sends messages rather than ids (a served chat endpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Sampling:
    """How to sample: the options shared by every request of one `generate` call."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    logprobs: bool = False


class Prompt(list):
    """Prompt token ids (a list of ints) and the chat messages (`[{"role", "content"}, ...]`) they
    were rendered from: system prompt and user text, before any chat template."""

    def __init__(self, ids, messages: list[dict]):
        super().__init__(ids)
        self.messages = messages


@dataclass(frozen=True)
class Request:
    """One prompt to sample `n` completions for; sample j uses the random stream `seed + j`."""

    prompt_ids: list[int]
    n: int
    seed: int


@dataclass
class Completion:
    """One sampled completion.

    `token_ids` are the generated tokens, EOS included when the model stopped by itself and
    padding never. `finish_reason` is "stop" (EOS) or "length" (hit max_new_tokens).
    `logprobs` holds, when asked, the log-probability of each generated token under the
    temperature-scaled distribution it was sampled from (before top-p truncation).
    `token_count` is the number of generated tokens where the ids are not known (a served chat
    model's `usage`); `tokens` is that count, else the ids'.
    """

    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float] | None = None
    token_count: int | None = None

    @property
    def tokens(self) -> int:
        return len(self.token_ids) if self.token_count is None else self.token_count


class Engine(Protocol):
    """What the stages need from a generator."""

    tokenizer: object

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        """Return, per request in order, its `n` completions in sample order."""
        ...


def served_counts(engine) -> dict:
    """What a served model's engine counted for the manifest (requests, retries, token counting);
    {} for a local engine, or none."""
    counts = getattr(engine, "counts", None)
    return counts() if counts is not None else {}
