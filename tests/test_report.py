"""`pope report` on two real (tiny) training runs and an evaluation: the files, each figure's
panels and series (from the manifest, read back from matplotlib's axes), the tables, the
completions, and an index.html that fetches nothing."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import same_prefix_rows, write_prefix_workspace
from pope_cli.shared.config import ModelOptions, PromptOptions, RewardOptions, SamplingOptions
from pope_cli.shared.errors import PopeError
from pope_cli.shared.metrics import summarize
from pope_cli.stages.report.config import ReportConfig
from pope_cli.stages.report.writer import run_report
from pope_cli.stages.train.config import TrainConfig


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Two 4-step runs of the tiny model (pope and plain grpo) with logged completions, and an eval dir."""
    from pope_cli.stages.train.trainer import run_train

    torch.set_num_threads(1)
    root = write_prefix_workspace(tmp_path_factory.mktemp("report_inputs"), same_prefix_rows(4))
    for mode in ("pope", "grpo"):
        run_train(TrainConfig(prefixes=str(root / "prefixes.jsonl"), out=str(root / mode),
                              model=ModelOptions(str(tiny_model_dir), backend="hf", device="cpu"),
                              prompt=PromptOptions(unguided_template=str(root / "unguided.txt")),
                              sampling=SamplingOptions(temperature=1.0, max_new_tokens=6),
                              reward=RewardOptions("train_rewards:starts_lower", workers=1), mode=mode, steps=4,
                              prompts_per_step=4, group_size=4, lora=False, lr=1e-2, warmup_steps=0, save_every=100,
                              log_completions=2, log_every=2),
                  reporter_stream=io.StringIO())
    (root / "eval").mkdir()
    models = {"start": {"unguided": summarize([(4, 0), (4, 1)], [1, 4], seed=0),
                        "guided": summarize([(4, 2), (4, 3)], [1, 4], seed=0)},
              "final": {"unguided": summarize([(4, 1), (4, 2)], [1, 4], seed=0)}}
    (root / "eval" / "summary.json").write_text(json.dumps({"n": 4, "ks": [1, 4], "modes": ["unguided", "guided"],
                                                            "models": models}))
    return root


def figures_by_file(result: dict) -> dict[str, dict]:
    return {figure["file"]: figure for figure in result["figures"]}


def test_two_runs_overlay_in_every_training_figure(runs, tmp_path):
    result = run_report(ReportConfig(dirs=[str(runs / "pope"), str(runs / "grpo"), str(runs / "eval")],
                                     out=str(tmp_path / "report"), smooth=2))
    figures = figures_by_file(result)
    assert list(figures) == ["reward.png", "solved.png", "entropy.png", "length.png", "clipping.png", "kl.png",
                             "evals.png"]
    reward = figures["reward.png"]["panels"]
    assert [p["title"] for p in reward] == ["guided prompts", "unguided prompts"]  # no run mixed in easy problems
    assert reward[0]["series"] == ["pope"] and reward[1]["series"] == ["pope", "grpo"]  # grpo has no guided prompts
    for name in ("solved.png", "entropy.png", "length.png", "clipping.png"):
        assert all(p["series"] == ["pope", "grpo"] for p in figures[name]["panels"]), name
    assert [p["title"] for p in figures["length.png"]["panels"]] == ["mean response length", "longest response",
                                                                    "truncated at max-new-tokens"]
    # No KL term and no evaluation during training: only the sampler/trainer mismatch (logged every step) is drawn.
    assert [p["title"] for p in figures["kl.png"]["panels"]] == ["mismatch/kl", "mismatch/ratio_mean", "mismatch/ratio_max",
                                                                  "mismatch/masked_fraction"]
    assert all(p["series"] == ["pope", "grpo"] for p in figures["kl.png"]["panels"])
    assert [p["title"] for p in figures["clipping.png"]["panels"]] == ["clipped (either side)", "clipped low",
                                                                      "clipped high"]
    evals = figures["evals.png"]["panels"]
    assert [p["title"] for p in evals] == ["avg@n", "pass@1", "pass@4"]
    assert all(p["series"] == ["unguided", "guided"] for p in evals)
    for figure in figures.values():
        assert (tmp_path / "report" / figure["file"]).read_bytes()[:4] == b"\x89PNG"


