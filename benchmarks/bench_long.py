"""Long completions on one GPU: peak memory of a policy update with log-probs whole vs in chunks,
and training tokens/s and MFU, on a ~0.5B model (Qwen2.5-0.5B's shape, random weights).

For each completion length (4k and 8k tokens) and each `--logprob-chunk` (0 = off, and pope's
default) it trains full fp32 weights under bf16 autocast, as `pope train --full` does on a GPU, on
4 sequences of a 256-token prompt and the completion, micro-batch 2, gradient checkpointing off;
one warm-up update, then two timed. MFU = 6 x params x trained tokens/s over `--peak-tflops` (the
chunks' recomputed LM head is not counted as useful work). An out-of-memory configuration is
reported as such, not as a failure. `--tiny` runs a 2-layer model on CPU in seconds (a smoke test
of the script, no figures worth reading).

    python benchmarks/bench_long.py              # on a CUDA machine; writes results/bench_long_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _model(tiny: bool, device: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2) if tiny else dict(hidden_size=896, intermediate_size=4864,
                                                          num_hidden_layers=24, num_attention_heads=14,
                                                          num_key_value_heads=2)
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True,
                         pad_token_id=0, eos_token_id=1, **size)
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2ForCausalLM(config).train()


def one_config(model, completion: int, chunk: int, device: str, tiny: bool) -> dict:
    import torch

    from pope_cli.stages.train.batch import Sample
    from pope_cli.stages.train.loss import LossSettings
    from pope_cli.stages.train.update import UpdateSettings, policy_update

    cuda = device == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    settings = UpdateSettings(LossSettings(max_new_tokens=completion), 1.0, micro_batch_size=2, logprob_chunk=chunk,
                              autocast_dtype=torch.bfloat16 if cuda else None)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    samples = [Sample(torch.randint(2, vocab, (256,), generator=generator).tolist(),
                      torch.randint(2, vocab, (completion,), generator=generator).tolist(), (-1.0) ** i)
               for i in range(4)]
    row = {"completion": completion, "chunk": chunk}
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        times = []
        for step in range(1 if tiny else 3):
            started = time.perf_counter()
            policy_update(model, optimizer, samples, settings, 0, torch.device(device), step)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    except torch.OutOfMemoryError:
        optimizer.zero_grad(set_to_none=True)
        return {**row, "oom": True}
    finally:
        del optimizer
    seconds = statistics.median(times[1:] or times)
    row["train_tokens_per_s"] = len(samples) * (256 + completion) / seconds
    if cuda:
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model on CPU, 64/128 tokens (smoke test)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--chunk", type=int, default=512, help="--logprob-chunk of the chunked runs (pope's default)")
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    model = _model(args.tiny, device)
    params = sum(p.numel() for p in model.parameters())
    lengths = (64, 128) if args.tiny else (4096, 8192)
    chunk = min(args.chunk, 32) if args.tiny else args.chunk
    rows = []
    for completion in lengths:
        for each in (0, chunk):
            row = one_config(model, completion, each, device, args.tiny)
            if "train_tokens_per_s" in row:
                row["train_mfu"] = 6 * params * row["train_tokens_per_s"] / (args.peak_tflops * 1e12)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if not args.tiny:
        import torch

        RESULTS.mkdir(exist_ok=True)
        report = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(), "params": params,
                  "rows": rows}
        (RESULTS / "bench_long_gpu.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
