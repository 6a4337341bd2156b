"""`--backend openai` against 200s that are not answers (not JSON, no choices, a body cut short, a
choice without text), on both routes: each is retried like a 5xx, reported, counted per cause and
per server, and changes no byte of the output; when the retries run out the run ends in one line,
with nothing half-written, and the same command then finishes it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("openai")

from openai_stub import Stub, StubServer  # noqa: E402
from pope_cli.shared.engines import make_engine, openai_servers  # noqa: E402
from pope_cli.stages.solutions import run_make_solutions  # noqa: E402
from test_make_solutions import EndScorer, read_jsonl  # noqa: E402
from test_openai_backend import KEY, KEY_ENV, REPO, answer, cli_args, config, environment, problems  # noqa: E402

OUTPUTS = ("", ".stats.jsonl", ".unsolved.jsonl")


def solve(cfg) -> dict:
    run_make_solutions(cfg, lambda: make_engine(cfg.model, api=cfg.api), EndScorer)
    return json.loads(Path(f"{cfg.out}.manifest.json").read_text())["counts"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return problems(tmp_path_factory.mktemp("data") / "p.jsonl", 6)


@pytest.fixture(scope="module")
def references(data, tmp_path_factory) -> dict[str, Path]:
    """Fault-free runs of each route: the files every faulty run must equal."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, KEY)
        with StubServer(Stub(answer, key=KEY)) as base_url:
            for route in ("completions", "chat"):
                solve(config(data, root / f"{route}.jsonl", base_url, api_route=route))
    return {route: root / f"{route}.jsonl" for route in ("completions", "chat")}


@pytest.mark.parametrize("route, fault, cause", [
    ("completions", "not-json", "malformed answer (not JSON)"),
    ("completions", "cut-short", "malformed answer (not JSON)"),
    ("completions", "no-choices", "malformed answer (no choices)"),
    ("completions", "no-text", "malformed answer (no text)"),
    ("completions", "cut-body", "connection"),
    ("chat", "not-json", "malformed answer (not JSON)"),
    ("chat", "no-choices", "malformed answer (no choices)"),
    ("chat", "no-text", "malformed answer (no text)"),
])
def test_a_malformed_answer_is_retried_reported_counted_and_changes_nothing(route, fault, cause, data, references,
                                                                         tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setattr(openai_servers, "BACKOFF_FIRST", 0.01)
    stub = Stub(answer, faults=[fault, "ok", fault, fault], key=KEY)
    out = tmp_path / "s.jsonl"
    with StubServer(stub) as base_url:
        counts = solve(config(data, out, base_url, api_route=route, max_retries=3, max_concurrency=2))
    reports = re.findall(r"^openai: (.*); retry [123]/3 in 0\.\ds$", capsys.readouterr().err, re.M)
    assert reports == [cause] * 3
    assert counts["api_retries"] == {cause: 3}
    (server,) = counts["api_servers"]
    assert (server["requests"], server["answered"], server["retries"]) == (counts["samples"] + 3, counts["samples"],
                                                                          {cause: 3})
    assert (server["failures"], server["taken_out"]) == (0, False)
    for suffix in OUTPUTS:
        assert Path(f"{out}{suffix}").read_bytes() == Path(f"{references[route]}{suffix}").read_bytes(), suffix


def test_malformed_answers_to_the_end_give_one_line_and_the_same_command_finishes(data, references, tmp_path):
    out = tmp_path / "run" / "solutions.jsonl"
    args = cli_args(data, out, "", "--max-retries", "1", "--max-concurrency", "1", "--batch-size", "1")
    url = args.index("--api-base") + 1
    with StubServer(Stub(answer, faults=["ok"] * 20 + ["no-choices"] * 1000, key=KEY)) as base_url:
        args[url] = base_url
        done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=environment(), timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    *before, last = done.stderr.strip().splitlines()
    assert last == "error: --api-base: gave up after 1 retries (malformed answer (no choices): choices: [])"
    assert all(line.startswith(("openai: malformed answer (no choices); retry 1/1", "make-solutions: "))
               for line in before)
    # Nothing half-written: the stats hold whole rows only, the result files are not there yet.
    decided = read_jsonl(Path(f"{out}.stats.jsonl"))
    assert decided and not out.exists() and not Path(f"{out}.unsolved.jsonl").exists()
    with StubServer(Stub(answer, key=KEY)) as base_url:
        args[url] = base_url
        subprocess.run(args, check=True, capture_output=True, cwd=REPO, env=environment(), timeout=120)
    for suffix in OUTPUTS:
        assert Path(f"{out}{suffix}").read_bytes() == Path(f"{references['completions']}{suffix}").read_bytes(), suffix
