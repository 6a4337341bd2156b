"""The robustness matrix: bad input files and bad options for every stage, disk and state.

Each bad input must end the stage with a non-zero exit code and one `error:` line naming the
file (and the line or row where there is one) and what is wrong: no traceback, no output
written, an existing output left exactly as it was. The model is a hub id that cannot load
here (`HF_HUB_OFFLINE`), so a stage that reached for the model before checking its input would
fail with a different message.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import default_sigint

from pope_cli.cli import app

GOOD_PROBLEM = {"id": "a", "problem": "What is 1+1?", "answer": "2", "solution": "1+1 = 2.\nSo \\boxed{2}."}
GOOD_PREFIX = {**GOOD_PROBLEM, "prefix": "1+1 = 2.", "prefix_fraction": 0.5, "status": "found"}

# kind → (file name, bytes writer, expected message pattern); `{record}` is the stage's good record.
BAD_INPUTS = {
    "empty": ("in.jsonl", lambda good: b"", "no records"),
    "non_utf8": ("in.jsonl", lambda good: _lines(good, {**good, "id": "b"}).replace(b'"b"', b'"\xff"'),
                 r"in.jsonl:2: not valid UTF-8"),
    "malformed_middle": ("in.jsonl", lambda good: _lines(good) + b'{"id": "b", \n' + _lines({**good, "id": "c"}),
                         r"in.jsonl:2: malformed JSON"),
    "truncated_last": ("in.jsonl", lambda good: _lines(good) + json.dumps({**good, "id": "b"}).encode()[:20],
                       r"in.jsonl:2: malformed JSON"),
    "wrong_type": ("in.jsonl", lambda good: _lines({**good, "problem": ["a", "b"]}),
                   r"in.jsonl:1: field 'problem' is a list, expected text"),
    "missing_field": ("in.jsonl", lambda good: _lines({k: v for k, v in good.items() if k != "problem"}),
                      r"in.jsonl:1: missing field 'problem'"),
    "duplicate_ids": ("in.jsonl", lambda good: _lines(good, good), r"in.jsonl:2: field 'id': duplicate id 'a'"),
    "huge_problem": ("in.jsonl", lambda good: _lines({**good, "problem": "x" * 10_000_000}),
                     r"in.jsonl:1: field 'problem' is 10,000,000 characters long"),
    "parquet_other_columns": ("in.parquet", lambda good: _parquet({"question": ["q"], "label": ["2"]}),
                              r"in.parquet: row 0: missing field"),
    "directory": ("in_dir", None, r"in_dir: is a directory"),
    "missing_path": ("nowhere.jsonl", None, r"nowhere.jsonl: no such file or directory"),
}

# stage → (argv with {input} where the bad file goes, the good record that file is a variant of)
STAGES = {
    "filter-hard": (["filter-hard", "{input}", "--out", "out"], GOOD_PROBLEM),
    "make-prefixes": (["make-prefixes", "{input}", "--out", "out.jsonl"], GOOD_PROBLEM),
    "eval": (["eval", "{input}", "--out", "out", "--n", "2", "--k", "1"], GOOD_PROBLEM),
    "eval --prefixes": (["eval", "good_problems.jsonl", "--prefixes", "{input}", "--mode", "guided", "--out", "out",
                         "--n", "2", "--k", "1"], GOOD_PREFIX),
    "train": (["train", "{input}", "--out", "out", "--steps", "1"], GOOD_PREFIX),
    "train --easy": (["train", "good_prefixes.jsonl", "--easy", "{input}", "--easy-fraction", "0.5", "--out", "out",
                      "--steps", "1"], GOOD_PROBLEM),
    "export": (["export", "{input}", "--out", "out", "--steps", "1"], GOOD_PREFIX),
}
OUTPUT = {"make-prefixes": "out.jsonl"}


def _lines(*records: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _parquet(columns: dict) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def invoke(argv: list[str], cwd: Path):
    """Run `pope argv` in-process in `cwd`; return (exit code, stderr, exception or None)."""
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, argv)
    finally:
        os.chdir(previous)
    unexpected = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.stderr, unexpected


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _workspace(tmp_path: Path, stage: str, kind: str) -> list[str]:
    argv, good = STAGES[stage]
    name, writer, _ = BAD_INPUTS[kind]
    (tmp_path / "good_problems.jsonl").write_bytes(_lines(GOOD_PROBLEM))
    (tmp_path / "good_prefixes.jsonl").write_bytes(_lines(GOOD_PREFIX))
    if kind == "directory":
        (tmp_path / name).mkdir()
    elif writer is not None:
        (tmp_path / name).write_bytes(writer(good))
    return [a.replace("{input}", name) for a in argv] + ["--model", "some-org/not-a-local-model"]


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
@pytest.mark.parametrize("stage", list(STAGES))
def test_bad_input_is_one_line_naming_file_and_line_and_writes_nothing(tmp_path, stage, kind):
    import re

    argv = _workspace(tmp_path, stage, kind)
    before = snapshot(tmp_path)
    code, stderr, unexpected = invoke(argv, tmp_path)
    assert unexpected is None, f"{stage}/{kind}: {unexpected!r}"
    assert code != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert re.search(BAD_INPUTS[kind][2], errors[0]), errors[0]
    assert "Traceback" not in stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("stage", list(STAGES))
def test_bad_input_never_clobbers_an_existing_output(tmp_path, stage):
    argv = _workspace(tmp_path, stage, "malformed_middle")
    output = tmp_path / OUTPUT.get(stage, "out")
    if output.suffix:
        output.write_text('{"id": "earlier"}\n')
    else:
        output.mkdir()
        (output / "stats.jsonl").write_text('{"id": "earlier"}\n')
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        code, stderr, unexpected = invoke(argv + extra, tmp_path)
        assert unexpected is None and code != 0 and "malformed JSON" in stderr
        assert snapshot(tmp_path) == before


HUB = ["--model", "some-org/not-a-local-model"]
BAD_OPTIONS = [
    (["filter-hard", "good_problems.jsonl", "--out", "out", "--k", "0", *HUB], r"--k: must be at least 1"),
    (["eval", "good_problems.jsonl", "--out", "out", "--n", "4", "--k", "8", *HUB], r"--k: each k must be in \[1, n=4\]"),
    (["eval", "good_problems.jsonl", "--out", "out", "--n", "0", *HUB], r"--n"),
    (["make-prefixes", "good_problems.jsonl", "--out", "out.jsonl", "--max-fraction", "1.5", *HUB], r"--max-fraction"),
    (["make-prefixes", "good_problems.jsonl", "--out", "out.jsonl", "--max-fraction", "0", *HUB], r"--max-fraction"),
    (["make-prefixes", "good_problems.jsonl", "--out", "out.jsonl", "--n", "0", *HUB], r"--n"),
    (["train", "good_prefixes.jsonl", "--out", "out", "--group-size", "1", *HUB], r"--group-size"),
    (["train", "good_prefixes.jsonl", "--out", "out", "--steps", "0", *HUB], r"--steps"),
    (["filter-hard", "good_problems.jsonl", "--out", "out", "--model", "./nowhere"], r"--model: ./nowhere: no such directory"),
    (["make-prefixes", "good_problems.jsonl", "--out", "out.jsonl", "--model", "./nowhere"], r"--model: ./nowhere"),
    (["eval", "good_problems.jsonl", "--out", "out", "--model", "./nowhere"], r"--model: ./nowhere"),
    (["train", "good_prefixes.jsonl", "--out", "out", "--model", "./nowhere"], r"--model: ./nowhere"),
    (["filter-hard", "good_prefixes.jsonl", "--out", "out", *HUB], r"good_prefixes.jsonl:1: this is a prefixes file"),
    (["make-prefixes", "good_prefixes.jsonl", "--out", "out.jsonl", *HUB], r"good_prefixes.jsonl:1: this is a prefixes file"),
    (["train", "good_problems.jsonl", "--out", "out", *HUB], r"good_problems.jsonl:1: missing field 'prefix' \(not a prefixes file"),
    (["eval", "good_problems.jsonl", "--prefixes", "good_problems.jsonl", "--mode", "guided", "--out", "out", *HUB],
     r"good_problems.jsonl:1: missing field 'prefix'"),
]


@pytest.mark.parametrize("argv, message", BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_options_are_refused_before_any_model_loads(tmp_path, argv, message):
    import re

    (tmp_path / "good_problems.jsonl").write_bytes(_lines(GOOD_PROBLEM))
    (tmp_path / "good_prefixes.jsonl").write_bytes(_lines(GOOD_PREFIX))
    before = snapshot(tmp_path)
    code, stderr, unexpected = invoke(argv, tmp_path)
    assert unexpected is None, repr(unexpected)
    assert code != 0 and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and re.search(message, stderr), stderr
    assert snapshot(tmp_path) == before


# ---- interruptions: SIGKILL at seeded random moments, then a rerun; SIGINT --------------------

TESTS = Path(__file__).parent
SCRIPTED_STAGE = """
import hashlib, sys
sys.path.insert(0, {tests!r})
from conftest import build_char_tokenizer
from fakes import BoxScorer, ScriptedEngine
import pope_cli.shared.engines, pope_cli.shared.runtime

