"""The fetched real model (SmolLM2-135M-Instruct, `pope lm get`) for the tests marked real_lm.

The tests find it through POPE_REAL_LM=DIR and are skipped where that is unset. Where it is set
and DIR holds no model yet, the first test module to ask fetches it there (`pope lm get`, under a
lock: xdist workers and CI's later lanes then read the same directory). CI sets it to a cache
outside the clone (.ci/run), so the model is fetched once per run and a failed fetch fails the
tests instead of skipping them.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LM = REPO / "pope_cli" / "lm"
TEMPLATES = LM / "templates"
ENV = "POPE_REAL_LM"


def real_lm_dir() -> Path:
    """The model directory POPE_REAL_LM names, fetched there first when it is not there; the calling
    module is skipped when the variable is unset."""
    value = os.environ.get(ENV)
    if not value:
        pytest.skip(f"{ENV} is not set: run `pope lm get --out DIR` and set {ENV}=DIR", allow_module_level=True)
    path = Path(value).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            from pope_cli.lm.fetch import GetConfig, get_model

            get_model(GetConfig(out=str(path)))
    return path


def states_an_answer(completion: str, record: dict) -> float:
    """A training reward for the tests that need a learning signal from this model: 1.0 when the
    completion states an answer at all (about 60% of its samples), whatever the number. The real
    reward is right in about 1% of samples on these problems, so a short run sees no group with
    signal, trains no token and measures no sampler/trainer mismatch."""
    from pope_cli.lm.reward import stated_answer

    return 1.0 if stated_answer(completion) is not None else 0.0
