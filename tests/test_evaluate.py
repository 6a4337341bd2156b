"""eval with a scripted engine: metrics match the closed form, guided mode, resume, several models."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import pytest

from fakes import BoxScorer, ScriptedEngine
from pope_cli.shared.config import FieldMap, ModelOptions, PromptOptions, RewardOptions, SamplingOptions
from pope_cli.shared.errors import PopeError
from pope_cli.shared.seeding import derive_seed
from pope_cli.stages.evaluate import EvalConfig
from pope_cli.stages.evaluate import run_eval


def answer(prompt: str, stream: int) -> str:
    """Guided prompts (they hold 'Partial Response') are solved on even streams, unguided on every third."""
    if "Partial Response" in prompt:
        return "\\boxed{7}" if stream % 2 == 0 else "\\boxed{1}"
    return "\\boxed{7}" if stream % 3 == 0 else "\\boxed{1}"


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PROBLEMS = [{"id": f"q{i}", "problem": f"problem {i}", "answer": "7"} for i in range(5)]


def config(tmp_path: Path, **overrides) -> EvalConfig:
    values = dict(data=write(tmp_path / "p.jsonl", PROBLEMS), out=str(tmp_path / "eval"), models=["m1"],
                  model=ModelOptions("m1", batch_size=8), fields=FieldMap(), prompt=PromptOptions(),
                  sampling=SamplingOptions(max_new_tokens=16), reward=RewardOptions(), n=6, ks=[1, 2, 6],
                  modes=["unguided"], bootstrap=50, seed=1)
    values.update(overrides)
    return EvalConfig(**values)


def run(cfg, tokenizer):
    engines = []

    def make_engine(opts):
        engines.append(opts.model)
        return ScriptedEngine(tokenizer, answer)

    return run_eval(cfg, make_engine, BoxScorer), engines


def expected_pass(mode: str, problem_ids: list[str], seed: int, n: int, k: int, every: int) -> float:
    total = 0.0
    for pid in problem_ids:
        base = derive_seed(seed, mode, pid)
        c = sum((base + j) % every == 0 for j in range(n))
        total += 1 - comb(n - c, k) / comb(n, k)
    return total / len(problem_ids)


def test_unguided_metrics_match_closed_form(tmp_path, char_tokenizer):
    summary, _ = run(config(tmp_path), char_tokenizer)
    metrics = summary["models"]["m1"]["unguided"]
    ids = [p["id"] for p in PROBLEMS]
    for k in (1, 2, 6):
        assert metrics[f"pass@{k}"] == pytest.approx(expected_pass("unguided", ids, 1, 6, k, 3))
    assert metrics["avg@n"] == pytest.approx(metrics["pass@1"])
    lo, hi = metrics["ci95"]["pass@2"]
    assert lo <= metrics["pass@2"] <= hi
    rows = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 5 * 6 and rows[0]["id"] == "q0" and rows[0]["sample"] == 0
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["models"]["m1"]["unguided"] == metrics


def test_guided_mode_uses_prefix_file_and_two_models_share_streams(tmp_path, char_tokenizer):
    prefixes = write(tmp_path / "prefixes.jsonl", [{**p, "prefix": "Start.", "prefix_fraction": 0.2, "template": "pope"}
                                                    for p in PROBLEMS[:3]])
    cfg = config(tmp_path, modes=["unguided", "guided"], prefixes=prefixes, models=["m1", "m2"])
    summary, engines = run(cfg, char_tokenizer)
    assert engines == ["m1", "m2"]
    guided = summary["models"]["m1"]["guided"]
    assert guided["problems"] == 3
    assert guided["pass@1"] == pytest.approx(expected_pass("guided", ["q0", "q1", "q2"], 1, 6, 1, 2))
    assert summary["models"]["m1"] == summary["models"]["m2"]


def test_guided_without_prefixes_is_refused_before_any_model_loads(tmp_path, char_tokenizer):
    with pytest.raises(PopeError, match="--mode guided: needs --prefixes") as info:
        run(config(tmp_path, modes=["guided"]), char_tokenizer)
    assert info.value.exit_code == 2
    assert not (tmp_path / "eval").exists()


def test_bad_options_are_refused():
    for overrides, option in [(dict(n=4, ks=[8]), "--k"), (dict(n=0), "--n"), (dict(modes=["sideways"]), "--mode")]:
        values = dict(data="x", out="y", models=["m"], model=ModelOptions("m"), fields=FieldMap(), prompt=PromptOptions(),
                      sampling=SamplingOptions(), reward=RewardOptions())
        with pytest.raises(PopeError, match=option):
            EvalConfig(**values, **overrides)


def test_torn_unit_is_redrawn_and_files_match_an_uninterrupted_run(tmp_path, char_tokenizer):
    reference_cfg = config(tmp_path)
    run(reference_cfg, char_tokenizer)
    reference = (tmp_path / "eval" / "samples.jsonl").read_text()
    lines = reference.splitlines(keepends=True)
    (tmp_path / "eval" / "samples.jsonl").write_text("".join(lines[:9]) + lines[9][:20])
    (tmp_path / "eval" / "summary.json").unlink()
    _, engines = run(config(tmp_path), char_tokenizer)
    assert engines == ["m1"]
    assert (tmp_path / "eval" / "samples.jsonl").read_text() == reference


def test_the_default_k_list_is_clipped_to_n_and_repeated_models_are_refused():
    values = dict(data="x", out="y", model=ModelOptions("m"), fields=FieldMap(), prompt=PromptOptions(),
                  sampling=SamplingOptions(), reward=RewardOptions())
    assert [EvalConfig(**values, models=["m"], n=n).ks for n in (1, 4, 8, 16, 32)] == [
        [1], [1, 4], [1, 8], [1, 8, 16], [1, 8, 16]]
    with pytest.raises(PopeError, match=r"^--model: runs/a/final is given twice$"):
        EvalConfig(**values, models=["runs/a/final", "m", "runs/a/final"])


def test_eval_says_what_it_measures_and_that_guided_covers_fewer_problems(tmp_path, char_tokenizer):
    prefixes = write(tmp_path / "prefixes.jsonl", [{**p, "prefix": "Start.", "prefix_fraction": 0.2, "template": "pope"}
                                                    for p in PROBLEMS[:3]])
    said = []
    run_eval(config(tmp_path, modes=["unguided", "guided"], prefixes=prefixes, models=["m1", "m2"]),
             lambda opts: ScriptedEngine(char_tokenizer, answer), BoxScorer, say=said.append)
    assert [line for line in said if ": dtype " not in line] == ["eval: 2 model(s) x (5 unguided + 3 guided problems), 6 samples each = 16 units; guided covers "
                    "the 3 of the 5 problems that have a prefix"]


def test_the_table_names_models_apart_and_shows_pass_at_1_once(capsys):
    from pope_cli.commands.eval import print_summary
    from pope_cli.shared.metrics import summarize

    metrics = {"unguided": summarize([(4, 1), (4, 2)], [1, 4], seed=0)}
    print_summary({"n": 4, "ks": [1, 4], "models": {"/opt/toy/model": metrics, "runs/grpo/final": metrics,
                                                    "runs/pope/final": metrics}})
    lines = [line.strip("│┃ ") for line in capsys.readouterr().out.splitlines()]
    header = next(line for line in lines if "model" in line and "final" in line)
    assert [cell for cell in header.split() if cell not in "┃│"][:3] == ["model", "grpo/final", "pope/final"]
    assert sum(line.startswith("avg@n = pass@1") for line in lines) == 1
    assert not any(line.startswith("pass@1 ") for line in lines) and any(line.startswith("pass@4") for line in lines)
