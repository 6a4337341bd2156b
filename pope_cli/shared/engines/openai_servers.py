"""The servers a served model's requests go to (`--api-base URL1,URL2,...`), and their retries.

A request goes to the live server with the fewest requests in flight (the first listed on a tie),
never more than `--max-concurrency` at once on one server, and keeps its place there through its
retries, backoff included, so that a failing server does not draw new requests by failing fast.
A 429, a 5xx, a timeout, a dropped connection or a malformed answer (`openai_routes`) is retried on
the same server up to `--max-retries` times, after the server's Retry-After when it sends one, else
with exponential backoff, each retry reported as it happens. A request whose retries run out takes
its server out of the pool and goes to another one; the run ends, in one line, only when no server
is left. Which server answered is not part of the output: every request carries its own seed.

Retries are pope's own (the client's are switched off) so that each is reported and counted, per
server, for the manifest.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from pope_cli.shared.engines.openai_routes import MalformedAnswer
from pope_cli.shared.errors import PopeError

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0

_REPORTING = threading.Lock()


def report_to_stderr(line: str) -> None:
    # One locked write of the whole line: print() writes the text and the newline apart, and the
    # request threads' reports then ran together into one garbled line.
    with _REPORTING:
        sys.stderr.write(f"openai: {line}\n")
        sys.stderr.flush()


@dataclass
class Server:
    """One server and what its requests met; `requests` counts every attempt, retries included."""

    url: str
    client: object
    in_flight: int = 0
    requests: int = 0
    answered: int = 0
    retries: Counter = field(default_factory=Counter)
    failures: int = 0
    """Requests whose retries ran out here."""
    out: bool = False

    def counts(self) -> dict:
        return {"url": self.url, "requests": self.requests, "answered": self.answered,
                "retries": dict(sorted(self.retries.items())), "failures": self.failures, "taken_out": self.out}


class ServerPool:
    def __init__(self, servers: list[Server], max_concurrency: int, max_retries: int,
                 report: Callable[[str], None] = report_to_stderr, sleep: Callable[[float], None] = time.sleep):
        self.servers = servers
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.report = report
        self.sleep = sleep
        self._changed = threading.Condition()
        self._last_failure = ""

    def capacity(self) -> int:
        """Requests the pool may have in flight at once."""
        return self.max_concurrency * len(self.servers)

    def call(self, send: Callable):
        """`send(client)` on the least busy live server, retried there; on another one when its retries run out."""
        while True:
            server = self._acquire()
            try:
                done, result = self._attempts(server, send, counted=True)
            finally:
                self._release(server)
            if done:
                return result

    def call_on(self, server: Server, send: Callable):
        """`send(client)` on this server with its retries, not counted (the checks before a run); one line
        when they run out."""
        done, result = self._attempts(server, send, counted=False)
        if not done:
            raise PopeError(f"--api-base: {self._last_failure}")
        return result

    def retries(self) -> dict:
        """The retries by cause, all servers together."""
        return dict(sorted(sum((server.retries for server in self.servers), Counter()).items()))

    def counts(self) -> list[dict]:
        return [server.counts() for server in self.servers]

    def _acquire(self) -> Server:
        with self._changed:
            while True:
                live = [server for server in self.servers if not server.out]
                if not live:
                    where = "" if len(self.servers) == 1 else "every server was taken out; the last: "
                    raise PopeError(f"--api-base: {where}{self._last_failure}")
                free = [server for server in live if server.in_flight < self.max_concurrency]
                if free:
                    server = min(free, key=lambda candidate: candidate.in_flight)
                    server.in_flight += 1
                    return server
                self._changed.wait()

    def _release(self, server: Server) -> None:
        with self._changed:
            server.in_flight -= 1
            self._changed.notify_all()

    def _attempts(self, server: Server, send: Callable, counted: bool) -> tuple[bool, object]:
        """(True, the answer), or (False, None) once the server is out, by this request's retries or another's."""
        import openai

        attempt = 0
        while not server.out:
            self._count(server, counted, requests=1)
            try:
                result = send(server.client)
            except (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                    openai.InternalServerError, MalformedAnswer) as error:
                cause = _retry_cause(error)
                if attempt == self.max_retries:
                    self._take_out(server, cause, error, counted)
                    break
                wait = _backoff(error, attempt)
                with self._changed:
                    server.retries[cause] += 1
                attempt += 1
                self.report(f"{self._where(server)}{cause}; retry {attempt}/{self.max_retries} in {wait:.1f}s")
                self.sleep(wait)
            except openai.APIStatusError as error:
                hint = " (check --api-key-env)" if error.status_code in (401, 403) else ""
                raise PopeError(f"--api-base: {self._where(server)}the server refused the request with "
                                f"{error.status_code}{hint}: {_message(error)}") from None
            else:
                self._count(server, counted, answered=1)
                return True, result
        return False, None

    def _count(self, server: Server, counted: bool, requests: int = 0, answered: int = 0) -> None:
        if counted:
            with self._changed:
                server.requests += requests
                server.answered += answered

    def _take_out(self, server: Server, cause: str, error: Exception, counted: bool) -> None:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        where = f"{server.url} " if len(self.servers) > 1 else ""
        with self._changed:
            self._last_failure = f"{where}gave up after {self.max_retries} retries ({cause}: {detail})"
            server.failures += counted
            newly_out, server.out = not server.out, True
            left = sum(not other.out for other in self.servers)
            self._changed.notify_all()
        if newly_out and counted and len(self.servers) > 1:
            self.report(f"{server.url}: gave up after {self.max_retries} retries ({cause}); taken out, "
                        f"{left} of {len(self.servers)} servers left")

    def _where(self, server: Server) -> str:
        return f"{urlsplit(server.url).netloc}: " if len(self.servers) > 1 else ""


def _retry_cause(error) -> str:
    import openai

    if isinstance(error, MalformedAnswer):
        return error.cause
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
