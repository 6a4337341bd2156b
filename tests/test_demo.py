"""A fast smoke test of `pope demo` (every stage runs for real on the shipped toy model, tiny budgets)
and of its phase runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import read_jsonl as read


def test_demo_runs_every_stage_and_writes_results_curves_and_a_report(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--steps", "2", "--n-easy", "4", "--n-hard", "4", "--n-heldout", "2", "--k", "4",
            "--prefix-n", "2", "--eval-n", "2", "--prompts-per-step", "2", "--group-size", "2", "--parallel", "2",
            "--arms", "pope,pope-no-restate,sft-grpo,pope-self", "--sft-steps", "2", "--heldout", "filter"]
    proc = subprocess.run([sys.executable, "-m", "pope_cli.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"start", "pope", "pope-no-restate", "sft-grpo", "pope-self"}
    found = results["training"]["pope-self"]
    assert found["solutions"]["problems"] == results["filter"]["hard"] == sum(found["prefixes"].values())
    assert found["solutions"]["solved"] == found["prefixes"]["found"] + found["prefixes"]["not_found_kept"]
    assert "solution" not in json.loads((out / "solutions" / "answers.jsonl").read_text().splitlines()[0])
    assert set(results["arms"]["pope-no-restate"]) == {"unguided", "guided", "guided_own_template"}
    sft = results["training"]["sft-grpo"]
    assert sft["sft_steps"] == 2 and sft["steps"] == 2 and sft["sft_data"]["kept"] == results["filter"]["hard"]
    sft_metrics = (out / "runs" / "sft-grpo.sft" / "metrics.jsonl").read_text().splitlines()
    assert len(sft_metrics) == 2 and "token_accuracy" in json.loads(sft_metrics[0])
    rl_config = json.loads((out / "runs" / "sft-grpo" / "config.json").read_text())
    assert rl_config["model"]["model"] == str(out / "runs" / "sft-grpo.sft" / "final")
    assert set(results["arms"]["pope"]) == {"unguided", "guided"}
    assert results["training"]["pope"]["steps"] == 2 and results["filter"]["problems"] == 8
    assert results["heldout_filter"]["problems"] == 2 and results["heldout_filter"]["hard"] >= 1
    heldout_ids = {json.loads(line)["id"] for line in (out / "heldout_filter" / "hard.jsonl").read_text().splitlines()}
    evaluated_ids = {json.loads(line)["id"] for line in (out / "eval" / "pope" / "samples.jsonl").read_text().splitlines()}
    assert evaluated_ids == heldout_ids
    assert any(c.startswith("pope train ") and "--mode pope" in c for c in results["commands"])
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "report" / "manifest.json").read_text())
    assert report["runs"] == ["pope", "pope-no-restate", "sft-grpo", "pope-self"]
    assert report["evals"] == ["start", "pope", "pope-no-restate", "sft-grpo", "pope-self", "pope-no-restate.own-template"]
    figures = {figure["file"]: figure for figure in report["figures"]}
    assert {"reward.png", "solved.png", "entropy.png", "length.png", "evals.png"} <= set(figures)
    assert figures["reward.png"]["panels"][1] == {"title": "unguided prompts",
                                                  "series": ["pope", "pope-no-restate", "sft-grpo", "pope-self"]}
    assert all(panel["series"] == ["unguided", "guided"] for panel in figures["evals.png"]["panels"])
    assert (out / "report" / "index.html").exists() and (out / "report" / "report.md").exists()
    for stage_file in ("filter/stats.jsonl", "prefixes.jsonl", "runs/sft-grpo/final/config.json", "eval/start/summary.json"):
        assert (out / stage_file).exists(), stage_file
    assert "held-out hard problems" in proc.stdout
    # in a pipe: one line per phase, then one per command as it finishes
    assert "train-eval: 4 × pope train, 6 × pope eval" in proc.stdout
    finished = [line.split(": ", 1)[1] for line in proc.stdout.splitlines() if "  done in " in line]
    assert len(finished) == len(results["commands"]) and f"pope train → {out / 'runs' / 'pope'}" in finished
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


def test_a_sampling_command_started_last_gets_a_worker_per_slot():
    from pope_cli.stages.demo import launch_argv

    assert launch_argv(["filter-hard", "x"], 2, others_waiting=False) == ["filter-hard", "x", "--workers", "2"]
    assert launch_argv(["eval", "x"], 2, others_waiting=True) == ["eval", "x"]  # the slot is someone else's
    assert launch_argv(["eval", "x"], 1, others_waiting=False) == ["eval", "x"]  # one slot: one engine
    assert launch_argv(["train", "x"], 2, others_waiting=False) == ["train", "x"]  # not a sampling stage
    assert launch_argv(["eval", "--workers", "3"], 2, others_waiting=False) == ["eval", "--workers", "3"]


def test_training_and_evaluation_share_a_pool_each_evaluation_after_its_training(tmp_path):
    from pope_cli.stages.demo import DemoConfig, pooled, stage_commands

    runs = pooled(stage_commands(DemoConfig(out=str(tmp_path), arms=["grpo", "pope-no-restate"]), tmp_path))
    assert [name for name, _, _ in runs] == ["data", "filter", "prefixes", "train-eval"]
    _, commands, needs = runs[-1]
    names = [c[c.index("--out") + 1].rsplit("/", 1)[1] for c in commands]
    assert names == ["grpo", "pope-no-restate", "start", "grpo", "pope-no-restate", "pope-no-restate.own-template"]
    assert needs == {3: 0, 4: 1, 5: 1}  # the start model's evaluation waits for nothing


def test_phase_starts_a_command_only_after_the_one_it_needs(tmp_path):
    from pope_cli.stages.demo import run_phase

    seen = []

    def watch(name, jobs):
        seen.append([(job.started, job.ended) for job in jobs])

    run_phase("dep", [["--help"], ["eval", "--help"], ["train", "--help"]], tmp_path, parallel=3, threads=1,
              watch=watch, needs={0: 2})
    (first, _), _, (_, needed_end) = seen[-1]
    assert first >= needed_end  # job 0 waited for job 2 although a slot was free


def test_a_ready_evaluation_starts_before_a_training(tmp_path):
    from pope_cli.stages.demo import run_phase

    seen = []
    run_phase("order", [["train", "--help"], ["eval", "--help"], ["train", "--help"]], tmp_path, parallel=1,
              threads=1, watch=lambda name, jobs: seen.append([job.started for job in jobs]))
    train, evaluation, second_train = seen[-1]
    assert evaluation < train < second_train  # then the rest in their order


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


def plan(tmp_path, **options) -> dict[str, dict[str, list[str]]]:
    """Each phase's commands, keyed by their --out directory's name."""
    from pope_cli.stages.demo import DemoConfig, stage_commands

    phases = stage_commands(DemoConfig(out=str(tmp_path), **options), tmp_path)
    return {phase: {c[c.index("--out") + 1].rsplit("/", 1)[1]: c for c in commands} for phase, commands in phases.items()}


def value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_default_demo_plans_grpo_against_pope(tmp_path):
    phases = plan(tmp_path)
    assert list(phases) == ["data", "filter", "prefixes", "train", "eval"]  # no SFT phase
    assert set(phases["train"]) == {"grpo", "pope"} and set(phases["eval"]) == {"start", "grpo", "pope"}
    assert value(phases["train"]["grpo"], "--mode") == "grpo" and value(phases["train"]["pope"], "--mode") == "pope"


def test_full_demo_plans_every_arm_with_one_budget_and_one_evaluation(tmp_path):
    from pope_cli.stages.demo import PAPER_ARMS as ARMS, templates
    from pope_cli.toy.heldout import HARD, PREFIXES

    phases = plan(tmp_path, full=True)
    (pool_filter,), (pool_prefixes,) = phases["filter"].values(), phases["prefixes"].values()
    assert pool_filter[1] == str(tmp_path / "data" / "mix.jsonl") and value(pool_filter, "--k") == "128"
    assert pool_prefixes[1] == str(tmp_path / "filter" / "hard.jsonl")

    train = phases["train"]
    assert set(train) == set(ARMS) and len(ARMS) == 9
    easy = str(tmp_path / "data" / "easy.jsonl")
    start = value(train["grpo"], "--model")
    expected = {  # arm → (mode, the options it adds to the shared ones)
        "grpo": ("grpo", {}), "pope": ("pope", {}),
        "grpo-easy": ("grpo", {"--easy": easy, "--easy-fraction": "0.5"}),
        "pope-easy": ("pope", {"--easy": easy, "--easy-fraction": "0.5"}),
        "pope-no-restate": ("pope", {"--template": templates()["guided-no-restate"]}),
        "entropy": ("grpo", {"--entropy-coef": "0.01"}),
        "clip-higher": ("grpo", {"--clip-high": "0.28", "--mini-batch-size": "32"}),
        "sft-grpo": ("grpo", {"--model": str(tmp_path / "runs" / "sft-grpo.sft" / "final")}),
        "rs-sft-grpo": ("grpo", {"--model": str(tmp_path / "runs" / "rs-sft-grpo.sft" / "final")}),
    }
    shared = {flag: value(train["grpo"], flag) for flag in ("--steps", "--seed", "--lr", "--prompts-per-step",
                                                              "--group-size", "--adv-norm", "--max-new-tokens")}
    assert shared["--steps"] == "110" and shared["--seed"] == "0"
    for arm, (mode, added) in expected.items():
        command = train[arm]
        assert value(command, "--mode") == mode and value(command, "--out") == str(tmp_path / "runs" / arm)
        assert command[1] == str(tmp_path / "prefixes.jsonl")
        assert {flag: value(command, flag) for flag in shared} == shared, arm
        assert {flag: value(command, flag) for flag in added} == added, arm
        assert arm.endswith("sft-grpo") or value(command, "--model") == start
        others = {"--easy", "--template", "--entropy-coef", "--clip-high", "--mini-batch-size"} - set(added)
        assert not others & set(command), arm
    sft = phases["sft"]
    assert set(sft) == {"sft-grpo.sft", "rs-sft-grpo.sft"}
    assert value(sft["sft-grpo.sft"], "--source") == "oracle"
    assert value(sft["rs-sft-grpo.sft"], "--source") == "guided-samples"
    assert all(value(c, "--steps") == "50" and value(c, "--model") == start and c[1] == str(tmp_path / "prefixes.jsonl")
               for c in sft.values())
    evals = phases["eval"]
    assert set(evals) == {"start", *ARMS, "pope-no-restate.own-template"}
    assert all(c[1] == str(HARD) and value(c, "--prefixes") == str(PREFIXES) for c in evals.values())
    assert all(value(c, "--mode") == "unguided,guided" and value(c, "--template") == templates()["guided"]
               for name, c in evals.items() if name != "pope-no-restate.own-template")
    own = evals["pope-no-restate.own-template"]
    assert value(own, "--mode") == "guided" and value(own, "--template") == templates()["guided-no-restate"]
    assert value(own, "--model") == str(tmp_path / "runs" / "pope-no-restate" / "final")
    setting = ("--prefixes", "--n", "--k", "--seed", "--max-new-tokens", "--reward", "--unguided-template")
    assert len({tuple(value(c, flag) for flag in setting) for c in evals.values()}) == 1  # one evaluation setting


def test_heldout_filter_plans_both_sets_side_by_side_and_the_shipped_set_needs_the_shipped_model(tmp_path):
    from pope_cli.stages.demo import DemoConfig
    from pope_cli.shared.errors import PopeError

    phases = plan(tmp_path, heldout="filter")
    assert set(phases["filter"]) == {"filter", "heldout_filter"} and set(phases["prefixes"]) == {
        "prefixes.jsonl", "heldout_prefixes.jsonl"}
    heldout = str(tmp_path / "heldout_filter" / "hard.jsonl")
    assert phases["prefixes"]["heldout_prefixes.jsonl"][1] == heldout
    assert all(c[1] == heldout and value(c, "--prefixes") == str(tmp_path / "heldout_prefixes.jsonl")
               for c in phases["eval"].values())
    with pytest.raises(PopeError, match="--heldout: the shipped held-out set is hard for the shipped toy model only"):
        DemoConfig(out=str(tmp_path), model=str(tmp_path))
    with pytest.raises(PopeError, match="--heldout: .mine. is not one of shipped, filter"):
        DemoConfig(out=str(tmp_path), heldout="mine")


def test_a_training_pool_that_holds_a_heldout_problem_is_refused(tmp_path):
    from pope_cli.stages.demo import require_disjoint_heldout
    from pope_cli.shared.errors import PopeError

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mix.jsonl").write_text('{"id": "hard-00001", "problem": "7*9-5"}\n')
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text('{"id": "heldout-00000", "problem": "3+4"}\n')
    require_disjoint_heldout(tmp_path, heldout)
    heldout.write_text('{"id": "heldout-00000", "problem": "7*9-5"}\n')
    with pytest.raises(PopeError, match=r"the training pool holds held-out problems \(hard-00001\)"):
        require_disjoint_heldout(tmp_path, heldout)


def test_arms_pick_the_plan_and_unknown_arms_are_refused(tmp_path):
    from pope_cli.shared.errors import PopeError

    phases = plan(tmp_path, arms=["entropy", "rs-sft-grpo"])
    assert set(phases["train"]) == {"entropy", "rs-sft-grpo"} and set(phases["sft"]) == {"rs-sft-grpo.sft"}
    assert set(phases["eval"]) == {"start", "entropy", "rs-sft-grpo"}
    from pope_cli.stages.demo import DemoConfig, arm_list

    assert arm_list("pope, grpo,pope") == ["pope", "grpo"]
    with pytest.raises(PopeError, match="--arms: 'ppo' is not one of grpo, pope, grpo-easy"):
        DemoConfig(out=str(tmp_path), arms=arm_list("grpo,ppo"))


def test_solution_arms_search_solutions_without_the_oracle_and_train_on_their_own_prefixes(tmp_path):
    from pope_cli.stages.demo import SELF_K, TEACHER_K, templates, write_answers, write_found_pools, DemoConfig
    from pope_cli.toy.model import SHIPPED_MODEL_DIR, TEACHER_MODEL_DIR

    phases = plan(tmp_path, arms=["pope-self", "pope-teacher"])
    assert list(phases) == ["data", "filter", "solutions", "prefixes", "train", "eval"]
    solutions, prefixes, train = phases["solutions"], phases["prefixes"], phases["train"]
    answers = str(tmp_path / "solutions" / "answers.jsonl")
    assert {name: (c[1], value(c, "--model"), value(c, "--k"), value(c, "--template")) for name, c in solutions.items()} == {
        "self.jsonl": (answers, str(SHIPPED_MODEL_DIR), str(SELF_K), templates()["unguided"]),
        "teacher.jsonl": (answers, str(TEACHER_MODEL_DIR), str(TEACHER_K), templates()["unguided"])}
    assert list(solutions) == ["teacher.jsonl", "self.jsonl"]  # the long search last: it gets the idle core
    # No arm trains on the oracle's prefixes, so none are searched.
    assert set(prefixes) == {"prefixes-self.jsonl", "prefixes-teacher.jsonl"}
    for source in ("self", "teacher"):
        command = prefixes[f"prefixes-{source}.jsonl"]
        assert command[1] == str(tmp_path / "solutions" / f"{source}.pool.jsonl")
        assert value(command, "--no-solution") == "keep"
        arm = train[f"pope-{source}"]
        assert arm[1] == str(tmp_path / f"prefixes-{source}.jsonl") and value(arm, "--mode") == "pope"
    assert (TEACHER_MODEL_DIR / "model.safetensors").exists()

    # Between the phases: the pool without its solutions, then each search's solved + unsolved records.
    (tmp_path / "filter").mkdir()
    rows = [{"id": f"h{i}", "problem": f"{i}*4", "answer": str(i * 4 % 10), "solution": "x"} for i in range(3)]
    (tmp_path / "filter" / "hard.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_answers(tmp_path)
    assert read(tmp_path / "solutions" / "answers.jsonl") == [{k: v for k, v in r.items() if k != "solution"} for r in rows]
    for source in ("self", "teacher"):
        solved = tmp_path / "solutions" / f"{source}.jsonl"
        solved.write_text(json.dumps({"id": "h1", "solution": "y"}) + "\n")
        Path(f"{solved}.unsolved.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in ("h0", "h2")))
    write_found_pools(DemoConfig(out=str(tmp_path), arms=["pope-self", "pope-teacher"]), tmp_path)
    assert [r["id"] for r in read(tmp_path / "solutions" / "self.pool.jsonl")] == ["h1", "h0", "h2"]


def test_the_beyond_suite_plans_the_off_policy_curriculum_and_guidance_arms(tmp_path):
    from pope_cli.shared.errors import PopeError
    from pope_cli.stages.demo import PAPER_ARMS, SUITES, DemoConfig

    train = plan(tmp_path, suite="beyond")["train"]
    assert set(train) == set(SUITES["beyond"]) and not set(train) & set(PAPER_ARMS)
    expected = {  # arm → (mode, the options it adds to the shared ones)
        "offpolicy": ("grpo", {"--oracle-rollouts": "1", "--oracle-is": "plain"}),
        "luffy": ("grpo", {"--oracle-rollouts": "1", "--oracle-is": "luffy"}),
        "curriculum": ("grpo", {"--easy": str(tmp_path / "data" / "easy.jsonl"), "--curriculum": "27"}),
        "grpo-offpolicy": ("grpo", {"--updates-per-step": "2", "--mini-batch-size": "32"}),
        "clip-higher-offpolicy": ("grpo", {"--updates-per-step": "2", "--mini-batch-size": "32", "--clip-high": "0.28"}),
        "pope-adaptive": ("pope", {"--guidance": "adaptive"}),
        "pope-anneal": ("pope", {"--guidance": "anneal"}),
    }
    for arm, (mode, added) in expected.items():
        assert value(train[arm], "--mode") == mode and {flag: value(train[arm], flag) for flag in added} == added, arm
    assert "--clip-high" not in train["grpo-offpolicy"] and "--oracle-rollouts" not in train["curriculum"]
    assert DemoConfig(out=str(tmp_path), full=True).arms == list(PAPER_ARMS) == DemoConfig(out=str(tmp_path), suite="seed").arms
    assert DemoConfig(out=str(tmp_path), suite="all").arms == [*PAPER_ARMS, *SUITES["beyond"]]
    with pytest.raises(PopeError, match="--suite: --full is --suite seed"):
        DemoConfig(out=str(tmp_path), full=True, suite="beyond")
    (make_data,) = plan(tmp_path, oracle_style="terse")["data"].values()
    assert value(make_data, "--oracle-style") == "terse" and "--oracle-style" not in plan(tmp_path)["data"]["data"]


def test_the_training_facts_sum_the_guided_prompts_and_read_the_oracle_weights():
    from pope_cli.stages.demo import guidance_facts, oracle_facts

    rows = [{"prompts/guided": 4, "guidance/prefix_fraction": 0.5, "guidance/guided_skipped": 0},
            {"prompts/guided": 0, "guidance/prefix_fraction": None, "guidance/guided_skipped": 4},
            {"prompts/guided": 2, "guidance/prefix_fraction": 0.2, "guidance/guided_skipped": 2}]
    # the shown share per guided prompt: (4 * 0.5 + 2 * 0.2) / 6
    assert guidance_facts(rows) == {"prefix_fraction_mean": pytest.approx(0.4), "guided_skipped": 6}
    assert guidance_facts([{"prompts/guided": 0}]) == {} and oracle_facts([{"oracle/tokens": None}]) == {}
    rows = [{"oracle/tokens": 10, "oracle/weight_max": 0.9, "oracle/weight_mean": 0.5, "oracle/clip_fraction": 0.0,
             "oracle/loss_share": 0.2, "oracle/entropy": 0.3, "oracle/reward": 1.0},
            {"oracle/tokens": 0, "oracle/weight_max": None, "oracle/reward": 1.0},  # a step without an update
            {"oracle/tokens": 12, "oracle/weight_max": 0.99, "oracle/weight_mean": 0.7, "oracle/clip_fraction": 0.5,
             "oracle/loss_share": 0.4, "oracle/entropy": 0.1, "oracle/reward": 0.0}]
    assert oracle_facts(rows) == {"oracle_weight_max": 0.99, "oracle_weight_mean": pytest.approx(0.6),
                                  "oracle_clip_fraction": 0.25, "oracle_loss_share": pytest.approx(0.3),
                                  "oracle_entropy_last_tenth": 0.1, "oracle_reward": pytest.approx(2 / 3)}


def test_full_demo_after_a_default_one_reuses_every_finished_command(tmp_path):
    from pope_cli.stages.demo import DemoConfig
    from pope_cli.stages.demo import stage_commands

    default = stage_commands(DemoConfig(out=str(tmp_path)), tmp_path)
    full = stage_commands(DemoConfig(out=str(tmp_path), full=True), tmp_path)
    for phase, commands in default.items():
        assert all(command in full[phase] for command in commands), phase
