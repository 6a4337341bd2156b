"""make-prefixes with a scripted engine: the ladder stops where expected, fallbacks, resume after SIGKILL."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import read_jsonl, sampling_stage_config
from fakes import BoxScorer, ScriptedEngine
from processes import killed_when, lines_in, python
from pope_cli.shared.config import ModelOptions
from pope_cli.shared.errors import PopeError
from pope_cli.shared.prompts import Rung
from pope_cli.stages.prefixes import PrefixConfig
from pope_cli.stages.prefixes import run_make_prefixes, thin_ladder

TESTS = Path(__file__).parent
# 20 one-line units of 15 characters, then the answer: 313 character tokens, so rungs of 1..5
# lines (14, 29, 44, 59, 74 tokens) are within a quarter of it and 6 lines (89) are not.
SOLUTION = "".join(f"Step {i:02d} holds.\n" for i in range(1, 21)) + "So \\boxed{7}."
# The character tokenizer has no token for "\n\n": a decoded prompt shows <unk> there.
PARTIAL = re.compile(r"Partial Response:\n(.*?)(?:\n\n|<unk>)Continue solving", re.S)


def answer_when_long_enough(prompt: str, stream: int) -> str:
    """Correct on even streams once the prompt's prefix has as many lines as the problem 'needs'."""
    need = int(re.search(r"needs (\d+)", prompt).group(1))
    lines = PARTIAL.search(prompt).group(1).count("\n") + 1
    return "\\boxed{7}" if lines >= need and stream % 2 == 0 else "\\boxed{0}"


def make_problems(path: Path, needs: list[int | None]) -> Path:
    """One problem per entry: None has no solution, 0 a solution that is one long unit."""
    rows = []
    for i, need in enumerate(needs):
        row = {"id": f"p{i}", "problem": f"problem {i} needs {need or 1}", "answer": "7", "level": i}
        if need is not None:
            row["solution"] = SOLUTION if need else "One long sentence that is all of it, so \\boxed{7}"
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(data: Path, out: Path, **overrides) -> PrefixConfig:
    return sampling_stage_config(PrefixConfig, data, out, **{"n": 4, "seed": 3, **overrides})


def run(cfg: PrefixConfig, tokenizer, delay: float = 0.0):
    engine = ScriptedEngine(tokenizer, answer_when_long_enough, delay)
    return run_make_prefixes(cfg, lambda: engine, BoxScorer), engine


def no_engine():
    raise AssertionError("no engine should be built")




def test_ladder_stops_at_the_first_successful_rung(tmp_path, char_tokenizer):
    from pope_cli.shared.data import read_prefix_records, read_problems

    data = make_problems(tmp_path / "hard.jsonl", [3, 1, 99, None, 2, 0])
    out = tmp_path / "prefixes.jsonl"
    summary, engine = run(config(data, out), char_tokenizer)
    records = {r["id"]: r for r in read_jsonl(out)}
    assert list(records) == ["p0", "p1", "p2", "p4"]
    expected = {"p0": ("found", 3, 3, 2), "p1": ("found", 1, 1, 2), "p2": ("not_found", 5, 5, 0), "p4": ("found", 2, 2, 2)}
    for pid, (status, rung, units, correct) in expected.items():
        record = records[pid]
        assert (record["status"], record["rung"], record["prefix_units"], record["guided_correct"]) == (status, rung, units, correct)
        assert record["samples"] == 4 * rung and record["rungs"] == 5
        # The ladder searched: [characters, tokens] of each rung, each rung's text the chosen one's beginning.
        assert record["ladder"] == [[15 * u - 1, 15 * u - 1] for u in range(1, 6)]
        assert record["prefix"][:record["ladder"][rung - 1][0]] == record["prefix"]
        assert record["prefix"] == SOLUTION[:15 * units - 1]
        assert record["prefix_tokens"] == 15 * units - 1 and record["solution_tokens"] == len(SOLUTION)
        assert record["prefix_fraction"] == pytest.approx((15 * units - 1) / len(SOLUTION))
        assert (record["template"], record["split"], record["answer"], record["level"]) == ("pope", "units", "7", int(pid[1:]))
    assert sum(r.n for call in engine.calls for r in call) == summary["samples"] == 4 * (3 + 1 + 5 + 2)
    assert [r["id"] for r in read_prefix_records(str(out))] == ["p0", "p1", "p2", "p4"]
    skipped = read_jsonl(f"{out}.skipped.jsonl")
    assert [(r["id"], r["status"]) for r in skipped] == [("p3", "no_solution"), ("p5", "no_rung")]
    assert [p.id for p in read_problems(f"{out}.skipped.jsonl")] == ["p3", "p5"]
    assert [r["id"] for r in read_jsonl(f"{out}.stats.jsonl")] == [f"p{i}" for i in range(6)]
    assert (summary["found"], summary["not_found_kept"], summary["dropped"], summary["no_solution"], summary["no_rung"]) == (3, 1, 0, 1, 1)
    assert summary["no_solution_ids"] == ["p3"] and sum(b["count"] for b in summary["fraction_histogram"]) == 4
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["command"] == "make-prefixes" and manifest["counts"]["usable"] == 4


