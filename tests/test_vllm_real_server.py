"""make-solutions and filter-hard against vLLM's own OpenAI-compatible server (its CPU build), the
shipped toy model in fp32: two servers for the whole module (`tests/vllm_server.py`), started
together and stopped at the end.

The one-server runs are the references. The same runs over both servers, one of them killed
part-way, must write the same files: every request carries its seed, so which server answered is
not in the output. The chat route goes to the server's /v1/chat/completions, where vLLM applies
the toy model's chat template, the template the completions route applies here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from processes import lines_in, started_until
from vllm_real import REPO, REWARD, UNGUIDED, environment, pope, read_jsonl, require_vllm
from vllm_server import SERVED, TOY_MODEL, VllmServer

require_vllm()
pytestmark = pytest.mark.real_vllm

SOLUTIONS = ("", ".stats.jsonl", ".unsolved.jsonl")
FILTER = ("stats.jsonl", "samples.jsonl", "hard.jsonl", "easy.jsonl")


class Fleet:
    """Two vLLM servers; the second is the one the tests kill, and another one can start in its place."""

    def __init__(self, root: Path):
        self.root = root
        self.started = 0
        self.servers = [self._start(), self._start()]

    @property
    def first(self) -> str:
        return self.servers[0].wait().url

    def alive(self) -> list[str]:
        """Both servers' URLs once they answer (a killed one started again)."""
        for i, server in enumerate(self.servers):
            if server.proc.poll() is not None:
                self.servers[i] = self._start()
        return [server.wait().url for server in self.servers]

    def kill_second(self, replace: bool) -> None:
        """SIGKILL the second server; with `replace`, start another at once, to come up while the next runs go on."""
        self.servers[1].kill()
        if replace:
            self.servers[1] = self._start()

    def _start(self) -> VllmServer:
        self.started += 1
        return VllmServer(self.root / f"vllm-{self.started}.log")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = Fleet(tmp_path_factory.mktemp("servers"))
    try:
        yield fleet
    finally:
        for server in fleet.servers:
            server.stop()


@pytest.fixture(scope="module")
def easy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    pope("toy", "make-data", "--out", str(root / "toy"), "--n-easy", "12", "--n-hard", "1", "--n-heldout", "1")
    return root / "toy" / "easy.jsonl"


def served(*urls: str) -> list[str]:
    return ["--model", str(TOY_MODEL), "--backend", "openai", "--api-base", ",".join(urls), "--api-model", SERVED,
            "--max-new-tokens", "64", "--reward", REWARD, "--reward-workers", "1", "--temperature", "1.0"]


def solutions_args(easy: Path, *urls: str) -> list[str]:
    return [str(easy), *served(*urls), "--template", UNGUIDED, "--replace", "--k", "32", "--chunk", "8", "--seed", "3"]


def filter_args(easy: Path, *urls: str) -> list[str]:
    return [str(easy), *served(*urls), "--unguided-template", UNGUIDED, "--k", "16", "--chunk", "8", "--save-samples"]


def counts_of(manifest: Path) -> dict:
    return json.loads(manifest.read_text())["counts"]


