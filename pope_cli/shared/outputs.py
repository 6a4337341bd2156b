"""Writing outputs so that a killed run loses at most the record in flight.

JSONL outputs are appended one flushed line at a time; on restart a torn last line is cut off
and the complete lines tell the stage what is already done. Whole-file outputs (JSON, the
final JSONL files) are written to a temporary file and renamed into place, so a reader never
sees half a file. `pope_cli.shared.claim` guards an output against being clobbered, resumed with
a different configuration, or used by two runs at once.

Every output gets the mode the umask gives a file the user creates (0666 & ~umask; 0777 & ~umask
for a directory or a script): a temporary file (`mkstemp`, 0600) and libraries that write through
one (safetensors) would otherwise leave outputs that only their owner can read, which a teammate,
a serving job or a trainer running as another user cannot open.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from pope_cli import __version__
from pope_cli.shared.errors import PopeError


def dumps(obj: Any) -> str:
    """One JSON line; values JSON can't hold (numpy scalars, dates) become text."""
    text = json.dumps(obj, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (a custom decoder's broken UTF-8) cannot be written as UTF-8; \u
        # escapes keep the line valid and read back to the same string.
        text = json.dumps(obj, default=str)
    return text


def umask() -> int:
    """The process's umask, read without changing it where Linux reports it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere only setting it tells it
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain file the user creates gets: 0666 & ~umask."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The mode of a directory (or an executable script) the user creates: 0777 & ~umask."""
    return 0o777 & ~umask()


def publish_modes(root: Path) -> None:
    """Give `root` and everything under it the umask's modes (see the module docstring)."""
    root = Path(root)
    files, dirs = file_mode(), dir_mode()
    if root.is_file():
        root.chmod(files)
        return
    root.chmod(dirs)
    for parent, subdirs, names in os.walk(root):
        for name in subdirs:
            Path(parent, name).chmod(dirs)
        for name in names:
            Path(parent, name).chmod(files)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(dumps(row) + "\n" for row in rows))


def load_jsonl_repairing(path: Path) -> list[dict]:
    """The complete records of an output JSONL, cutting off a torn last line in place.

    Only the last line can be torn (it was being written when the run died); a bad line
    anywhere else means the file is not ours to repair, so that is an error.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, good_end, start = [], 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end == -1:
            break
        try:
            rows.append(json.loads(data[start:end].decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if data.find(b"\n", end + 1) != -1:
                raise PopeError(f"{path}:{len(rows) + 1}: corrupt line in an output file; rerun with --overwrite") from None
            break
        good_end = start = end + 1
    if good_end != len(data):
        with path.open("r+b") as handle:
            handle.truncate(good_end)
    return rows


class JsonlAppender:
    """Append records to a JSONL file, each flushed to disk before the next is taken."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")

    def write(self, rows: Iterable[Any]) -> None:
        self._handle.write("".join(dumps(row) + "\n" for row in rows))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def config_diff(old: dict, new: dict, ignored: Iterable[str] = ()) -> list[str]:
    """Names of the options whose values differ between two flattened configs."""
    skip = set(ignored)
    keys = (set(old) | set(new)) - skip
    return sorted(k for k in keys if old.get(k) != new.get(k))


# Config keys whose command-line flag is not the key's last part with dashes.
_FLAGS = {"model.model": "--model", "models": "--model", "reward.spec": "--reward", "reward.timeout": "--reward-timeout",
          "reward.workers": "--reward-workers", "ks": "--k", "modes": "--mode", "data": "DATA", "prefixes": "--prefixes",
          "model.trust_remote_code": "--trust-remote-code", "prompt.chat_template": "--chat-template"}


def option_flag(key: str) -> str:
    """The command-line flag of a flattened config key: "sampling.top_p" → "--top-p"."""
    if key in _FLAGS:
        return _FLAGS[key]
    group, _, name = key.rpartition(".")
    if group == "fields":
        return f"--{name}-field"
    return "--" + name.replace("_", "-")


def flatten(config: dict, prefix: str = "") -> dict:
    """{"model": {"model": "x"}} → {"model.model": "x"}, so diffs name one option each."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_out_path(out: str) -> None:
    """`--out ''` (an unset shell variable) would write into the current directory."""
    if not str(out).strip():
        raise PopeError("--out: must be a non-empty path", exit_code=2)


def file_out(out: str, example: str) -> Path:
    """The `--out` of a stage that writes one file with side files named after it: a directory,
    existing or written as one (`pfx/`), is refused, naming a file that would do."""
    check_out_path(out)
    if str(out).endswith(("/", os.sep)) or Path(out).is_dir():
        raise PopeError(f"--out: {out} is a directory; give a file such as {Path(out) / example}", exit_code=2)
    return Path(out)


def check_writable(directory: Path) -> None:
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".pope-write-check-")
        probe.close()
    except OSError as error:
        raise PopeError(f"{directory}: cannot write here ({error.strerror})") from None


def manifest(command: str, config: dict, started: float, counts: dict, **extra: Any) -> dict:
    """What a result needs to say how it was made."""
    import torch

    return {
        "command": command,
        "argv": sys.argv,
        "config": config,
        "pope_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 3),
        "counts": counts,
        **extra,
    }
