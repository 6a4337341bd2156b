"""`--backend openai` against a local stub server: retries on 429/500/timeouts/dropped connections,
no solved problem asked for twice after a kill and resume, the API key in no file or log, one-line
errors, filter-hard on a served model, and the stages that refuse it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("openai")

from openai_stub import MODEL, Stub, StubServer  # noqa: E402
from pope_cli.shared.config import (ApiOptions, FieldMap, ModelOptions, PromptOptions, RewardOptions,  # noqa: E402
                                    SamplingOptions)
from pope_cli.shared.engines import make_engine  # noqa: E402
from pope_cli.shared.errors import PopeError  # noqa: E402
from pope_cli.shared.seeding import derive_seed  # noqa: E402
from pope_cli.stages.solutions import SolutionsConfig, run_make_solutions  # noqa: E402
from test_make_solutions import EndScorer, read_jsonl  # noqa: E402

TESTS = Path(__file__).parent
REPO = TESTS.parent
TOY_MODEL = REPO / "pope_cli" / "toy" / "model"
KEY = "sk-pope-test-3f9a1c77e2"  # made up: the stub checks it, no file or log may hold it
KEY_ENV = "POPE_TEST_API_KEY"
K, CHUNK, SEED = 12, 3, 1


def answer(prompt: str, seed: int) -> str:
    """'easy' problems are solved on seeds divisible by 3."""
    return "so \\boxed{7}" if "easy" in prompt and seed % 3 == 0 else "\\boxed{0}"


def problems(path: Path, count: int) -> Path:
    rows = [{"id": f"p{i}", "problem": f"{'easy' if i % 3 else 'hard'} problem #{i}.", "answer": "7"} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli_args(data: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pope_cli.cli", "make-solutions", str(data), "--out", str(out), "--model", str(TOY_MODEL),
            "--backend", "openai", "--api-base", base_url, "--api-model", MODEL, "--api-key-env", KEY_ENV,
            "--k", str(K), "--chunk", str(CHUNK), "--seed", str(SEED), "--max-new-tokens", "32",
            "--reward", "rewards_for_tests:ends_with_boxed_answer", "--reward-workers", "1", *extra]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), KEY_ENV: KEY}


def config(data: Path, out: Path, base_url: str, **api) -> SolutionsConfig:
    return SolutionsConfig(data=str(data), out=str(out), model=ModelOptions(str(TOY_MODEL), backend="openai"),
                           fields=FieldMap(), prompt=PromptOptions(), sampling=SamplingOptions(max_new_tokens=32),
                           reward=RewardOptions(), api=ApiOptions(api_base=base_url, api_model=MODEL,
                                                                  api_key_env=KEY_ENV, **api),
                           k=K, chunk=CHUNK, seed=SEED)


def straight_run(data: Path, out: Path, monkeypatch) -> Path:
    """make-solutions in-process against a fault-free stub: the reference files."""
    monkeypatch.setenv(KEY_ENV, KEY)
    with StubServer(Stub(answer, key=KEY)) as base_url:
        cfg = config(data, out, base_url)
        run_make_solutions(cfg, lambda: make_engine(cfg.model, api=cfg.api), EndScorer)
    return out


def test_faults_are_retried_reported_and_change_nothing_and_the_key_is_never_written(tmp_path, monkeypatch):
    data = problems(tmp_path / "p.jsonl", 6)
    reference = straight_run(data, tmp_path / "reference.jsonl", monkeypatch)
    stub = Stub(answer, faults=["429", "500", "timeout", "drop"], slow=2.0, key=KEY)
    out = tmp_path / "run" / "solutions.jsonl"
    with StubServer(stub) as base_url:
        done = subprocess.run(cli_args(data, out, base_url, "--request-timeout", "0.5", "--max-retries", "3",
                                       "--max-concurrency", "4"),
                              capture_output=True, text=True, cwd=REPO, env=environment(), timeout=120)
    assert done.returncode == 0, done.stderr
    # One line per retry as it happens; a request may meet two faults, so its retry number varies.
    for cause in (r"rate limited \(429\)", r"server error \(500\)", "timeout", "connection"):
        assert len(re.findall(rf"^openai: {cause}; retry [12]/3 in \d+\.\ds$", done.stderr, re.M)) == 1, cause
    counts = json.loads(Path(f"{out}.manifest.json").read_text())["counts"]
    assert counts["api_retries"] == {"rate limited (429)": 1, "server error (500)": 1, "timeout": 1, "connection": 1}
    assert len(stub.completions()) == counts["samples"] + 4  # every sample once, plus the four retried
    assert out.read_bytes() == reference.read_bytes()
    assert {entry.authorization for entry in stub.log} == {f"Bearer {KEY}"}
    written = [path for path in (tmp_path / "run").iterdir()]
    assert len(written) >= 5 and all(KEY not in path.read_text() for path in written)
    assert KEY not in done.stdout + done.stderr
    assert json.loads(Path(f"{out}.config.json").read_text())["api"]["api_key_env"] == KEY_ENV


def test_a_killed_run_resumes_without_asking_for_a_decided_problem_again(tmp_path, monkeypatch):
    data = problems(tmp_path / "p.jsonl", 8)
    reference = straight_run(data, tmp_path / "reference.jsonl", monkeypatch)
    stub = Stub(answer, delay=0.05, key=KEY)
    out = tmp_path / "solutions.jsonl"
    stats = Path(f"{out}.stats.jsonl")
    args = cli_args(data, out, "", "--max-concurrency", "1", "--batch-size", "1")
    with StubServer(stub) as base_url:
        args[args.index("--api-base") + 1] = base_url
        proc = subprocess.Popen(args, cwd=REPO, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (stats.exists() and stats.read_text().count("\n") >= 3):
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        decided = [row["id"] for row in read_jsonl(stats)]
        first_run = len(stub.completions())
        subprocess.run(args, cwd=REPO, env=environment(), check=True, capture_output=True, timeout=120)
    asked_again = [entry.body["prompt"] for entry in stub.completions()[first_run:]]
    assert len(decided) >= 3 and asked_again
    assert not [pid for pid in decided if any(f"#{pid[1:]}." in prompt for prompt in asked_again)]
    for suffix in ("", ".stats.jsonl", ".unsolved.jsonl"):
        assert Path(f"{out}{suffix}").read_bytes() == Path(f"{reference}{suffix}").read_bytes(), suffix


def test_each_sample_is_one_request_seeded_by_its_stream(tmp_path, monkeypatch):
    data = problems(tmp_path / "p.jsonl", 2)
    monkeypatch.setenv(KEY_ENV, KEY)
    stub = Stub(answer, key=KEY)
    with StubServer(stub) as base_url:
        cfg = config(data, tmp_path / "s.jsonl", base_url)
        run_make_solutions(cfg, lambda: make_engine(cfg.model, api=cfg.api), EndScorer)
    hard = sorted(entry.body["seed"] for entry in stub.completions() if "#0." in entry.body["prompt"])
    assert hard == [derive_seed(SEED, "make-solutions", "p0") + j for j in range(K)]
    # Not filter-hard's streams: with the same seed those are the k failures that made a problem hard.
    assert not set(hard) & {derive_seed(SEED, "p0") + j for j in range(K)}
    assert {entry.body["n"] for entry in stub.completions()} == {1}
    assert {entry.body["model"] for entry in stub.completions()} == {MODEL}


def test_a_refused_key_or_an_unserved_model_fails_in_one_line_before_anything_is_written(tmp_path, monkeypatch):
    data = problems(tmp_path / "p.jsonl", 2)
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with StubServer(Stub(answer, key=KEY)) as base_url:
        cfg = config(data, tmp_path / "out" / "s.jsonl", base_url)
        with pytest.raises(PopeError, match=r"refused the request with 401 \(check --api-key-env\): invalid api key"):
            run_make_solutions(cfg, lambda: make_engine(cfg.model, api=cfg.api), EndScorer)
        monkeypatch.setenv(KEY_ENV, KEY)
        cfg.api.api_model = "another-model"
        with pytest.raises(PopeError, match=r"--api-model: the server serves stub-teacher, not 'another-model'"):
            run_make_solutions(cfg, lambda: make_engine(cfg.model, api=cfg.api), EndScorer)
    assert not (tmp_path / "out").exists()


def test_retries_run_out_into_one_line(tmp_path, monkeypatch):
    data = problems(tmp_path / "p.jsonl", 1)
    monkeypatch.setenv(KEY_ENV, KEY)
    with StubServer(Stub(answer, faults=["500"] * 3, key=KEY)) as base_url:
        cfg = config(data, tmp_path / "s.jsonl", base_url, max_retries=2, max_concurrency=1)
        with pytest.raises(PopeError, match=r"gave up after 2 retries \(server error \(500\)"):
            run_make_solutions(cfg, lambda: make_engine(cfg.model, api=cfg.api), EndScorer)


def test_filter_hard_samples_a_served_model(tmp_path, monkeypatch):
    from pope_cli.stages.filter_hard import FilterHardConfig, run_filter_hard

    data = problems(tmp_path / "p.jsonl", 6)
    monkeypatch.setenv(KEY_ENV, KEY)
    with StubServer(Stub(answer, key=KEY)) as base_url:
        cfg = FilterHardConfig(data=str(data), out=str(tmp_path / "filter"), model=ModelOptions(str(TOY_MODEL), backend="openai"),
                               fields=FieldMap(), prompt=PromptOptions(), sampling=SamplingOptions(max_new_tokens=32),
                               reward=RewardOptions(), api=ApiOptions(api_base=base_url, api_model=MODEL, api_key_env=KEY_ENV),
                               k=K, chunk=CHUNK, seed=SEED)
        summary = run_filter_hard(cfg, lambda: make_engine(cfg.model, api=cfg.api), EndScorer)
    assert [r["id"] for r in read_jsonl(tmp_path / "filter" / "hard.jsonl")] == ["p0", "p3"]
    assert (summary["hard"], summary["easy"]) == (2, 4)


def guided_answer(prompt: str, seed: int) -> str:
    """Solves a problem once its prompt shows 'step 2' of the solution; else a wrong answer."""
    return "\\boxed{7}" if "step 2" in prompt else "\\boxed{0}"


def test_make_prefixes_and_eval_sample_a_served_model(tmp_path, monkeypatch):
    from pope_cli.stages.evaluate import EvalConfig, run_eval
    from pope_cli.stages.prefixes import PrefixConfig, run_make_prefixes

    rows = [{"id": f"p{i}", "problem": f"problem #{i}.", "answer": "7",
             "solution": "step 1 then.\n\nstep 2 then.\n\nstep 3 then.\n\nso \\boxed{7}"} for i in range(3)]
    data = tmp_path / "hard.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv(KEY_ENV, KEY)
    stub = Stub(guided_answer, key=KEY)
    with StubServer(stub) as base_url:
        common = dict(model=ModelOptions(str(TOY_MODEL), backend="openai"), prompt=PromptOptions(),
                      sampling=SamplingOptions(max_new_tokens=32), reward=RewardOptions(),
                      api=ApiOptions(api_base=base_url, api_model=MODEL, api_key_env=KEY_ENV), seed=SEED)
        prefixes = tmp_path / "prefixes.jsonl"
        cfg = PrefixConfig(data=str(data), out=str(prefixes), fields=FieldMap(), n=2, max_fraction=0.9, max_rungs=0,
                           **common)
        summary = run_make_prefixes(cfg, lambda: make_engine(cfg.model, api=cfg.api), EndScorer)
        # Rung 1 shows step 1 only (wrong answers), rung 2 shows step 2: the shortest prefix that solves.
        assert summary["found"] == 3 and {r["rung"] for r in read_jsonl(prefixes)} == {2}
        assert len(stub.completions()) == 3 * 2 * 2
        (server,) = json.loads(Path(f"{prefixes}.manifest.json").read_text())["counts"]["api_servers"]
        assert (server["url"], server["answered"]) == (base_url, 12)
        ecfg = EvalConfig(data=str(prefixes), out=str(tmp_path / "eval"), models=[str(TOY_MODEL)], fields=FieldMap(),
                          n=4, ks=[1, 4], modes=["unguided", "guided"], bootstrap=0, **common)
        result = run_eval(ecfg, lambda opts: make_engine(opts, api=ecfg.api), EndScorer)
    (modes,) = result["models"].values()
    assert (modes["unguided"]["avg@n"], modes["guided"]["avg@n"], modes["guided"]["pass@4"]) == (0.0, 1.0, 1.0)
    assert len(stub.completions()) == 12 + 3 * 4 * 2
    counts = json.loads((tmp_path / "eval" / "manifest.json").read_text())["counts"]
    assert counts["api_servers"][0]["answered"] == 24 and counts["api_token_counts"] == {"tokenizer": 24}
    with pytest.raises(PopeError, match="--model: with --backend openai give one --model"):
        EvalConfig(data=str(prefixes), out=str(tmp_path / "e2"), models=["a", "b"], fields=FieldMap(), **common)


@pytest.mark.parametrize("args, message", [
    (["train", "x.jsonl", "--out", "o", "--model", "m", "--backend", "openai"],
     "error: --backend: openai serves text only; training needs the weights here (use hf, vllm or auto)"),
    (["sft", "x.jsonl", "--out", "o", "--model", "m", "--backend", "openai"],
     "error: --backend: openai serves text only; training needs the weights here (use hf, vllm or auto)"),
    (["make-solutions", "x.jsonl", "--out", "o", "--model", "m", "--backend", "openai"],
     "error: --api-base: --backend openai needs the server's URL, e.g. http://127.0.0.1:8000/v1"),
    (["make-solutions", "x.jsonl", "--out", "o", "--model", "m", "--api-base", "http://127.0.0.1:1/v1"],
     "error: --api-base: only used with --backend openai"),
    (["filter-hard", "x.jsonl", "--out", "o", "--model", "m", "--api-route", "chat"],
     "error: --api-route: only used with --backend openai"),
    (["make-solutions", "x.jsonl", "--out", "o", "--model", "m", "--backend", "openai", "--api-base", "http://127.0.0.1:1/v1",
      "--api-route", "chat", "--no-chat-template"],
     "error: --no-chat-template: --api-route chat sends messages, which the server puts through its own chat template; "
     "raw text needs --api-route completions"),
])
def test_options_a_served_model_cannot_take_fail_in_one_line(args, message):
    from typer.testing import CliRunner

    from pope_cli.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and result.output.strip() == message


@pytest.mark.parametrize("command, shown", [("train", "[auto|hf|vllm]"), ("sft", "[auto|hf|vllm]"),
                                             ("make-solutions", "[auto|hf|vllm|openai]"), ("eval", "[auto|hf|vllm|openai]")])
def test_each_stage_shows_the_backends_it_takes(command, shown):
    from typer.testing import CliRunner

    from pope_cli.cli import app

    page = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
    (line,) = [line for line in page.splitlines() if line.lstrip("│ ").startswith("--backend ")]
    assert line.split()[2] == shown
    assert ("openai" in line) == ("openai" in shown)


def test_workers_are_refused_with_a_served_model():
    from pope_cli.shared.config import WorkerOptions
    from pope_cli.shared.workers.factory import plan_workers

    with pytest.raises(PopeError, match=r"--workers/--ray: not with --backend openai"):
        plan_workers(ModelOptions("m", backend="openai"), WorkerOptions(workers=2))


def test_stages_without_the_server_options_refuse_a_served_model():
    with pytest.raises(PopeError, match=r"only the sampling stages .* sample a served model"):
        make_engine(ModelOptions("m", backend="openai"))
