"""The vLLM engine: an optional extra for GPU throughput, with LoRA adapters and sleep mode.

One `SamplingParams` per request carries its seed; vLLM seeds child j of an `n > 1` request
with `seed + j`, which is the seeding rule of `base.py`. Prompts go in as token ids, so vLLM
never re-tokenises them. Logprobs are asked for in vLLM's `processed_logprobs` mode (after
temperature), where the installed version has it. That mode also applies top-p, so with
top_p < 1 vLLM's logprobs are under the truncated, renormalised distribution, unlike the hf
engine's (they agree at top_p = 1).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

from pope_cli.shared.engines.base import Completion, Request, Sampling
from pope_cli.shared.errors import PopeError

# vLLM caches adapters by integer id, and ids must never be reused for another adapter in the
# process, so every engine draws from one counter.
_lora_ids = itertools.count(1)

# The ranks vLLM accepts for max_lora_rank.
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise PopeError("--backend vllm: vLLM is not installed (pip install 'pope-cli[vllm]', "
                        "or use --backend hf)") from e
    return vllm


def lora_rank_limit(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds an adapter of rank `rank`."""
    return next((r for r in _LORA_RANKS if r >= rank), rank)


class VLLMEngine:
    """Generates with `vllm.LLM`; `set_lora` switches the adapter that later calls use."""

    def __init__(self, model: str, tokenizer, *, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, trust_remote_code: bool = False,
                 max_lora_rank: int | None = None, enable_sleep_mode: bool = False, seed: int = 0,
                 in_process: bool = False, **llm_kwargs):
        """`tokenizer` is a transformers tokenizer (the stages build prompts with it); vLLM loads
        its own copy from `tokenizer.name_or_path`. A `max_lora_rank` enables LoRA. `in_process`
        keeps vLLM's engine core in this process, which `load_weights` needs."""
        if in_process:
            # Read by vLLM when the engine is built: without it the model lives in a child
            # process and every weight update would be pickled through a pipe.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        vllm = _import_vllm()
        self.vllm = vllm
        self.tokenizer = tokenizer
        self.processed_logprobs = "logprobs_mode" in {f.name for f in dataclasses.fields(vllm.EngineArgs)}
        if self.processed_logprobs:
            llm_kwargs["logprobs_mode"] = "processed_logprobs"
        if max_lora_rank is not None:
            llm_kwargs.update(enable_lora=True, max_lora_rank=lora_rank_limit(max_lora_rank), max_loras=1)
        self.llm = vllm.LLM(
            model=model, tokenizer=tokenizer.name_or_path or None, dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            trust_remote_code=trust_remote_code, enable_sleep_mode=enable_sleep_mode, seed=seed,
            enable_prefix_caching=True, **llm_kwargs,
        )
        self.lora_request = None

    @classmethod
    def from_options(cls, opts, *, max_lora_rank: int | None = None, enable_sleep_mode: bool = False,
                     in_process: bool = False, tensor_parallel_size: int = 1) -> "VLLMEngine":
        """An engine for a `ModelOptions`; a PEFT adapter dir serves its base model plus the adapter."""
        from pope_cli.shared.models import adapter_base, adapter_rank, check_model_ref, load_tokenizer

        check_model_ref(opts.model)
        base = adapter_base(opts.model)
        if base is not None:
            max_lora_rank = max(max_lora_rank or 1, adapter_rank(opts.model))
        engine = cls(
            base or opts.model, load_tokenizer(opts.model, opts.trust_remote_code),
            dtype="bfloat16" if opts.dtype == "auto" else opts.dtype,
            gpu_memory_utilization=opts.gpu_memory_utilization, max_model_len=opts.max_model_len,
            trust_remote_code=opts.trust_remote_code, max_lora_rank=max_lora_rank,
            enable_sleep_mode=enable_sleep_mode, in_process=in_process, tensor_parallel_size=tensor_parallel_size,
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
        """Copy (name, tensor) pairs in the Hugging Face naming into the served model, for full
        fine-tuning. The model's own `load_weights` maps the names (fused qkv, tied embeddings).
        Cached prefixes were computed with the old weights, so the prefix cache is dropped."""
        named = list(weights)
        self.llm.apply_model(lambda model: model.load_weights(named))
        self.llm.reset_prefix_cache()

    def sleep(self, level: int = 1) -> None:
        """Free GPU memory for training (level 2 also drops the weights, which must then be reloaded)."""
        self.llm.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.llm.wake_up(tags=tags)

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        if sampling.logprobs and not self.processed_logprobs and sampling.temperature not in (0, 1):
            raise PopeError("this vLLM returns logprobs before temperature scaling; "
                            "upgrade vllm (>= 0.10.2) or use --backend hf")
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
