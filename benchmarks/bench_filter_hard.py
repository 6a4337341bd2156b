"""Samples drawn and wall time of `pope filter-hard` (early stop) vs `--exhaustive` vs a pass-rate band filter.

    nice -n 0 python benchmarks/bench_filter_hard.py [--easy 32] [--hard 32] [--k 32] [--chunk 16] [--reps 2] [--threads 1]

The set: `--easy` easy and `--hard` hard toy problems (pope_cli.toy.task, seed 0), shuffled
together. The model: the shipped toy model. The arms, each run as its own subprocess, in turn
(early, exhaustive, band, early, ...) so that all see the same background load:

- early: `pope filter-hard` with the demo's arguments (k, --chunk 16, hf backend on CPU,
  64 new tokens, toy templates, `--reward pope_cli.toy.reward:score`): a problem stops at the
  first chunk with a correct sample, hard = 0 correct of k. `--chunk 4` shows how much a
  smaller chunk saves on easy problems (written to bench_filter_hard_chunk4.json).
- exhaustive: the same command with `--exhaustive`: all k samples of every problem (a naive
  draw-all-k filter; exact pass rates).
- band: an open-r1-style pass-rate filter (its scripts/pass_rate_filtering: draw a fixed n per
  problem, keep the problems whose pass rate lies strictly inside a band, 0.2-0.8 in its demo),
  written here on pope's own engine, prompt builder, scorer and round scheduler, so only the
  decision rule differs. Its samples use the same seeds as pope's, so with n = k it sees
  exactly the exhaustive run's samples.

What each keeps: pope keeps the problems never solved (pass rate 0), the ones POPE trains on;
the band filter keeps problems the model sometimes solves and drops pass rate 0 by
construction, so its kept set is disjoint from pope's hard set. The table says how many of
each tier each arm keeps. Wall time is the child process (imports and model load included);
generate seconds come from the stage's own counters.

Prints a table and writes benchmarks/results/bench_filter_hard.json.
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
REWARD = "pope_cli.toy.reward:score"
MAX_NEW, BATCH, SEED = 64, 64, 0


def write_mix(path: Path, n_easy: int, n_hard: int) -> dict[str, str]:
    """The mixed set; returns id -> tier."""
    from pope_cli.shared.outputs import atomic_write_jsonl
    from pope_cli.toy.task import easy_problems, hard_problems

    easy = easy_problems(SEED, n_easy)
    hard, _ = hard_problems(SEED, n_hard, 0)
    mix = easy + hard
    random.Random("bench-filter-hard").shuffle(mix)
    atomic_write_jsonl(path, mix)
    return {r["id"]: r["source"] for r in mix}


def generation_args() -> list[str]:
    from pope_cli.toy.pretrain import TEMPLATES_DIR

    # As pope_cli/stages/demo.py passes them to filter-hard.
    return ["--unguided-template", str(TEMPLATES_DIR / "unguided.txt"), "--backend", "hf", "--device", "cpu",
            "--max-new-tokens", str(MAX_NEW), "--reward", REWARD, "--reward-workers", "1",
            "--batch-size", str(BATCH), "--seed", str(SEED)]


def pope_command(data: Path, out: Path, k: int, chunk: int, exhaustive: bool) -> list[str]:
    from pope_cli.toy.model import SHIPPED_MODEL_DIR

    return [sys.executable, "-m", "pope_cli.cli", "filter-hard", str(data), "--model", str(SHIPPED_MODEL_DIR),
            "--k", str(k), "--chunk", str(chunk), "--out", str(out), *generation_args(), "--overwrite",
            *(["--exhaustive"] if exhaustive else [])]


class BandJob:
    """One problem of the band filter: a single request for all n samples, no early stop."""

    def __init__(self, problem, prompt_ids: list[int], n: int, seed: int):
        self.problem, self.prompt_ids, self.n, self.seed = problem, prompt_ids, n, seed
        self.asked, self.correct, self.tokens = False, 0, 0

    def next_request(self):
        from pope_cli.shared.engines.base import Request

        if self.asked:
            return None
        self.asked = True
        return Request(self.prompt_ids, self.n, self.seed), self.problem.fields()

    def observe(self, completions, scores) -> None:
        self.correct += sum(s is not None and s >= 1.0 for s in scores)
        self.tokens += sum(len(c.token_ids) for c in completions)


def band_child(spec: dict) -> None:
    """Runs in its own process: the pass-rate band filter on pope's engine; writes its verdicts."""
    from pope_cli.shared.config import ModelOptions, PromptOptions
    from pope_cli.shared.data import read_problems
    from pope_cli.shared.engines import make_engine
    from pope_cli.shared.engines.base import Sampling
    from pope_cli.shared.reward.checker import Scorer
    from pope_cli.shared.rounds import run_rounds
    from pope_cli.shared.runtime import PromptBuilder
    from pope_cli.shared.seeding import derive_seed
    from pope_cli.toy.model import SHIPPED_MODEL_DIR
    from pope_cli.toy.pretrain import TEMPLATES_DIR

    started = time.perf_counter()
    problems = read_problems(spec["data"])
    engine = make_engine(ModelOptions(str(SHIPPED_MODEL_DIR), backend="hf", device="cpu", batch_size=BATCH))
    prompts = PromptBuilder(engine.tokenizer, PromptOptions(unguided_template=str(TEMPLATES_DIR / "unguided.txt")))
    # filter-hard's sampling defaults (temperature 1, top-p 1) and its per-problem seed stream,
    # so the band filter's samples are the first n of the exhaustive run's.
    sampling = Sampling(1.0, 1.0, MAX_NEW)
    jobs = [BandJob(p, prompts.unguided(p.fields()), spec["n"], derive_seed(SEED, p.id)) for p in problems]
    with Scorer(REWARD, workers=1) as scorer:
        stats = run_rounds(jobs, engine, sampling, scorer, BATCH, lambda job: None)
    low, high = spec["band"]
    rows = [{"id": j.problem.id, "samples": j.n, "correct": j.correct, "pass_rate": j.correct / j.n,
             "kept": low < j.correct / j.n < high} for j in jobs]
    Path(spec["result"]).write_text(json.dumps({
        "rows": rows, "samples": stats.samples, "tokens": stats.tokens, "generate_seconds": stats.generate_seconds,
        "score_seconds": stats.score_seconds, "seconds": time.perf_counter() - started}))


