"""make-solutions with a scripted teacher: early stop, --keep, thinking removal, records that come
with a solution, the unsolved side file, resume after SIGKILL, the dry-run plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import read_jsonl, sampling_stage_config
from fakes import ScriptedEngine
from pope_cli.shared.config import ModelOptions
from pope_cli.shared.data import read_problems
from pope_cli.shared.seeding import derive_seed
from pope_cli.stages.solutions import SolutionsConfig, run_make_solutions, strip_thinking

TESTS = Path(__file__).parent
REPO = TESTS.parent
K, CHUNK, SEED = 24, 4, 5


def solves(stream: int) -> bool:
    return stream % 7 == 0 or stream % 11 == 0


def teacher(prompt: str, stream: int) -> str:
    """'easy' problems are solved on streams divisible by 7 or 11, with a stream-dependent length;
    thinking problems wrap the answer in a thinking block, unclosed on odd streams."""
    if "hard" in prompt or not solves(stream):
        return "\\boxed{0}"
    answer = "w" * (stream % 5) + " \\boxed{7}"
    if "think" in prompt:
        return f"<think>try {stream}</think>{answer}" if stream % 2 == 0 else f"<think>try {stream} \\boxed{{7}}"
    return answer


class EndScorer:
    """1.0 when the completion ends with \\boxed{answer}, None without a box, else 0.0."""

    def score(self, completions: list[str], records: list[dict]) -> list[float | None]:
        return [None if "\\boxed{" not in c else float(c.endswith("\\boxed{" + r["answer"] + "}"))
                for c, r in zip(completions, records)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def make_problems(path: Path, kinds: list[str], solutions: dict[int, str] | None = None) -> Path:
    rows = []
    for i, kind in enumerate(kinds):
        row = {"id": f"p{i}", "problem": f"{kind} problem {i}", "answer": "7", "topic": "t"}
        if solutions and i in solutions:
            row["solution"] = solutions[i]
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(data: Path, out: Path, **overrides) -> SolutionsConfig:
    return sampling_stage_config(SolutionsConfig, data, out, model_name="teacher", max_new_tokens=64,
                                 **{"k": K, "chunk": CHUNK, "seed": SEED, **overrides})


def run(cfg, tokenizer, delay: float = 0.0):
    engine = ScriptedEngine(tokenizer, teacher, delay)
    return run_make_solutions(cfg, lambda: engine, EndScorer), engine




def expected_pick(pid: str, keep: str = "shortest", ok=solves, kind: str = "easy") -> tuple[int, int, int]:
    """(sample index kept, samples drawn, correct so far) for an easy problem, from its seed."""
    base = derive_seed(SEED, "make-solutions", pid)
    first = next(j for j in range(K) if ok(base + j))
    drawn = min(K, (first // CHUNK + 1) * CHUNK)
    hits = [j for j in range(drawn - CHUNK, drawn) if ok(base + j)]
    length = lambda j: len(teacher(kind, base + j))  # the char tokenizer: one token per character
    index = min(hits, key=lambda j: (length(j), j)) if keep == "shortest" else hits[0]
    return index, drawn, len(hits)


def test_early_stop_keeps_the_chunk_pick_and_sends_the_unsolved_to_a_problems_file(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", ["easy", "hard", "easy", "easy", "hard"])
    out = tmp_path / "solutions.jsonl"
    summary, engine = run(config(data, out), char_tokenizer)
    records = {r["id"]: r for r in read_jsonl(out)}
    assert list(records) == ["p0", "p2", "p3"]
    stats = {row["id"]: row for row in read_jsonl(tmp_path / "solutions.jsonl.stats.jsonl")}
    for pid in records:
        index, drawn, correct = expected_pick(pid)
        assert drawn < K and stats[pid]["samples"] == drawn
        source = records[pid]["solution_source"]
        assert source == {"teacher": "teacher", "sample": index, "tokens": source["tokens"], "pass_count": correct,
                          "samples": drawn}
        assert records[pid]["solution"] == teacher("easy", derive_seed(SEED, "make-solutions", pid) + index)
        assert source["tokens"] == len(records[pid]["solution"])
        assert records[pid]["topic"] == "t"  # the input record is kept whole
    assert stats["p1"]["samples"] == stats["p4"]["samples"] == K and not stats["p1"]["solved"]
    unsolved = read_problems(str(tmp_path / "solutions.jsonl.unsolved.jsonl"))
    assert [p.id for p in unsolved] == ["p1", "p4"] and unsolved[0].problem == "hard problem 1"
    assert (summary["solved"], summary["unsolved"], summary["kept"]) == (3, 2, 0)
    assert summary["samples"] == sum(row["samples"] for row in stats.values()) < summary["naive_samples"] == 5 * K
    # The output is a problems file with solutions: what make-prefixes and sft read.
    assert {p.id: p.solution for p in read_problems(str(out))} == {pid: r["solution"] for pid, r in records.items()}
    manifest = json.loads((tmp_path / "solutions.jsonl.manifest.json").read_text())
    assert manifest["command"] == "make-solutions" and manifest["counts"]["solved"] == 3


@pytest.mark.parametrize("keep", ["shortest", "first"])
def test_keep_picks_among_the_correct_samples_of_the_stopping_chunk(tmp_path, char_tokenizer, keep):
    ids = [f"p{i}" for i in range(12)]
    data = make_problems(tmp_path / "p.jsonl", ["easy"] * 12)
    run(config(data, tmp_path / "s.jsonl", keep=keep), char_tokenizer)
    picked = {r["id"]: r["solution_source"]["sample"] for r in read_jsonl(tmp_path / "s.jsonl")}
    assert picked == {pid: expected_pick(pid, keep)[0] for pid in ids}


def test_keep_shortest_and_first_differ_where_a_chunk_has_two_correct_samples(char_tokenizer):
    # The rule above is only tested if some chunk holds two correct samples of different lengths.
    differs = [pid for pid in (f"p{i}" for i in range(12)) if expected_pick(pid, "shortest") != expected_pick(pid, "first")]
    assert differs


def test_strip_thinking_scores_and_keeps_the_answer_after_the_thinking_block(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", ["think"] * 6)
    run(config(data, tmp_path / "plain.jsonl"), char_tokenizer)
    run(config(data, tmp_path / "stripped.jsonl", strip_thinking=True), char_tokenizer)
    plain = {r["id"]: r for r in read_jsonl(tmp_path / "plain.jsonl")}
    stripped = {r["id"]: r for r in read_jsonl(tmp_path / "stripped.jsonl")}
    assert all(r["solution"].startswith("<think>") for r in plain.values())
    even = lambda stream: solves(stream) and stream % 2 == 0  # an unclosed thinking block does not count
    for pid, record in stripped.items():
        index = record["solution_source"]["sample"]
        assert index == expected_pick(pid, ok=even, kind="think")[0]
        raw = teacher("think", derive_seed(SEED, "make-solutions", pid) + index)
        assert record["solution"] == raw.split("</think>")[1].lstrip() and record["solution"].endswith("\\boxed{7}")
        assert record["solution_source"]["tokens"] == len(raw)  # the tokens generated, thinking included
    assert len(stripped) >= 4


def test_strip_thinking_rules():
    assert strip_thinking("<think>a</think>\n\nSo \\boxed{1}") == "So \\boxed{1}"
    assert strip_thinking("a</think>b</think> c") == "c"  # R1-style: the opening tag sits in the prompt
    assert strip_thinking("<think>never closed \\boxed{1}") == ""
    assert strip_thinking("no thinking \\boxed{1}") == "no thinking \\boxed{1}"


def test_a_record_with_a_solution_keeps_it_unless_replace(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", ["easy", "easy", "hard"], solutions={0: "given \\boxed{7}", 2: "oracle"})
    summary, engine = run(config(data, tmp_path / "kept.jsonl"), char_tokenizer)
    asked = {char_tokenizer.decode(r.prompt_ids) for call in engine.calls for r in call}
    assert not any("problem 0" in p or "problem 2" in p for p in asked)
    kept = read_jsonl(tmp_path / "kept.jsonl")
    assert [r["id"] for r in kept] == ["p0", "p1", "p2"]
    assert kept[0]["solution"] == "given \\boxed{7}" and "solution_source" not in kept[0]
    assert kept[2]["solution"] == "oracle" and (summary["kept"], summary["solved"]) == (2, 1)

    summary, _ = run(config(data, tmp_path / "replaced.jsonl", replace=True), char_tokenizer)
    replaced = read_jsonl(tmp_path / "replaced.jsonl")
    assert [r["id"] for r in replaced] == ["p0", "p1"]
    assert replaced[0]["solution"] == teacher("easy", derive_seed(SEED, "make-solutions", "p0") + expected_pick("p0")[0])
    assert [r["id"] for r in read_jsonl(tmp_path / "replaced.jsonl.unsolved.jsonl")] == ["p2"]
    assert (summary["kept"], summary["solved"], summary["unsolved"]) == (0, 2, 1)


def test_chunk_and_batch_size_do_not_change_a_first_pick(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", ["easy", "hard", "easy"])
    run(config(data, tmp_path / "a.jsonl", keep="first", chunk=1), char_tokenizer)
    run(config(data, tmp_path / "b.jsonl", keep="first", chunk=CHUNK, model=ModelOptions("teacher", batch_size=3)),
        char_tokenizer)
    solution = lambda path: [(r["id"], r["solution"], r["solution_source"]["sample"]) for r in read_jsonl(path)]
    assert solution(tmp_path / "a.jsonl") == solution(tmp_path / "b.jsonl")


def test_rerun_of_a_finished_run_samples_nothing_and_changed_options_are_refused(tmp_path, char_tokenizer):
    from pope_cli.shared.errors import PopeError

    data = make_problems(tmp_path / "p.jsonl", ["easy", "hard"])
    run(config(data, tmp_path / "s.jsonl"), char_tokenizer)
    _, engine = run(config(data, tmp_path / "s.jsonl"), char_tokenizer)
    assert engine.calls == []
    with pytest.raises(PopeError, match=r"different options \(--keep: was shortest, now first\)"):
        run(config(data, tmp_path / "s.jsonl", keep="first"), char_tokenizer)


KILLABLE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from conftest import build_char_tokenizer
    from test_make_solutions import config, make_problems, run
    run(config(Path({data!r}), Path({out!r})), build_char_tokenizer(), delay=0.05)
""")


