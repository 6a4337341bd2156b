"""Wall time of `pope filter-hard` on the toy with 1 and 2 workers at the same total thread budget,
and the same 2 workers as Ray actors (a Ray started by the run: `--ray local`).

    nice -n 0 python benchmarks/bench_workers.py [--easy 64] [--hard 64] [--k 32] [--chunk 16] [--reps 3] [--threads 2]
    python benchmarks/bench_workers.py --quick        # a smoke run: 4 problems, k 4, 16 tokens, 1 rep

The set: `--easy` easy and `--hard` hard toy problems (pope_cli.toy.task, seed 0), shuffled. Every
run is a child `pope filter-hard` process (imports, model loads and worker starts included) pinned
to the first `--threads` cores, so each arm has the same CPUs: one in-process engine with
`--threads` torch threads, or 2 workers with `--threads`/2 each. The arms alternate (1, 2, ray, 1,
2, ray, ...) so all see the same background load; the table gives min / median / max over the
reps of the speedup t(1 worker) / t(2 workers) (the goal: >= 1.7x) and of Ray's overhead per
problem, (t(ray) - t(2 workers)) / problems, Ray's start-up included. Each run's hard set must be
that of the first 1-worker run (the files are byte-identical by design; this checks it again).

Prints a table and writes benchmarks/results/bench_workers.json (--quick: bench_workers_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ARMS = ("1 worker", "2 workers", "2 Ray actors")
SEED = 0


def write_mix(path: Path, n_easy: int, n_hard: int) -> None:
    from pope_cli.shared.outputs import atomic_write_jsonl
    from pope_cli.toy.task import easy_problems, hard_problems

    mix = easy_problems(SEED, n_easy) + hard_problems(SEED, n_hard, 0)[0]
    random.Random("bench-workers").shuffle(mix)
    atomic_write_jsonl(path, mix)


def command(data: Path, out: Path, args, arm: str) -> list[str]:
    from pope_cli.toy.model import SHIPPED_MODEL_DIR
    from pope_cli.toy.pretrain import TEMPLATES_DIR

    workers = {"1 worker": [], "2 workers": ["--workers", "2"], "2 Ray actors": ["--workers", "2", "--ray", "local"]}
    return [sys.executable, "-m", "pope_cli.cli", "filter-hard", str(data), "--out", str(out), "--overwrite",
            "--model", str(SHIPPED_MODEL_DIR), "--unguided-template", str(TEMPLATES_DIR / "unguided.txt"),
            "--backend", "hf", "--device", "cpu", "--max-new-tokens", str(args.max_new_tokens),
            "--reward", "pope_cli.toy.reward:score", "--reward-workers", "1", "--batch-size", str(args.batch_size),
            "--k", str(args.k), "--chunk", str(args.chunk), "--seed", str(SEED), *workers[arm]]


def run_child(argv: list[str], threads: int) -> float:
    cores = sorted(os.sched_getaffinity(0))[:threads]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, cores))
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"child failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-2000:]}")
    return wall


def spread(values: list[float]) -> dict:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--easy", type=int, default=64)
    parser.add_argument("--hard", type=int, default=64)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256, help="rows per generate call (the demo's 256)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="total thread budget (cores) of every arm")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray arm")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2+2 problems, k 4, 16 tokens, 1 rep")
    args = parser.parse_args()
    if args.quick:
        args.easy, args.hard, args.k, args.chunk, args.max_new_tokens, args.reps = 2, 2, 4, 2, 16, 1
    arms = ARMS[:2] if args.no_ray else ARMS
    problems = args.easy + args.hard
    walls: dict[str, list[float]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_mix(work / "mix.jsonl", args.easy, args.hard)
        reference = None
        for rep in range(args.reps):
            for arm in arms:
                out = work / f"{arm.replace(' ', '_')}-{rep}"
                walls[arm].append(run_child(command(work / "mix.jsonl", out, args, arm), args.threads))
                hard = (out / "hard.jsonl").read_bytes()
                reference = reference if reference is not None else hard
                if hard != reference:
                    sys.exit(f"{arm}, rep {rep}: hard.jsonl differs from the first 1-worker run's")
                print(f"rep {rep} {arm}: {walls[arm][-1]:.1f} s", file=sys.stderr)
    speedups = [a / b for a, b in zip(walls["1 worker"], walls["2 workers"])]
    result = {"problems": problems, "k": args.k, "chunk": args.chunk, "max_new_tokens": args.max_new_tokens,
              "threads": args.threads, "reps": args.reps, "wall_seconds": {arm: spread(w) for arm, w in walls.items()},
              "speedup_2_workers": spread(speedups)}
    if not args.no_ray:
        overhead = [(r - b) / problems for r, b in zip(walls["2 Ray actors"], walls["2 workers"])]
        result["ray_overhead_seconds_per_problem"] = spread(overhead)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"bench_workers{'_quick' if args.quick else ''}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"filter-hard on the toy: {problems} problems, k={args.k}, chunk={args.chunk}, {args.threads} threads in all")
    for arm in arms:
        s = result["wall_seconds"][arm]
        print(f"  {arm:<13} wall s  min {s['min']:8.2f}  median {s['median']:8.2f}  max {s['max']:8.2f}")
    s = result["speedup_2_workers"]
    print(f"  speedup 1 -> 2 workers   min {s['min']:.2f}x  median {s['median']:.2f}x  max {s['max']:.2f}x (goal >= 1.7x)")
    if not args.no_ray:
        s = result["ray_overhead_seconds_per_problem"]
        print(f"  Ray overhead s/problem   min {s['min']:.3f}  median {s['median']:.3f}  max {s['max']:.3f}")


if __name__ == "__main__":
    main()
