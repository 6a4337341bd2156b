"""Which input records changed since the run an output resumes.

A sampling stage resumes from the work it finished per input record (filter-hard's stats rows,
make-prefixes' and make-solutions' stats rows, eval's units). When a run starts, the hash of each
record's canonical JSON is written beside that state (`inputs.json`); a rerun hashes the input it
reads now and compares. The work of a record whose content changed (an edited answer) or that is
gone from the input is dropped and redone, and a record new to the input is simply not done yet,
so the files end up exactly those a fresh run on the current input writes (every sample's seed
comes from the seed and the record's id, never from what ran before). The stage says in one line
what changed. An output written before hashes were kept is taken as matching its input.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pope_cli.shared.outputs import atomic_write_json

SHOWN_IDS = 3


def record_hash(record: dict) -> str:
    """A hash of the record's content, whatever the order of its keys."""
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass
class InputChanges:
    """Keys of records whose finished work no longer matches the input, and of new ones."""

    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)

    @property
    def stale(self) -> set[str]:
        """The keys whose finished work must go: changed or removed records."""
        return set(self.changed) | set(self.removed)

    def describe(self, source: str) -> str | None:
        """One line for the user, or None when the input is as the earlier run read it."""
        if not (self.changed or self.removed or self.added):
            return None
        parts = [f"{len(keys)} {what} ({_some(keys)})" for what, keys in
                 (("changed", self.changed), ("removed", self.removed), ("added", self.added)) if keys]
        redo = "; the changed ones are redone" if self.changed else ""
        return f"{source} differs from the input of the earlier run: records {', '.join(parts)}{redo}"


def _some(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN_IDS]) + (", …" if len(keys) > SHOWN_IDS else "")


def compare(path: Path, current: dict[str, str], done: Iterable[str], resuming: bool = True) -> InputChanges:
    """How the `current` input ({key: hash}) differs from the one recorded in `path`, as far as it
    matters for the `done` keys (finished work) and for what is new; nothing for a fresh run."""
    if not resuming:
        return InputChanges()
    done = set(done)
    recorded = json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).is_file() else None
    removed = [key for key in sorted(done) if key not in current]
    if recorded is None:
        return InputChanges(removed=removed)
    changed = [key for key, value in current.items() if key in done and recorded.get(key, value) != value]
    added = [key for key in current if key not in recorded]
    return InputChanges(changed, removed, added)


def save(path: Path, current: dict[str, str]) -> None:
    atomic_write_json(path, current)
