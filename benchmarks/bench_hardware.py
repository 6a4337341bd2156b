"""Peak fp32 matmul FLOP/s of this CPU, and the share of it pope's generation and training reach.

    nice -n 0 python benchmarks/bench_hardware.py [--threads 1] [--sizes 1M,6M] [--steps 4]
    python benchmarks/bench_hardware.py --gpu --gpu-peak-tflops 989   # on a CUDA machine (H100 SXM bf16 dense)

CPU (always):
- peak: torch.matmul of two n x n fp32 matrices (n = 2048: 2n^3 = 17 GFLOP a product), 1 and
  2 threads, best of several after a warm-up. The best, not the median: the peak is what the
  chip can do, and on a shared machine every slower sample is another process's time slice.
- generation: pope's hf engine (the one `pope train` rolls out with) on the model, 16 prompts x
  8 samples, up to 48 new tokens at temperature 0.8, in one batch; achieved FLOP/s = 2 x params
  x generated tokens / generate seconds (the forward pass's weight matmuls; attention over a
  context under 100 tokens is negligible at these widths).
- training: a short `pope train --mode grpo --full` run (the settings of bench_vs_trl.py) and
  its metrics.jsonl: 6 x params x tokens / time/train_s, first step left out. Two token counts:
  `train_tokens` (completion tokens, the ones with a loss) and those plus the prompt tokens,
  which go through the forward and backward passes too.
Utilisation = achieved / the measured peak at the same thread count.

GPU (--gpu, only where torch.cuda.is_available()): a ~0.5B Qwen2 built from Qwen2.5-0.5B's
shape (random weights). Generation: a bf16 copy through transformers `generate` (what pope's hf
engine wraps; on a GPU pope would roll out with vLLM), 64 sequences x 256 new tokens after 128
prompt tokens, EOS masked so every row runs the full length. Training: pope's own update
(`policy_update`: the log-prob forward, loss, backward and AdamW step of `pope train`) as full
fine-tuning does it, fp32 weights under bf16 autocast, on 16 sequences of 128 + 896 tokens.
MFU = 2 (6) x params x tokens/s over the bf16 peak given on the command line; a measured bf16
matmul peak is printed beside it.

Prints a table and writes benchmarks/results/bench_hardware.json (bench_hardware_gpu.json).
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


def generation_flops(model_dir: Path, records: list[dict], threads: int, repeats: int = 3) -> dict:
    """pope's hf engine on one step's worth of prompts: tokens/s and GFLOP/s (2 x params a token)."""
    from pope_cli.shared.config import ModelOptions, PromptOptions
    from pope_cli.shared.engines.base import Request, Sampling
    from pope_cli.shared.engines.hf import HFEngine
    from pope_cli.shared.runtime import PromptBuilder
    from pope_cli.toy.pretrain import TEMPLATES_DIR

    from bench_vs_trl import GROUP, MAX_NEW, PROMPTS, TEMPERATURE

    torch.set_num_threads(threads)
    engine = HFEngine.from_options(ModelOptions(str(model_dir), backend="hf", device="cpu", dtype="float32",
                                                batch_size=PROMPTS * GROUP))
    params = sum(p.numel() for p in engine.model.parameters())
    prompts = PromptBuilder(engine.tokenizer, PromptOptions(unguided_template=str(TEMPLATES_DIR / "unguided.txt")))
    requests = [Request(prompts.unguided(r), GROUP, 1000 * i) for i, r in enumerate(records[:PROMPTS])]
    sampling = Sampling(TEMPERATURE, 1.0, MAX_NEW)
    engine.generate(requests[:2], sampling)  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        groups = engine.generate(requests, sampling)
        seconds = time.perf_counter() - started
        rates.append(sum(len(c.token_ids) for g in groups for c in g) / seconds)
    tokens_per_s = statistics.median(rates)
    return {"params": params, "gen_tokens_per_s": tokens_per_s, "gen_gflops": 2 * params * tokens_per_s / 1e9}


def training_flops(model_dir: Path, reward: str, records: list[dict], params: int, threads: int, steps: int) -> dict:
    """A short `pope train` run; GFLOP/s from its metrics (6 x params a token)."""
    from pope_cli.shared.config import PromptOptions
    from pope_cli.shared.runtime import PromptBuilder
    from pope_cli.toy.pretrain import TEMPLATES_DIR
    from transformers import AutoTokenizer

    from bench_vs_trl import pope_command, write_prefixes

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_prefixes(work / "prefixes.jsonl", records)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run(pope_command(model_dir, reward, work / "prefixes.jsonl", work / "run", steps, 0, False),
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode:
            raise SystemExit(f"pope train failed:\n{proc.stderr.decode(errors='replace')[-4000:]}")
        rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    rows = [r for r in rows if r["train_tokens"]] or rows
    # Mean prompt length of these problems: every trained sequence carries one through the passes.
    builder = PromptBuilder(AutoTokenizer.from_pretrained(model_dir),
                            PromptOptions(unguided_template=str(TEMPLATES_DIR / "unguided.txt")))
    prompt_len = statistics.mean(len(builder.unguided(r)) for r in records)
    train_s = sum(r["time/train_s"] for r in rows)
    completion_tokens = sum(r["train_tokens"] for r in rows)
    sequence_tokens = completion_tokens + prompt_len * sum(r["trained_sequences"] for r in rows)
    return {"train_tokens_per_s": completion_tokens / train_s,
            "train_gflops_completion": 6 * params * completion_tokens / train_s / 1e9,
            "train_gflops_sequence": 6 * params * sequence_tokens / train_s / 1e9,
            "prompt_len": prompt_len, "steps_timed": len(rows)}


def cpu_part(args) -> None:
    from bench_vs_trl import one_lookup_problems, prepare

    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, load {os.getloadavg()}",
              "torch": torch.__version__, "threads": args.threads, "peak_gflops": {}, "rows": []}
    for threads in (1, 2):
        report["peak_gflops"][threads] = matmul_peak(2048, threads)
        print(f"fp32 matmul peak, {threads} thread(s): {report['peak_gflops'][threads]:.1f} GFLOP/s", flush=True)
    peak = report["peak_gflops"][args.threads]
    records = one_lookup_problems(64)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            model_dir, reward, _ = prepare(Path(tmp), size)
            gen = generation_flops(model_dir, records, args.threads)
            train = training_flops(model_dir, reward, records, gen["params"], args.threads, args.steps)
            row = {"size": size, **gen, **train, "gen_utilisation": gen["gen_gflops"] / peak,
                   "train_utilisation_completion": train["train_gflops_completion"] / peak,
                   "train_utilisation_sequence": train["train_gflops_sequence"] / peak}
            report["rows"].append(row)
            print(f"  {size}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})}",
                  flush=True)
    print(f"\nCPU, {args.threads} thread(s), peak {peak:.1f} GFLOP/s (fp32 matmul 2048^2)")
    print(f"{'model':<5} {'params':>10} {'gen tok/s':>9} {'gen GFLOP/s':>11} {'gen util':>8} {'train tok/s':>11} "
          f"{'train GFLOP/s':>13} {'train util':>10}")
    for r in report["rows"]:
        print(f"{r['size']:<5} {r['params']:>10,} {r['gen_tokens_per_s']:>9.0f} {r['gen_gflops']:>11.2f} "
              f"{r['gen_utilisation']:>8.1%} {r['train_tokens_per_s']:>11.0f} "
              f"{r['train_gflops_completion']:>6.2f}-{r['train_gflops_sequence']:<6.2f} "
              f"{r['train_utilisation_completion']:>4.1%}-{r['train_utilisation_sequence']:.1%}")
    print("(train: completion tokens only - completion + prompt tokens)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_hardware.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {RESULTS / 'bench_hardware.json'}")


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
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default="1M,6M")
    parser.add_argument("--steps", type=int, default=4)
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
