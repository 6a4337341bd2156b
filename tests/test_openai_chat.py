"""`--api-route chat`: the prompt's messages to /v1/chat/completions without the local chat
template, a reasoning model's separate thinking kept out of what is scored and kept, and the
tokens counted by the server's usage where it gives one, else by --model's tokenizer (the
manifest says which)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("openai")

from openai_stub import Stub, StubServer  # noqa: E402
from pope_cli.shared.config import PromptOptions  # noqa: E402
from pope_cli.shared.engines import make_engine  # noqa: E402
from pope_cli.shared.models import load_tokenizer  # noqa: E402
from pope_cli.shared.prompts import DEFAULT_UNGUIDED_TEMPLATE  # noqa: E402
from pope_cli.stages.solutions import run_make_solutions  # noqa: E402
from test_make_solutions import EndScorer, read_jsonl  # noqa: E402
from test_openai_backend import KEY, KEY_ENV, TOY_MODEL, answer, config, problems  # noqa: E402

SYSTEM = "Answer in one line."
THOUGHT = "I think it is \\boxed{7}"


def thinking(prompt: str, seed: int) -> str:
    """Thinking that names the right answer whatever the answer after it says."""
    return THOUGHT


class SeenScorer(EndScorer):
    """EndScorer that keeps every text it was asked to score."""

    def __init__(self):
        self.seen: list[str] = []

    def score(self, completions, records):
        self.seen += completions
        return super().score(completions, records)


def chat_run(data: Path, out: Path, stub: Stub, monkeypatch) -> tuple[dict, SeenScorer]:
    monkeypatch.setenv(KEY_ENV, KEY)
    scorer = SeenScorer()
    with StubServer(stub) as base_url:
        cfg = config(data, out, base_url, api_route="chat")
        cfg.prompt = PromptOptions(system_prompt=SYSTEM)
        run_make_solutions(cfg, lambda: make_engine(cfg.model, api=cfg.api), lambda: scorer)
    return json.loads(Path(f"{out}.manifest.json").read_text())["counts"], scorer


def test_messages_go_without_the_local_template_and_the_thinking_stays_out(tmp_path, monkeypatch):
    data = problems(tmp_path / "p.jsonl", 6)
    stub = Stub(answer, key=KEY, reasoning=thinking)
    counts, scorer = chat_run(data, tmp_path / "s.jsonl", stub, monkeypatch)
    paths = {entry.path for entry in stub.completions()}
    assert paths == {"/v1/chat/completions"}
    first = next(entry.body for entry in stub.completions() if "#0." in entry.body["messages"][1]["content"])
    problem = json.loads(data.read_text().splitlines()[0])["problem"]
    assert first["messages"] == [{"role": "system", "content": SYSTEM},
                                 {"role": "user", "content": DEFAULT_UNGUIDED_TEMPLATE.replace("{problem}", problem)}]
    assert first["max_completion_tokens"] == 32 and first["n"] == 1
    # The thinking names the right answer for every problem: had it been scored, none would be hard.
    assert scorer.seen and not any(THOUGHT in text for text in scorer.seen)
    assert [row["id"] for row in read_jsonl(tmp_path / "s.jsonl.unsolved.jsonl")] == ["p0", "p3"]
    assert {row["solution"] for row in read_jsonl(tmp_path / "s.jsonl")} == {"so \\boxed{7}"}
    # The server's usage counts the thinking too (the stub counts characters).
    stats = read_jsonl(tmp_path / "s.jsonl.stats.jsonl")
    assert sum(row["tokens"] for row in stats) == sum(len(answer(e.body["messages"][1]["content"], e.body["seed"]))
                                                      + len(THOUGHT) for e in stub.completions())
    assert counts["api_token_counts"] == {"usage": counts["samples"]}


def test_without_usage_the_tokens_are_counted_by_the_local_tokenizer(tmp_path, monkeypatch):
    data = problems(tmp_path / "p.jsonl", 3)
    stub = Stub(answer, key=KEY, reasoning=thinking, usage=False)
    counts, _ = chat_run(data, tmp_path / "s.jsonl", stub, monkeypatch)
    tokenizer = load_tokenizer(str(TOY_MODEL), False)

    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    expected = sum(tokens(answer(e.body["messages"][1]["content"], e.body["seed"])) + tokens(THOUGHT)
                   for e in stub.completions())
    assert sum(row["tokens"] for row in read_jsonl(tmp_path / "s.jsonl.stats.jsonl")) == expected
    assert counts["api_token_counts"] == {"tokenizer": counts["samples"]}


def test_a_model_that_spends_its_tokens_thinking_answers_nothing_rather_than_malformed(tmp_path, monkeypatch):
    data = problems(tmp_path / "p.jsonl", 3)
    stub = Stub(lambda prompt, seed: None, key=KEY, reasoning=thinking)
    counts, scorer = chat_run(data, tmp_path / "s.jsonl", stub, monkeypatch)
    assert counts["api_retries"] == {} and counts["unsolved"] == 3 and set(scorer.seen) == {""}
    assert counts["tokens"] == counts["samples"] * len(THOUGHT)
