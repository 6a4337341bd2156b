"""Checkpoints under RUN/checkpoints/step_NNNNNN/: complete or absent, the last N kept.

A checkpoint holds everything a resumed run needs to continue exactly as if never stopped:
the trained weights (`model/`, a peft adapter or a full model in the standard format, with
the tokenizer, so it loads like `final/`), the optimizer and scheduler states, every RNG state,
and `state.json` (the step, the data streams' positions, the hard problems ever solved, the
run of non-finite steps). It is written into a hidden temporary directory and renamed into
place, so a run killed mid-save leaves either the previous checkpoints or the new one, never
half of one; leftovers of an interrupted save are removed on the next save.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from pope_cli.outputs import atomic_write_json

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def rng_states() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, optimizer, scheduler, state: dict, keep: int) -> Path:
    """Write checkpoint `step` atomically, then drop all but the newest `keep`."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".tmp_step_*"):
        shutil.rmtree(leftover)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_states(), tmp / "rng.pt")
    atomic_write_json(tmp / "state.json", {**state, "step": step})
    if final.exists():  # a rerun from an earlier checkpoint reached this step again
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_training_state(checkpoint: Path, optimizer, scheduler) -> dict:
    """Restore optimizer, scheduler and RNG states from `checkpoint`; returns its state.json.

    The weights are not loaded here: the policy is built from `checkpoint/model` directly.
    """
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=False))
    restore_rng(torch.load(checkpoint / "rng.pt", weights_only=False))
    return json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
