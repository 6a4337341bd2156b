"""Checkpoints under RUN/checkpoints/step_NNNNNN/: complete or absent, the last N kept.

A checkpoint holds everything a resumed run needs to continue exactly as if never stopped:
the trained weights (`model/`, a peft adapter or a full model in the standard format, with
the tokenizer, so it loads like `final/`), the optimizer and scheduler states, every RNG state,
and `state.json` (the step, the data streams' positions, the hard problems ever solved, the
run of non-finite steps). It is written into a hidden temporary directory and renamed into
place, so a run killed mid-save leaves either the previous checkpoints or the new one, never
half of one; leftovers of an interrupted save are removed on the next save.

On N ranks every rank calls `save_checkpoint` (a sharded model's weights and optimizer state
are gathered to rank 0), rank 0 alone writes, and each rank's RNG state is kept
(`rng.pt` is rank 0's, `rng_rank<R>.pt` the others'). The weights and optimizer state are in
the one-process format, so any number of ranks resumes from any checkpoint.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from pope_cli.shared.distributed import SOLO, Ranks
from pope_cli.shared.errors import PopeError
from pope_cli.shared.outputs import atomic_write_json, publish_modes
from pope_cli.stages.train.parallel import full_weights, load_optimizer_state, optimizer_state

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def rng_states() -> dict:
    """Every RNG state as lists, numbers and tensors: what `torch.load(weights_only=True)` reads."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(states: dict) -> None:
    """Also takes the older format (numpy arrays, a tuple for Python), which earlier pope versions wrote."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    keys = keys.numpy() if torch.is_tensor(keys) else keys
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, optimizer, scheduler, state: dict, keep: int,
                    ranks: Ranks = SOLO) -> Path:
    """Write checkpoint `step` atomically, then drop all but the newest `keep`."""
    weights, optimizer_dict, rngs = full_weights(model), optimizer_state(model, optimizer), ranks.gather(rng_states())
    final = checkpoint_root(run_dir) / f"step_{step:06d}"
    if ranks.main:
        _write_checkpoint(final, model, weights, tokenizer, optimizer_dict, scheduler, rngs, state, step)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    ranks.barrier()
    return final


def _write_checkpoint(final: Path, model, weights: dict | None, tokenizer, optimizer_dict: dict, scheduler,
                      rngs: list[dict], state: dict, step: int) -> None:
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".tmp_step_*"):
        shutil.rmtree(leftover)
    tmp = root / f".tmp_step_{step:06d}"
    model.save_pretrained(tmp / "model", state_dict=weights)
    tokenizer.save_pretrained(tmp / "model")
    torch.save(optimizer_dict, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for rank, rng in enumerate(rngs):
        torch.save(rng, tmp / _rng_file(rank))
    atomic_write_json(tmp / "state.json", {**state, "step": step})
    publish_modes(tmp)  # safetensors writes its files 0600
    if final.exists():  # a rerun from an earlier checkpoint reached this step again
        shutil.rmtree(final)
    tmp.rename(final)


def _rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt" if rank else "rng.pt"


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


def load_training_state(checkpoint: Path, model, optimizer, scheduler, rank: int = 0) -> dict:
    """Restore optimizer, scheduler and RNG states from `checkpoint`; returns its state.json.

    The weights are not loaded here: the policy is built from `checkpoint/model` directly. A
    rank the saving run did not have takes rank 0's RNG state.
    """
    load_optimizer_state(model, optimizer, safe_load(checkpoint / "optimizer.pt"))
    scheduler.load_state_dict(safe_load(checkpoint / "scheduler.pt"))
    rng = checkpoint / _rng_file(rank)
    restore_rng(safe_load(rng if rng.exists() else checkpoint / "rng.pt"))
    return json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))


def _numpy_array_globals() -> list:
    """What a pickled numpy array needs (earlier checkpoints' RNG state): it builds an array, runs nothing."""
    return [np.ndarray, np.dtype, np._core.multiarray._reconstruct, type(np.dtype(np.uint32))]


def safe_load(path: Path):
    """`torch.load` that only builds tensors and plain data: a file carrying any other pickled
    object (one that could run code when loaded) is refused, and nothing of it runs."""
    import pickle

    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise PopeError(f"{path}: refused: it holds a pickled Python object{what} that could run code when loaded; "
                        "resume only from checkpoints pope wrote") from None
