"""The robustness matrix: bad input files and bad options for every stage, disk and state.

Each bad input must end the stage with a non-zero exit code and one `error:` line naming the
file (and the line or row where there is one) and what is wrong: no traceback, no output
written, an existing output left exactly as it was. The model is a hub id that cannot load
here (`HF_HUB_OFFLINE`), so a stage that reached for the model before checking its input would
fail with a different message.
"""

from __future__ import annotations

import importlib.util
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
    "csv_unquoted_comma": ("in.csv", lambda good: _csv_with_unquoted_comma(good),
                           r"in.csv:\d+: malformed CSV row: \d+ fields where the header has \d+ \(a comma inside a field"),
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


def _csv_with_unquoted_comma(good: dict) -> bytes:
    """The good record, then a second whose problem holds a comma nobody quoted (a hand-edited CSV)."""
    import csv
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(good))
    writer.writeheader()
    writer.writerows([good, {**good, "id": "b", "problem": "Let x = 1"}])
    return text.getvalue().replace(",Let x = 1,", ",Let x = 1, y = 2. What is x+y?,").encode()


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
    (["make-prefixes", "good_problems.jsonl", "--out", "pfx/", *HUB],
     r"^error: --out: pfx/ is a directory; give a file such as pfx/prefixes.jsonl$"),
    (["make-solutions", "good_problems.jsonl", "--out", "sol/", *HUB],
     r"^error: --out: sol/ is a directory; give a file such as sol/solutions.jsonl$"),
    (["filter-hard", "good_problems.jsonl", "--out", "out", "--answer-field", "gold", *HUB],
     r"^error: --answer-field: no record of good_problems.jsonl has a field 'gold'$"),
    # options that would do nothing in the combination given
    (["train", "good_prefixes.jsonl", "--out", "out", "--mode", "grpo", "--guided-ratio", "2", *HUB],
     r"^error: --guided-ratio: only with --mode pope \(--mode grpo has no guided:unguided mix\)$"),
    (["train", "good_prefixes.jsonl", "--out", "out", "--oracle-is", "luffy", *HUB],
     r"^error: --oracle-is: only with --oracle-rollouts N$"),
    (["train", "good_prefixes.jsonl", "--out", "out", "--oracle-rollouts", "1", "--oracle-is-gamma", "0.5", *HUB],
     r"^error: --oracle-is-gamma: only with --oracle-is luffy$"),
    (["train", "good_prefixes.jsonl", "--out", "out", "--full", "--lora-rank", "8", *HUB],
     r"^error: --lora-rank: only for --lora runs \(--full trains every weight\)$"),
    (["sft", "good_problems.jsonl", "--out", "out", "--full", "--lora-alpha", "8", *HUB], r"^error: --lora-alpha: only for"),
    (["filter-hard", "good_problems.jsonl", "--out", "out", "--tensor-parallel-size", "2", "--backend", "hf", *HUB],
     r"^error: --tensor-parallel-size: splits a model over GPUs in vLLM; --backend hf does not use it$"),
    (["make-prefixes", "good_problems.jsonl", "--out", "out.jsonl", "--fixed-fraction", "0.2", "--n", "4", *HUB],
     r"^error: --n: has no effect with --fixed-fraction"),
    (["make-prefixes", "good_problems.jsonl", "--out", "out.jsonl", "--fixed-fraction", "0.2", "--max-fraction", "0.5",
      *HUB], r"^error: --max-fraction: has no effect with --fixed-fraction"),
    # errors naming the option the user gave
    (["train", "good_prefixes.jsonl", "--out", "out", "--curriculum", "2", *HUB],
     r"^error: --curriculum: needs --easy FILE, the problems of its first steps$"),
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


BAD_TEMPLATE_FIELD = [
    ["eval", "{input}", "--mode", "unguided,guided", "--out", "out"],
    ["eval", "good_problems.jsonl", "--prefixes", "{input}", "--mode", "guided", "--out", "out"],
    ["train", "{input}", "--out", "out"],
    ["sft", "{input}", "--source", "guided-samples", "--out", "out"],
    ["export", "{input}", "--out", "out"],
]


