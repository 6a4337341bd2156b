"""A served model as an engine: any OpenAI-compatible completions endpoint (vLLM's server,
SGLang, hosted APIs), through the `openai` client library.

Prompts are built here exactly as for a local model, with the tokenizer `--model` names and its
chat template, and sent as text to `/v1/completions`, not to the chat endpoint: the template is
already applied, and the chat endpoint would apply the server's again. The returned text is
counted in tokens with the same tokenizer. Sample j of a request is its own API request with
n = 1 and `seed = seed + j`, so every sample obeys the engines' seeding rule whatever the
chunking or the concurrency. vLLM honours that seed; a hosted API may not, and then samples are
not reproducible (a resume still never asks again for a problem already decided).

Retries are pope's own (the client's are switched off) so that each is reported as it happens: a
429, a 5xx, a timeout or a dropped connection is retried up to `max_retries` times, after the
server's Retry-After when it sends one, else with exponential backoff. The API key is read from
the environment variable `--api-key-env` names and is held by the client alone.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from pope_cli.shared.engines.base import Completion, Request, Sampling
from pope_cli.shared.errors import PopeError

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# The client needs some key; servers started without one (vLLM's default) ignore it.
NO_KEY = "EMPTY"


_REPORTING = threading.Lock()


def report_to_stderr(line: str) -> None:
    # One locked write of the whole line: print() writes the text and the newline apart, and the
    # request threads' reports then ran together into one garbled line.
    with _REPORTING:
        sys.stderr.write(f"openai: {line}\n")
        sys.stderr.flush()


class OpenAIEngine:
    """Samples from a served model; `retries` counts the retries by cause (429, 5xx, timeout, connection)."""

    def __init__(self, client, model_name: str, tokenizer, max_concurrency: int, max_retries: int,
                 report: Callable[[str], None] = report_to_stderr):
        self.client = client
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.report = report
        self.retries: Counter = Counter()
        self._lock = threading.Lock()

    @classmethod
    def from_options(cls, opts, api) -> "OpenAIEngine":
        """The engine for `ModelOptions` + `ApiOptions`: the tokenizer of --model, the server of --api-base."""
        import openai

        from pope_cli.shared.models import load_tokenizer

        client = openai.OpenAI(base_url=api.api_base, api_key=os.environ.get(api.api_key_env) or NO_KEY,
                               max_retries=0, timeout=api.request_timeout)
        engine = cls(client, api.api_model or opts.model, load_tokenizer(opts.model, opts.trust_remote_code),
                     api.max_concurrency, api.max_retries)
        engine.check_model()
        return engine

    def check_model(self) -> None:
        """Fail before the run starts when the server is unreachable, refuses the key or lacks the model."""
        served = [model.id for model in self._call(self.client.models.list)]
        if self.model_name not in served:
            raise PopeError(f"--api-model: the server serves {', '.join(served) or 'no model'}, not {self.model_name!r}",
                            exit_code=2)

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        if sampling.logprobs:
            raise PopeError("--backend openai: log-probabilities are not available from a served model", exit_code=2)
        prompts = [self.tokenizer.decode(r.prompt_ids, skip_special_tokens=False) for r in requests]
        work = [(prompts[i], r.seed + j) for i, r in enumerate(requests) for j in range(r.n)]
        pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="pope-openai")
        try:
            flat = list(pool.map(lambda item: self._sample(item[0], item[1], sampling), work))
        finally:
            # A fatal error stops the requests not yet sent; the ones in flight finish.
            pool.shutdown(wait=True, cancel_futures=True)
        results, offset = [], 0
        for r in requests:
            results.append(flat[offset:offset + r.n])
            offset += r.n
        return results

    def _sample(self, prompt: str, seed: int, sampling: Sampling) -> Completion:
        response = self._call(lambda: self.client.completions.create(
            model=self.model_name, prompt=prompt, n=1, seed=seed, temperature=sampling.temperature,
            top_p=sampling.top_p, max_tokens=sampling.max_new_tokens))
        choice = response.choices[0]
        text = choice.text or ""
        ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        return Completion(ids, text, "length" if choice.finish_reason == "length" else "stop")

    def _call(self, request: Callable):
        """`request()`, retried on the errors a busy or flaky server gives; others end the run in one line."""
        import openai

        for attempt in range(self.max_retries + 1):
            try:
                return request()
            except (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                    openai.InternalServerError) as error:
                cause, wait = _retry_cause(error), _backoff(error, attempt)
                if attempt == self.max_retries:
                    raise PopeError(f"--api-base: gave up after {self.max_retries} retries ({cause}: {error})") from None
                with self._lock:
                    self.retries[cause] += 1
                self.report(f"{cause}; retry {attempt + 1}/{self.max_retries} in {wait:.1f}s")
                time.sleep(wait)
            except openai.APIStatusError as error:
                hint = " (check --api-key-env)" if error.status_code in (401, 403) else ""
                raise PopeError(f"--api-base: the server refused the request with {error.status_code}{hint}: "
                                f"{_message(error)}") from None


def _retry_cause(error) -> str:
    import openai

    if isinstance(error, openai.APITimeoutError):
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection"
    return "rate limited (429)" if error.status_code == 429 else f"server error ({error.status_code})"


def _backoff(error, attempt: int) -> float:
    """The server's Retry-After (seconds) when it gives one, else 0.5 s doubling per attempt, at most 30 s."""
    response = getattr(error, "response", None)
    header = response.headers.get("retry-after") if response is not None else None
    try:
        return min(max(float(header), 0.0), BACKOFF_MAX)
    except (TypeError, ValueError):
        return min(BACKOFF_FIRST * 2 ** attempt, BACKOFF_MAX)


def _message(error) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if body.get("message"):
            return str(body["message"])
    return str(error).splitlines()[0]
