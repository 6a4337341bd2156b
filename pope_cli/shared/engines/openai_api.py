"""A served model as an engine: OpenAI-compatible servers (vLLM's, SGLang, hosted APIs), one or
several, through the `openai` client library.

Prompts are built here exactly as for a local model, with the tokenizer `--model` names, and sent
by the route `--api-route` picks (`openai_routes`: the templated text to `/v1/completions`, or the
messages to `/v1/chat/completions`). Sample j of a request is its own API request with n = 1 and
`seed = seed + j`, so every sample obeys the engines' seeding rule whatever the chunking, the
concurrency or the server that answers it (`openai_servers`: which server, and the retries).
vLLM honours that seed; a hosted API may not, and then samples are not reproducible (a resume
still never asks again for a problem already decided). The API key is read from the environment
variable `--api-key-env` names and is held by the clients alone.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from pope_cli.shared.engines.base import Completion, Request, Sampling
from pope_cli.shared.engines.openai_routes import ROUTES, Answer
from pope_cli.shared.engines.openai_servers import Server, ServerPool
from pope_cli.shared.errors import PopeError

# The client needs some key; servers started without one (vLLM's default) ignore it.
NO_KEY = "EMPTY"


class OpenAIEngine:
    """Samples from served models; `counts()` says what the requests met, for the manifest."""

    def __init__(self, pool: ServerPool, model_name: str, tokenizer, route: str = "completions"):
        self.pool = pool
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.route = ROUTES[route]
        self.counted_by: Counter = Counter()
        """Samples whose tokens the server's usage counted ("usage"), or --model's tokenizer ("tokenizer")."""
        self._lock = threading.Lock()

    @classmethod
    def from_options(cls, opts, api) -> "OpenAIEngine":
        """The engine for `ModelOptions` + `ApiOptions`: the tokenizer of --model, the servers of --api-base."""
        import openai

        from pope_cli.shared.models import load_tokenizer

        key = os.environ.get(api.api_key_env) or NO_KEY
        servers = [Server(url, openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=api.request_timeout))
                   for url in api.api_base]
        engine = cls(ServerPool(servers, api.max_concurrency, api.max_retries), api.api_model or opts.model,
                     load_tokenizer(opts.model, opts.trust_remote_code), api.api_route)
        engine.check_model()
        return engine

    def check_model(self) -> None:
        """Fail before the run starts when a server is unreachable, refuses the key or lacks the model."""
        for server in self.pool.servers:
            served = [model.id for model in self.pool.call_on(server, lambda client: client.models.list())]
            if self.model_name not in served:
                where = "the server" if len(self.pool.servers) == 1 else f"the server at {server.url}"
                raise PopeError(f"--api-model: {where} serves {', '.join(served) or 'no model'}, not "
                                f"{self.model_name!r}", exit_code=2)

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        if sampling.logprobs:
            raise PopeError("--backend openai: log-probabilities are not available from a served model", exit_code=2)
        payloads = [self.route.payload(r, self.tokenizer) for r in requests]
        work = [(payloads[i], r.seed + j) for i, r in enumerate(requests) for j in range(r.n)]
        threads = ThreadPoolExecutor(self.pool.capacity(), thread_name_prefix="pope-openai")
        try:
            flat = list(threads.map(lambda item: self._sample(item[0], item[1], sampling), work))
        finally:
            # A fatal error stops the requests not yet sent; the ones in flight finish.
            threads.shutdown(wait=True, cancel_futures=True)
        results, offset = [], 0
        for r in requests:
            results.append(flat[offset:offset + r.n])
            offset += r.n
        return results

    def counts(self) -> dict:
        """The retries by cause, each server's requests, answers, retries and failures, and who counted the tokens."""
        return {"api_retries": self.pool.retries(), "api_servers": self.pool.counts(),
                "api_token_counts": dict(sorted(self.counted_by.items()))}

    def _sample(self, payload, seed: int, sampling: Sampling) -> Completion:
        answer: Answer = self.pool.call(
            lambda client: self.route.send(client, self.model_name, payload, seed, sampling))
        with self._lock:
            self.counted_by["usage" if answer.completion_tokens is not None else "tokenizer"] += 1
        if answer.completion_tokens is not None:
            return Completion([], answer.text, answer.finish_reason, token_count=answer.completion_tokens)
        ids = self._ids(answer.text)
        if answer.reasoning:
            tokens = len(self._ids(answer.reasoning)) + len(ids)
            return Completion(ids, answer.text, answer.finish_reason, token_count=tokens)
        return Completion(ids, answer.text, answer.finish_reason)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids) if text else []
