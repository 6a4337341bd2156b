"""Sampling on worker processes with fake engines: device pinning, faults, resume, the dry-run plan."""

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

from conftest import default_sigint, sampling_stage_config
from fakes import BoxScorer
from processes import killed_when, lines_in, python, started_until
from pope_cli.shared.config import ModelOptions, SamplingOptions, WorkerOptions
from pope_cli.shared.engines.base import Request, Sampling
from pope_cli.shared.errors import PopeError
from pope_cli.shared.workers.factory import WorkerPlan, plan_workers, pooled_engine
from pope_cli.shared.workers.plan import local_slots
from pope_cli.shared.workers.worker import EngineSpec
from pope_cli.stages.filter_hard import FilterHardConfig, run_filter_hard
from pope_cli.stages.filter_plan import plan_filter_hard
from worker_fakes import char_engine, env_engine

TESTS = Path(__file__).parent
FILES = ("stats.jsonl", "samples.jsonl", "hard.jsonl", "easy.jsonl")


def make_problems(path: Path, count: int) -> Path:
    rows = [{"id": f"p{i}", "problem": f"{'easy' if i % 2 == 0 else 'hard'} problem {i}", "answer": "7"}
            for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(data: Path, out: Path, **overrides) -> FilterHardConfig:
    return sampling_stage_config(FilterHardConfig, data, out, batch_size=4,
                                 **{"k": 12, "chunk": 3, "seed": 5, "save_samples": True, **overrides})


def vocab_of(tokenizer) -> list[str]:
    return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))


def pool(tokenizer, workers: int, reports: list | None = None, max_restarts: int = 3, delay: float = 0.0,
         kill_on: str | None = None, kill_marker: str | None = None, raise_on: str | None = None):
    """A PooledEngine of `workers` local processes running CharEngine, one thread each."""
    spec = EngineSpec(char_engine, (vocab_of(tokenizer), delay, kill_on, kill_marker, raise_on))
    plan = WorkerPlan(workers, 1, max_restarts, slots=local_slots(workers, 1, "cpu", cpus=workers))
    engine = pooled_engine(ModelOptions("scripted"), plan, spec, tokenizer)
    if reports is not None:
        engine.report = reports.append
    return engine


def in_process(tokenizer, cfg: FilterHardConfig) -> dict:
    engine = char_engine(vocab_of(tokenizer))
    engine.tokenizer = tokenizer
    return run_filter_hard(cfg, lambda: engine, BoxScorer)


def assert_same_files(a: Path, b: Path) -> None:
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# --- where workers run ----------------------------------------------------------------------

def test_slots_give_each_worker_its_own_gpus_and_a_share_of_the_threads():
    slots = local_slots(2, 2, "auto", gpus=["3", "5", "6", "7"], cpus=16)
    assert [s.gpus for s in slots] == [("3", "5"), ("6", "7")]
    assert [s.environment()["CUDA_VISIBLE_DEVICES"] for s in slots] == ["3,5", "6,7"]
    cpu = local_slots(3, 1, "cpu", gpus=["0"], cpus=7)
    assert [(s.gpus, s.threads) for s in cpu] == [(None, 2)] * 3
    assert "CUDA_VISIBLE_DEVICES" not in cpu[0].environment() and cpu[0].environment()["OMP_NUM_THREADS"] == "2"


@pytest.mark.parametrize("workers, tp, device, gpus, message", [
    (3, 2, "auto", ["0", "1", "2", "3"], "--workers 3 x --tensor-parallel-size 2 needs 6 GPUs; 4 visible"),
    (2, 2, "cpu", [], "--tensor-parallel-size: needs GPUs"),
    (2, 1, "cuda:1", ["0", "1"], "--device cuda:1: with several workers"),
    (2, 1, "cuda", [], "--device cuda: no GPU is visible"),
])
def test_impossible_placements_are_refused_before_anything_starts(workers, tp, device, gpus, message):
    with pytest.raises(PopeError, match="^" + message.replace("(", r"\(")):
        local_slots(workers, tp, device, gpus=gpus, cpus=4)