def test_fallback_drop_leaves_unsolved_problems_out(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "hard.jsonl", [3, 99])
    out = tmp_path / "prefixes.jsonl"
    summary, _ = run(config(data, out, fallback="drop"), char_tokenizer)
    assert [r["id"] for r in read_jsonl(out)] == ["p0"]
    assert [(r["id"], r["status"], r["samples"]) for r in read_jsonl(f"{out}.skipped.jsonl")] == [("p1", "not_found", 20)]
    assert (summary["found"], summary["dropped"], summary["not_found_kept"]) == (1, 1, 0)


def test_no_solution_keep_writes_the_problem_without_a_prefix_for_unguided_training(tmp_path, char_tokenizer):
    from pope_cli.stages.train.batch import DataMix

    data = make_problems(tmp_path / "hard.jsonl", [3, None, 1])
    out = tmp_path / "prefixes.jsonl"
    summary, engine = run(config(data, out, no_solution="keep"), char_tokenizer)
    records = read_jsonl(out)
    assert [(r["id"], r["status"], r["prefix"] is None) for r in records] == [
        ("p0", "found", False), ("p1", "no_solution", True), ("p2", "found", False)]
    assert records[1]["samples"] == 0 and records[1]["answer"] == "7" and read_jsonl(f"{out}.skipped.jsonl") == []
    assert (summary["usable"], summary["no_solution"], summary["no_solution_kept"]) == (2, 1, 1)
    assert sum(r.n for call in engine.calls for r in call) == 4 * (3 + 1)
    # POPE's guided stream holds the two prefixed problems, its unguided stream all three.
    mix = DataMix(records, [], "pope", 1.0, 0.0, 6, seed=0)
    kinds = [(item.kind, item.record["id"]) for item in mix.draw(0)]
    assert {i for k, i in kinds if k == "guided"} == {"p0", "p2"}
    assert sorted(i for k, i in kinds if k == "unguided") == ["p0", "p1", "p2"]
    # Readable as a prefixes file; eval asks the unprefixed problem unguided only.
    from pope_cli.shared.data import read_prefix_records
    from pope_cli.shared.config import FieldMap, ModelOptions, PromptOptions, RewardOptions, SamplingOptions
    from pope_cli.shared.errors import PopeError
    from pope_cli.stages.evaluate import EvalConfig, load_items

    assert [r["prefix"] is None for r in read_prefix_records(str(out))] == [False, True, False]
    items = load_items(EvalConfig(data=str(out), out=str(tmp_path / "e"), models=["m"], model=ModelOptions("m"),
                                  fields=FieldMap(), prompt=PromptOptions(), sampling=SamplingOptions(),
                                  reward=RewardOptions(), modes=["unguided", "guided"]))
    assert ([r["id"] for r in items["unguided"]], [r["id"] for r in items["guided"]]) == (["p0", "p1", "p2"], ["p0", "p2"])
    records[0]["status"] = "no_solution"
    del records[0]["prefix"]
    (tmp_path / "broken.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(PopeError, match=r"broken.jsonl:1: missing field 'prefix'"):
        read_prefix_records(str(tmp_path / "broken.jsonl"))


def test_fixed_fraction_draws_no_samples_and_builds_no_engine(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "hard.jsonl", [3, None, 0])
    out = tmp_path / "prefixes.jsonl"
    cfg = sampling_stage_config(PrefixConfig, data, out, seed=3, fixed_fraction=0.25)  # no search options
    summary = run_make_prefixes(cfg, no_engine, no_engine,
                                make_tokenizer=lambda: char_tokenizer)
    [record] = read_jsonl(out)
    assert (record["status"], record["prefix_units"], record["prefix"], record["samples"]) == ("fixed", 5, SOLUTION[:74], 0)
    assert record["rung"] is None and record["guided_correct"] is None
    assert [r["status"] for r in read_jsonl(f"{out}.skipped.jsonl")] == ["no_solution", "no_rung"]
    assert (summary["fixed"], summary["samples"], summary["fraction"]["max"]) == (1, 0, round(74 / len(SOLUTION), 4))


def test_token_split_ladder_is_spaced_by_tokens(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "hard.jsonl", [3, 99])
    out = tmp_path / "prefixes.jsonl"
    run(config(data, out, split="tokens", max_rungs=4), char_tokenizer)
    found, not_found = read_jsonl(out)
    # Rungs at 1/16, 2/16, 3/16, 4/16 of 313 tokens: 19, 39, 58, 78; line 3 starts in the second.
    assert (found["status"], found["rung"], found["prefix_tokens"], found["split"]) == ("found", 2, 39, "tokens")
    assert found["prefix"] == SOLUTION[:39] and found["rungs"] == 4
    assert (not_found["status"], not_found["prefix_tokens"], not_found["samples"]) == ("not_found", 78, 16)


def test_thin_ladder_keeps_ends_and_spaces_by_tokens():
    ladder = [Rung(i, "x" * i, i, i / 32) for i in range(1, 26)]
    thinned = thin_ladder(ladder, 5)
    assert [r.units for r in thinned] == [1, 7, 13, 19, 25]
    assert thin_ladder(ladder, 1) == [ladder[-1]]


def test_results_do_not_depend_on_batching(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "hard.jsonl", [3, 1, 99, 4, 2])
    run(config(data, tmp_path / "a.jsonl", model=ModelOptions("scripted", batch_size=4)), char_tokenizer)
    run(config(data, tmp_path / "b.jsonl", model=ModelOptions("scripted", batch_size=64)), char_tokenizer)
    for suffix in ("", ".stats.jsonl", ".skipped.jsonl"):
        assert Path(f"{tmp_path}/a.jsonl{suffix}").read_text() == Path(f"{tmp_path}/b.jsonl{suffix}").read_text()


def test_rerun_draws_nothing_and_changed_options_are_refused(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "hard.jsonl", [3, 99])
    out = tmp_path / "prefixes.jsonl"
    run(config(data, out), char_tokenizer)
    summary, engine = run(config(data, out), char_tokenizer)
    assert engine.calls == [] and summary["found"] == 1
    with pytest.raises(PopeError, match=r"different options \(--max-fraction: was 0.25, now 0.2; --n: was \d+, now 8\)"):
        run(config(data, out, n=8, max_fraction=0.2), char_tokenizer)
    summary, _ = run(config(data, out, n=8, overwrite=True), char_tokenizer)
    assert summary["samples"] == 8 * (3 + 5)


def test_unknown_template_placeholder_fails_before_any_engine(tmp_path):
    data = make_problems(tmp_path / "hard.jsonl", [3])
    template = tmp_path / "guided.txt"
    template.write_text("{problem}\n{prefix}\nHint: {hint}\n")
    out = tmp_path / "prefixes.jsonl"
    with pytest.raises(PopeError, match=r"unknown placeholder \{hint\}") as error:
        run_make_prefixes(config(data, out, template=str(template)), no_engine, no_engine)
    assert error.value.exit_code == 2 and not Path(f"{out}.config.json").exists()


@pytest.mark.parametrize("overrides, option", [
    ({"max_fraction": 0}, "--max-fraction"), ({"max_fraction": 1.5}, "--max-fraction"),
    ({"fixed_fraction": 0.0}, "--fixed-fraction"), ({"n": 0}, "--n"), ({"fallback": "keep"}, "--fallback"),
    ({"split": "words"}, "--split"), ({"split": "tokens", "max_rungs": 0}, "--max-rungs"),
])
def test_bad_options_name_the_option(tmp_path, overrides, option):
    with pytest.raises(PopeError, match=re.escape(option)) as error:
        config(tmp_path / "x.jsonl", tmp_path / "o.jsonl", **overrides)
    assert error.value.exit_code == 2


def test_out_that_is_a_directory_is_refused(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "hard.jsonl", [3])
    with pytest.raises(PopeError, match="is a directory"):
        run(config(data, tmp_path, overwrite=True), char_tokenizer)
    assert data.exists()


def test_cli_help_and_template_error(tmp_path):
    from typer.testing import CliRunner

    from pope_cli.cli import app

    runner = CliRunner()
    help_text = runner.invoke(app, ["make-prefixes", "--help"], env={"COLUMNS": "200"})
    assert help_text.exit_code == 0
    for option in ("--n", "--max-fraction", "--max-rungs", "--split", "--fallback", "--fixed-fraction", "--template",
                   "--out", "--model", "--reward", "--solution-field", "--chat-template", "--overwrite"):
        assert option in help_text.output, option
    template = tmp_path / "guided.txt"
    template.write_text("{problem} {prefix} {hint}")
    data = make_problems(tmp_path / "hard.jsonl", [3])
    result = runner.invoke(app, ["make-prefixes", str(data), "--model", "nobody/no-model", "--out",
                                 str(tmp_path / "p.jsonl"), "--template", str(template)])
    assert result.exit_code == 2 and "unknown placeholder {hint}" in result.output


KILLABLE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import build_char_tokenizer
    from test_prefixes import config, run
    from pope_cli.shared.config import ModelOptions
    from pathlib import Path
    run(config(Path({data!r}), Path({out!r}), model=ModelOptions("scripted", batch_size=4)), build_char_tokenizer(), delay=0.05)
""")


@pytest.mark.parametrize("kill_after_lines", [3, 8])
def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, char_tokenizer, kill_after_lines):
    data = make_problems(tmp_path / "hard.jsonl", [3, 1, 99, 5, 2, None, 4, 1, 99, 3, 0, 2])
    reference = tmp_path / "reference.jsonl"
    run(config(data, reference, model=ModelOptions("scripted", batch_size=4)), char_tokenizer)
    out = tmp_path / "killed.jsonl"
    script = KILLABLE.format(tests=str(TESTS), data=str(data), out=str(out))
    killed_when(python(script), lines_in(Path(f"{out}.stats.jsonl"), kill_after_lines))
    assert not out.exists()
    subprocess.run([sys.executable, "-c", script], cwd=TESTS.parent, check=True)
    for suffix in ("", ".stats.jsonl", ".skipped.jsonl"):
        assert Path(f"{out}{suffix}").read_text() == Path(f"{reference}{suffix}").read_text(), suffix