@pytest.fixture(scope="module")
def one_server_solutions(fleet, easy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "a.jsonl"
    pope("make-solutions", *solutions_args(easy, fleet.first), "--out", str(out))
    return out


@pytest.fixture(scope="module")
def one_server_filter(fleet, easy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "filter"
    pope("filter-hard", *filter_args(easy, fleet.first), "--out", str(out))
    return out


def with_a_server_killed(fleet: Fleet, command: str, args: list[str], ready,
                         replace: bool) -> subprocess.CompletedProcess:
    """`pope COMMAND ARGS` over both servers; the second one SIGKILLed once `ready()` holds; the run must finish."""
    run = started_until([sys.executable, "-m", "pope_cli.cli", command, *args], ready, timeout=300, cwd=REPO,
                        env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fleet.kill_second(replace)
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-4000:]
    return subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)


def assert_killed_server_taken_out(counts: dict, stderr: str) -> None:
    first, killed = counts["api_servers"]
    assert killed["taken_out"] and killed["failures"] >= 1 and killed["answered"] > 0
    assert not first["taken_out"] and first["failures"] == 0 and first["answered"] > 0
    assert first["answered"] + killed["answered"] == counts["samples"]
    assert f"openai: {killed['url']}: gave up after 2 retries (connection); taken out, 1 of 2 servers left" in stderr


def test_make_solutions_on_a_vllm_server_solves_and_repeats_its_bytes(fleet, easy, one_server_solutions, tmp_path):
    a, b = one_server_solutions, tmp_path / "b.jsonl"
    pope("make-solutions", *solutions_args(easy, fleet.first), "--out", str(b), "--max-concurrency", "3")
    solved, unsolved = read_jsonl(a), read_jsonl(Path(f"{a}.unsolved.jsonl"))
    assert len(solved) + len(unsolved) == 12 and len(solved) >= 6
    for record in solved:
        source = record["solution_source"]
        assert source["teacher"] == SERVED and source["pass_count"] >= 1 and source["samples"] % 8 == 0
        assert record["solution"].strip().endswith("\\boxed{" + record["answer"] + "}")
    # The seed goes with every request: another concurrency gives the same bytes.
    for suffix in SOLUTIONS:
        assert Path(f"{a}{suffix}").read_bytes() == Path(f"{b}{suffix}").read_bytes(), suffix
    counts = counts_of(Path(f"{a}.manifest.json"))
    assert counts["api_retries"] == {} and counts["samples"] < 12 * 32
    assert counts["api_token_counts"] == {"tokenizer": counts["samples"]}


def test_make_solutions_over_two_servers_one_killed_part_way_writes_the_files_of_one(fleet, easy, one_server_solutions,
                                                                                   tmp_path):
    out = tmp_path / "two.jsonl"
    done = with_a_server_killed(fleet, "make-solutions", [*solutions_args(easy, *fleet.alive()), "--out", str(out),
                                                          "--max-retries", "2"],
                                lines_in(Path(f"{out}.stats.jsonl"), 1), replace=True)
    for suffix in SOLUTIONS:
        assert Path(f"{out}{suffix}").read_bytes() == Path(f"{one_server_solutions}{suffix}").read_bytes(), suffix
    assert_killed_server_taken_out(counts_of(Path(f"{out}.manifest.json")), done.stderr)


def test_filter_hard_on_a_vllm_server(one_server_filter):
    stats = read_jsonl(one_server_filter / "stats.jsonl")
    assert len(stats) == 12 and sum(not row["hard"] for row in stats) >= 6


def test_filter_hard_over_two_servers_one_killed_part_way_writes_the_files_of_one(fleet, easy, one_server_filter,
                                                                                tmp_path):
    out = tmp_path / "filter"
    done = with_a_server_killed(fleet, "filter-hard", [*filter_args(easy, *fleet.alive()), "--out", str(out),
                                                       "--max-retries", "2"], lines_in(out / "stats.jsonl", 1),
                                replace=False)
    for name in FILTER:
        assert (out / name).read_bytes() == (one_server_filter / name).read_bytes(), name
    assert_killed_server_taken_out(counts_of(out / "manifest.json"), done.stderr)


def test_the_chat_route_on_vllms_chat_endpoint(fleet, easy, one_server_solutions, tmp_path):
    out = tmp_path / "chat.jsonl"
    pope("make-solutions", *solutions_args(easy, fleet.first), "--api-route", "chat", "--out", str(out))
    counts = counts_of(Path(f"{out}.manifest.json"))
    assert counts["api_retries"] == {} and counts["api_token_counts"] == {"usage": counts["samples"]}
    # The server's template is the one the completions route applies here: the same prompts, seeds and samples.
    chat, completions = read_jsonl(out), read_jsonl(one_server_solutions)
    assert [(r["id"], r["solution"]) for r in chat] == [(r["id"], r["solution"]) for r in completions]
    assert len(chat) >= 6