def test_report_tables_and_latest_completions(runs, tmp_path):
    run_report(ReportConfig(dirs=[str(runs / "pope"), str(runs / "grpo"), str(runs / "eval")], out=str(tmp_path),
                            completions=1))
    text = (tmp_path / "report.md").read_text()
    rows = [json.loads(line) for line in (runs / "pope" / "metrics.jsonl").read_text().splitlines()]
    unguided = [r["reward/unguided"] for r in rows]
    assert re.search(rf"\| pope \| 4 \| [0-9.]+ \| {sum(unguided) / 4:.3f} \| - \| {rows[-1]['solved_unguided/ever']} \|",
                     text)
    assert "| eval: start | unguided | 2 | 12.5 [" in text and "| eval: final | unguided | 2 | 37.5 [" in text
    assert "![Training reward by prompt kind](reward.png)" in text
    logged = [json.loads(line) for line in (runs / "pope" / "completions.jsonl").read_text().splitlines()]
    assert [c["step"] for c in logged] == [2, 2, 4, 4]
    latest = {c["kind"]: c for c in logged if c["step"] == 4}
    assert set(latest) == {"guided", "unguided"}
    for kind, row in latest.items():
        assert f"### pope: {kind} prompts" in text
        assert f"step 4 · problem {row['problem_id']} · reward {row['reward']:g}" in text
    assert text.count("step 2 · problem") == 0  # only the latest one per kind


def test_index_html_embeds_every_figure_and_fetches_nothing(runs, tmp_path):
    result = run_report(ReportConfig(dirs=[str(runs / "pope"), str(runs / "eval")], out=str(tmp_path)))
    page = (tmp_path / "index.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(result["figures"]) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"(src|href)=\"?(https?:)?//", page) and "@import" not in page and "url(" not in page
    assert page.count("<table>") == 2


