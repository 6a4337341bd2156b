"""Experiment trackers (TensorBoard, W&B, Trackio) mirroring a run's metrics rows, behind one interface.

`metrics.jsonl` stays the source of truth; a tracker gets every row under the same names, the
run's config as hyperparameters, and tables (logged completions). Any stage that writes metric
rows (`pope train`, `pope sft`) opens `Trackers(opts, out, config, warn)` on rank 0 and calls
`log(step, row)`, `table(step, key, columns, rows)` and `close()`.

Each library is imported only when its tracker is asked for. A tracker that raises (network,
disk) is reported once through `warn` and dropped for the rest of the run: a tracker never stops
training. `RUN/trackers.json` records the last step each tracker received and the W&B run id, so
a resumed run continues the same tracker runs and never sends a step twice (steps recomputed
after a checkpoint are the ones the tracker already holds).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import secrets
from pathlib import Path
from typing import Callable

from pope_cli.shared.config import TrackerOptions
from pope_cli.shared.outputs import atomic_write_json, flatten

STATE_FILE = "trackers.json"
OUTPUTS = (STATE_FILE, "tensorboard", "wandb", "completions.jsonl")
"""What trackers and logged completions write in RUN (an --overwrite removes them with the run)."""


def scalars(row: dict) -> dict[str, float]:
    """The row's numbers but its step (None, text and non-finite values are left out)."""
    return {key: float(value) for key, value in row.items()
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value)}


def hyperparameters(config: dict) -> dict:
    """The config flattened to dotted keys, each value a number, bool or string."""
    return {key: value if isinstance(value, (int, float, bool, str)) else json.dumps(value)
            for key, value in flatten(config).items()}


class TensorBoard:
    """Event files under RUN/tensorboard/ (torch's SummaryWriter; needs the tensorboard package)."""

    name = "tensorboard"

    def __init__(self, out: Path, run_name: str, project: str, config: dict, state: dict):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(str(out / "tensorboard"))
        for summary in hparams(hyperparameters(config), {}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=1)}\n```")

    def log(self, step: int, row: dict) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def table(self, step: int, key: str, columns: list[str], rows: list[list]) -> None:
        def cell(value) -> str:
            return str(value).replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
        self.writer.add_text(key, "\n".join(lines), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A W&B run in RUN/wandb/, resumed by the id kept in trackers.json; WANDB_MODE=offline works."""

    name = "wandb"

    def __init__(self, out: Path, run_name: str, project: str, config: dict, state: dict):
        import wandb

        state.setdefault("wandb_id", secrets.token_hex(4))
        self.wandb = wandb
        self.run = wandb.init(project=project, name=run_name, id=state["wandb_id"], resume="allow", dir=str(out),
                              config=config, settings=wandb.Settings(console="off", silent=True))

    def log(self, step: int, row: dict) -> None:
        self.run.log(scalars(row), step=step)

    def table(self, step: int, key: str, columns: list[str], rows: list[list]) -> None:
        self.run.log({key: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackio:
    """A Trackio run in the local store (TRACKIO_DIR, default ~/.cache/huggingface/trackio)."""

    name = "trackio"

    def __init__(self, out: Path, run_name: str, project: str, config: dict, state: dict):
        import trackio

        self.trackio = trackio
        resume = "allow" if "trackio" in state.get("logged", {}) else "never"
        with _quiet():  # trackio prints a dashboard banner to stdout
            self.run = trackio.init(project=project, name=run_name, config=config, resume=resume,
                                    auto_log_cpu=False, auto_log_gpu=False)

    def log(self, step: int, row: dict) -> None:
        self.run.log(scalars(row), step=step)

    def table(self, step: int, key: str, columns: list[str], rows: list[list]) -> None:
        self.run.log({key: self.trackio.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        with _quiet():
            self.run.finish()


BACKENDS = {"tensorboard": TensorBoard, "wandb": WandB, "trackio": Trackio}


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class Trackers:
    """The trackers of one run; every call goes to each live tracker, a failing one is dropped."""

    def __init__(self, opts: TrackerOptions, out: Path, config: dict, warn: Callable[[str], None]):
        """A run resuming in `out` finds its trackers' state there (a new run has none: its stage
        removes OUTPUTS with an --overwrite)."""
        self.out, self.warn = Path(out), warn
        path = self.out / STATE_FILE
        self.state = json.loads(path.read_text()) if path.exists() else {}
        self.state.setdefault("logged", {})
        run_name = opts.run_name or self.out.resolve().name
        self.live = []
        for name in opts.report_to:
            self._call(name, lambda: self.live.append(BACKENDS[name](self.out, run_name, opts.project, config,
                                                                      self.state)), "could not start")
        self._save()

    def log(self, step: int, row: dict) -> None:
        """Send a metrics row, to each tracker that has not had this step yet."""
        for tracker in list(self.live):
            if step > self.state["logged"].get(tracker.name, 0):
                if self._call(tracker.name, lambda: tracker.log(step, row), f"failed at step {step}"):
                    self.state["logged"][tracker.name] = step
        self._save()

    def table(self, step: int, key: str, columns: list[str], rows: list[list]) -> None:
        """A table for `step`; call it before `log(step, ...)` so a step already sent is skipped."""
        for tracker in list(self.live):
            if step > self.state["logged"].get(tracker.name, 0):
                self._call(tracker.name, lambda: tracker.table(step, key, columns, rows), f"failed at step {step}")

    def close(self) -> None:
        for tracker in list(self.live):
            self._call(tracker.name, tracker.close, "failed to close")
        self.live = []

    def _call(self, name: str, action: Callable[[], None], what: str) -> bool:
        try:
            action()
            return True
        except Exception as error:  # any failure of a tracker library: report it, keep training
            self.live = [t for t in self.live if t.name != name]
            self.warn(f"warning: tracker {name} {what} ({type(error).__name__}: {error}); it is off for the rest of "
                      f"this run, {self.out / 'metrics.jsonl'} has every step")
            return False

    def _save(self) -> None:
        atomic_write_json(self.out / STATE_FILE, self.state)
