"""Trackers with the real libraries (TensorBoard, W&B offline, Trackio local) and logged completions:
every scalar of every step reads back, a resumed run sends no step twice, a failing tracker warns
once and training goes on, a missing extra is named."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pope_cli.shared.config import SamplingOptions, TrackerOptions
from pope_cli.shared.engines.base import Completion
from pope_cli.shared.errors import PopeError
from pope_cli.stages.train.batch import Item, Rollout
from pope_cli.stages.train.config import TrainConfig
from pope_cli.stages.train.watch import picked
from conftest import same_prefix_rows, write_prefix_workspace
from test_trainer import make_cfg as trainer_cfg

TESTS = Path(__file__).parent
TIMING = ("time/", "throughput/")


@pytest.fixture
def data(tmp_path):
    return write_prefix_workspace(tmp_path, same_prefix_rows(4))


def train_argv(data: Path, model_dir, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pope_cli.cli", "train", str(data / "prefixes.jsonl"), "--model", str(model_dir),
            "--out", str(out), "--unguided-template", str(data / "unguided.txt"), "--reward", "train_rewards:starts_lower",
            "--reward-workers", "1", "--max-new-tokens", "6", "--temperature", "1.0", "--prompts-per-step", "4",
            "--group-size", "4", "--full", "--lr", "1e-2", "--warmup-steps", "0", "--backend", "hf", "--device", "cpu",
            *extra]


def rows_of(run: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def scalar_keys(row: dict) -> set[str]:
    return {k for k, v in row.items() if k != "step" and isinstance(v, (int, float))}


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def wandb_history(path: Path) -> list[dict]:
    """History rows of a .wandb file: a LevelDB-style log (32 KiB blocks of crc32, length, type
    headers) of protobuf Records, after a 7-byte ':W&B' header."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block, position, pending, rows = path.read_bytes(), 32768, 7, b"", []
    while position + 7 <= len(raw):
        if block - position % block < 7:
            position += block - position % block  # a block's tail too short for a header is padding
            continue
        _, length, kind = struct.unpack("<IHB", raw[position:position + 7])
        pending += raw[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_every_tracker_gets_every_step_once_across_a_resume(data, tiny_model_dir):
    run, store = data / "run", data / "trackio"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline", "TRACKIO_DIR": str(store)}
    args = ["--report-to", "tensorboard,wandb,trackio", "--run-name", "tiny", "--log-completions", "3", "--log-every",
            "1", "--save-every", "2"]
    first = subprocess.run(train_argv(data, tiny_model_dir, run, "--steps", "3", *args), env=env, capture_output=True,
                           text=True)
    assert first.returncode == 0, first.stderr
    # As if killed after step 3 was logged but before its checkpoint: step 3 is recomputed on resume.
    shutil.rmtree(run / "checkpoints" / "step_000003")
    shutil.rmtree(run / "final")
    second = subprocess.run(train_argv(data, tiny_model_dir, run, "--steps", "4", *args), env=env, capture_output=True,
                            text=True)
    assert second.returncode == 0, second.stderr
    assert "resuming after step 2" in second.stderr and "warning" not in second.stderr
    rows = rows_of(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    keys = set().union(*(scalar_keys(r) for r in rows))
    assert {"reward/guided", "reward/unguided", "solved_unguided/ever", "loss", "entropy"} <= keys

    board = tensorboard_scalars(run / "tensorboard")
    assert keys <= set(board)
    for key in keys:
        logged = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]
        assert [step for step, _ in board[key]] == [step for step, _ in logged], key
        if not key.startswith(TIMING):  # timings of the recomputed step 3 differ; the rest is deterministic
            assert [v for _, v in board[key]] == pytest.approx([v for _, v in logged], rel=1e-5), key

    wandb_runs = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_runs) == 2 and len({p.name for p in wandb_runs}) == 1  # two launches, one run id
    history = [row for path in wandb_runs for row in wandb_history(path) if "reward/all" in row]
    assert [row["_step"] for row in history] == [1, 2, 3, 4]
    assert [row["reward/all"] for row in history] == pytest.approx([r["reward/all"] for r in rows])
    assert (run / "wandb").glob("offline-run-*/files/media/table/completions_*.table.json")

    read = subprocess.run([sys.executable, "-c", "import json, trackio; print(json.dumps(trackio.SQLiteStorage."
                           "get_logs('pope', 'tiny', scalar_only=True)))"], env=env, capture_output=True, text=True)
    assert read.returncode == 0, read.stderr
    tracked = [row for row in json.loads(read.stdout) if "reward/all" in row]
    assert [row["step"] for row in tracked] == [1, 2, 3, 4]
    assert [row["loss"] for row in tracked] == pytest.approx([r["loss"] for r in rows])

    completions = rows_of(run, "completions.jsonl")
    assert [c["step"] for c in completions] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert {c["kind"] for c in completions} == {"guided", "unguided"}
    assert set(completions[0]) == {"step", "kind", "problem_id", "prompt_tail", "completion", "reward", "length",
                                   "truncated"}
    tails = {"guided": "P:ab C:<|end|><|assistant|>", "unguided": " A:<|end|><|assistant|>"}
    assert all(c["prompt_tail"].endswith(tails[c["kind"]]) for c in completions)
    assert all(c["length"] <= 6 and c["reward"] == float(c["completion"][:1].islower()) for c in completions)