@pytest.mark.parametrize("argv", BAD_TEMPLATE_FIELD, ids=" ".join)
@pytest.mark.parametrize("field", ["template", "unguided_template"])
def test_a_template_a_record_names_is_loaded_before_anything_is_written(tmp_path, argv, field):
    """The record's field is named (not an option the user never gave), before any model loads."""
    (tmp_path / "good_problems.jsonl").write_bytes(_lines(GOOD_PROBLEM))
    (tmp_path / "in.jsonl").write_bytes(_lines({**GOOD_PREFIX, field: "nowhere.txt"}))
    before = snapshot(tmp_path)
    code, stderr, unexpected = invoke([a.replace("{input}", "in.jsonl") for a in argv] + HUB, tmp_path)
    if field == "unguided_template" and "--mode" in argv and "guided" in argv:  # guided only: not asked unguided
        assert "Traceback" not in stderr and "nowhere.txt" not in stderr
        return
    assert unexpected is None and code == 1, stderr
    flag = "--template" if field == "template" else "--unguided-template"
    assert stderr == f"error: in.jsonl: record 'a': field '{field}': nowhere.txt: no such file{', nor a built-in template (pope, no-restate)' if field == 'template' else ''}; or give {flag}\n"
    assert snapshot(tmp_path) == before


# ---- interruptions: SIGKILL at seeded random moments, then a rerun; SIGINT --------------------

