"""Peak memory of one policy update with and without chunked log-probs (`--logprob-chunk`), on CPU.

A small Qwen2 (2 layers, hidden 64) with Qwen's 151,936-token vocabulary trains on one sequence of
a 64-token prompt and a 2k- or 4k-token completion, so the logits term, completion x vocabulary x
4 B per fp32 copy, dwarfs the rest. Each configuration runs in a fresh process, which reports its
peak resident set size (ru_maxrss) before and after the update; the update's own peak is the
difference. `--tiny` runs a 32k vocabulary at 256 and 512 tokens, chunks of 128, in a few seconds.

    python benchmarks/bench_memory.py            # writes benchmarks/results/bench_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(vocab: int, completion: int, chunk: int) -> dict:
    """One update in this process; returns peak RSS (MB) before and after it."""
    import resource

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pope_cli.stages.train.batch import Sample
    from pope_cli.stages.train.loss import LossSettings
    from pope_cli.stages.train.update import UpdateSettings, policy_update

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(2, vocab, (64 + completion,)).tolist()
    samples = [Sample(ids[:64], ids[64:], 1.0), Sample(ids[:64], ids[64:], -1.0)]
    settings = UpdateSettings(LossSettings(max_new_tokens=completion), 1.0, micro_batch_size=1, logprob_chunk=chunk)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    policy_update(model, optimizer, samples, settings, 0, "cpu", 0)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"vocab": vocab, "completion": completion, "chunk": chunk, "rss_before_mb": round(before, 1),
            "peak_mb": round(after, 1), "update_mb": round(after - before, 1)}


def measure(vocab: int, completion: int, chunk: int) -> dict:
    code = (f"import json, sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}]; "
            f"from bench_memory import child; print(json.dumps(child({vocab}, {completion}, {chunk})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="32k vocabulary, 256 and 512 tokens (seconds)")
    parser.add_argument("--chunk", type=int, default=512, help="--logprob-chunk of the chunked runs (pope's default)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_memory.json"))
    args = parser.parse_args()
    vocab, lengths = (32_768, (256, 512)) if args.tiny else (151_936, (2048, 4096))
    if args.tiny:
        args.chunk = min(args.chunk, 128)  # shorter than the sequences, or nothing is chunked
    rows = []
    print(f"{'completion':>10} {'chunk':>6} {'peak MB':>9} {'update MB':>10}")
    for completion in lengths:
        for chunk in (0, args.chunk):
            row = measure(vocab, completion, chunk)
            rows.append(row)
            print(f"{completion:>10} {chunk:>6} {row['peak_mb']:>9.0f} {row['update_mb']:>10.0f}")
    ratios = {}
    for completion in lengths:
        off, on = (next(r for r in rows if r["completion"] == completion and r["chunk"] == c) for c in (0, args.chunk))
        ratios[completion] = {"peak": off["peak_mb"] / on["peak_mb"], "update": off["update_mb"] / max(on["update_mb"], 1)}
        print(f"{completion} tokens: chunking divides peak RSS by {ratios[completion]['peak']:.1f} "
              f"and the update's own peak by {ratios[completion]['update']:.1f}")
    if not args.tiny:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, "ratios": ratios}, indent=1) + "\n")


if __name__ == "__main__":
    main()
