"""POPE − GRPO on the held-out hard problems over the seeds of examples/smollm2/run.sh.

    python examples/smollm2/summarize.py WORK

Reads WORK/seed-*/eval/samples.jsonl (the start model and both arms, unguided and guided) and
WORK/seed-*/times.txt. Per seed and mode: each model's avg@n (the mean per-problem pass rate), and
POPE − GRPO with a 95% interval from a paired bootstrap over problems (`shared/paired.py`, the
same problems resampled together for both arms). Pooled over seeds: each problem's rates averaged
over seeds first, then bootstrapped over problems. Prints a markdown table; nothing is re-run.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pope_cli.shared.paired import paired_difference


def rates(samples: Path) -> dict[tuple[str, str], dict[str, float]]:
    """(arm, mode) → problem id → fraction correct; arm is start, grpo or pope."""
    hits: dict[tuple[str, str], dict[str, list[bool]]] = {}
    for line in samples.read_text().splitlines():
        row = json.loads(line)
        arm = next((a for a in ("grpo", "pope") if f"/runs/{a}/" in row["model"] + "/"), "start")
        hits.setdefault((arm, row["mode"]), {}).setdefault(row["id"], []).append(bool(row["correct"]))
    return {key: {pid: sum(v) / len(v) for pid, v in per.items()} for key, per in hits.items()}


def interval(pope: list[float], grpo: list[float]) -> tuple[float, float, float]:
    """Mean of the paired differences and its 95% bootstrap interval, problems the resampled unit."""
    result = paired_difference(pope, grpo, "+")
    return result["mean"], *result["ci95"]


def points(value: float) -> str:
    return f"{100 * value:+.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    args = parser.parse_args()
    seeds = sorted(args.work.glob("seed-*/eval/samples.jsonl"), key=lambda p: int(p.parts[-3].split("-")[1]))
    if not seeds:
        raise SystemExit(f"{args.work}: no seed-*/eval/samples.jsonl")
    per_seed = {path.parts[-3]: rates(path) for path in seeds}
    print("| seed | mode | problems | start avg@n | GRPO avg@n | POPE avg@n | POPE − GRPO (points) [95%] |")
    print("|---|---|---|---|---|---|---|")
    pooled: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for seed, table in per_seed.items():
        for mode in ("unguided", "guided"):
            if (("pope", mode) not in table) or (("grpo", mode) not in table):
                continue
            ids = sorted(table["pope", mode])
            pope, grpo = [table["pope", mode][i] for i in ids], [table["grpo", mode][i] for i in ids]
            for i, p, g in zip(ids, pope, grpo):
                pooled.setdefault(mode, {}).setdefault(i, []).append((p, g))
            mean, low, high = interval(pope, grpo)
            avg = {arm: statistics.fmean(table[arm, mode].values()) for arm in ("start", "grpo", "pope")
                   if (arm, mode) in table}
            print(f"| {seed} | {mode} | {len(ids)} | {100 * avg.get('start', float('nan')):.2f} | "
                  f"{100 * avg['grpo']:.2f} | {100 * avg['pope']:.2f} | {points(mean)} [{points(low)}, {points(high)}] |")
    for mode, per_problem in pooled.items():
        pairs = list(per_problem.values())
        mean, low, high = interval([statistics.fmean(p for p, _ in v) for v in pairs],
                                   [statistics.fmean(g for _, g in v) for v in pairs])
        print(f"| all {len(per_seed)} | {mode} | {len(per_problem)} | | | | {points(mean)} [{points(low)}, {points(high)}] |")
    for path in seeds:
        times = path.parents[1] / "times.txt"
        if times.exists():
            print(f"\n{path.parts[-3]}: " + "; ".join(line.strip("= ") for line in times.read_text().splitlines()))


if __name__ == "__main__":
    main()