TESTS = Path(__file__).parent
SCRIPTED_STAGE = """
import hashlib, sys
sys.path.insert(0, {tests!r})
{prelude}
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


def _scripted(argv: list[str], delay: float = 0.0, prelude: str = "") -> list[str]:
    """The command line that runs `pope argv` against the scripted engine and scorer, after `prelude`."""
    code = SCRIPTED_STAGE.format(tests=str(TESTS), delay=delay, argv=argv + ["--model", "m/x"], prelude=prelude)
    return [sys.executable, "-c", code]


def _start(stage: str, root: Path, delay: float, extra: tuple = (), prelude: str = ""):
    return subprocess.Popen(_scripted(SCRIPTED[stage][0] + list(extra), delay, prelude), cwd=root, stdout=subprocess.DEVNULL,
                            preexec_fn=default_sigint, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _finished_run(stage: str, root: Path) -> None:
    """A workspace in `root` where `stage` ran to its end, undisturbed."""
    _scripted_workspace(root)
    done = _start(stage, root, delay=0.0)
    assert done.wait(timeout=120) == 0, done.stderr.read()


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
    _finished_run(stage, reference)
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
    _finished_run(stage, root)
    before = snapshot(root)
    proc = subprocess.run(_scripted(SCRIPTED[stage][0] + ["--seed", "5", "--temperature", "0.7"]), cwd=root,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert re.search(r"an earlier run used different options \(--temperature: was [^;]+, now 0.7; --seed: was \d+, now 5\)", proc.stderr), proc.stderr
    assert snapshot(root) == before


# ---- failed starts: validate, then write ------------------------------------------------------

TOY = str(Path(__file__).parent.parent / "pope_cli" / "toy" / "model")
GENERATE = {"--model": TOY, "--device": "cpu", "--max-new-tokens": "8", "--reward-workers": "1"}
STARTS = {  # stage → (argv, the options it takes from GENERATE)
    "filter-hard": (["filter-hard", "good_problems.jsonl", "--out", "out", "--k", "2", "--chunk", "2"], GENERATE),
    "make-prefixes": (["make-prefixes", "good_problems.jsonl", "--out", "out.jsonl", "--n", "2"], GENERATE),
    "eval": (["eval", "good_problems.jsonl", "--out", "out", "--n", "2", "--k", "1"], GENERATE),
    "train": (["train", "good_prefixes.jsonl", "--out", "out", "--steps", "1", "--prompts-per-step", "1",
               "--group-size", "2", "--save-every", "1"], GENERATE),
    "export": (["export", "good_prefixes.jsonl", "--out", "out", "--steps", "1"],
               {k: v for k, v in GENERATE.items() if k != "--device"}),
}
NO_CUDA = pytest.mark.skipif("torch.cuda.is_available()", reason="--device cuda works on this machine")
# failure → (the options it changes, the error it must give, the stages it applies to)
FAILED_STARTS = {
    "empty model dir": ({"--model": "empty_model"}, r"--model: empty_model: not a model directory \(no config.json\)",
                        list(STARTS)),
    "model dir without a tokenizer": ({"--model": "no_tokenizer"}, r"--model: no_tokenizer: no tokenizer files",
                                      list(STARTS)),
    "model is a file": ({"--model": "good_problems.jsonl"}, r"--model: good_problems.jsonl: is a file", list(STARTS)),
    "unreachable hub id": ({"--model": "some-org/not-cached"},
                           r"not in the local Hugging Face cache and HF_HUB_OFFLINE is set; .*--model DIR",
                           ["filter-hard", "make-prefixes", "eval", "train"]),
    "missing device": ({"--device": "cuda"}, r"--device: cuda asked for, but CUDA is not available",
                       ["filter-hard", "make-prefixes", "eval", "train"]),
    "bad reward module": ({"--reward": "no_such_module:score"}, r"--reward: cannot import module 'no_such_module'",
                          list(STARTS)),
    "bad reward function": ({"--reward": "pope_cli.toy.reward:nothing"}, r"--reward: module .* has no function 'nothing'",
                            list(STARTS)),
    "vllm not installed": ({"--backend": "vllm"}, r"--backend vllm: vLLM is not installed",
                           ["filter-hard", "make-prefixes", "eval", "train"]),
    "empty --out": ({"--out": ""}, r"--out", list(STARTS)),
}


def _start_workspace(root: Path) -> None:
    import shutil

    (root / "good_problems.jsonl").write_bytes(_lines(GOOD_PROBLEM))
    (root / "good_prefixes.jsonl").write_bytes(_lines(GOOD_PREFIX))
    (root / "empty_model").mkdir()
    (root / "no_tokenizer").mkdir()
    shutil.copy(Path(TOY) / "config.json", root / "no_tokenizer" / "config.json")


def _start_argv(stage: str, changes: dict | None = None, extra: tuple = ()) -> list[str]:
    argv, options = STARTS[stage]
    argv = list(argv)
    for flag, value in {**options, **(changes or {})}.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv + list(extra)


def _failures(stage: str):
    import torch

    present = {"missing device": torch.cuda.is_available(), "vllm not installed": importlib.util.find_spec("vllm")}
    for name, (changes, message, stages) in FAILED_STARTS.items():
        if stage in stages and not present.get(name):
            yield name, changes, message


def _fails_leaving_all_as_it_was(root: Path, argv: list[str], message: str, what: str) -> None:
    before = snapshot(root)
    code, stderr, unexpected = invoke(argv, root)
    assert unexpected is None, f"{what}: {unexpected!r}"
    assert code != 0 and "Traceback" not in stderr, f"{what}: {stderr}"
    assert len(stderr.strip().splitlines()) == 1 and re.search(message, stderr), f"{what}: {stderr}"
    assert snapshot(root) == before, what
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [], what  # no lock, no side dir


@pytest.mark.parametrize("stage", list(STARTS))
def test_a_failed_start_leaves_the_output_as_it_was_and_the_corrected_command_runs(tmp_path, stage):
    _start_workspace(tmp_path)
    for name, changes, message in _failures(stage):
        _fails_leaving_all_as_it_was(tmp_path, _start_argv(stage, changes), message, name)
    code, stderr, unexpected = invoke(_start_argv(stage), tmp_path)  # corrected, without --overwrite
    assert unexpected is None and code == 0, stderr
    # An earlier run: --overwrite with a start that fails keeps it, byte for byte.
    for name, changes, message in _failures(stage):
        changed = {**changes, "--seed": "7"} if stage != "export" else changes
        _fails_leaving_all_as_it_was(tmp_path, _start_argv(stage, changed, ("--overwrite",)), message, name)
    # and it still resumes (an export is only ever replaced whole)
    code, stderr, unexpected = invoke(_start_argv(stage, extra=("--overwrite",) if stage == "export" else ()), tmp_path)
    assert unexpected is None and code == 0, stderr


def test_demo_failed_starts_leave_the_output_and_overwrite_keeps_the_earlier_demo(tmp_path):
    _start_workspace(tmp_path)
    for model, message in (("empty_model", "not a model directory"), ("some-org/not-cached", "HF_HUB_OFFLINE is set")):
        # --heldout filter: the shipped held-out set is refused with another --model before the model is checked
        demo = ["demo", "--out", "demo", "--model", model, "--heldout", "filter"]
        _fails_leaving_all_as_it_was(tmp_path, demo, message, model)
        (tmp_path / "demo" / "filter").mkdir(parents=True, exist_ok=True)
        (tmp_path / "demo" / "filter" / "stats.jsonl").write_text('{"id": "earlier"}\n')
        _fails_leaving_all_as_it_was(tmp_path, [*demo, "--overwrite"], message, f"{model} --overwrite")
    _fails_leaving_all_as_it_was(tmp_path, ["demo", "--out", ""], "--out: must be a non-empty path", "empty --out")


def test_an_unreachable_hub_fails_at_once_saying_how_to_pass_a_directory(tmp_path, monkeypatch):
    import time

    _start_workspace(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://pope-test.invalid")  # no network: the name does not resolve
    started = time.monotonic()
    _fails_leaving_all_as_it_was(tmp_path, _start_argv("filter-hard", {"--model": "some-org/not-cached"}),
                                 r"the hub cannot be reached .*--model DIR", "no network")
    assert time.monotonic() - started < 10


# ---- --overwrite: the earlier run is swapped out only once the new one has started -------------

def _kill_when(target: str, after: int = 0) -> str:
    """Prelude: SIGKILL this process on call number `after` + 1 of `target` (module.attribute)."""
    module, _, name = target.rpartition(".")
    return f"""
