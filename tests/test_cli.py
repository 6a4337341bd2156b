"""The command line as a user meets it: fast help, one-line errors, the stages chained on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import default_sigint

TESTS = Path(__file__).parent
COMMANDS = ["filter-hard", "make-prefixes", "eval", "train", "sft", "demo", "toy"]


def pope(*args: str, cwd: Path | None = None, check: bool = False, columns: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    proc = subprocess.run([sys.executable, "-m", "pope_cli.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"pope {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_of_every_command_is_complete():
    # Its speed is structural (the next test: no heavy import), not a wall-clock bound that a busy
    # machine breaks; `pope --help` timings are in the README.
    top = pope("--help", check=True)
    registered = [c for c in COMMANDS if c in top.stdout]
    assert {"filter-hard", "make-prefixes", "eval"} <= set(registered)
    for command in registered:
        proc = pope(command, "--help", check=True)
        assert "Usage" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["filter-hard", "missing.jsonl", "--model", "m/x", "--out", "o"], "missing.jsonl: no such file"),
    (["filter-hard", "p.jsonl", "--model", "m/x", "--out", "o", "--k", "0"], "--k: must be at least 1"),
    (["filter-hard", "p.jsonl", "--model", "./nowhere", "--out", "o"], "--model: ./nowhere: no such directory"),
    (["filter-hard", "p.jsonl", "--model", "m/x", "--out", "o", "--reward", "no_such_module:f"], "--reward"),
    (["eval", "p.jsonl", "--model", "m/x", "--out", "o", "--n", "4", "--k", "8"], "--k: each k must be in [1, n=4]"),
    (["eval", "p.jsonl", "--model", "m/x", "--out", "o", "--mode", "guided"], "--mode guided: needs --prefixes"),
    (["make-prefixes", "p.jsonl", "--model", "m/x", "--out", "o.jsonl", "--max-fraction", "1.5"], "--max-fraction"),
])
def test_user_errors_are_one_line_without_traceback_and_write_nothing(tmp_path, args, message):
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "a", "problem": "p", "answer": "1"}) + "\n")
    proc = pope(*args, cwd=tmp_path)
    assert proc.returncode in (1, 2)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def test_filter_hard_make_prefixes_eval_chain_on_a_tiny_model(tmp_path, tiny_model_dir):
    common_chars = "0123456789abcdefghijklmnopqrstuvwxyz"
    rows = [{"id": f"e{i}", "problem": f"Say {i}.", "answer": common_chars, "solution": f"I say {i}.\nSo {i}.\n\\boxed{{{i}}}"}
            for i in range(3)]
    rows += [{"id": f"h{i}", "problem": f"Say the word {i}.", "answer": "\u00e9\u00e8",
              "solution": f"The word.\nIt is qQ\nthen zZ{i}.\n\\boxed{{qQzZ{i}}}"} for i in range(3)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--model", str(tiny_model_dir), "--reward", "rewards_for_tests:shares_a_character", "--max-new-tokens", "12",
              "--batch-size", "16", "--reward-workers", "1"]
    pope("filter-hard", "p.jsonl", "--k", "16", "--chunk", "8", "--out", "filter", *common, cwd=tmp_path, check=True)
    stats = [json.loads(line) for line in (tmp_path / "filter" / "stats.jsonl").read_text().splitlines()]
    assert [s["id"] for s in stats if s["hard"]] == ["h0", "h1", "h2"]
    assert all(s["samples"] == 16 for s in stats if s["hard"])
    pope("make-prefixes", "filter/hard.jsonl", "--n", "4", "--max-fraction", "0.9", "--out", "prefixes.jsonl", *common,
         cwd=tmp_path, check=True)
    prefixes = [json.loads(line) for line in (tmp_path / "prefixes.jsonl").read_text().splitlines()]
    assert [p["id"] for p in prefixes] == ["h0", "h1", "h2"]
    assert all(p["status"] in ("found", "not_found") and p["prefix"] for p in prefixes)
    proc = pope("eval", "filter/hard.jsonl", "--prefixes", "prefixes.jsonl", "--mode", "unguided,guided", "--n", "4",
                "--k", "1,4", "--out", "eval", *common, cwd=tmp_path, check=True)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    metrics = summary["models"][str(tiny_model_dir)]
    assert metrics["unguided"]["problems"] == 3 and metrics["guided"]["problems"] == 3
    assert metrics["unguided"]["pass@4"] == 0.0
    assert "pass@4" in proc.stdout


def test_ctrl_c_stops_cleanly_with_a_resume_hint(tmp_path):
    import signal

    rows = [{"id": f"p{i}", "problem": f"problem {i}", "answer": "7"} for i in range(50)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from fakes import BoxScorer, ScriptedEngine\n"
        "from conftest import build_char_tokenizer\n"
        "import pope_cli.shared.runtime as runtime\n"
        "engine = ScriptedEngine(build_char_tokenizer(), lambda prompt, stream: 'x', delay=0.2)\n"
        "runtime.engine_factory = lambda opts, plan=None, api=None: (lambda: engine)\n"
        "runtime.scorer_factory = lambda opts: BoxScorer\n"
        "from pope_cli.cli import app\n"
        "app(['filter-hard', 'p.jsonl', '--model', 'm/x', '--out', 'o', '--k', '4', '--batch-size', '4'])\n"
    ) % str(TESTS)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    stats = tmp_path / "o" / "stats.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (stats.exists() and stats.read_text().count("\n") >= 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "rerun the same command to resume" in stderr and "Traceback" not in stderr
    assert stats.read_text().count("\n") >= 2


def test_a_toy_stage_in_a_pipe_says_what_matters_and_draws_no_library_bars(tmp_path):
    """No transformers "Loading weights" bar; a budget longer than the toy's 256 positions is said
    (and each completion stops at the context); a rerun says how much was already done."""
    from pope_cli.toy.task import hard_problems

    toy = TESTS.parent / "pope_cli" / "toy"
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hard_problems(0, 2, 0)[0]))
    args = ("filter-hard", "p.jsonl", "--model", str(toy / "model"), "--unguided-template",
            str(toy / "templates" / "unguided.txt"), "--k", "2", "--chunk", "2", "--max-new-tokens", "300",
            "--reward", "pope_cli.toy.reward:score", "--reward-workers", "1", "--out", "out")
    first = pope(*args, cwd=tmp_path, check=True)
    assert "Loading weights" not in first.stderr and "Traceback" not in first.stderr
    assert (f"filter-hard: --max-new-tokens 300 is not less than the context of {toy / 'model'} (256 positions): "
            "each completion stops at the context, 256 minus its prompt's tokens") in first.stderr.splitlines()
    again = pope(*args, cwd=tmp_path, check=True)
    assert "filter-hard: resuming out: 2 of 2 problems decided already" in again.stderr.splitlines()
