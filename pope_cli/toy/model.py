"""The toy model: a Qwen2 decoder of about a million parameters, and where the shipped one lives.

Small enough that RL runs at a few steps a second on one CPU thread, large enough to learn
the easy task to near-perfect accuracy. Qwen2 keeps the toy on the same code path (config,
generate, save_pretrained, vLLM support) as the real models the pipeline targets.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_MODEL_DIR = Path(__file__).parent / "model"
TEACHER_MODEL_DIR = Path(__file__).parent / "teacher"
"""A stronger toy model for `pope make-solutions`' teacher: the shipped one fine-tuned on 512 other hard
problems' solutions, so it knows the `*` table by 4-9 (teacher/EVAL.md)."""
MAX_POSITIONS = 256
"""Longest prompt + response the model is built for; toy sequences stay under about 150."""


def toy_config(vocab_size: int, pad_id: int, eos_id: int):
    """Qwen2Config: width 128, 4 layers of 4 heads, MLP 512, tied embeddings (~1.06M params)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=512,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
        pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None,
    )