import os, signal, importlib
_module = importlib.import_module({module!r})
_real, _calls = getattr(_module, {name!r}), [0]
def _killer(*args, **kwargs):
    _calls[0] += 1
    if _calls[0] > {after}:
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(*args, **kwargs)
setattr(_module, {name!r}, _killer)
"""


KILL_POINTS = {  # where the overwriting run dies: inside the swap, moving the earlier run's files aside
    "after moving the config aside": _kill_when("os.replace", after=1),
    "after moving three files aside": _kill_when("os.replace", after=3),
    "before the new config is written": _kill_when("pope_cli.shared.claim.atomic_write_json"),
    "after the new config, before the earlier run is deleted": _kill_when("shutil.rmtree"),
}


@pytest.fixture(scope="module")
def finished_filter(tmp_path_factory) -> Path:
    """A workspace holding a finished filter-hard run in out/."""
    root = tmp_path_factory.mktemp("finished") / "w"
    _scripted_workspace(root)
    first = _start("filter-hard", root, delay=0.0)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    return root


def _next_claim_resumes(root: Path, config: dict) -> bool:
    """What the next run in out/ finds (claiming it puts a half-done swap right): whether it resumes."""
    from pope_cli.shared.claim import claim_output
    from pope_cli.stages.filter_hard import RESUME_IGNORED

    with claim_output("out", root / "out" / "config.json", config, [], False, RESUME_IGNORED) as claim:
        return claim.resuming


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_kill_inside_overwrite_leaves_a_whole_earlier_run_or_a_whole_new_one(tmp_path, finished_filter, point):
    import shutil

    root = tmp_path / "w"
    shutil.copytree(finished_filter, root)
    earlier = snapshot(root)
    earlier_config = json.loads((root / "out" / "config.json").read_text())
    killed = _start("filter-hard", root, delay=0.0, extra=("--seed", "7", "--overwrite"), prelude=KILL_POINTS[point])
    assert killed.wait(timeout=120) == -9, killed.stderr.read()
    if point.startswith("after the new config"):  # the new run had started: it is the one that resumes
        # (the earlier run's options start afresh: the new run had written nothing yet to refuse for)
        assert _next_claim_resumes(root, earlier_config) is False
        assert _next_claim_resumes(root, {**earlier_config, "seed": 7, "overwrite": True})
        new = _start("filter-hard", root, delay=0.0, extra=("--seed", "7"))
        assert new.wait(timeout=120) == 0, new.stderr.read()
        assert json.loads((root / "out" / "config.json").read_text())["seed"] == 7
        assert all((root / name).exists() for name in SCRIPTED["filter-hard"][2])
    else:
        assert _next_claim_resumes(root, earlier_config)
        assert snapshot(root) == earlier  # the earlier run, whole, byte for byte
    assert sorted(p.name for p in (root / "out").iterdir() if p.name.startswith(".")) == []


# ---- one run per directory ---------------------------------------------------------------------

def test_a_second_run_on_the_same_output_is_refused_at_once_and_a_killed_ones_lock_does_not_block(tmp_path):
    import signal
    import time

    root = tmp_path / "w"
    _scripted_workspace(root)
    first = _start("filter-hard", root, delay=0.05)
    _wait_for_lines(first, root / "out" / "stats.jsonl", 1)
    started = time.monotonic()
    code, stderr, unexpected = invoke(SCRIPTED["filter-hard"][0] + ["--model", "m/x"], root)
    assert time.monotonic() - started < 1.0
    assert unexpected is None and code == 1
    assert re.fullmatch(rf"error: out: another pope run \(pid {first.pid}\) is using this output; .*\n", stderr), stderr
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert (root / "out" / ".config.lock").exists()  # a stale lock file, which must not block
    rerun = _start("filter-hard", root, delay=0.0)
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read()
    assert not (root / "out" / ".config.lock").exists()


# ---- inputs --------------------------------------------------------------------------------------

BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_a_utf8_byte_order_mark_is_read_as_nothing(tmp_path, suffix):
    from pope_cli.shared.data import read_problems

    body = {".csv": b'id,problem,answer\nq1,"What is 1+1?",2\n',
            ".json": json.dumps([{"id": "q1", "problem": "What is 1+1?", "answer": "2"}]).encode(),
            ".jsonl": _lines({"id": "q1", "problem": "What is 1+1?", "answer": "2"})}[suffix]
    path = tmp_path / f"in{suffix}"
    path.write_bytes(BOM + body)
    (problem,) = read_problems(str(path))
    assert (problem.id, problem.problem, problem.answer) == ("q1", "What is 1+1?", "2")


# ---- checkpoints load without pickle -------------------------------------------------------------

def test_a_checkpoint_carrying_a_pickle_payload_is_refused_and_runs_nothing(tmp_path):
    import torch

    _start_workspace(tmp_path)
    code, stderr, unexpected = invoke(_start_argv("train"), tmp_path)
    assert unexpected is None and code == 0, stderr
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    optimizer = tmp_path / "out" / "checkpoints" / "step_000001" / "optimizer.pt"
    torch.save({"state": {}, "param_groups": [], "extra": Payload()}, optimizer)
    _fails_leaving_all_as_it_was(tmp_path, _start_argv("train", {"--steps": "2"}),
                                 r"optimizer.pt: refused: it holds a pickled Python object \(posix.system\)", "payload")
    assert not marker.exists()


def test_rng_states_of_earlier_checkpoints_still_load_safely(tmp_path):
    import random

    import numpy as np
    import torch

    from pope_cli.stages.train.checkpoint import restore_rng, rng_states, safe_load

    # The format earlier versions wrote: Python's state as a tuple, numpy's with an ndarray.
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "cuda": []}, tmp_path / "old.pt")
    torch.save(rng_states(), tmp_path / "new.pt")
    for name in ("old.pt", "new.pt"):
        restore_rng(safe_load(tmp_path / name))
        first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
        restore_rng(safe_load(tmp_path / name))
        assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


# ---- the exported reward from an unguarded script, notebook or framework worker ------------------

UNGUARDED_SCRIPT = """
import importlib.util, json, time

