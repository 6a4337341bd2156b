"""filter-hard with a scripted engine: early stopping, exact counts, resume after SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import read_jsonl, sampling_stage_config
from fakes import BoxScorer, ScriptedEngine
from processes import killed_when, lines_in, python
from pope_cli.shared.config import ModelOptions
from pope_cli.stages.filter_hard import FilterHardConfig
from pope_cli.stages.filter_hard import run_filter_hard

TESTS = Path(__file__).parent


def answer_every_fifth(prompt: str, stream: int) -> str:
    """Problems whose text says 'easy' are solved on every fifth stream; others never."""
    if "easy" in prompt and stream % 5 == 0:
        return "\\boxed{7}"
    return "\\boxed{0}" if stream % 2 else "no answer"


def make_problems(path: Path, count: int) -> Path:
    rows = [{"id": f"p{i}", "problem": f"{'easy' if i % 2 == 0 else 'hard'} problem {i}", "answer": "7"} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(data: Path, out: Path, **overrides) -> FilterHardConfig:
    return sampling_stage_config(FilterHardConfig, data, out, **{"k": 32, "chunk": 4, "seed": 3, **overrides})


def run(cfg, tokenizer, delay: float = 0.0):
    engine = ScriptedEngine(tokenizer, answer_every_fifth, delay)
    return run_filter_hard(cfg, lambda: engine, BoxScorer), engine




def test_early_stopping_draws_fewer_on_solvable_and_exactly_k_on_unsolvable(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", 6)
    summary, _ = run(config(data, tmp_path / "out"), char_tokenizer)
    stats = {row["id"]: row for row in read_jsonl(tmp_path / "out" / "stats.jsonl")}
    assert [row["id"] for row in read_jsonl(tmp_path / "out" / "stats.jsonl")] == [f"p{i}" for i in range(6)]
    for i in range(6):
        row = stats[f"p{i}"]
        if i % 2:
            assert (row["samples"], row["correct"], row["hard"]) == (32, 0, True)
            assert row["unparseable"] == 16
        else:
            assert row["samples"] < 32 and row["samples"] % 4 == 0 and row["correct"] >= 1 and not row["hard"]
    assert summary["hard"] == 3 and summary["easy"] == 3
    assert summary["samples"] < summary["naive_samples"] == 6 * 32
    hard = read_jsonl(tmp_path / "out" / "hard.jsonl")
    assert [r["id"] for r in hard] == ["p1", "p3", "p5"] and hard[0]["problem"] == "hard problem 1"
    assert [r["id"] for r in read_jsonl(tmp_path / "out" / "easy.jsonl")] == ["p0", "p2", "p4"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["command"] == "filter-hard" and manifest["counts"]["hard"] == 3


def test_exhaustive_draws_k_everywhere_and_counts_exactly(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", 2)
    run(config(data, tmp_path / "out", exhaustive=True, k=10, chunk=3), char_tokenizer)
    rows = read_jsonl(tmp_path / "out" / "stats.jsonl")
    assert [r["samples"] for r in rows] == [10, 10]
    seed = json.loads((tmp_path / "out" / "config.json").read_text())["seed"]
    from pope_cli.shared.seeding import derive_seed

    expected = sum(1 for j in range(10) if (derive_seed(seed, "p0") + j) % 5 == 0)
    assert rows[0]["correct"] == expected and rows[0]["pass_rate"] == expected / 10


def test_chunking_does_not_change_results(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", 4)
    run(config(data, tmp_path / "a", exhaustive=True, chunk=4), char_tokenizer)
    run(config(data, tmp_path / "b", exhaustive=True, chunk=7, model=ModelOptions("scripted", batch_size=3)), char_tokenizer)
    assert (tmp_path / "a" / "stats.jsonl").read_text() == (tmp_path / "b" / "stats.jsonl").read_text()


def test_rerun_of_a_finished_run_draws_nothing_and_changed_config_is_refused(tmp_path, char_tokenizer):
    from pope_cli.shared.errors import PopeError

    data = make_problems(tmp_path / "p.jsonl", 3)
    run(config(data, tmp_path / "out"), char_tokenizer)
    _, engine = run(config(data, tmp_path / "out"), char_tokenizer)
    assert engine.calls == []
    with pytest.raises(PopeError, match=r"different options \(--k: was 32, now 64\)"):
        run(config(data, tmp_path / "out", k=64), char_tokenizer)


KILLABLE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import build_char_tokenizer
    from test_filter_hard import config, run
    from pathlib import Path
    run(config(Path({data!r}), Path({out!r}), save_samples=True, model=__import__("pope_cli.shared.config", fromlist=["ModelOptions"]).ModelOptions("scripted", batch_size=4)),
        build_char_tokenizer(), delay=0.05)
""")


@pytest.mark.parametrize("kill_after_lines", [2, 7])
def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, char_tokenizer, kill_after_lines):
    data = make_problems(tmp_path / "p.jsonl", 12)
    reference = tmp_path / "reference"
    run(config(data, reference, save_samples=True, model=ModelOptions("scripted", batch_size=4)), char_tokenizer)
    out = tmp_path / "killed"
    script = KILLABLE.format(tests=str(TESTS), data=str(data), out=str(out))
    killed_when(python(script), lines_in(out / "stats.jsonl", kill_after_lines))
    assert not (out / "hard.jsonl").exists()
    subprocess.run([sys.executable, "-c", script], cwd=TESTS.parent, check=True)
    for name in ("stats.jsonl", "samples.jsonl", "hard.jsonl", "easy.jsonl"):
        assert (out / name).read_text() == (reference / name).read_text(), name


def test_the_unguided_template_travels_with_the_records_it_asked(tmp_path, char_tokenizer):
    """filter-hard records the template it asked with; the later stages ask the same way without the flag
    (forgetting it in train or eval no longer changes the prompts), and the flag still wins."""
    from pope_cli.shared.config import PromptOptions
    from pope_cli.shared.runtime import PromptBuilder

    (tmp_path / "u.txt").write_text("Q:{problem} A:")
    (tmp_path / "other.txt").write_text("Other {problem}")
    data = make_problems(tmp_path / "p.jsonl", 4)
    run(config(data, tmp_path / "out", prompt=PromptOptions(unguided_template=str(tmp_path / "u.txt"))), char_tokenizer)
    rows = read_jsonl(tmp_path / "out" / "hard.jsonl") + read_jsonl(tmp_path / "out" / "easy.jsonl")
    assert {row["unguided_template"] for row in rows} == {str(tmp_path / "u.txt")}
    plain = {k: v for k, v in rows[0].items() if k != "unguided_template"}
    asked = PromptBuilder(char_tokenizer, PromptOptions(unguided_template=str(tmp_path / "u.txt"))).unguided(plain)
    assert PromptBuilder(char_tokenizer, PromptOptions()).unguided(rows[0]) == asked
    assert char_tokenizer.decode(asked).startswith("<|user|>Q:")
    other = PromptBuilder(char_tokenizer, PromptOptions(unguided_template=str(tmp_path / "other.txt"))).unguided(rows[0])
    assert char_tokenizer.decode(other).startswith("<|user|>Other ")
    run(config(data, tmp_path / "plain"), char_tokenizer)
    assert all("unguided_template" not in row for row in read_jsonl(tmp_path / "plain" / "hard.jsonl"))
