"""A rerun of a sampling stage on edited input redoes exactly the records that changed, and its files
are a fresh run's on that input (every resumable sampling stage, with a scripted engine); a rerun
whose options mean the same (paths, `auto`) resumes instead of being refused."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from conftest import sampling_stage_config
from fakes import BoxScorer, ScriptedEngine
from pope_cli.shared.config import FieldMap, ModelOptions, PromptOptions, RewardOptions, SamplingOptions
from pope_cli.shared.errors import PopeError
from pope_cli.shared.models import auto_dtype
from pope_cli.stages.evaluate import EvalConfig, run_eval
from pope_cli.stages.filter_hard import FilterHardConfig, run_filter_hard
from pope_cli.stages.prefixes import PrefixConfig, run_make_prefixes
from pope_cli.stages.solutions import SolutionsConfig, run_make_solutions

SOLUTION = "Step one.\nStep two.\nStep three.\nSo \\boxed{1}."


def answer(prompt: str, stream: int) -> str:
    digest = int(hashlib.sha256(f"{prompt}|{stream}".encode()).hexdigest(), 16)
    return "\\boxed{%d}" % (digest % 3)


def problems(answers: dict[int, str]) -> list[dict]:
    return [{"id": f"p{i}", "problem": f"problem {i}", "answer": value, "solution": SOLUTION}
            for i, value in answers.items()]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def filter_hard(data, out, **options):
    cfg = sampling_stage_config(FilterHardConfig, data, out, k=8, chunk=2, **options)
    return lambda engine, say: run_filter_hard(cfg, lambda: engine, BoxScorer, say=say)


def make_solutions(data, out, **options):
    cfg = sampling_stage_config(SolutionsConfig, data, out, k=8, chunk=2, replace=True, **options)
    return lambda engine, say: run_make_solutions(cfg, lambda: engine, BoxScorer, say=say)


def make_prefixes(data, out, **options):
    cfg = sampling_stage_config(PrefixConfig, data, out, n=2, max_fraction=0.9, **options)
    return lambda engine, say: run_make_prefixes(cfg, lambda: engine, BoxScorer, say=say)


def evaluate(data, out, models=("m",), **options):
    cfg = EvalConfig(data=str(data), out=str(out), models=list(models), model=ModelOptions(models[0], batch_size=8),
                     fields=FieldMap(), prompt=PromptOptions(), sampling=SamplingOptions(max_new_tokens=16),
                     reward=RewardOptions(), n=3, ks=[1], bootstrap=0, **options)
    return lambda engine, say: run_eval(cfg, lambda opts: engine, BoxScorer, say=say)


# stage → (config maker, output name (a directory or a file), the files a fresh run must match)
STAGES = {
    "filter-hard": (filter_hard, "out", ["stats.jsonl", "hard.jsonl", "easy.jsonl"]),
    "make-solutions": (make_solutions, "solutions.jsonl", ["", ".stats.jsonl", ".unsolved.jsonl"]),
    "make-prefixes": (make_prefixes, "prefixes.jsonl", ["", ".stats.jsonl", ".skipped.jsonl"]),
    "eval": (evaluate, "out", ["samples.jsonl", "summary.json"]),
}


def files(out: Path, names: list[str]) -> dict[str, str]:
    return {name: (out / name if out.suffix != ".jsonl" else Path(f"{out}{name}")).read_text() for name in names}


def asked(engine: ScriptedEngine, tokenizer) -> set[str]:
    """The problems whose prompts the engine was asked for."""
    return {re.search(r"problem \d+", tokenizer.decode(r.prompt_ids)).group(0) for call in engine.calls for r in call}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_rerun_on_edited_input_redoes_the_changed_records_and_writes_a_fresh_run_s_files(tmp_path, char_tokenizer,
                                                                                        stage):
    make, name, outputs = STAGES[stage]
    data = write(tmp_path / "p.jsonl", problems({0: "1", 1: "1", 2: "2", 3: "0"}))
    make(data, tmp_path / name)(ScriptedEngine(char_tokenizer, answer), print)
    # p1's answer edited, p2 removed, p4 added: the edit of the issue's user, and a swapped record
    write(data, problems({0: "1", 1: "2", 3: "0", 4: "1"}))
    said, engine = [], ScriptedEngine(char_tokenizer, answer)
    summary = make(data, tmp_path / name)(engine, said.append)
    assert asked(engine, char_tokenizer) == {"problem 1", "problem 4"}
    unit = "unguided/" if stage == "eval" else ""  # eval's records are per mode
    # eval says what it measures first, and every stage says its dtype when its model loads
    said = [line for line in said if not line.startswith("eval: 1 model(s) x") and ": dtype " not in line]
    assert said[0] == (f"{stage}: {data} differs from the input of the earlier run: records 1 changed ({unit}p1), "
                       f"1 removed ({unit}p2), 1 added ({unit}p4); the changed ones are redone")
    what = "units" if stage == "eval" else "problems decided"
    assert said[1:] == [f"{stage}: resuming {tmp_path / name}: 2 of 4 {what} already"]
    make(data, tmp_path / "fresh" / name)(ScriptedEngine(char_tokenizer, answer), print)
    assert files(tmp_path / name, outputs) == files(tmp_path / "fresh" / name, outputs)
    if stage != "eval":
        assert summary["problems"] == 4


def test_a_rerun_of_unchanged_input_says_how_much_is_done_and_asks_for_nothing(tmp_path, char_tokenizer):
    data = write(tmp_path / "p.jsonl", problems({0: "1", 1: "1"}))
    filter_hard(data, tmp_path / "out")(ScriptedEngine(char_tokenizer, answer), print)
    said, engine = [], ScriptedEngine(char_tokenizer, answer)
    filter_hard(data, tmp_path / "out")(engine, said.append)
    assert engine.calls == [] and said == [f"filter-hard: resuming {tmp_path / 'out'}: 2 of 2 problems decided already"]


def test_paths_and_auto_are_compared_by_what_they_mean(tmp_path, char_tokenizer, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    write(tmp_path / "p.jsonl", problems({0: "1", 1: "1"}))
    first = sampling_stage_config(FilterHardConfig, "p.jsonl", "out", model_name="model", k=4, chunk=2)
    run_filter_hard(first, lambda: ScriptedEngine(char_tokenizer, answer), BoxScorer)
    engine = ScriptedEngine(char_tokenizer, answer)
    same = sampling_stage_config(FilterHardConfig, "./p.jsonl", str(tmp_path / "out") + "/",
                                 model=ModelOptions("model/", backend="hf", device="cpu", dtype=auto_dtype("cpu")[0],
                                                   batch_size=8),
                                 k=4, chunk=2)
    run_filter_hard(same, lambda: engine, BoxScorer)
    assert engine.calls == []
    other = sampling_stage_config(FilterHardConfig, "./p.jsonl", "out", model_name="model", k=4, chunk=2,
                                  sampling=SamplingOptions(max_new_tokens=32, top_p=0.5))
    with pytest.raises(PopeError, match=r"out/config.json: an earlier run used different options \(--top-p: was 1.0, "
                                        r"now 0.5\); use the same options") as error:
        run_filter_hard(other, lambda: engine, BoxScorer)
    assert error.value.exit_code == 2


def test_a_resumed_eval_keys_its_rows_by_the_recorded_model_names(tmp_path, char_tokenizer, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model in ("a/final", "b/final"):
        os.makedirs(model)
    data = write(tmp_path / "p.jsonl", problems({0: "1", 1: "1"}))
    evaluate(data, "ev", models=("a/final", "b/final"))(ScriptedEngine(char_tokenizer, answer), print)
    before = (tmp_path / "ev" / "samples.jsonl").read_text()
    (tmp_path / "ev" / "summary.json").unlink()
    engine = ScriptedEngine(char_tokenizer, answer)
    summary = evaluate(data, "ev", models=("./a/final/", str(tmp_path / "b" / "final")))(engine, print)
    assert engine.calls == [] and list(summary["models"]) == ["a/final", "b/final"]
    assert (tmp_path / "ev" / "samples.jsonl").read_text() == before


def test_a_positional_argument_is_named_as_help_names_it(tmp_path, char_tokenizer):
    data = write(tmp_path / "p.jsonl", problems({0: "1"}))
    filter_hard(data, tmp_path / "out")(ScriptedEngine(char_tokenizer, answer), print)
    other = write(tmp_path / "q.jsonl", problems({0: "1"}))
    with pytest.raises(PopeError, match=r"different options \(PATH: was …\S+/p.jsonl, now …\S+/q.jsonl\)"):
        filter_hard(other, tmp_path / "out")(ScriptedEngine(char_tokenizer, answer), print)


def test_a_train_run_resumes_under_the_options_its_autos_resolved_to(tmp_path, monkeypatch):
    from pope_cli.shared.claim import claim_output
    from pope_cli.stages.train.config import TrainConfig
    from pope_cli.stages.train.trainer import RESUME_IGNORED, train_autos

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    write(tmp_path / "prefixes.jsonl", problems({0: "1"}))

    def config(prefixes: str, **options) -> TrainConfig:
        model = {key: options.pop(key) for key in ("backend", "device", "dtype") if key in options}
        return TrainConfig(prefixes=prefixes, out="run", model=ModelOptions("model", **model), prompt=PromptOptions(),
                           sampling=SamplingOptions(), reward=RewardOptions(), **options)

    def claim(prefixes: str, **options) -> bool:
        cfg = config(prefixes, **options)
        with claim_output(cfg.out, Path("run/config.json"), cfg, [Path("run/metrics.jsonl")], False, RESUME_IGNORED,
                          train_autos(cfg)) as claimed:
            claimed.started()
            return claimed.resuming

    assert claim("prefixes.jsonl") is False
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    # every `auto` spelt out as what it means on this machine (hf, cpu, float32 and no rollout correction here)
    autos = train_autos(config("prefixes.jsonl"))
    spelt = {key.removeprefix("model."): value for key, value in autos.items()}
    assert claim(str(tmp_path / "prefixes.jsonl"), **spelt) is True
    with pytest.raises(PopeError, match=r"different options \(PREFIXES: was prefixes.jsonl, now other.jsonl\)"):
        claim("other.jsonl")