def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

trl_reward = load({trl!r}, "trl_reward")
verl_reward = load({verl!r}, "verl_reward")
started = time.monotonic()
trl = trl_reward.pope_reward(prompts=["p"] * 3, completions=["so \\\\boxed{{2}}", "so \\\\boxed{{3}}", "none"],
                             answer=["2", "2", "2"])
verl = [verl_reward.compute_score("pope", "so \\\\boxed{{4}}", "4"), verl_reward.compute_score("pope", "\\\\boxed{{5}}", "4")]
print(json.dumps({{"trl": trl, "verl": verl, "seconds": time.monotonic() - started}}))
"""


def _exports(root: Path) -> tuple[Path, Path]:
    (root / "good_prefixes.jsonl").write_bytes(_lines(GOOD_PREFIX))
    for fmt in ("trl", "verl"):
        code, stderr, unexpected = invoke(["export", "good_prefixes.jsonl", "--out", fmt, "--format", fmt, "--steps", "1",
                                           "--reward-workers", "1"], root)
        assert unexpected is None and code == 0, stderr
    return root / "trl" / "pope_reward.py", root / "verl" / "pope_reward.py"


def test_the_exported_reward_scores_from_an_unguarded_script_without_waiting(tmp_path):
    trl, verl = _exports(tmp_path)
    script = tmp_path / "score.py"  # module level, no `if __name__ == "__main__":`
    script.write_text(UNGUARDED_SCRIPT.format(trl=str(trl), verl=str(verl)))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["trl"] == [1.0, 0.0, 0.0] and result["verl"] == [1.0, 0.0]
    assert result["seconds"] < 20  # the fork server's start; a worker re-running this script waited 60 s and failed
    assert proc.stdout.count('"trl"') == 1  # the script ran once: no worker re-ran it


TRL_SCRIPT = """
import json, sys, time
from datasets import load_dataset
from trl import GRPOConfig, GRPOTrainer
from transformers import AutoModelForCausalLM

