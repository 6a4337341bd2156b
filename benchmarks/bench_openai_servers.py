"""Wall time of `pope make-solutions --backend openai` on one vLLM server against two, at the same
budget: the same CPU cores and the same requests in flight in all.

    nice -n 0 python benchmarks/bench_openai_servers.py [--problems 48] [--k 32] [--concurrency 8] [--reps 2]
    python benchmarks/bench_openai_servers.py --quick        # a smoke run: 12 problems, k 16, 1 rep

Three servers of the shipped toy model (vLLM's CPU build, fp32, eager; `tests/vllm_server.py`)
are started once: one whose OpenMP threads are bound to cores 0-1, and two bound to core 0 and
core 1. Arms: "1 server" (`--api-base` the first, `--max-concurrency C`) and "2 servers" (the
other two, `--max-concurrency C/2` each), alternated within each rep so that both see the same
background load. Each run is a fresh `pope make-solutions --replace` of the toy's easy problems
from the same seed: its wall time (start-up included) and the manifest's generate seconds (the
sampling alone), min / median / max over the reps, and whether every arm wrote the bytes of the
first run. Writes benchmarks/results/bench_openai_servers.json (--quick: ..._quick.json). Needs
vLLM's CPU build and a machine with at least two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]

from results_file import save, spread  # noqa: E402
from vllm_server import SERVED, TOY_MODEL, VllmServer  # noqa: E402

OUTPUTS = ("", ".stats.jsonl", ".unsolved.jsonl")


def make_problems(root: Path, count: int) -> Path:
    subprocess.run([sys.executable, "-m", "pope_cli.cli", "toy", "make-data", "--out", str(root / "toy"),
                    "--n-easy", str(count), "--n-hard", "1", "--n-heldout", "1"], check=True, cwd=REPO,
                   capture_output=True)
    return root / "toy" / "easy.jsonl"


def solve(data: Path, out: Path, urls: list[str], concurrency: int, k: int) -> dict:
    args = [sys.executable, "-m", "pope_cli.cli", "make-solutions", str(data), "--out", str(out), "--replace",
            "--model", str(TOY_MODEL), "--backend", "openai", "--api-base", ",".join(urls), "--api-model", SERVED,
            "--max-concurrency", str(concurrency), "--k", str(k), "--chunk", "8", "--seed", "3",
            "--max-new-tokens", "64", "--temperature", "1.0", "--reward", "pope_cli.toy.reward:score",
            "--reward-workers", "1", "--template", str(REPO / "pope_cli" / "toy" / "templates" / "unguided.txt")]
    started = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"make-solutions failed:\n{done.stderr[-3000:]}")
    counts = json.loads(Path(f"{out}.manifest.json").read_text())["counts"]
    return {"wall_s": wall, "generate_s": counts["generate_seconds"], "samples": counts["samples"],
            "answered": [server["answered"] for server in counts["api_servers"]],
            "files": b"".join(Path(f"{out}{suffix}").read_bytes() for suffix in OUTPUTS)}


def run(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        servers = {"both": VllmServer(root / "both.log", {"VLLM_CPU_OMP_THREADS_BIND": "0-1"}),
                   "core0": VllmServer(root / "core0.log", {"VLLM_CPU_OMP_THREADS_BIND": "0"}),
                   "core1": VllmServer(root / "core1.log", {"VLLM_CPU_OMP_THREADS_BIND": "1"})}
        try:
            for server in servers.values():
                server.wait()
            arms = {"1 server": ([servers["both"].url], args.concurrency),
                    "2 servers": ([servers["core0"].url, servers["core1"].url], args.concurrency // 2)}
            data = make_problems(root, args.problems)
            rows: dict[str, list[dict]] = {arm: [] for arm in arms}
            for rep in range(args.reps):
                for arm, (urls, concurrency) in arms.items():
                    rows[arm].append(solve(data, root / f"{rep}-{len(urls)}.jsonl", urls, concurrency, args.k))
                    shown = {key: value for key, value in rows[arm][-1].items() if key != "files"}
                    print(f"rep {rep} {arm}: {shown}", file=sys.stderr)
        finally:
            for server in servers.values():
                server.stop()
    first = rows["1 server"][0]["files"]
    return {"problems": args.problems, "k": args.k, "concurrency": args.concurrency, "reps": args.reps,
            "arms": {arm: {"wall_s": spread([r["wall_s"] for r in runs]),
                           "generate_s": spread([r["generate_s"] for r in runs]),
                           "samples": runs[0]["samples"], "answered": [r["answered"] for r in runs],
                           "same_bytes": all(r["files"] == first for r in runs)} for arm, runs in rows.items()}}


def table(results: dict) -> str:
    lines = [f"{results['problems']} problems, k {results['k']}, {results['concurrency']} requests in flight in all, "
             f"cores 0-1, {results['reps']} reps (min / median / max)",
             f"{'arm':10} {'wall s':>20} {'generate s':>20} {'samples':>8}  same bytes  answered per server"]
    for arm, row in results["arms"].items():
        wall, generate = row["wall_s"], row["generate_s"]
        lines.append(f"{arm:10} {wall['min']:6.1f} {wall['median']:6.1f} {wall['max']:6.1f} "
                     f"{generate['min']:6.1f} {generate['median']:6.1f} {generate['max']:6.1f} {row['samples']:8} "
                     f"{str(row['same_bytes']):>11}  {row['answered'][0]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight in all (even)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.problems, args.k, args.reps = 12, 16, 1
    results = run(args)
    print(table(results))
    save("bench_openai_servers", results, args.quick)


if __name__ == "__main__":
    main()