def make_cfg(data: Path, model_dir, **overrides) -> TrainConfig:
    """test_trainer's tiny run, with shorter completions and smaller groups."""
    return trainer_cfg(data, model_dir, **{"sampling": SamplingOptions(temperature=1.0, max_new_tokens=6),
                                           "group_size": 4, **overrides})


def test_a_tracker_that_raises_warns_once_and_training_goes_on(data, tiny_model_dir, monkeypatch):
    from pope_cli.shared import trackers
    from pope_cli.stages.train.trainer import run_train

    torch.set_num_threads(1)
    real_log = trackers.TensorBoard.log

    def flaky(self, step, row):
        if step >= 2:
            raise OSError("No space left on device")
        real_log(self, step, row)

    monkeypatch.setattr(trackers.TensorBoard, "log", flaky)
    stream = io.StringIO()
    cfg = make_cfg(data, tiny_model_dir, trackers=TrackerOptions(report_to=["tensorboard"]))
    summary = run_train(cfg, reporter_stream=stream)
    assert summary["steps"] == 4 and len(rows_of(data / "run")) == 4
    warnings = [line for line in stream.getvalue().splitlines() if line.startswith("warning: tracker")]
    assert warnings == [f"warning: tracker tensorboard failed at step 2 (OSError: No space left on device); it is off "
                        f"for the rest of this run, {data / 'run' / 'metrics.jsonl'} has every step"]
    assert json.loads((data / "run" / "trackers.json").read_text())["logged"] == {"tensorboard": 1}
    assert {steps[0][0] for steps in tensorboard_scalars(data / "run" / "tensorboard").values()} == {1}


def test_tracker_names_are_checked_and_a_missing_extra_is_named(monkeypatch):
    import importlib.util

    assert TrackerOptions(report_to=["wandb", "tensorboard", "wandb"]).report_to == ["wandb", "tensorboard"]
    with pytest.raises(PopeError, match=r"--report-to: 'mlflow' is not one of tensorboard, wandb, trackio"):
        TrackerOptions(report_to=["mlflow"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(PopeError, match=r"--report-to: wandb is not installed; pip install 'pope-cli\[wandb\]'"):
        TrackerOptions(report_to=["tensorboard", "wandb"])


def test_logged_completions_take_every_kind_in_turn():
    items = [Item("guided", {"id": "g0"}), Item("guided", {"id": "g1"}), Item("unguided", {"id": "u0"}),
             Item("easy", {"id": "e0"})]
    groups = [[Completion([1], "x", "stop")] * 2 for _ in items]
    result = Rollout(items, [[0]] * 4, groups, torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.bool))
    assert picked(result, 3) == [(0, 0), (2, 0), (3, 0)]
    assert picked(result, 6) == [(0, 0), (2, 0), (3, 0), (1, 0), (0, 1), (2, 1)]
    assert len(picked(result, 100)) == 8
    result.oracle[2, 1] = True  # u0's second sample is its oracle solution: never logged as the policy's
    assert len(picked(result, 100)) == 7 and (2, 1) not in picked(result, 100)
