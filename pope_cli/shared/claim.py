"""Claiming an output for one run: one process per directory, and a start that never loses a run.

A stage claims its output before it loads anything heavy, and says `started()` once it really
has (model loaded). Until then the output is only read: a start that fails leaves it exactly as
it was (a directory the claim had to create for its lock is removed again). `started()` is the
one moment a run changes: with `--overwrite` the earlier outputs are moved into a side
directory (its config first), the new config is written, and only then is the side directory
deleted. A process killed inside that swap leaves the side directory behind, and the next claim
puts it right: without a config in place the earlier run is moved back whole; with one, the new
run had started and the leftovers go. A rerun thus finds a whole earlier run or a whole new one.

A rerun resumes when its options mean what the recorded run's meant: paths are compared resolved
(`M/`, `./M` and `/abs/M` are one model), and `auto` as what it resolves to here (`--backend auto`
that chose hf is `--backend hf`). A refusal names each differing option as `--help` spells it, with
both values. An earlier start that failed before writing any output does not block a corrected
command: there is nothing of it to resume.

One run per directory: an OS lock (`fcntl.flock`) on a lock file beside the config, held for the
whole run. The kernel drops it when the process dies, so a SIGKILLed run never blocks the next;
the pid in the file is only there to name the holder in the refusal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from pope_cli.shared.errors import PopeError
from pope_cli.shared.options import described_options
from pope_cli.shared.outputs import atomic_write_json, check_out_path, config_diff, flatten, option_flag


class DirLock:
    """An exclusive flock on `path`, refused at once (PopeError naming the holder's pid) when held."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> DirLock:
        import fcntl

        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise PopeError(f"{self.path.parent}: another pope run (pid {pid}) is using this output; "
                                "wait for it to end or use another --out", exit_code=1) from None
            # A holder that was releasing unlinked the file after we opened it: lock the new one.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise PopeError(f"{self.path.parent}: cannot write here ({error.strerror})") from None

    def release(self) -> None:
        """Unlink while still holding the lock, so no process can lock the old file after us."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class OutputClaim:
    """A claimed output: whether the run resumes, and `started()` to commit the new run."""

    def __init__(self, config_path: Path, config: dict, outputs: list[Path] | None, overwrite: bool,
                 recorded: dict | None):
        self.config_path, self.config, self.outputs = config_path, config, outputs
        self.overwrite, self.resuming = overwrite, recorded is not None
        self.recorded = recorded
        """The resumed run's recorded config (its values as that run's command gave them), else None."""
        self.aside = aside_dir(config_path)
        self.is_started = False

    def started(self) -> None:
        """The run has really started: move an overwritten run aside, record the config, drop the old run."""
        if self.is_started:
            return
        if self.overwrite:
            outputs = self.outputs if self.outputs is not None else self._everything()
            self.aside.mkdir()
            for path in [self.config_path, *outputs]:  # the config first: see _recover
                if path.exists() or path.is_symlink():
                    os.replace(path, self.aside / path.name)
        if not self.resuming:
            atomic_write_json(self.config_path, self.config)
        if self.aside.exists():
            shutil.rmtree(self.aside)
        self.is_started = True

    def _everything(self) -> list[Path]:
        own = {self.config_path.name, self.aside.name, lock_path(self.config_path).name}
        return [p for p in self.config_path.parent.iterdir() if p.name not in own]


def lock_path(config_path: Path) -> Path:
    return config_path.with_name(f".{config_path.stem}.lock")


def aside_dir(config_path: Path) -> Path:
    """Where an overwritten run waits until the new one has started."""
    return config_path.with_name(f".{config_path.stem}.previous")


@contextmanager
def claim_output(out: str, config_path: Path, config: Any, outputs: list[Path] | None, overwrite: bool,
                 ignored: Iterable[str] = (), resolved: dict | None = None) -> Iterator[OutputClaim]:
    """Lock `config_path`'s directory and check the output for a run; yields the claim.

    `config` is the stage's config dataclass (or a plain dict). A first run (or `overwrite`)
    starts afresh; a rerun with the same config (up to `ignored` keys; paths resolved, and an
    option's `auto` taken as `resolved[key]`) resumes; with a different one it is refused, naming
    the options. Outputs that exist without a recorded config are never clobbered without
    `overwrite`. `outputs=None` means the whole directory, and is never refused for what it
    holds (the demo: its stages check their own).
    """
    check_out_path(out)
    config_path = Path(config_path)
    options = described_options(config) if dataclasses.is_dataclass(config) else {}
    config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    created = _make_dirs(config_path.parent)
    lock = None
    claim = None
    try:
        lock = DirLock(lock_path(config_path)).acquire()
        _recover(config_path)
        recorded = None if overwrite else _resumable(config_path, config, outputs, ignored, options, resolved or {})
        claim = OutputClaim(config_path, config, outputs, overwrite, recorded)
        yield claim
    finally:
        if lock is not None:
            lock.release()
        if claim is None or not claim.is_started:
            _remove_dirs(created)


def _resumable(config_path: Path, config: dict, outputs: list[Path] | None, ignored: Iterable[str],
               options: dict[str, tuple[str, bool]], resolved: dict) -> dict | None:
    """The recorded config when this run resumes it; None when it starts afresh; a PopeError when
    it may not run here."""
    existing = [p for p in outputs or [] if p.exists()]
    if config_path.exists():
        old = json.loads(config_path.read_text(encoding="utf-8"))
        flat_old, flat_new = flatten(old), flatten(config)
        changed = config_diff(meaning(flat_old, options, resolved), meaning(flat_new, options, resolved), ignored)
        if not changed:
            return old
        if outputs is not None and not existing:
            return None  # an earlier start failed before it wrote anything: nothing to resume, nothing to lose
        described = "; ".join(f"{options.get(key, (option_flag(key),))[0]}: was {_shown(flat_old.get(key))}, "
                              f"now {_shown(flat_new.get(key))}" for key in changed)
        raise PopeError(f"{config_path}: an earlier run used different options ({described}); "
                        "use the same options to resume, another output, or --overwrite", exit_code=2)
    if existing:
        raise PopeError(f"{existing[0]}: already exists and was not written by this command; use --overwrite to replace it",
                        exit_code=2)
    return None


def meaning(flat: dict, options: dict[str, tuple[str, bool]], resolved: dict) -> dict:
    """A flattened config as what its values mean here: each path option's existing path resolved
    (a hub id or `hf:NAME` stays as it is), each `auto` that `resolved` knows replaced by its value."""
    meant = {}
    for key, value in flat.items():
        if value == "auto" and key in resolved:
            value = resolved[key]
        elif options.get(key, ("", False))[1]:
            value = [_real(v) for v in value] if isinstance(value, list) else _real(value)
        meant[key] = value
    return meant


def _real(value):
    return os.path.realpath(value) if isinstance(value, str) and value and os.path.exists(value) else value


def _shown(value) -> str:
    text = "unset" if value is None else value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else "…" + text[-59:]  # a path differs at its end


def _recover(config_path: Path) -> None:
    """Finish a swap that a killed `started()` left half done (see the module docstring)."""
    aside = aside_dir(config_path)
    if not aside.is_dir():
        return
    if config_path.exists():
        shutil.rmtree(aside)
        return
    moved = sorted(aside.iterdir(), key=lambda p: p.name == config_path.name)  # the config last
    for path in moved:
        os.replace(path, config_path.parent / path.name)
    aside.rmdir()


def _make_dirs(directory: Path) -> list[Path]:
    """Create `directory` and its missing parents; returns the ones created, outermost first."""
    missing = []
    for path in [directory, *directory.parents]:
        if path.exists():
            break
        missing.append(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PopeError(f"{directory}: cannot write here ({error.strerror})") from None
    if not directory.is_dir():
        raise PopeError(f"{directory}: is not a directory", exit_code=2)
    return missing[::-1]


def _remove_dirs(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            return  # something else put a file there: leave it
