"""Seconds of `pope --help` and of every subcommand's `--help`, as a user's shell runs them.

    python benchmarks/bench_help.py --reps 7
    python benchmarks/bench_help.py --reps 7 --baseline /tmp/old    # a checkout of another revision, alternated

Each rep starts a fresh interpreter (`python -m pope_cli.cli ... --help`, output discarded), the
way `pope` is run. With `--baseline`, the same command runs from the other checkout right after
(PYTHONPATH puts its pope_cli first), so both see the same machine load; the table gives
min/median/max of each and the median ratio. Results go to benchmarks/results/bench_help.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMANDS = [[], ["filter-hard"], ["make-prefixes"], ["train"], ["sft"], ["eval"], ["export"], ["report"], ["demo"],
            ["toy"], ["toy", "pretrain"]]


def seconds(tree: Path, command: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "100"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pope_cli.cli", *command, "--help"], env=env, check=True, cwd=tree,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def spread(values: list[float]) -> str:
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="Another checkout of pope, timed alternately with this one.")
    args = parser.parse_args()
    trees = {"this": HERE.parent, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    for tree in trees.values():
        seconds(tree, [])  # the first start compiles the bytecode
    times = {name: {" ".join(c) or "(top)": [] for c in COMMANDS} for name in trees}
    for _ in range(args.reps):
        for command in COMMANDS:
            for name, tree in trees.items():
                times[name][" ".join(command) or "(top)"].append(seconds(tree, command))
    header = "| command | this s (min / median / max) |" + (" baseline s | baseline / this |" if args.baseline else "")
    print(header)
    print("|---|---|" + ("---|---|" if args.baseline else ""))
    for command, values in times["this"].items():
        row = f"| pope {command} --help | {spread(values)} |"
        if args.baseline:
            old = times["baseline"][command]
            row += f" {spread(old)} | {statistics.median(old) / statistics.median(values):.2f}x |"
        print(row)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_help.json").write_text(json.dumps({"reps": args.reps, "seconds": times}, indent=1) + "\n")


if __name__ == "__main__":
    main()