def answer(prompt, stream):
    digest = hashlib.sha256(f"{{prompt}}|{{stream}}".encode()).hexdigest()
    return "\\\\boxed{{%d}}" % (int(digest, 16) % 6)

engine = ScriptedEngine(build_char_tokenizer(), answer, delay={delay})
pope_cli.shared.engines.make_engine = lambda opts, **kw: engine
pope_cli.shared.runtime.scorer_factory = lambda opts: BoxScorer
from pope_cli.cli import app
app({argv!r})
"""

SCRIPTED = {  # stage → (argv, the file whose lines count progress, the files a finished run leaves)
    "filter-hard": (["filter-hard", "problems.jsonl", "--out", "out", "--k", "8", "--chunk", "2", "--batch-size", "4",
                     "--save-samples"], "out/stats.jsonl",
                    ["out/stats.jsonl", "out/samples.jsonl", "out/hard.jsonl", "out/easy.jsonl"]),
    "make-prefixes": (["make-prefixes", "problems.jsonl", "--out", "out.jsonl", "--n", "2", "--max-fraction", "0.9",
                       "--batch-size", "4"], "out.jsonl.stats.jsonl",
                      ["out.jsonl", "out.jsonl.stats.jsonl", "out.jsonl.skipped.jsonl"]),
    "eval": (["eval", "problems.jsonl", "--out", "out", "--n", "8", "--k", "1,4", "--batch-size", "4"],
             "out/samples.jsonl", ["out/samples.jsonl", "out/summary.json"]),
}


def _scripted_workspace(root: Path) -> None:
    root.mkdir(parents=True)
    rows = [{"id": f"p{i}", "problem": f"Problem number {i}.", "answer": str(i % 10),
             "solution": "".join(f"Step {s} of {i}.\n" for s in range(4)) + f"\\boxed{{{i % 10}}}"} for i in range(12)]
    (root / "problems.jsonl").write_bytes(_lines(*rows))
    (root / "prefixes.jsonl").write_bytes(_lines(*({**row, "prefix": row["solution"].split("\n")[0]} for row in rows)))


def _scripted(argv: list[str], delay: float = 0.0) -> list[str]:
    """The command line that runs `pope argv` against the scripted engine and scorer."""
    return [sys.executable, "-c", SCRIPTED_STAGE.format(tests=str(TESTS), delay=delay, argv=argv + ["--model", "m/x"])]


def _start(stage: str, root: Path, delay: float):
    return subprocess.Popen(_scripted(SCRIPTED[stage][0], delay), cwd=root, stdout=subprocess.DEVNULL,
                            preexec_fn=default_sigint, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for_lines(proc, path: Path, lines: int) -> None:
    import time

    deadline = time.time() + 120
    while not (path.exists() and path.read_bytes().count(b"\n") >= lines):
        assert proc.poll() is None, f"finished or failed before {lines} lines: {proc.stderr.read()}"
        assert time.time() < deadline
        time.sleep(0.005)


def _finished_files(stage: str, root: Path) -> dict[str, object]:
    files = {}
    for name in SCRIPTED[stage][2]:
        text = (root / name).read_text()
        files[name] = json.loads(text)["models"] if name.endswith("summary.json") else text
    return files


@pytest.mark.parametrize("stage", list(SCRIPTED))
def test_sigkill_at_random_moments_then_rerun_gives_the_uninterrupted_files(tmp_path, stage):
    import random
    import signal

    reference = tmp_path / "reference"
    _scripted_workspace(reference)
    done = _start(stage, reference, delay=0.0)
    assert done.wait(timeout=120) == 0, done.stderr.read()
    expected = _finished_files(stage, reference)
    total = (reference / SCRIPTED[stage][1]).read_bytes().count(b"\n")
    root = tmp_path / "killed"
    _scripted_workspace(root)
    moments = sorted(random.Random(stage).sample(range(1, total - 1), 2))
    for lines in moments:
        proc = _start(stage, root, delay=0.03)
        _wait_for_lines(proc, root / SCRIPTED[stage][1], lines)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    rerun = _start(stage, root, delay=0.0)
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read()
    assert _finished_files(stage, root) == expected


@pytest.mark.parametrize("stage", list(SCRIPTED))
def test_ctrl_c_stops_each_stage_cleanly_with_a_resume_hint(tmp_path, stage):
    import signal

    _scripted_workspace(tmp_path / "w")
    proc = _start(stage, tmp_path / "w", delay=0.05)
    _wait_for_lines(proc, tmp_path / "w" / SCRIPTED[stage][1], 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "rerun the same command to resume" in stderr and "Traceback" not in stderr


# ---- hostile model output through the shared checker ------------------------------------------

CHECK_TIMEOUT = 2.0
CHECK_SLACK = 1.5  # kill + replace of a stuck worker on a loaded 2-core machine


def hostile_outputs(marker: Path) -> dict[str, str]:
    """Text a model could write that would run code, hang a parser or break decoding."""
    shell = f"__import__('os').system('touch {marker}')"
    return {
        "os.system in a box": rf"\boxed{{{shell}}}",
        "os.system as a bare answer": f"The answer is {shell}",
        "lambda in a box": rf"\boxed{{(lambda: {shell})()}}",
        "eval in a box": rf"\boxed{{eval(\"{shell}\")}}",
        "exec in a box": rf"\boxed{{exec('import os; os.system(\"touch {marker}\")')}}",
        "sympy parse_expr payload": rf"\boxed{{Symbol('x').__class__.__init__.__globals__['os'].system('touch {marker}')}}",
        "sympify string payload": f"$S('{shell}')$",
        "power tower": r"\boxed{9^{9^{9^{9^{9^9}}}}}",
        "deeply nested braces": r"\boxed{" + "{" * 20_000 + "1" + "}" * 20_000 + "}",
        "a megabyte of text": "step. " * 180_000 + r"\boxed{3}" + " and more" * 20_000,
        "control characters": "\x00\x07\x1b[31m\x08" * 1000 + r"\boxed{4\x00}",
        "invalid UTF-8 from a tokenizer": b"\xff\xfe\xc3(\xa0\xa1 \\boxed{\xe2\x82}".decode("utf-8", "replace") + "\udcff",
    }


@pytest.fixture(scope="module")
def checker():
    from pope_cli.shared.reward.checker import Scorer

    with Scorer("math", workers=2, timeout=CHECK_TIMEOUT) as scorer:
        yield scorer


@pytest.mark.parametrize("name", list(hostile_outputs(Path("m"))))
def test_hostile_output_is_scored_wrong_in_time_and_runs_nothing(tmp_path, checker, name):
    import time

    from pope_cli.shared.reward.checker import is_correct

    marker = tmp_path / "pwned"
    completion = hostile_outputs(marker)[name]
    started = time.monotonic()
    assert checker.score([completion], [{"answer": "7"}]) in ([0.0], [None])
    assert time.monotonic() - started < CHECK_TIMEOUT + CHECK_SLACK
    assert checker.score([r"\boxed{7}"], [{"answer": "7"}]) == [1.0]  # the checker lives on
    if len(completion) < 50_000:  # the in-process path has no deadline: only the quick ones
        assert is_correct(completion, "7") in (False, None)
    assert not marker.exists()


class RawTextEngine:
    """Hands back text as a broken decoder might: whatever `answer` says, token ids aside."""

    def __init__(self, tokenizer, answer):
        self.tokenizer, self.answer = tokenizer, answer

    def generate(self, requests, sampling):
        from pope_cli.shared.engines.base import Completion

        return [[Completion([5], self.answer(self.tokenizer.decode(r.prompt_ids), r.seed + j), "stop")
                 for j in range(r.n)] for r in requests]


def test_a_stage_fed_hostile_output_finishes_with_the_right_counts(tmp_path, char_tokenizer):
    from pope_cli.shared.config import FieldMap, ModelOptions, PromptOptions, RewardOptions, SamplingOptions
    from pope_cli.stages.filter_hard import FilterHardConfig
    from pope_cli.stages.filter_hard import run_filter_hard
    from pope_cli.shared.reward.checker import Scorer

    marker = tmp_path / "pwned"
    hostile = list(hostile_outputs(marker).values())

    def answer(prompt: str, stream: int) -> str:
        return r"\boxed{7}" if "solvable" in prompt and stream % 12 == 5 else hostile[stream % len(hostile)]

    rows = [{"id": f"p{i}", "problem": f"{'solvable' if i < 2 else 'impossible'} problem {i}", "answer": "7"}
            for i in range(4)]
    (tmp_path / "p.jsonl").write_bytes(_lines(*rows))
    cfg = FilterHardConfig(data=str(tmp_path / "p.jsonl"), out=str(tmp_path / "out"),
                           model=ModelOptions("scripted", batch_size=4), fields=FieldMap(), prompt=PromptOptions(),
                           sampling=SamplingOptions(max_new_tokens=16), reward=RewardOptions(), k=12, chunk=4, seed=0,
                           save_samples=True)
    engine = RawTextEngine(char_tokenizer, answer)
    run_filter_hard(cfg, lambda: engine, lambda: Scorer("math", workers=2, timeout=CHECK_TIMEOUT))
    stats = {row["id"]: row for row in map(json.loads, (tmp_path / "out" / "stats.jsonl").read_text().splitlines())}
    assert [pid for pid, row in stats.items() if row["hard"]] == ["p2", "p3"]
    assert all(stats[pid]["correct"] == 0 and stats[pid]["samples"] == 12 for pid in ("p2", "p3"))
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {s["text"] for s in samples if s["id"] == "p3"} <= set(hostile)
    assert not marker.exists()


# ---- disk and state ---------------------------------------------------------------------------

UNWRITABLE_OUT = {  # stage → argv whose output lies under `blocker`, a regular file
    "filter-hard": ["filter-hard", "problems.jsonl", "--out", "blocker/out", "--k", "2"],
    "make-prefixes": ["make-prefixes", "problems.jsonl", "--out", "blocker/out.jsonl", "--n", "2"],
    "eval": ["eval", "problems.jsonl", "--out", "blocker/out", "--n", "2", "--k", "1"],
    "train": ["train", "prefixes.jsonl", "--out", "blocker/out", "--steps", "1"],
    "export": ["export", "prefixes.jsonl", "--out", "blocker/out", "--steps", "1"],
}


@pytest.mark.parametrize("stage", list(UNWRITABLE_OUT))
def test_an_output_that_cannot_be_written_is_one_clear_line(tmp_path, stage):
    _scripted_workspace(tmp_path / "w")
    (tmp_path / "w" / "blocker").write_text("a file, not a directory\n")
    proc = subprocess.run(_scripted(UNWRITABLE_OUT[stage]), cwd=tmp_path / "w", capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert re.search(r"error: blocker(/out(\.jsonl)?)?: cannot write here \(.+\)", proc.stderr), proc.stderr


@pytest.mark.parametrize("stage", list(SCRIPTED))
def test_a_rerun_with_changed_options_is_refused_naming_them(tmp_path, stage):
    root = tmp_path / "w"
    _scripted_workspace(root)
    done = _start(stage, root, delay=0.0)
    assert done.wait(timeout=120) == 0, done.stderr.read()
    before = snapshot(root)
    proc = subprocess.run(_scripted(SCRIPTED[stage][0] + ["--seed", "5", "--temperature", "0.7"]), cwd=root,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert re.search(r"an earlier run used different options \(--temperature, --seed\)", proc.stderr), proc.stderr
    assert snapshot(root) == before
