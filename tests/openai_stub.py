"""A small OpenAI-compatible server for the tests of `--backend openai`: stdlib http.server in a
thread on 127.0.0.1 (an ephemeral port), answering /v1/models, /v1/completions and
/v1/chat/completions from a function of (prompt, seed), logging every request, and giving the
faults a test schedules: 429, 500, an answer slower than the client's timeout, a connection
dropped before any answer, and 200s that are no answer (not JSON, no choices, a body cut short,
a choice without text). It can also die part-way (every later request dropped, the port closed)
and counts the requests it has in flight at once.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

MODEL = "stub-teacher"
MALFORMED = ("not-json", "no-choices", "cut-short", "no-text")
"""The faults that answer 200 with a body that is not an answer."""


@dataclass
class Logged:
    path: str
    body: dict
    authorization: str | None
    answered: str
    """"ok" or the fault given."""


@dataclass
class Stub:
    answer: Callable[[str, int], str | None]
    """The text for (prompt, seed); chat: None gives a message without content."""
    faults: list[str] = field(default_factory=list)
    """Faults for the next completion requests, in order: "429", "500", "timeout", "drop", "cut-body" (a
    Content-Length the body never reaches), or one of MALFORMED."""
    delay: float = 0.0
    slow: float = 2.0
    """Seconds a "timeout" fault waits before answering."""
    key: str | None = None
    """When set, a request without `Authorization: Bearer KEY` gets a 401."""
    reasoning: Callable[[str, int], str] | None = None
    """Chat: the `reasoning_content` of the message, beside the answer."""
    usage: bool = True
    """Chat: whether the answer carries `usage` (completion_tokens: the characters of reasoning and answer)."""
    die_after: int | None = None
    """Completion requests answered before the server dies."""
    log: list[Logged] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    most_in_flight: int = 0
    on_death: Callable[[], None] = lambda: None

    def completions(self) -> list[Logged]:
        return [entry for entry in self.log if entry.path.endswith("/completions")]

    def answered(self) -> int:
        return sum(entry.answered == "ok" for entry in self.completions())

    def next_fault(self) -> str:
        with self.lock:
            if self.die_after is not None and len(self.completions()) >= self.die_after:
                if self.die_after >= 0:
                    self.die_after = -1
                    self.on_death()
                return "dead"
            return self.faults.pop(0) if self.faults else "ok"


def _prompt_of(body: dict) -> str:
    if "messages" in body:
        return "\n".join(message["content"] for message in body["messages"])
    return body["prompt"]


def _handler(stub: Stub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            return None

        def do_GET(self):
            if self._refused({}):
                return None
            stub.log.append(Logged(self.path, {}, self.headers.get("Authorization"), "ok"))
            return self._respond(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "tests"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self._refused(body):
                return None
            fault = stub.next_fault()
            stub.log.append(Logged(self.path, body, self.headers.get("Authorization"), fault))
            if fault in ("dead", "drop"):
                return self._drop()
            if fault in ("429", "500"):
                return self._respond(int(fault), {"error": {"message": f"stub fault {fault}"}}, {"Retry-After": "0"})
            with stub.lock:
                stub.in_flight += 1
                stub.most_in_flight = max(stub.most_in_flight, stub.in_flight)
            try:
                time.sleep(stub.slow if fault == "timeout" else stub.delay)
                payload = self._answer(body)
            finally:
                with stub.lock:
                    stub.in_flight -= 1
            return self._faulty(fault, payload) if fault != "ok" and fault != "timeout" else self._respond(200, payload)

        def _answer(self, body: dict) -> dict:
            prompt, seed = _prompt_of(body), body["seed"]
            text = stub.answer(prompt, seed)
            if "messages" not in body:
                return {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": MODEL,
                        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            reasoning = stub.reasoning(prompt, seed) if stub.reasoning else None
            payload = {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": MODEL,
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text, "reasoning_content": reasoning}}]}
            if stub.usage:
                tokens = len(text or "") + len(reasoning or "")
                payload["usage"] = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
            return payload

        def _faulty(self, fault: str, payload: dict):
            if fault == "not-json":
                return self._send(200, b"<html><body>502 Bad Gateway</body></html>", {"Content-Type": "text/html"})
            if fault == "no-choices":
                return self._respond(200, {**payload, "choices": []})
            if fault == "no-text":
                choice = {key: value for key, value in payload["choices"][0].items() if key not in ("text", "message")}
                return self._respond(200, {**payload, "choices": [choice]})
            data = json.dumps(payload).encode()
            if fault == "cut-short":
                return self._send(200, data[:len(data) // 2])
            assert fault == "cut-body", fault
            self._send(200, data[:len(data) // 2], {"Content-Length": str(len(data))})
            return self._drop()

        def _drop(self):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None

        def _refused(self, body: dict) -> bool:
            authorization = self.headers.get("Authorization")
            if stub.key is None or authorization == f"Bearer {stub.key}":
                return False
            stub.log.append(Logged(self.path, body, authorization, "401"))
            self._respond(401, {"error": {"message": "invalid api key", "type": "auth"}})
            return True

        def _respond(self, status: int, payload: dict, headers: dict | None = None):
            return self._send(status, json.dumps(payload).encode(), headers)

        def _send(self, status: int, data: bytes, headers: dict | None = None):
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            try:
                self.wfile.write(data)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on a slow answer

    return Handler


class StubServer:
    """`with StubServer(stub) as base_url:` serves `stub` until the block ends (or the stub dies)."""

    def __init__(self, stub: Stub):
        self.stub = stub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        stub.on_death = lambda: threading.Thread(target=self._close, daemon=True).start()

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc):
        self._close()
        self.thread.join()

    def _close(self):
        # The port closes: new connections are refused; the open ones are dropped by next_fault.
        self.server.shutdown()
        self.server.server_close()
