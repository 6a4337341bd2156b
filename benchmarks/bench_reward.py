"""Answer-checker throughput: checks per second for normal and hostile mixes of model output.

    python benchmarks/bench_reward.py [--checks 400] [--workers 2] [--timeout 2]

Normal completions are short worked answers ending in a `\\boxed{}` (right and wrong, fractions,
radicals, no answer at all). Hostile ones are what `tests/test_robustness.py` feeds the checker:
code payloads, exponent towers, nested braces, a megabyte of text, control characters. Each mix
is scored by the worker pool (the path train and eval use) and in-process (no deadline, only
for the normal mix: a hostile input could hang it). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

NORMAL = [
    (r"We add the terms and get $\frac{1}{2}$, so the answer is \boxed{\frac{1}{2}}.", "0.5"),
    (r"Squaring both sides gives 12, hence \boxed{2\sqrt{3}}.", r"\sqrt{12}"),
    (r"Counting the cases: 3 + 4 = 7. \boxed{7}", "8"),
    (r"The roots are 2 and 3, so \boxed{2, 3}.", "{2,3}"),
    ("I am not sure how to finish this.", "4"),
    (r"So $x = 10^{3}$ and the answer is \boxed{1000}.", "1000"),
]


def hostile_mix() -> list[str]:
    from test_robustness import hostile_outputs

    return list(hostile_outputs(Path("/nonexistent/pwned")).values())


def batch(mix: str, checks: int, rng: random.Random) -> tuple[list[str], list[dict]]:
    """`checks` completions: normal, or with every tenth (`hostile10`) or every one (`hostile`) hostile."""
    hostile = hostile_mix()
    completions, records = [], []
    for i in range(checks):
        text, gold = rng.choice(NORMAL)
        if mix == "hostile" or (mix == "hostile10" and i % 10 == 0):
            text, gold = rng.choice(hostile), "7"
        completions.append(text)
        records.append({"answer": gold})
    return completions, records


def measure(scorer, completions: list[str], records: list[dict]) -> float:
    started = time.perf_counter()
    scorer.score(completions, records)
    return len(completions) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", type=int, default=400, help="checks per normal mix (hostile: a tenth)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=2.0, help="the per-check deadline (seconds)")
    parser.add_argument("--out", default="benchmarks/results/reward.json")
    args = parser.parse_args()
    from pope_cli.shared.reward.checker import Scorer

    rng = random.Random(0)
    rows = []
    with Scorer("math", workers=args.workers, timeout=args.timeout) as pool:
        for mix, checks in (("normal", args.checks), ("hostile10", args.checks), ("hostile", args.checks // 10)):
            completions, records = batch(mix, checks, rng)
            rows.append({"mix": mix, "path": f"pool ({args.workers} workers)", "checks": checks,
                         "checks_per_s": round(measure(pool, completions, records), 1)})
    completions, records = batch("normal", args.checks, rng)
    rows.append({"mix": "normal", "path": "in-process", "checks": args.checks,
                 "checks_per_s": round(measure(Scorer("math", workers=0), completions, records), 1)})
    print(f"{'mix':<10} {'path':<20} {'checks':>6} {'checks/s':>9}")
    for row in rows:
        print(f"{row['mix']:<10} {row['path']:<20} {row['checks']:>6} {row['checks_per_s']:>9}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"timeout_s": args.timeout, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
