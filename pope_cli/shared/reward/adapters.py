"""pope's reward in the signatures verl and TRL call, for the reward files `pope export` writes.

Both score through `pope_cli.shared.reward.checker.Scorer`, the checker `pope train` uses (`math`, or a user's
`module:function`), so an exported run rewards exactly what a pope run rewards: 1.0 for a correct
final answer, 0.0 for a wrong or missing one, and 0.0 when a check misses its hard deadline.

A process keeps one scorer (its worker processes start on first use). verl calls the reward
from several threads of one process at once, and a scorer serves one caller at a time, so calls
take turns behind a lock; a check takes milliseconds, so the turns cost little.
"""

from __future__ import annotations

import atexit
import json
import threading

_settings = {"spec": "math", "timeout": 5.0, "workers": 1}
_lock = threading.Lock()
_scorer = None


def configure(spec: str = "math", timeout: float = 5.0, workers: int = 1) -> None:
    """Which checker to use, its per-check deadline and worker processes.

    A scorer started under other settings is stopped, so the next call uses these.
    """
    global _scorer
    new = {"spec": spec, "timeout": timeout, "workers": workers}
    with _lock:
        if _scorer is not None and new != _settings:
            _scorer.close()
            _scorer = None
        _settings.update(new)


def _get_scorer():
    global _scorer
    if _scorer is None:
        from pope_cli.shared.reward.checker import Scorer

        _scorer = Scorer(_settings["spec"], workers=_settings["workers"], timeout=_settings["timeout"])
        atexit.register(_scorer.close)
    return _scorer


def score(completions: list[str], records: list[dict]) -> list[float]:
    """One score per completion; a check that found no answer (None) scores 0.0."""
    with _lock:
        scores = _get_scorer().score(completions, records)
    return [0.0 if s is None else float(s) for s in scores]


def _record(answer, record_json: str | None) -> dict:
    """The record a checker sees: the exported pope record (for custom checkers) with the gold answer."""
    record = json.loads(record_json) if record_json else {}
    return {**record, "answer": str(answer)}


def verl_score(solution_str: str, ground_truth, extra_info: dict | None = None) -> float:
    """verl's `compute_score(data_source, solution_str, ground_truth, extra_info)`, minus data_source."""
    return score([solution_str], [_record(ground_truth, (extra_info or {}).get("record"))])[0]


def _text(completion) -> str:
    """TRL passes a completion as text, or in conversational datasets as a list of messages."""
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")
    return completion


def trl_rewards(completions: list, answer: list, record: list | None = None) -> list[float]:
    """TRL reward values for a batch: dataset columns arrive as lists, one entry per completion."""
    records = [_record(a, r) for a, r in zip(answer, record or [None] * len(answer))]
    return score([_text(c) for c in completions], records)