def test_sigkill_then_rerun_writes_the_bytes_of_a_straight_run(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", ["easy", "hard"] * 6)
    run(config(data, tmp_path / "straight.jsonl"), char_tokenizer)
    out = tmp_path / "killed.jsonl"
    script = KILLABLE.format(tests=str(TESTS), data=str(data), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    stats = tmp_path / "killed.jsonl.stats.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if stats.exists() and stats.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True)
    for suffix in ("", ".stats.jsonl", ".unsolved.jsonl"):
        assert Path(f"{out}{suffix}").read_bytes() == Path(f"{tmp_path / 'straight.jsonl'}{suffix}").read_bytes(), suffix


def test_dry_run_plans_the_problems_without_a_solution_and_loads_no_model(tmp_path):
    from typer.testing import CliRunner

    from pope_cli.cli import app

    data = make_problems(tmp_path / "p.jsonl", ["easy"] * 10, solutions={0: "s", 1: "s"})
    result = CliRunner().invoke(app, ["make-solutions", str(data), "--model", "no/such-model", "--out",
                                      str(tmp_path / "s.jsonl"), "--dry-run", "--k", "256", "--chunk", "16",
                                      "--max-new-tokens", "100", "--workers", "8", "--gen-tokens-per-s", "10"],
                                env={"COLUMNS": "200"})  # one table row per line
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.output.splitlines()
             if line.count("│") == 3}
    # 8 to sample: 20% draw all 256, the others one chunk of 16.
    assert lines["to sample"] == "8" and lines["kept (had a solution)"] == "2"
    assert lines["samples, worst case (all k = 256)"] == "2048" and lines["samples, expected (20% unsolved)"] == "512"
    assert lines["tokens at --max-new-tokens, worst / expected"] == "204800 / 51200"
    assert lines["hours, worst / expected"].startswith("0.71 / 0.18")
    assert not list(tmp_path.glob("s.jsonl*"))