def test_worker_options_validate_and_only_pool_when_asked():
    assert plan_workers(ModelOptions("m"), WorkerOptions()) is None
    plan = plan_workers(ModelOptions("m", device="cpu"), WorkerOptions(workers=2))
    assert plan.workers == 2 and plan.describe().startswith("2 workers as local processes (")
    assert plan_workers(ModelOptions("m"), WorkerOptions(workers=1)) is None
    with pytest.raises(PopeError, match="--workers: must be at least 1"):
        WorkerOptions(workers=0)
    with pytest.raises(PopeError, match="--tensor-parallel-size: needs --backend vllm"):
        plan_workers(ModelOptions("m", backend="hf"), WorkerOptions(workers=2, tensor_parallel_size=2))


def test_each_worker_process_sees_only_its_own_devices():
    slots = local_slots(2, 2, "auto", gpus=["3", "5", "6", "7"], cpus=4)
    engine = pooled_engine(ModelOptions("fake"), WorkerPlan(2, 2, 0, slots=slots), EngineSpec(env_engine), tokenizer=object())
    results = engine.generate([Request([1], 1, seed) for seed in range(4)], Sampling())
    seen = sorted({c.text for completions in results for c in completions})
    assert seen == ["3,5|2", "6,7|2"]
    assert os.environ.get("CUDA_VISIBLE_DEVICES") != "3,5"  # the driver's own environment is untouched


# --- identical files, faults, resume --------------------------------------------------------

