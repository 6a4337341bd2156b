"""Model and tokenizer loading: local dirs, PEFT adapter dirs, devices, dtypes and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pope_cli.shared.config import ModelOptions
from pope_cli.shared.engines.base import Request, Sampling
from pope_cli.shared.engines.hf import HFEngine
from pope_cli.shared.errors import PopeError
from pope_cli.shared.models import (
    adapter_base, check_model_loadable, check_model_ref, load_model, load_tokenizer, resolve_device, resolve_dtype,
    tokenizer_source,
)


def test_load_a_local_model_dir(tiny_model_dir, char_tokenizer):
    model = load_model(ModelOptions(model=str(tiny_model_dir), dtype="float32"))
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer("abc")["input_ids"] == char_tokenizer("abc")["input_ids"]
    assert adapter_base(str(tiny_model_dir)) is None


def test_bad_model_references_fail_with_one_line(tmp_path):
    with pytest.raises(PopeError, match="--model: .*no such directory") as missing:
        load_model(ModelOptions(model=str(tmp_path / "nope")))
    assert missing.value.exit_code == 2
    check_model_ref("Qwen/Qwen3-4B-Instruct-2507")  # a hub id is not checked locally
    for name in ("runs/../x/y", "a/b/c", "./local"):
        with pytest.raises(PopeError):
            check_model_ref(name)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "broken" / "tokenizer_config.json").write_text("{}")
    with pytest.raises(PopeError, match="could not load .*broken") as broken:
        load_model(ModelOptions(model=str(tmp_path / "broken")))
    assert broken.value.exit_code == 1 and "\n" not in str(broken.value)


def test_a_model_that_cannot_load_is_refused_at_once(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PopeError, match=r"empty: not a model directory \(no config.json\)"):
        check_model_loadable(str(tmp_path / "empty"))
    (tmp_path / "no_tokenizer").mkdir()
    (tmp_path / "no_tokenizer" / "config.json").write_text("{}")
    with pytest.raises(PopeError, match="no_tokenizer: no tokenizer files"):
        check_model_loadable(str(tmp_path / "no_tokenizer"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(PopeError, match="file: is a file"):
        check_model_loadable(str(tmp_path / "file"))
    check_model_loadable(str(tiny_model_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PopeError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set; .*--model DIR"):
        check_model_loadable("pope-test/not-cached")
    check_model_loadable("pope-test/not-cached", hub=False)  # an export names a model used elsewhere
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://pope-test.invalid")
    with pytest.raises(PopeError, match="the hub cannot be reached .*--model DIR"):
        check_model_loadable("pope-test/not-cached")


def test_devices_and_dtypes(monkeypatch):
    assert resolve_device(ModelOptions(model="m/x")).type == ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = resolve_device(ModelOptions(model="m/x", device="cpu"))
    assert cpu.type == "cpu"
    assert resolve_dtype(ModelOptions(model="m/x", dtype="float32"), cpu) == torch.float32
    assert resolve_dtype(ModelOptions(model="m/x"), torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype(ModelOptions(model="m/x", dtype="float16"), cpu) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PopeError, match="--device") as no_cuda:
        resolve_device(ModelOptions(model="m/x", device="cuda:0"))
    assert no_cuda.value.exit_code == 2
    with pytest.raises(PopeError, match="--device"):
        resolve_device(ModelOptions(model="m/x", device="tpu-ish"))


def test_auto_dtype_is_bf16_where_the_cpu_has_bf16_units_and_float32_elsewhere(monkeypatch, capsys):
    import pope_cli.shared.models as models

    cpu, auto = torch.device("cpu"), ModelOptions(model="m/x")
    here = models.cpu_bf16_units()
    assert resolve_dtype(auto, cpu) == (torch.bfloat16 if here else torch.float32)
    if {"amx_bf16", "avx512_bf16"} & set(Path("/proc/cpuinfo").read_text().split()):
        assert here in ("AMX-BF16", "AVX512-BF16")  # torch agrees with the kernel's flags
    monkeypatch.setattr(models, "cpu_bf16_units", lambda: "AVX512-BF16")
    assert resolve_dtype(auto, cpu) == torch.bfloat16
    assert models.describe_dtype(ModelOptions(model="m/x", device="cpu")) == ("bfloat16", "auto: this CPU has AVX512-BF16")
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(models, "cpu_bf16_units", lambda: None)
    monkeypatch.setattr(models, "_warned_emulated", [])
    assert resolve_dtype(auto, cpu) == torch.float32
    assert models.describe_dtype(ModelOptions(model="m/x", device="cpu"))[0] == "float32"
    assert capsys.readouterr().err == ""
    # asked for on such a CPU it still works, with one warning per process
    for _ in range(2):
        assert resolve_dtype(ModelOptions(model="m/x", dtype="bfloat16"), cpu) == torch.bfloat16
    assert capsys.readouterr().err.count("bf16 is emulated") == 1


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter over the tiny model, with non-zero weights so it changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config).eval()
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out, model


def test_an_adapter_dir_loads_base_plus_adapter(adapter_dir, tiny_model_dir, char_tokenizer):
    path, in_memory = adapter_dir
    assert adapter_base(str(path)) == str(tiny_model_dir)
    assert tokenizer_source(str(path)) == str(tiny_model_dir)
    loaded = load_model(ModelOptions(model=str(path), dtype="float32"))
    assert type(loaded).__name__.startswith("Peft")
    requests = [Request(char_tokenizer("adapter")["input_ids"], 3, 5)]
    sampling = Sampling(temperature=1.0, max_new_tokens=8, logprobs=True)
    ours = HFEngine(loaded, load_tokenizer(str(path))).generate(requests, sampling)[0]
    reference = HFEngine(in_memory, char_tokenizer).generate(requests, sampling)[0]
    assert [c.token_ids for c in ours] == [c.token_ids for c in reference]
    for a, b in zip(ours, reference):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)
    base = HFEngine(load_model(ModelOptions(model=str(tiny_model_dir), dtype="float32")), char_tokenizer)
    # the shared noise may pick the same tokens; the adapter shows in their probabilities
    without = base.generate(requests, sampling)[0]
    assert max(abs(x - y) for a, b in zip(without, ours) for x, y in zip(a.logprobs, b.logprobs)) > 1e-3


def test_an_adapter_dir_with_its_own_tokenizer_uses_it(adapter_dir, char_tokenizer, tmp_path):
    import shutil

    path, _ = adapter_dir
    copy = tmp_path / "adapter_with_tokenizer"
    shutil.copytree(path, copy)
    char_tokenizer.save_pretrained(copy)
    assert tokenizer_source(str(copy)) == str(copy)
    assert load_tokenizer(str(copy)).chat_template == char_tokenizer.chat_template


def test_training_mode_is_restored_on_a_peft_policy(adapter_dir, char_tokenizer):
    _, model = adapter_dir
    model.train()
    try:
        HFEngine(model, char_tokenizer).generate([Request([7, 8], 1, 0)], Sampling(max_new_tokens=3))
        assert model.training and model.base_model.model.model.layers[0].training
    finally:
        model.eval()


def test_char_tokenizer_next_to_a_qwen2_config_keeps_spaces_and_newlines(tiny_model_dir, char_tokenizer):
    from pope_cli.shared.models import load_tokenizer

    loaded = load_tokenizer(str(tiny_model_dir))
    text = "a b\nc"
    assert loaded(text, add_special_tokens=False).input_ids == char_tokenizer(text, add_special_tokens=False).input_ids
    assert loaded.decode(loaded(text, add_special_tokens=False).input_ids) == text