def run_child(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode:
        sys.stderr.write(proc.stderr.decode(errors="replace")[-4000:])
        raise SystemExit(f"child failed (exit {proc.returncode}): {' '.join(command[:4])} ...")
    return time.perf_counter() - started


def pope_result(out: Path) -> dict:
    summary = json.loads((out / "manifest.json").read_text())
    summary = summary["counts"]
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines() if line.strip()]
    return {"rows": [{"id": r["id"], "samples": r["samples"], "correct": r["correct"], "pass_rate": r["pass_rate"],
                      "kept": r["hard"]} for r in rows],
            "samples": summary["samples"], "tokens": summary["tokens"],
            "generate_seconds": summary["generate_seconds"], "score_seconds": summary["score_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--easy", type=int, default=32)
    parser.add_argument("--hard", type=int, default=32)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=16, help="filter-hard's samples per problem per round (the demo's: 16)")
    parser.add_argument("--band-n", type=int, default=None, help="samples per problem of the band filter (default k)")
    parser.add_argument("--band", default="0.2,0.8", help="keep pass rates strictly inside (low, high)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child-band", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_band:
        band_child(json.loads(Path(args.child_band).read_text()))
        return
    band = [float(x) for x in args.band.split(",")]
    band_n = args.band_n or args.k
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false"}
    runs: dict[str, list[dict]] = {"early": [], "exhaustive": [], "band": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiers = write_mix(work / "mix.jsonl", args.easy, args.hard)
        for rep in range(args.reps):
            for arm in runs:
                out = work / f"{arm}-{rep}"
                load = os.getloadavg()[0]
                if arm == "band":
                    spec = {"data": str(work / "mix.jsonl"), "n": band_n, "band": band, "result": str(work / "band.json")}
                    (work / "band_spec.json").write_text(json.dumps(spec))
                    wall = run_child([sys.executable, str(Path(__file__).resolve()), "--child-band",
                                      str(work / "band_spec.json")], env)
                    result = json.loads(Path(spec["result"]).read_text())
                else:
                    wall = run_child(pope_command(work / "mix.jsonl", out, args.k, args.chunk, arm == "exhaustive"), env)
                    result = pope_result(out)
                kept = [r["id"] for r in result["rows"] if r["kept"]]
                runs[arm].append({"rep": rep, "load_before": load, "wall_s": wall, "samples": result["samples"],
                                  "tokens": result["tokens"], "generate_s": result["generate_seconds"],
                                  "score_s": result["score_seconds"], "kept": sorted(kept),
                                  "kept_easy": sum(tiers[i] == "toy-easy" for i in kept),
                                  "kept_hard": sum(tiers[i] == "toy-hard" for i in kept),
                                  "pass_rates": {r["id"]: r["pass_rate"] for r in result["rows"]}})
                print(f"  {arm} rep {rep}: {result['samples']} samples, wall {wall:.1f}s, "
                      f"generate {result['generate_seconds']:.1f}s, kept {len(kept)}, load {load:.1f}", flush=True)

    def med(arm, key):
        return statistics.median(r[key] for r in runs[arm])

    naive = (args.easy + args.hard) * args.k
    early_hard, exhaustive_hard = set(runs["early"][0]["kept"]), set(runs["exhaustive"][0]["kept"])
    band_kept = set(runs["band"][0]["kept"])
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, load {os.getloadavg()}",
              "easy": args.easy, "hard": args.hard, "k": args.k, "chunk": args.chunk, "band_n": band_n, "band": band,
              "max_new_tokens": MAX_NEW, "batch_size": BATCH, "threads": args.threads, "reps": args.reps,
              "naive_samples": naive, "runs": runs,
              "early_vs_exhaustive_same_hard_set": early_hard == exhaustive_hard,
              "band_kept_and_pope_hard": len(band_kept & early_hard),
              "wall_ratio_exhaustive_over_early": [e["wall_s"] / p["wall_s"] for p, e in zip(runs["early"], runs["exhaustive"])],
              "generate_ratio_exhaustive_over_early": [e["generate_s"] / p["generate_s"]
                                                       for p, e in zip(runs["early"], runs["exhaustive"])]}
    print(f"\n{args.easy} easy + {args.hard} hard toy problems, k = {args.k}, chunk {args.chunk}; band filter n = {band_n}, "
          f"keeps {band[0]} < pass rate < {band[1]}; medians over {args.reps} reps")
    print(f"{'arm':<11} {'samples':>8} {'of naive':>8} {'tokens':>7} {'gen s':>6} {'wall s':>7} {'kept':>5} "
          f"{'easy':>5} {'hard':>5}")
    for arm in runs:
        print(f"{arm:<11} {med(arm, 'samples'):>8.0f} {med(arm, 'samples') / naive:>8.2f} {med(arm, 'tokens'):>7.0f} "
              f"{med(arm, 'generate_s'):>6.1f} {med(arm, 'wall_s'):>7.1f} {len(runs[arm][0]['kept']):>5} "
              f"{runs[arm][0]['kept_easy']:>5} {runs[arm][0]['kept_hard']:>5}")
    ratios = report["wall_ratio_exhaustive_over_early"]
    print(f"exhaustive/early wall time, min / median / max: {min(ratios):.2f} / {statistics.median(ratios):.2f} / "
          f"{max(ratios):.2f}; same hard set: {report['early_vs_exhaustive_same_hard_set']}; "
          f"band-kept problems that pope calls hard: {report['band_kept_and_pope_hard']}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("bench_filter_hard.json" if args.chunk == 16 else f"bench_filter_hard_chunk{args.chunk}.json")
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