def test_two_workers_write_the_files_of_one_in_process_engine(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", 9)
    in_process(char_tokenizer, config(data, tmp_path / "one"))
    summary = run_filter_hard(config(data, tmp_path / "two"), lambda: pool(char_tokenizer, 2), BoxScorer)
    assert_same_files(tmp_path / "one", tmp_path / "two")
    assert summary["hard"] == 4 and summary["easy"] == 5


def test_a_sigkilled_worker_is_reported_restarted_and_its_problem_redone(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", 9)
    in_process(char_tokenizer, config(data, tmp_path / "one"))
    reports: list[str] = []
    marker = tmp_path / "killed-once"
    make = lambda: pool(char_tokenizer, 2, reports, kill_on="hard problem 5", kill_marker=str(marker))  # noqa: E731
    run_filter_hard(config(data, tmp_path / "two"), make, BoxScorer)
    assert marker.exists()
    assert len(reports) == 1
    assert "exited with code -9 (signal 9)" in reports[0] and "holding" in reports[0] and "p5" in reports[0]
    assert reports[0].startswith("worker ") and "restart 1 of at most 3" in reports[0]
    assert_same_files(tmp_path / "one", tmp_path / "two")
    stats = [json.loads(line) for line in (tmp_path / "two" / "stats.jsonl").read_text().splitlines()]
    assert [row["id"] for row in stats] == [f"p{i}" for i in range(9)]  # nothing lost, nothing twice


def test_restarts_are_bounded_then_the_stage_stops_cleanly_keeping_finished_work(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", 6)
    reports: list[str] = []
    make = lambda: pool(char_tokenizer, 2, reports, max_restarts=1, kill_on="hard problem 5")  # noqa: E731
    with pytest.raises(PopeError, match=r"p5.*stopping after 1 restart\(s\).*rerun the same command to resume"):
        run_filter_hard(config(data, tmp_path / "out"), make, BoxScorer)
    assert len(reports) == 1
    assert not (tmp_path / "out" / "hard.jsonl").exists()
    done = [json.loads(line)["id"] for line in (tmp_path / "out" / "stats.jsonl").read_text().splitlines()]
    assert "p5" not in done and len(done) == len(set(done))


def test_an_engine_error_in_a_worker_names_the_worker_the_error_and_the_problem(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", 4)
    reports: list[str] = []
    make = lambda: pool(char_tokenizer, 2, reports, max_restarts=0, raise_on="hard problem 3")  # noqa: E731
    with pytest.raises(PopeError, match=r"^worker \d failed \(RuntimeError: CUDA error: an illegal memory access "
                                        r"was encountered \(simulated\)\) holding [^;]*\bp3\b; stopping after 0"):
        run_filter_hard(config(data, tmp_path / "out"), make, BoxScorer)
    assert reports == []


KILLABLE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from conftest import build_char_tokenizer
    from fakes import BoxScorer
    from test_workers import config, pool
    from pope_cli.stages.filter_hard import run_filter_hard
    tokenizer = build_char_tokenizer()
    run_filter_hard(config(Path({data!r}), Path({out!r})), lambda: pool(tokenizer, {workers}, delay=0.1), BoxScorer)
""")


def test_sigkilled_driver_then_rerun_with_other_workers_resumes_to_identical_files(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", 12)
    in_process(char_tokenizer, config(data, tmp_path / "one"))
    out = tmp_path / "killed"
    killed_when(python(KILLABLE.format(tests=str(TESTS), data=str(data), out=str(out), workers=2)),
                lines_in(out / "stats.jsonl", 3))
    assert not (out / "hard.jsonl").exists()
    subprocess.run([sys.executable, "-c", KILLABLE.format(tests=str(TESTS), data=str(data), out=str(out), workers=3)],
                   cwd=TESTS.parent, check=True, timeout=120)
    assert_same_files(tmp_path / "one", out)


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_stops_every_worker_and_the_rerun_resumes_to_identical_files(tmp_path, char_tokenizer):
    data = make_problems(tmp_path / "p.jsonl", 12)
    in_process(char_tokenizer, config(data, tmp_path / "one"))
    out = tmp_path / "interrupted"
    script = KILLABLE.format(tests=str(TESTS), data=str(data), out=str(out), workers=2)
    proc = started_until(python(script), lines_in(out / "stats.jsonl", 2), stderr=subprocess.PIPE, text=True,
                         preexec_fn=default_sigint)
    workers = children_of(proc.pid)
    assert len(workers) >= 2, workers
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr
    deadline = time.time() + 10
    while time.time() < deadline and any(running(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(running(pid) for pid in workers)
    subprocess.run([sys.executable, "-c", script], cwd=TESTS.parent, check=True, timeout=120)
    assert_same_files(tmp_path / "one", out)


# --- the dry run ------------------------------------------------------------------------------

def test_dry_run_plan_counts_worst_and_expected_samples_tokens_and_hours(tmp_path):
    data = make_problems(tmp_path / "p.jsonl", 10)
    cfg = config(data, tmp_path / "out", k=128, chunk=16, sampling=SamplingOptions(max_new_tokens=1000),
                 parallel=WorkerOptions(workers=4), assume_hard=0.2, gen_tokens_per_s=500.0)
    plan = plan_filter_hard(cfg)
    assert plan["problems"] == 10 and plan["workers"] == 4
    assert plan["worst_samples"] == 1280 and plan["expected_samples"] == 2 * 128 + 8 * 16 == 384
    assert plan["worst_tokens"] == 1_280_000 and plan["expected_tokens"] == 384_000
    assert plan["worst_hours"] == round(1_280_000 / (500 * 4 * 3600), 2) == 0.18
    assert plan["expected_hours"] == round(384_000 / (500 * 4 * 3600), 2) == 0.05


def test_dry_run_on_the_command_line_loads_no_model_and_writes_nothing(tmp_path):
    data = make_problems(tmp_path / "p.jsonl", 10)
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    proc = subprocess.run([sys.executable, "-m", "pope_cli.cli", "filter-hard", str(data), "--model", "no/such-model",
                           "--out", str(tmp_path / "out"), "--dry-run", "--workers", "8", "--k", "128",
                           "--max-new-tokens", "1000", "--gen-tokens-per-s", "500"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "384" in proc.stdout and "1280" in proc.stdout and "0.09 / 0.03" in proc.stdout
    assert not (tmp_path / "out").exists()
