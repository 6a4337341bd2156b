"""Gather several `pope demo --full` runs (one per seed) into one table and one plot.

    python examples/toy/summarize.py RUN_DIR [RUN_DIR ...] --out examples/toy

Reads each run's `results.json` and `runs/*/metrics.jsonl`; prints a markdown table of held-out
unguided and guided avg@32 / pass@32 per arm (mean over seeds, then each seed), training facts
and wall times; writes `curves.png` with every seed's curves per arm (thin) and their mean
(thick). Nothing is recomputed: the numbers are the demo's own.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pope_cli.stages.demo import smooth

ARMS = ["start", "grpo", "grpo-easy", "pope", "pope-no-restate"]
METRICS = [("unguided", "avg@n"), ("unguided", "pass@32"), ("guided", "avg@n"), ("guided", "pass@32")]


def load(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    results["curves"] = {}
    for arm in results["training"]:
        rows = [json.loads(line) for line in (run / "runs" / arm / "metrics.jsonl").read_text().splitlines()]
        results["curves"][arm] = rows
    return results


def table(runs: list[dict]) -> str:
    arms = [a for a in ARMS if all(a in r["arms"] for r in runs)]
    head = "| arm | " + " | ".join(f"{mode} {name.replace('avg@n', 'avg@32')}" for mode, name in METRICS)
    lines = [head + " | hard solved unguided in training (ever) | steps with an unguided reward |",
             "|---" * (len(METRICS) + 3) + "|"]
    for arm in arms:
        cells = []
        for mode, name in METRICS:
            values = [100 * r["arms"][arm][mode][name] for r in runs]
            cells.append(f"{statistics.mean(values):.1f} ({' / '.join(f'{v:.1f}' for v in values)})")
        for fact in ("hard_solved_unguided_ever", "steps_with_unguided_signal"):
            values = [r["training"][arm][fact] for r in runs if arm in r["training"]]
            cells.append(" / ".join(map(str, values)) if values else "-")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def facts(runs: list[dict], names: list[str]) -> str:
    lines = ["| seed | easy + pool: hard after filter-hard | held-out: hard after filter-hard | samples drawn (of naive) | "
             "wall time (s): filter / prefixes / train / eval / total |", "|---|---|---|---|---|"]
    for name, r in zip(names, runs):
        f, h, s = r["filter"], r["heldout_filter"], r["seconds"]
        lines.append(f"| {name} | {f['hard']} of {f['problems']} | {h['hard']} of {h['problems']} | "
                     f"{f['samples'] + h['samples']} ({f['naive_samples'] + h['naive_samples']}) | "
                     f"{s['filter']:.0f} / {s['prefixes']:.0f} / {s['train']:.0f} / {s['eval']:.0f} / {s['total']:.0f} |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if all(a in r["curves"] for r in runs)]
    fig, (reward_ax, solved_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, arm in enumerate(arms):
        color = f"C{index}"
        series = [[row.get("reward/unguided") or 0.0 for row in r["curves"][arm]] for r in runs]
        solved = [[row["solved_unguided/ever"] for row in r["curves"][arm]] for r in runs]
        for values, counts in zip(series, solved):
            reward_ax.plot(smooth(values), color=color, alpha=0.25, linewidth=0.8)
            solved_ax.plot(counts, color=color, alpha=0.25, linewidth=0.8)
        reward_ax.plot(smooth([statistics.mean(v) for v in zip(*series)]), color=color, linewidth=2, label=arm)
        solved_ax.plot([statistics.mean(v) for v in zip(*solved)], color=color, linewidth=2, label=arm)
    reward_ax.set(title="unguided training reward (moving average of 10 steps)", xlabel="step", ylabel="mean reward")
    solved_ax.set(title="hard problems ever solved unguided in training", xlabel="step", ylabel="problems")
    reward_ax.legend(fontsize=8)
    solved_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="`pope demo --full --out` directories, one per seed")
    parser.add_argument("--out", type=Path, default=Path("examples/toy"), help="where curves.png goes")
    args = parser.parse_args()
    runs = [load(run) for run in args.runs]
    names = [str(r["config"]["seed"]) for r in runs]
    heldout = " / ".join(str(r["heldout_filter"]["hard"]) for r in runs)
    print(f"Held-out hard problems ({heldout}), n = 32 samples each, % correct: mean over seeds (seeds "
          + ", ".join(names) + ")\n")
    print(table(runs) + "\n")
    print(facts(runs, names))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, args.out / "curves.png")


if __name__ == "__main__":
    main()
