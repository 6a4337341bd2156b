"""Wall time of `pope filter-hard` on the toy with 1 and 2 workers at the same total thread budget,
the same 2 workers as Ray actors (a Ray started by the run: `--ray local`), and the most any two
workers could gain here (a generation-only probe).

    nice -n 0 python benchmarks/bench_workers.py [--easy 32] [--hard 32] [--k 128] [--chunk 32] [--reps 3]
    python benchmarks/bench_workers.py --quick        # a smoke run: 4 problems, k 4, 16 tokens, 1 rep

The set: `--easy` easy and `--hard` hard toy problems (pope_cli.toy.task, seed 0), shuffled, filtered
as `pope demo` filters (k 128 in chunks of 32, 256 rows per generate call). Every run is a child
`pope filter-hard` process (imports, model loads and worker starts included) pinned to the first
`--threads` cores. Arms: one in-process engine with `--threads` torch threads (the goal's
baseline: the same cores), the same engine on one core and one thread (what each worker gets: the
scaling per device, as on GPUs, one per worker), 2 workers with `--threads`/2 threads each, and
those 2 as Ray actors. The arms alternate so all see the same background load; the table gives
min / median / max over the reps of t(1 worker) / t(2 workers) for both baselines (the goal: >= 1.7x
against the first) and of Ray's overhead per problem, (t(ray) - t(2 workers)) / problems, Ray's
start-up included. Each run's hard set must be that of the first run (byte-identical by design).

The probe, apart from the stage: one process generating with 2 threads against two 1-thread
processes generating at once (one per core), samples per second; their ratio bounds what 2
workers can gain over one 2-thread engine on this machine, whatever the driver does.

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
ARMS = ("1 worker", "1 worker, 1 thread", "2 workers", "2 Ray actors")
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

    workers = {"1 worker": [], "1 worker, 1 thread": [], "2 workers": ["--workers", "2"],
               "2 Ray actors": ["--workers", "2", "--ray", "local"]}
    return [sys.executable, "-m", "pope_cli.cli", "filter-hard", str(data), "--out", str(out), "--overwrite",
            "--model", str(SHIPPED_MODEL_DIR), "--unguided-template", str(TEMPLATES_DIR / "unguided.txt"),
            "--backend", "hf", "--device", "cpu", "--max-new-tokens", str(args.max_new_tokens),
            "--reward", "pope_cli.toy.reward:score", "--reward-workers", "1", "--batch-size", str(args.batch_size),
            "--k", str(args.k), "--chunk", str(args.chunk), "--seed", str(SEED), *workers[arm]]


ARM_THREADS = {"1 worker, 1 thread": 1}
"""Arms that run on fewer cores than --threads; the others get all of them."""


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


PROBE = """
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from transformers import AutoModelForCausalLM, AutoTokenizer
from pope_cli.shared.engines.base import Request, Sampling
from pope_cli.shared.engines.hf import HFEngine
model_dir, rows, tokens = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(model_dir)
engine = HFEngine(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, batch_size=256)
prompt = tokenizer("7*9-5*9*7+9*4\\n")["input_ids"]
sampling = Sampling(temperature=1.0, max_new_tokens=tokens)
engine.generate([Request(prompt, 8, 0)], sampling)
started = time.perf_counter()
engine.generate([Request(prompt, rows, 1)], sampling)
print(json.dumps(rows / (time.perf_counter() - started)))
"""


def probe(threads_each: int, processes: int, rows: int, tokens: int) -> float:
    """Samples per second of `processes` generating at once, `threads_each` threads and cores each."""
    from pope_cli.toy.model import SHIPPED_MODEL_DIR

    cores = sorted(os.sched_getaffinity(0))
    procs = []
    for i in range(processes):
        mine = cores[i * threads_each:(i + 1) * threads_each]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads_each)}
        procs.append(subprocess.Popen([sys.executable, "-c", PROBE, str(threads_each), str(SHIPPED_MODEL_DIR), str(rows),
                                       str(tokens)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True, preexec_fn=lambda mine=mine: os.sched_setaffinity(0, mine)))
    return sum(json.loads(proc.communicate()[0]) for proc in procs)


def spread(values: list[float]) -> dict:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--easy", type=int, default=32)
    parser.add_argument("--hard", type=int, default=32)
    parser.add_argument("--k", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256, help="rows per generate call (the demo's 256)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="total thread budget (cores) of every arm")
    parser.add_argument("--probe-rows", type=int, default=768, help="rows each probe process generates")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray arm")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2+2 problems, k 4, 16 tokens, 1 rep")
    args = parser.parse_args()
    if args.quick:
        args.easy, args.hard, args.k, args.chunk, args.max_new_tokens, args.reps, args.probe_rows = 2, 2, 4, 2, 16, 1, 32
    arms = [arm for arm in ARMS if not (args.no_ray and "Ray" in arm)]
    problems = args.easy + args.hard
    walls: dict[str, list[float]] = {arm: [] for arm in arms}
    probes: dict[str, list[float]] = {"1 process, 2 threads": [], "2 processes, 1 thread each": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_mix(work / "mix.jsonl", args.easy, args.hard)
        reference = None
        for rep in range(args.reps):
            for arm in arms:
                out = work / f"{arm.replace(' ', '_').replace(',', '')}-{rep}"
                walls[arm].append(run_child(command(work / "mix.jsonl", out, args, arm),
                                            ARM_THREADS.get(arm, args.threads)))
                hard = (out / "hard.jsonl").read_bytes()
                reference = reference if reference is not None else hard
                if hard != reference:
                    sys.exit(f"{arm}, rep {rep}: hard.jsonl differs from the first run's")
                print(f"rep {rep} {arm}: {walls[arm][-1]:.1f} s", file=sys.stderr)
            probes["1 process, 2 threads"].append(probe(2, 1, args.probe_rows, args.max_new_tokens))
            probes["2 processes, 1 thread each"].append(probe(1, 2, args.probe_rows, args.max_new_tokens))
    report(args, arms, problems, walls, probes)


def report(args, arms: list[str], problems: int, walls: dict, probes: dict) -> None:
    def ratio(base: str) -> dict:
        return spread([a / b for a, b in zip(walls[base], walls["2 workers"])])

    result = {"problems": problems, "k": args.k, "chunk": args.chunk, "max_new_tokens": args.max_new_tokens,
              "batch_size": args.batch_size, "threads": args.threads, "reps": args.reps,
              "wall_seconds": {arm: spread(w) for arm, w in walls.items()},
              "speedup_2_workers": ratio("1 worker"), "speedup_2_workers_per_core": ratio("1 worker, 1 thread"),
              "probe_samples_per_second": {name: spread(v) for name, v in probes.items()},
              "probe_ceiling": spread([b / a for a, b in zip(*probes.values())])}
    if "2 Ray actors" in walls:
        overhead = [(r - b) / problems for r, b in zip(walls["2 Ray actors"], walls["2 workers"])]
        result["ray_overhead_seconds_per_problem"] = spread(overhead)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"bench_workers{'_quick' if args.quick else ''}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"filter-hard on the toy: {problems} problems, k={args.k}, chunk={args.chunk}, {args.threads} threads in all")
    line = "  {:<34} min {:8.2f}  median {:8.2f}  max {:8.2f}{}"
    for arm in arms:
        s = result["wall_seconds"][arm]
        print(line.format(f"{arm}: wall s", s["min"], s["median"], s["max"], ""))
    for key, name, goal in (("speedup_2_workers", f"2 workers vs 1 ({args.threads} threads)", "  (goal >= 1.7x)"),
                            ("speedup_2_workers_per_core", "2 workers vs 1 (1 thread)", ""),
                            ("probe_ceiling", "probe: 2 procs vs 1 (2 threads)", "  (the most 2 workers gain)")):
        s = result[key]
        print(line.format(name + " x", s["min"], s["median"], s["max"], goal))
    if "ray_overhead_seconds_per_problem" in result:
        s = result["ray_overhead_seconds_per_problem"]
        print(line.format("Ray overhead s/problem", s["min"], s["median"], s["max"], ""))


if __name__ == "__main__":
    main()