def test_report_command_and_its_errors(runs, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "pope_cli.cli", "report", str(runs / "grpo"), "--out", str(tmp_path / "r")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "reward.png" in ok.stdout and (tmp_path / "r" / "index.html").exists()
    bad = subprocess.run([sys.executable, "-m", "pope_cli.cli", "report", str(tmp_path), "--out", str(tmp_path / "r2")],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (f"error: {tmp_path}: neither a run directory (metrics.jsonl) nor an eval directory "
                                  "(summary.json)")
    with pytest.raises(PopeError, match="--smooth: must be at least 1"):
        ReportConfig(dirs=["x"], out="y", smooth=0)


def test_runs_with_the_same_name_are_told_apart_by_their_parents(tmp_path):
    from pope_cli.stages.report.inputs import labels

    assert labels([Path("/a/x/run"), Path("/a/y/run"), Path("/a/z")]) == ["x/run", "y/run", "z"]
    with pytest.raises(PopeError, match="given twice"):
        labels([Path("/a/run"), Path("/a/run")])


@pytest.mark.parametrize("models", [("/opt/toy/model", "runs/grpo/final", "runs/pope/final"), ("run/final", "runfull/final")])
def test_an_eval_of_models_whose_directories_share_a_name_keeps_every_model(tmp_path, models):
    (tmp_path / "ev").mkdir()
    summaries = {model: {"unguided": summarize([(4, i + 1), (4, 0)], [1, 4], seed=0)} for i, model in enumerate(models)}
    (tmp_path / "ev" / "summary.json").write_text(json.dumps({"n": 4, "ks": [1, 4], "modes": ["unguided"],
                                                              "models": summaries}))
    run_report(ReportConfig(dirs=[str(tmp_path / "ev")], out=str(tmp_path / "rep")))
    rows = [line for line in (tmp_path / "rep" / "report.md").read_text().splitlines() if line.startswith("| ev: ")]
    names = ["model", "grpo/final", "pope/final"] if len(models) == 3 else ["run/final", "runfull/final"]
    assert [row.split(" | ")[0] for row in rows] == [f"| ev: {name}" for name in names]
    assert [row.split(" | ")[3].split(" [")[0] for row in rows] == [f"{100 * (i + 1) / 8:.1f}" for i in range(len(models))]


def test_a_reused_report_folder_keeps_no_figure_of_the_earlier_report(runs, tmp_path):
    run_report(ReportConfig(dirs=[str(runs / "pope"), str(runs / "eval")], out=str(tmp_path)))
    assert (tmp_path / "evals.png").exists() and (tmp_path / "reward.png").exists()
    result = run_report(ReportConfig(dirs=[str(runs / "grpo")], out=str(tmp_path)))
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f["file"] for f in result["figures"])
    assert not (tmp_path / "evals.png").exists()


def test_the_demo_curves_are_drawn_by_the_report_code(runs, tmp_path):
    from pope_cli.stages.report.figures import CURVES, draw_training
    from pope_cli.stages.report.inputs import load_inputs

    drawn = draw_training(CURVES, load_inputs([str(runs / "grpo"), str(runs / "pope")])[0], tmp_path / "curves.png", 10)
    assert drawn["panels"] == [{"title": "unguided reward", "series": ["grpo", "pope"]},
                               {"title": "guided reward", "series": ["pope"]},
                               {"title": "hard problems solved unguided, ever", "series": ["grpo", "pope"]}]


def test_kl_mismatch_and_periodic_evals_get_their_panels_where_logged(tmp_path):
    from pope_cli.stages.report.figures import draw_training, training_specs
    from pope_cli.stages.report.inputs import RunData

    rows = [{"step": s, "kl": 0.01 * s, "mismatch/kl": 0.001, "mismatch/ratio_max": 1.1,
             "eval/unguided/avg@n": 0.1 * s if s % 2 == 0 else None} for s in range(1, 5)]
    runs = [RunData("a", tmp_path, rows), RunData("b", tmp_path, [{**r, "mismatch/kl": None} for r in rows])]
    specs = {spec.file: spec for spec in training_specs(runs)}
    kl = draw_training(specs["kl.png"], runs, tmp_path / "kl.png", 2)
    assert kl["panels"] == [{"title": "KL to the starting model (k3)", "series": ["a", "b"]},
                            {"title": "mismatch/kl", "series": ["a"]},
                            {"title": "mismatch/ratio_max", "series": ["a", "b"]}]
    evals = draw_training(specs["training_eval.png"], runs, tmp_path / "e.png", 2)
    assert evals["panels"] == [{"title": "unguided/avg@n", "series": ["a", "b"]}]
    assert draw_training(specs["reward.png"], runs, tmp_path / "r.png", 2) is None and not (tmp_path / "r.png").exists()


def test_an_sft_run_gets_its_own_figure_and_stays_out_of_the_rl_ones(runs, tmp_path):
    from pope_cli.shared.config import FieldMap
    from pope_cli.shared.runtime import scorer_factory
    from pope_cli.stages.sft.config import SftConfig
    from pope_cli.stages.sft.trainer import run_sft

    reward = RewardOptions("math", workers=1)
    sft = SftConfig(data=str(runs / "prefixes.jsonl"), out=str(tmp_path / "sft"),
                    model=ModelOptions(str(runs / "pope" / "final"), backend="hf", device="cpu"), fields=FieldMap(),
                    prompt=PromptOptions(unguided_template=str(runs / "unguided.txt")),
                    sampling=SamplingOptions(max_new_tokens=6), reward=reward, steps=6, examples_per_step=4,
                    lora=False, lr=1e-2, log_completions=1, log_every=3)
    run_sft(sft, lambda: None, scorer_factory(reward))
    result = run_report(ReportConfig(dirs=[str(runs / "pope"), str(tmp_path / "sft")], out=str(tmp_path / "report")))
    figures = figures_by_file(result)
    assert [p["title"] for p in figures["sft.png"]["panels"]] == [
        "loss: NLL of the target tokens", "token accuracy (argmax = target)", "entropy at the target positions",
        "gradient norm (before clipping)"]
    assert all(p["series"] == ["sft"] for p in figures["sft.png"]["panels"])
    for name in ("reward.png", "entropy.png", "length.png"):
        assert all(p["series"] == ["pope"] for p in figures[name]["panels"]), name
    page = (tmp_path / "report" / "report.md").read_text()
    assert "sft.png" in page and (tmp_path / "report" / "sft.png").stat().st_size > 10_000
