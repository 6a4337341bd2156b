"""`--backend openai` over several servers (`--api-base URL1,URL2,...` or a file of them): requests
spread least in-flight first within each server's --max-concurrency, a server that dies part-way
taken out and its requests answered by the others, a slow one given fewer; N servers write the
bytes of one, and the manifest counts each server's requests, retries and failures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("openai")

from openai_stub import Stub, StubServer  # noqa: E402
from pope_cli.shared.config import ApiOptions, api_bases  # noqa: E402
from pope_cli.shared.engines import make_engine, openai_servers  # noqa: E402
from pope_cli.shared.errors import PopeError  # noqa: E402
from pope_cli.stages.solutions import run_make_solutions  # noqa: E402
from test_make_solutions import EndScorer, read_jsonl  # noqa: E402
from test_openai_backend import KEY, KEY_ENV, answer, config, problems  # noqa: E402

OUTPUTS = ("", ".stats.jsonl", ".unsolved.jsonl")


def solve(cfg) -> dict:
    run_make_solutions(cfg, lambda: make_engine(cfg.model, api=cfg.api), EndScorer)
    return json.loads(Path(f"{cfg.out}.manifest.json").read_text())["counts"]


class Servers:
    """`with Servers(stub, stub, ...) as urls:` one StubServer per stub."""

    def __init__(self, *stubs: Stub):
        self.servers = [StubServer(stub) for stub in stubs]

    def __enter__(self) -> list[str]:
        return [server.__enter__() for server in self.servers]

    def __exit__(self, *exc):
        for server in self.servers:
            server.__exit__(*exc)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return problems(tmp_path_factory.mktemp("data") / "p.jsonl", 9)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """A fault-free run on one server: the files every run on several must equal."""
    out = tmp_path_factory.mktemp("reference") / "s.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, KEY)
        with StubServer(Stub(answer, key=KEY)) as base_url:
            solve(config(data, out, base_url))
    return out


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setattr(openai_servers, "BACKOFF_FIRST", 0.01)


def assert_same_files(out: Path, reference: Path) -> None:
    for suffix in OUTPUTS:
        assert Path(f"{out}{suffix}").read_bytes() == Path(f"{reference}{suffix}").read_bytes(), suffix


def test_three_servers_from_a_file_write_the_bytes_of_one_each_within_its_concurrency(data, reference, tmp_path, quick):
    stubs = [Stub(answer, key=KEY, delay=0.02) for _ in range(3)]
    out = tmp_path / "s.jsonl"
    with Servers(*stubs) as urls:
        listed = tmp_path / "servers.txt"
        listed.write_text(f"# the fleet\n{urls[0]}\n\n{urls[1]}  # second\n{urls[2]}\n")
        counts = solve(config(data, out, str(listed), max_concurrency=2))
    assert_same_files(out, reference)
    assert [stub.most_in_flight for stub in stubs] == [2, 2, 2]
    assert [server["url"] for server in counts["api_servers"]] == urls
    assert [(s["requests"], s["answered"]) for s in counts["api_servers"]] == [(stub.answered(),) * 2 for stub in stubs]
    assert sum(stub.answered() for stub in stubs) == counts["samples"]
    assert all(s["retries"] == {} and s["failures"] == 0 and not s["taken_out"] for s in counts["api_servers"])
    assert counts["api_token_counts"] == {"tokenizer": counts["samples"]}


def test_a_server_that_dies_part_way_is_taken_out_and_the_others_answer_for_it(data, reference, tmp_path, quick, capsys):
    stubs = [Stub(answer, key=KEY, delay=0.01), Stub(answer, key=KEY, delay=0.01, die_after=5),
             Stub(answer, key=KEY, delay=0.01)]
    out = tmp_path / "s.jsonl"
    with Servers(*stubs) as urls:
        counts = solve(config(data, out, ",".join(urls), max_concurrency=2, max_retries=2))
    assert_same_files(out, reference)
    assert stubs[1].answered() == 5 and stubs[0].answered() + stubs[2].answered() == counts["samples"] - 5
    dead = counts["api_servers"][1]
    assert dead["taken_out"] and dead["answered"] == 5 and 1 <= dead["failures"] <= 2
    # Each of the (at most 2) requests in flight there retried until the first one gave up.
    assert set(dead["retries"]) == {"connection"} and 2 <= dead["retries"]["connection"] <= 4
    assert not counts["api_servers"][0]["taken_out"] and not counts["api_servers"][2]["taken_out"]
    err = capsys.readouterr().err
    assert re.findall(r"^openai: (.*); taken out, (.*)$", err, re.M) == [
        (f"{urls[1]}: gave up after 2 retries (connection)", "2 of 3 servers left")]
    port = urls[1].split(":")[2].split("/")[0]
    assert re.search(rf"^openai: 127\.0\.0\.1:{port}: connection; retry 1/2 in 0\.0s$", err, re.M)


def test_a_slow_server_is_given_fewer_requests_and_changes_nothing(data, reference, tmp_path, quick):
    slow, fast = Stub(answer, key=KEY, delay=0.25), Stub(answer, key=KEY)
    out = tmp_path / "s.jsonl"
    with Servers(slow, fast) as urls:
        counts = solve(config(data, out, ",".join(urls), max_concurrency=2))
    assert_same_files(out, reference)
    assert fast.answered() > 2 * slow.answered() > 0
    assert [s["answered"] for s in counts["api_servers"]] == [slow.answered(), fast.answered()]


def test_when_no_server_is_left_the_run_ends_in_one_line_and_resumes(data, reference, tmp_path, quick):
    out = tmp_path / "s.jsonl"
    with Servers(Stub(answer, key=KEY, die_after=14), Stub(answer, key=KEY, die_after=14)) as urls:
        with pytest.raises(PopeError, match=r"^--api-base: every server was taken out; the last: "
                                            r"http://127\.0\.0\.1:\d+/v1 gave up after 1 retries \(connection: "
                                            r"Connection error\.\)$"):
            solve(config(data, out, ",".join(urls), max_concurrency=1, max_retries=1))
    # The first round (27 samples) was answered before the second found no server.
    assert len(read_jsonl(Path(f"{out}.stats.jsonl"))) >= 1 and not out.exists()
    with StubServer(Stub(answer, key=KEY)) as base_url:
        solve(config(data, out, base_url))
    assert_same_files(out, reference)


def test_the_rounds_fill_every_server():
    opts = ApiOptions(api_base="http://a:1/v1,http://b:2/v1,http://c:3/v1", max_concurrency=8)
    from pope_cli.shared.config import ModelOptions

    assert opts.rows_per_round(ModelOptions("m", backend="openai", batch_size=4)) == 24


@pytest.mark.parametrize("text, message", [
    ("http://a:1/v1,ftp://b/v1", "--api-base: 'ftp://b/v1' is not an http:// or https:// URL"),
    ("http://a:1/v1, http://a:1/v1/", "--api-base: http://a:1/v1/ is listed twice"),
    ("missing.txt", "--api-base: missing.txt: no readable file of URLs (give http(s):// URLs separated by commas, "
                    "or a file of them, one a line)"),
    ("@listed", "--api-base: {listed}:2: '127.0.0.1:8000/v1' is not an http:// or https:// URL"),
    ("@empty", "--api-base: {empty}: the file lists no URL"),
])
def test_a_bad_server_list_fails_in_one_line_naming_it(text, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "listed").write_text("http://127.0.0.1:8001/v1\n127.0.0.1:8000/v1\n")
    (tmp_path / "empty").write_text("# none yet\n\n")
    with pytest.raises(PopeError, match=f"^{re.escape(message.format(listed='listed', empty='empty'))}$"):
        api_bases(text.lstrip("@"))


def test_server_lists_from_the_command_line_a_config_file_and_code_agree(tmp_path):
    listed = tmp_path / "servers"
    listed.write_text("https://a.example/v1\nhttp://b:2/v1 # b\n")
    urls = ["https://a.example/v1", "http://b:2/v1"]
    assert api_bases("https://a.example/v1, http://b:2/v1") == api_bases(str(listed)) == api_bases(urls) == urls
    assert api_bases(None) is None and api_bases("") is None
