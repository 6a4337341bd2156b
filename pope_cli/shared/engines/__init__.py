"""Text generation behind one small interface (see `base.py`).

Backends are imported only when an engine is made, so importing this package (and `pope
--help`) stays free of torch, transformers and vLLM.
"""

from __future__ import annotations

from pope_cli.shared.engines.base import Completion, Engine, Request, Sampling

__all__ = ["Completion", "Engine", "Request", "Sampling", "choose_backend", "make_engine"]


def choose_backend(backend: str) -> str:
    """`hf`, `vllm` or `openai` for a `--backend` value; `auto` takes vLLM when it is installed and CUDA is present."""
    if backend != "auto":
        return backend
    import importlib.util

    import torch

    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "hf"


def make_engine(opts, *, api=None, max_lora_rank: int | None = None, enable_sleep_mode: bool = False,
                full_weight_sync: bool = False, tensor_parallel_size: int = 1) -> Engine:
    """The engine for a `ModelOptions`; `api` (`ApiOptions`) says where `--backend openai` finds its
    server. The other keyword options only concern vLLM: a LoRA rank to serve trained adapters
    with, sleep mode to free the GPU between rollouts, full-weight updates from a trainer in this
    process, and the GPUs to split the model over."""
    if opts.backend == "openai":
        from pope_cli.shared.engines.openai_api import OpenAIEngine
        from pope_cli.shared.errors import PopeError

        if api is None:
            # Without --api-base the client would fall back to api.openai.com.
            raise PopeError("--backend openai: only the sampling stages (filter-hard, make-solutions, make-prefixes, "
                            "eval) sample a served model", exit_code=2)
        return OpenAIEngine.from_options(opts, api)
    if choose_backend(opts.backend) == "vllm":
        from pope_cli.shared.engines.vllm import VLLMEngine

        return VLLMEngine.from_options(opts, max_lora_rank=max_lora_rank, enable_sleep_mode=enable_sleep_mode,
                                       full_weight_sync=full_weight_sync, tensor_parallel_size=tensor_parallel_size)
    if tensor_parallel_size > 1:
        from pope_cli.shared.errors import PopeError

        raise PopeError("--tensor-parallel-size: needs the vllm backend; vLLM is not installed or CUDA is absent",
                        exit_code=2)
    from pope_cli.shared.engines.hf import HFEngine

    return HFEngine.from_options(opts)
