"""A small OpenAI-compatible server for the tests of `--backend openai`: stdlib http.server in a
thread on 127.0.0.1 (an ephemeral port), answering /v1/models and /v1/completions from a function
of (prompt, seed), logging every request, and giving the faults a test schedules: 429, 500, a
response slower than the client's timeout, a connection dropped before any response.
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


@dataclass
class Logged:
    path: str
    body: dict
    authorization: str | None
    answered: str
    """"ok" or the fault given."""


@dataclass
class Stub:
    answer: Callable[[str, int], str]
    faults: list[str] = field(default_factory=list)
    """Faults for the next completion requests, in order: "429", "500", "timeout", "drop"."""
    delay: float = 0.0
    slow: float = 2.0
    """Seconds a "timeout" fault waits before answering."""
    key: str | None = None
    """When set, a request without `Authorization: Bearer KEY` gets a 401."""
    log: list[Logged] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def completions(self) -> list[Logged]:
        return [entry for entry in self.log if entry.path.endswith("/completions")]

    def next_fault(self) -> str:
        with self.lock:
            return self.faults.pop(0) if self.faults else "ok"


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
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return None
            if fault in ("429", "500"):
                return self._respond(int(fault), {"error": {"message": f"stub fault {fault}"}}, {"Retry-After": "0"})
            time.sleep(stub.slow if fault == "timeout" else stub.delay)
            text = stub.answer(body["prompt"], body["seed"])
            return self._respond(200, {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": MODEL,
                                       "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        def _refused(self, body: dict) -> bool:
            authorization = self.headers.get("Authorization")
            if stub.key is None or authorization == f"Bearer {stub.key}":
                return False
            stub.log.append(Logged(self.path, body, authorization, "401"))
            self._respond(401, {"error": {"message": "invalid api key", "type": "auth"}})
            return True

        def _respond(self, status: int, payload: dict, headers: dict | None = None):
            data = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on a slow answer

    return Handler


class StubServer:
    """`with StubServer(stub) as base_url:` serves `stub` until the block ends."""

    def __init__(self, stub: Stub):
        self.stub = stub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
