"""The toy model's character-level tokenizer, saved as a standard HF tokenizer with a chat template.

One token per byte, so one per character for the ASCII the toy task uses, and any other text (a
system message, a user's own template, UTF-8) still tokenizes without unknowns. Chat turns are
wrapped in single special tokens, and the turn terminator `<|end|>` doubles as EOS, as
`<|im_end|>` does for Qwen instruct models: the model ends its answer by closing its turn.

Why byte-level BPE with no merges rather than a plain character vocabulary: transformers 5's
AutoTokenizer loads any directory whose config says `qwen2` as a `Qwen2Tokenizer`, which keeps
the vocabulary but swaps in Qwen's own byte-level pre-tokenizer. A vocabulary of byte symbols
with no merges splits into the same single-byte tokens under either pre-tokenizer, so the
tokenizer is the same whichever class loads it.
"""

from __future__ import annotations

PAD, EOS, UNK = "<pad>", "<|end|>", "<unk>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255 (what the ByteLevel pre-tokenizer emits)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def build_tokenizer():
    """A PreTrainedTokenizerFast: specials first (pad = 0, eos = 1), then the 256 bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, EOS, UNK] + ROLE_TOKENS
    vocab = {token: i for i, token in enumerate(specials + byte_symbols())}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
        additional_special_tokens=ROLE_TOKENS, padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
