"""Seconds per `pope train` step on this machine's CPU, generation vs training, for ~1M and ~6M
parameter Qwen2 models on the toy task (16 prompts x 8 samples, up to 48 new tokens, 1 thread).

    python benchmarks/bench_train.py [--steps 4] [--threads 1]

Models are randomly initialised: they rarely stop early, so completions run to the token limit
(the slow case). The toy reward would score them all 0 and leave nothing to train, so the
reward here is a coin flip on the first character, which gives most groups a signal and so
times the full update. The first step is a warm-up and is not counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from pope_cli.shared.outputs import atomic_write_jsonl
from pope_cli.toy.pretrain import TEMPLATES_DIR

SIZES = {"1M": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
         "6M": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8)}
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
"""SmolLM2-135M-Instruct's shape (a Llama): `build(out, "135M")` gives a random model of it."""


def coin(completion: str, record: dict) -> float:
    """1.0 when the first character has an odd code: about half of a random model's samples."""
    return float(bool(completion) and ord(completion[0]) % 2 == 1)


def build(out: Path, size: str) -> int:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pope_cli.toy.tokenizer import build_tokenizer

    if size == "135M":
        return build_smollm2_shape(out)
    tokenizer = build_tokenizer()
    shape = SIZES[size]
    config = Qwen2Config(vocab_size=len(tokenizer), num_key_value_heads=shape["num_attention_heads"],
                         max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
                         bos_token_id=None, **shape)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def wide_tokenizer(vocab_size: int):
    """The toy's byte-level tokenizer widened to `vocab_size` ids: the extra tokens are strings of two or
    three printable characters that encoding never produces (there are no merges) and decoding turns
    into text, so a random model's samples decode to varied text, as a real BPE vocabulary's do."""
    import itertools
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from pope_cli.toy.tokenizer import CHAT_TEMPLATE, EOS, PAD, ROLE_TOKENS, UNK, byte_symbols

    base = [PAD, EOS, UNK, *ROLE_TOKENS, *byte_symbols()]
    letters = string.ascii_letters + string.digits
    extra = ("".join(chars) for width in (2, 3) for chars in itertools.product(letters, repeat=width))
    vocab = {token: i for i, token in enumerate(base + list(itertools.islice(extra, vocab_size - len(base))))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                        additional_special_tokens=ROLE_TOKENS, padding_side="left")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_smollm2_shape(out: Path) -> int:
    """A random Llama of SmolLM2-135M's shape with a tokenizer of its vocabulary size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(max_position_embeddings=2048, pad_token_id=0, eos_token_id=1, bos_token_id=None,
                         **SMOLLM2_135M)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    wide_tokenizer(config.vocab_size).save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def write_prefixes(path: Path) -> None:
    from pope_cli.toy.task import hard_problems

    pool, _ = hard_problems(seed=0, n_pool=64, n_heldout=0)
    rows = []
    for record in pool:
        lines = record["solution"].splitlines()
        rows.append({**record, "prefix": "\n".join(lines[:2]), "prefix_fraction": 2 / len(lines),
                     "status": "found", "template": str(TEMPLATES_DIR / "guided.txt")})
    atomic_write_jsonl(path, rows)


def measure(work: Path, size: str, lora: bool, steps: int) -> dict:
    from pope_cli.shared.config import ModelOptions, PromptOptions, RewardOptions, SamplingOptions
    from pope_cli.stages.train.config import TrainConfig
    from pope_cli.shared.reward.checker import Scorer
    from pope_cli.stages.train.trainer import Run, train_step

    cfg = TrainConfig(prefixes=str(work / "prefixes.jsonl"), out=str(work / "run"),
                      model=ModelOptions(str(work / size), backend="hf", device="cpu"),
                      prompt=PromptOptions(unguided_template=str(TEMPLATES_DIR / "unguided.txt")),
                      sampling=SamplingOptions(temperature=1.0, max_new_tokens=48),
                      reward=RewardOptions("bench_train:coin", workers=1),
                      prompts_per_step=16, group_size=8, lora=lora, lora_rank=16, lora_alpha=32, lr=1e-4,
                      warmup_steps=0, micro_batch_size=32)
    with Scorer(cfg.reward.spec, workers=1) as scorer:
        run = Run(cfg, None, scorer)
        rows = [train_step(run, step) for step in range(steps)][1:]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    return {"size": size, "mode": "lora r16" if lora else "full", "generate_s": median("time/generate_s"),
            "train_s": median("time/train_s"), "step_s": median("time/step_s"),
            "gen_tok_s": median("throughput/gen_tokens_per_s"), "train_tok_s": median("throughput/train_tokens_per_s"),
            "response_len": median("response_length"), "sequences": median("trained_sequences")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_prefixes(work / "prefixes.jsonl")
        for size in SIZES:
            params = build(work / size, size)
            for lora in (False, True):
                result = measure(work, size, lora, args.steps)
                print(json.dumps({"params": params, **{k: round(v, 3) if isinstance(v, float) else v
                                                       for k, v in result.items()}}), flush=True)


if __name__ == "__main__":
    main()
