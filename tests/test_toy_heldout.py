"""The shipped held-out set is what the demo's own commands make: the first candidates rebuilt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CANDIDATES = 4


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(command: list[str], inputs: str, out: str) -> None:
    command = [*command]
    command[1], command[command.index("--out") + 1] = inputs, out
    proc = subprocess.run([sys.executable, "-m", "pope_cli.cli", *command], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shipped_heldout_rows_are_those_the_demo_commands_make_for_the_first_candidates(tmp_path):
    from pope_cli.shared.outputs import atomic_write_jsonl
    from pope_cli.stages.demo import DemoConfig, stage_commands
    from pope_cli.toy.heldout import BUILD, BUILD_CANDIDATES, BUILD_POOL, BUILD_SEED, HARD, PREFIXES, portable
    from pope_cli.toy.task import hard_problems

    build = json.loads(BUILD.read_text())
    shipped_hard, shipped_prefixes = rows(HARD), rows(PREFIXES)
    assert build["filter"]["problems"] == BUILD_CANDIDATES and build["filter"]["hard"] == len(shipped_hard) >= 200
    candidates = hard_problems(BUILD_SEED, BUILD_POOL, BUILD_CANDIDATES)[1]
    assert {r["id"] for r in shipped_hard} <= {r["id"] for r in candidates}
    atomic_write_jsonl(tmp_path / "candidates.jsonl", candidates[:CANDIDATES])
    cfg = DemoConfig(out=str(tmp_path), heldout="filter", seed=BUILD_SEED, n_hard=BUILD_POOL,
                     n_heldout=BUILD_CANDIDATES, parallel=1)
    phases = stage_commands(cfg, tmp_path)
    run(phases["filter"][1], str(tmp_path / "candidates.jsonl"), str(tmp_path / "filter"))
    first = {r["id"] for r in candidates[:CANDIDATES]}
    rebuilt = [portable(r) for r in rows(tmp_path / "filter" / "hard.jsonl")]
    assert rebuilt == [r for r in shipped_hard if r["id"] in first] and rebuilt
    run(phases["prefixes"][1], str(tmp_path / "filter" / "hard.jsonl"), str(tmp_path / "prefixes.jsonl"))
    assert [portable(r) for r in rows(tmp_path / "prefixes.jsonl")] == [r for r in shipped_prefixes if r["id"] in first]
    assert {r["template"] for r in shipped_prefixes} == {"pope_cli/toy/templates/guided.txt"}
    assert {r["unguided_template"] for r in shipped_hard + shipped_prefixes} == {"pope_cli/toy/templates/unguided.txt"}
