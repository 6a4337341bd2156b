"""The directories a report reads: training runs (metrics.jsonl, completions.jsonl) of `pope
train` or `pope sft` (an sft run holds sft_data.jsonl), and evaluations (summary.json), each
labelled by its directory's name."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pope_cli.shared.errors import PopeError
from pope_cli.shared.outputs import load_jsonl_repairing


@dataclass
class RunData:
    label: str
    path: Path
    rows: list[dict]
    completions: list[dict] = field(default_factory=list)
    stage: str = "train"
    """The stage that wrote it: train or sft."""


@dataclass
class EvalData:
    label: str
    path: Path
    summary: dict


def labels(paths: list[Path], what: str = "DIR") -> list[str]:
    """Each path's name, with as many parent parts as it takes to tell it from every other path
    (runs/grpo/final and runs/pope/final are grpo/final and pope/final; a lone model stays model)."""
    repeated = [p for i, p in enumerate(paths) if p in paths[:i]]
    if repeated:
        raise PopeError(f"{what}: {repeated[0]} is given twice", exit_code=2)
    names = []
    for path in paths:
        others = [q for q in paths if q != path]
        depth = next((d for d in range(1, len(path.parts) + 1)
                      if all(q.parts[-d:] != path.parts[-d:] for q in others)), len(path.parts))
        names.append("/".join(path.parts[-depth:]))
    return names


def load_inputs(dirs: list[str]) -> tuple[list[RunData], list[EvalData]]:
    """The runs and the evals among `dirs`; runs are labelled apart from evals, so a demo's
    runs/pope and eval/pope are both "pope"."""
    run_paths, eval_paths = [], []
    for given in dirs:
        path = Path(given).resolve()
        if (path / "metrics.jsonl").is_file():
            run_paths.append(path)
        elif (path / "summary.json").is_file():
            eval_paths.append(path)
        else:
            raise PopeError(f"{given}: neither a run directory (metrics.jsonl) nor an eval directory (summary.json)",
                            exit_code=2)
    runs = [RunData(label, path, load_jsonl_repairing(path / "metrics.jsonl"),
                    load_jsonl_repairing(path / "completions.jsonl"),
                    "sft" if (path / "sft_data.jsonl").is_file() else "train")
            for label, path in zip(labels(run_paths), run_paths)] if run_paths else []
    evals = [EvalData(label, path, _read_summary(path / "summary.json"))
             for label, path in zip(labels(eval_paths), eval_paths)] if eval_paths else []
    return runs, evals


def _read_summary(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise PopeError(f"{path}: not valid JSON ({error})", exit_code=2) from None
