"""Shared fixtures: a local character-level tokenizer with a chat template and tiny Qwen2 models.

Nothing here touches the network: the tokenizer is built with `tokenizers`, the models from a
`Qwen2Config` with random (seeded) weights.
"""

from __future__ import annotations

import json
import signal
import string
from pathlib import Path

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def pytest_collection_modifyitems(items) -> None:
    # The real-vLLM files take minutes each: collected first, they start first, on different
    # xdist workers (whole files per worker), instead of becoming the run's tail.
    items.sort(key=lambda item: item.get_closest_marker("real_vllm") is None)


def default_sigint() -> None:
    """`preexec_fn` for a child that must see Ctrl-C: a shell that starts the tests in the
    background ignores SIGINT, and Python keeps an inherited SIG_IGN instead of raising
    KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def sampling_stage_config(cls, data: Path, out: Path, model_name: str = "scripted", batch_size: int = 8,
                          max_new_tokens: int = 32, **fields):
    """A sampling stage's config (filter-hard, make-prefixes, make-solutions) on a named scripted
    model with the default field names, prompts and reward; `fields` set (or replace) the rest."""
    from pope_cli.shared.config import FieldMap, ModelOptions, PromptOptions, RewardOptions, SamplingOptions

    values = dict(data=str(data), out=str(out), model=ModelOptions(model_name, batch_size=batch_size),
                  fields=FieldMap(), prompt=PromptOptions(), sampling=SamplingOptions(max_new_tokens=max_new_tokens),
                  reward=RewardOptions())
    return cls(**{**values, **fields})


def write_prefix_workspace(root: Path, rows: list[dict]) -> Path:
    """`root` with short char-level templates (unguided.txt, guided.txt) and a prefixes.jsonl of
    `rows` (id, problem, answer, solution, prefix, prefix_fraction), each found, under guided.txt."""
    (root / "guided.txt").write_text("Q:{problem} P:{prefix} C:")
    (root / "unguided.txt").write_text("Q:{problem} A:")
    found = {"status": "found", "template": str(root / "guided.txt")}
    (root / "prefixes.jsonl").write_text("".join(json.dumps({**row, **found}) + "\n" for row in rows))
    return root


def same_prefix_rows(count: int) -> list[dict]:
    """`count` problems i+i, all with the oracle "abcd", its prefix "ab" and the answer "x"."""
    return [{"id": f"p{i}", "problem": f"{i}+{i}", "answer": "x", "solution": "abcd", "prefix": "ab",
             "prefix_fraction": 0.5} for i in range(count)]


def build_char_tokenizer():
    """A character-level PreTrainedTokenizerFast over printable ASCII, with a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    chars = [c for c in string.printable if c not in "\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
        additional_special_tokens=specials[3:],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_model(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2, eos_id: int = 1, pad_id: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, char_tokenizer):
    """A saved tiny model + tokenizer directory, loadable with `--model DIR`."""
    out = tmp_path_factory.mktemp("tiny_model")
    model = build_tiny_model(len(char_tokenizer))
    model.save_pretrained(out)
    char_tokenizer.save_pretrained(out)
    return out
