"""What the benchmarks share at their end: the spread of repeated measurements, and their JSON
under benchmarks/results/ (a `_quick` name for a smoke run, so it never replaces a real one)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def spread(values: list[float]) -> dict:
    """min / median / max: on a shared machine the spread says as much as the middle."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def save(name: str, results: dict, quick: bool = False) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}{'_quick' if quick else ''}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