sys.path.insert(0, {export!r})
from pope_reward import pope_reward
from pope_cli.shared.models import load_tokenizer
from pope_cli.shared.reward.checker import is_correct

calls = []

def recorded(prompts, completions, answer, **kwargs):
    started = time.monotonic()
    scores = pope_reward(prompts=prompts, completions=completions, answer=answer, **kwargs)
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    calls.append({{"seconds": time.monotonic() - started, "scores": scores,
                  "expected": [float(bool(is_correct(t, a))) for t, a in zip(texts, answer)]}})
    return scores

recorded.__name__ = "pope_reward"
args = GRPOConfig(output_dir="trl_out", max_steps=1, per_device_train_batch_size=2, num_generations=2,
                  max_completion_length=8, report_to=[], use_cpu=True, save_strategy="no", bf16=False)
trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained({toy!r}), reward_funcs=[recorded], args=args,
                      train_dataset=load_dataset("json", data_files={data!r})["train"], processing_class=load_tokenizer({toy!r}))
trainer.train()
direct = pope_reward(prompts=["p", "p"], completions=[[{{"role": "assistant", "content": "\\\\boxed{{2}}"}}], "x"],
                     answer=["2", "2"])
print(json.dumps({{"calls": calls, "direct": direct}}))
"""


def test_trl_grpo_trainer_built_at_module_level_scores_with_the_exported_reward(tmp_path):
    pytest.importorskip("trl", reason="TRL is in the dev extra: pip install -e '.[dev]'")
    trl, _ = _exports(tmp_path)
    script = tmp_path / "train_trl.py"
    script.write_text(TRL_SCRIPT.format(export=str(trl.parent), toy=TOY, data=str(trl.parent / "train.jsonl")))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["calls"] and all(call["scores"] == call["expected"] for call in result["calls"])
    assert max(call["seconds"] for call in result["calls"]) < 20
    assert result["direct"] == [1.0, 0.0]
