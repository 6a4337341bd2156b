"""A fast smoke test of `pope demo` (every stage runs for real on the shipped toy model, tiny budgets)
and of its phase runner."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_demo_runs_every_stage_and_writes_results_curves_and_a_report(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--steps", "2", "--n-easy", "4", "--n-hard", "4", "--n-heldout", "2", "--k", "4",
            "--prefix-n", "2", "--eval-n", "2", "--prompts-per-step", "2", "--group-size", "2", "--parallel", "2"]
    proc = subprocess.run([sys.executable, "-m", "pope_cli.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"start", "grpo", "pope"}
    assert set(results["arms"]["pope"]) == {"unguided", "guided"}
    assert results["training"]["pope"]["steps"] == 2 and results["filter"]["problems"] == 8
    assert results["heldout_filter"]["problems"] == 2 and results["heldout_filter"]["hard"] >= 1
    heldout_ids = {json.loads(line)["id"] for line in (out / "heldout_filter" / "hard.jsonl").read_text().splitlines()}
    evaluated_ids = {json.loads(line)["id"] for line in (out / "eval" / "pope" / "samples.jsonl").read_text().splitlines()}
    assert evaluated_ids == heldout_ids
    assert any(c.startswith("pope train ") and "--mode pope" in c for c in results["commands"])
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "report" / "manifest.json").read_text())
    assert report["runs"] == ["grpo", "pope"] and report["evals"] == ["start", "grpo", "pope"]
    figures = {figure["file"]: figure for figure in report["figures"]}
    assert {"reward.png", "solved.png", "entropy.png", "length.png", "evals.png"} <= set(figures)
    assert figures["reward.png"]["panels"][1] == {"title": "unguided prompts", "series": ["grpo", "pope"]}
    assert all(panel["series"] == ["unguided", "guided"] for panel in figures["evals.png"]["panels"])
    assert (out / "report" / "index.html").exists() and (out / "report" / "report.md").exists()
    for stage_file in ("filter/stats.jsonl", "prefixes.jsonl", "runs/grpo/final/config.json", "eval/start/summary.json"):
        assert (out / stage_file).exists(), stage_file
    assert "held-out hard problems" in proc.stdout
    rerun = subprocess.run([sys.executable, "-m", "pope_cli.cli", *args], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert json.loads((out / "results.json").read_text())["arms"] == results["arms"]


def test_phase_runs_commands_in_a_pool_and_reports_a_failure(tmp_path):
    from pope_cli.stages.demo import run_phase
    from pope_cli.shared.errors import PopeError

    run_phase("ok", [["--help"], ["eval", "--help"], ["train", "--help"]], tmp_path, parallel=2, threads=1)
    assert all("Usage" in (tmp_path / f"ok-{i}.log").read_text() for i in range(3))
    with pytest.raises(PopeError, match=r"`pope no-such-command` failed .* full log: .*bad-1.log"):
        run_phase("bad", [["--help"], ["no-such-command"], ["--help"]], tmp_path, parallel=2, threads=1)


def test_demo_stops_with_a_clear_error_when_filtering_leaves_no_hard_problem(tmp_path):
    from pope_cli.stages.demo import require_hard_problems
    from pope_cli.shared.errors import PopeError

    for name in ("filter", "heldout_filter"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "hard.jsonl").write_text('{"id": "a"}\n')
    require_hard_problems(tmp_path)
    for name, what in (("heldout_filter", "held-out set"), ("filter", "training pool")):
        (tmp_path / name / "hard.jsonl").write_text("")
        with pytest.raises(PopeError, match=rf"solved every problem of the {what} .* --n-heldout"):
            require_hard_problems(tmp_path)


def test_full_demo_plans_the_papers_arms_on_filtered_sets(tmp_path):
    from pope_cli.stages.demo import DemoConfig
    from pope_cli.stages.demo import stage_commands

    phases = stage_commands(DemoConfig(out=str(tmp_path), full=True), tmp_path)
    filters = phases["filter"]
    assert [c[1] for c in filters] == [str(tmp_path / "data" / "mix.jsonl"), str(tmp_path / "data" / "heldout.jsonl")]
    assert all(c[c.index("--k") + 1] == "128" for c in filters)
    train = {c[c.index("--out") + 1]: c for c in phases["train"]}
    easy_arm = train[str(tmp_path / "runs" / "grpo-easy")]
    assert easy_arm[easy_arm.index("--easy") + 1] == str(tmp_path / "data" / "easy.jsonl")
    assert "--template" in train[str(tmp_path / "runs" / "pope-no-restate")]
    evals = phases["eval"]
    assert {c[c.index("--out") + 1].rsplit("/", 1)[1] for c in evals} == {"start", "grpo", "pope", "grpo-easy", "pope-no-restate"}
    assert all(c[1] == str(tmp_path / "heldout_filter" / "hard.jsonl") for c in evals)


def test_full_demo_after_a_default_one_reuses_every_finished_command(tmp_path):
    from pope_cli.stages.demo import DemoConfig
    from pope_cli.stages.demo import stage_commands

    default = stage_commands(DemoConfig(out=str(tmp_path)), tmp_path)
    full = stage_commands(DemoConfig(out=str(tmp_path), full=True), tmp_path)
    for phase, commands in default.items():
        assert all(command in full[phase] for command in commands), phase
