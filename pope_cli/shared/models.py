"""Loading models and tokenizers from `--model`: a hub id, a local model dir or a PEFT adapter dir.

A local directory holding `adapter_config.json` is a PEFT adapter: its base model
(`base_model_name_or_path`) is loaded first and the adapter on top; the tokenizer comes from
the adapter dir when it has one, else from the base. Loading failures end in one `PopeError`
line naming the model.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from pope_cli.shared.config import ModelOptions
from pope_cli.shared.errors import PopeError

# `org/name` as the hub spells repository ids; anything else that is not on disk is a typo'd path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_ref(name: str, option: str = "--model") -> None:
    """Fail early, with the option named, on a path that neither exists nor looks like a hub id."""
    if not name.strip():  # Path("") is the current directory
        raise PopeError(f"{option}: must not be empty", exit_code=2)
    if not Path(name).exists() and (not _HUB_ID.match(name) or ".." in name):
        raise PopeError(f"{option}: {name}: no such directory, and not a hub id (org/name)", exit_code=2)


def check_model_loadable(name: str, option: str = "--model", hub: bool = True, tokenizer: bool = True) -> None:
    """Fail at once, before anything is written, on a model that cannot load.

    A local directory must hold a config and a tokenizer (an adapter dir: its base must, and the
    tokenizer may be the adapter's own). A hub id must be in the local cache or on a hub that
    answers: offline (HF_HUB_OFFLINE, or no network) transformers would otherwise spend about a
    minute in retries before its error. `hub=False` takes any hub id (the model is used elsewhere).
    """
    check_model_ref(name, option)
    path = Path(name)
    has_tokenizer = any((path / f).is_file() for f in _TOKENIZER_FILES)
    if not path.exists():
        if hub:
            _check_hub_id(name, option)
    elif not path.is_dir():
        raise PopeError(f"{option}: {name}: is a file; give a model directory or a hub id (org/name)", exit_code=2)
    elif adapter_base(name) is not None:
        check_model_loadable(adapter_base(name), option, hub, tokenizer and not has_tokenizer)
    elif not (path / "config.json").is_file():
        raise PopeError(f"{option}: {name}: not a model directory (no config.json); give a directory written by "
                        "save_pretrained, or a hub id (org/name)", exit_code=2)
    elif tokenizer and not has_tokenizer:
        raise PopeError(f"{option}: {name}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}); save the tokenizer "
                        "into the model directory", exit_code=2)


def _check_hub_id(name: str, option: str) -> None:
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    fix = (f"download it where there is a network (hf download {name} --local-dir DIR) and pass the directory: "
           f"{option} DIR")
    if _hub_offline():
        raise PopeError(f"{option}: {name}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {fix}",
                        exit_code=2)
    try:
        HfApi(endpoint=os.environ.get("HF_ENDPOINT")).model_info(name, timeout=10)
    except RepositoryNotFoundError:
        raise PopeError(f"{option}: {name}: no such model on the hub (or it is private: log in with hf auth login)",
                        exit_code=2) from None
    except HfHubHTTPError:
        return  # gated or unauthorized: the model exists, and the loader says how to get access
    except Exception as error:  # a connection error, whichever HTTP library raised it
        raise PopeError(f"{option}: {name}: not in the local Hugging Face cache and the hub cannot be reached "
                        f"({_one_line(error)}); {fix}", exit_code=2) from None


def _hub_offline() -> bool:
    return any(os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def adapter_base(name: str) -> str | None:
    """The base model of a local PEFT adapter dir, or None when `name` is not one."""
    config = Path(name) / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        base = json.loads(config.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise PopeError(f"{config}: unreadable adapter config: {e}") from e
    if not base:
        raise PopeError(f"{config}: no base_model_name_or_path, so the base model is unknown")
    return base


def adapter_rank(name: str) -> int:
    """The LoRA rank `r` stored in a PEFT adapter dir's config (max over rank_pattern too)."""
    config = json.loads((Path(name) / "adapter_config.json").read_text())
    return max([int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())])


def tokenizer_source(name: str) -> str:
    """Where the tokenizer of `--model NAME` lives: the adapter dir if it has one, else the base."""
    base = adapter_base(name)
    if base is None or any((Path(name) / f).is_file() for f in _TOKENIZER_FILES):
        return name
    return base


def declares_generic_tokenizer(source: str) -> bool:
    """Whether a local tokenizer dir says it is a plain `tokenizer.json` tokenizer.

    transformers 5 loads such a dir, when it sits next to a Qwen2 config, as `Qwen2Tokenizer`,
    which replaces the saved pre-tokenizer with Qwen's (a character-level tokenizer then drops
    spaces and newlines). The declared class is what the files were written for, so we honour it.
    """
    config = Path(source) / "tokenizer_config.json"
    if not config.is_file() or not (Path(source) / "tokenizer.json").is_file():
        return False
    declared = json.loads(config.read_text()).get("tokenizer_class")
    return declared in ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer for a hub id, a model dir or a PEFT adapter dir."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    check_model_loadable(name)
    source = tokenizer_source(name)
    try:
        if declares_generic_tokenizer(source):
            return PreTrainedTokenizerFast.from_pretrained(source)
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as e:  # any loader failure is reported as one line about the model
        raise PopeError(f"--model: could not load the tokenizer of {source}: {_one_line(e)}") from e


def resolve_device(opts: ModelOptions):
    """The torch device `--device` names; `auto` is cuda when available, else cpu."""
    import torch

    if opts.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(opts.device)
    except RuntimeError as e:
        raise PopeError(f"--device: {opts.device!r} is not a device (auto, cpu, cuda, cuda:N)",
                        exit_code=2) from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PopeError(f"--device: {opts.device} asked for, but CUDA is not available", exit_code=2)
    return device


def cpu_bf16_units() -> str | None:
    """The bf16 matrix units of this CPU as torch reports them (AMX, AVX512-BF16, Arm BF16), or None.

    Only hardware that multiplies bf16 matrices natively counts: torch also runs bf16 on plain
    AVX512 or AVX2 CPUs, by converting to fp32, several times slower than fp32 itself."""
    import platform

    import torch

    units = (("AMX-BF16", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    for name, check in units:
        if getattr(torch.cpu, check, lambda: False)():
            return name
    if platform.machine().lower() in ("aarch64", "arm64") and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "Arm BF16"
    return None


def auto_dtype(device_type: str) -> tuple[str, str]:
    """What `--dtype auto` resolves to on a device type, and why: bfloat16 on a GPU and on a CPU with
    bf16 matrix units (about 2x fp32 on AVX512-BF16, 8x on AMX), float32 on other CPUs."""
    if device_type != "cpu":
        return "bfloat16", f"auto: {device_type}"
    units = cpu_bf16_units()
    if units is not None:
        return "bfloat16", f"auto: this CPU has {units}"
    return "float32", "auto: this CPU has no bf16 matrix units"


_warned_emulated: list[bool] = []


def resolve_dtype(opts: ModelOptions, device):
    """The torch dtype `--dtype` names (`auto`: see `auto_dtype`). bfloat16 asked for on a CPU
    without bf16 units works, emulated; the process says so once."""
    import torch

    if opts.dtype == "auto":
        return getattr(torch, auto_dtype(device.type)[0])
    if opts.dtype == "bfloat16" and device.type == "cpu" and not _warned_emulated and cpu_bf16_units() is None:
        _warned_emulated.append(True)
        print("warning: --dtype bfloat16: this CPU has no bf16 matrix units (AMX, AVX512-BF16); bf16 is emulated "
              "and slower than float32", file=sys.stderr)
    return getattr(torch, opts.dtype)


def describe_dtype(opts: ModelOptions) -> tuple[str, str]:
    """(dtype, why) of the model `opts` loads where this process runs it: e.g. ("bfloat16", "auto: this
    CPU has AVX512-BF16"); a served model's dtype is the server's."""
    if opts.backend == "openai":
        return "server's", "--backend openai"
    import torch

    from pope_cli.shared.engines import choose_backend

    if choose_backend(opts.backend) == "vllm":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device_type = resolve_device(opts).type
    if opts.dtype == "auto":
        return auto_dtype(device_type)
    return opts.dtype, "--dtype"


def dtype_record(opts: ModelOptions) -> dict:
    """`describe_dtype` for a manifest: {"dtype": ..., "why": ...}."""
    return dict(zip(("dtype", "why"), describe_dtype(opts)))


def load_model(opts: ModelOptions, is_trainable: bool = False):
    """The causal LM `--model` names, on the resolved device and dtype, in eval mode.

    For a PEFT adapter dir this is a `PeftModel` (base + adapter); `is_trainable` keeps the
    adapter weights trainable, for a trainer resuming from it.
    """
    device = resolve_device(opts)
    check_model_loadable(opts.model)
    dtype = resolve_dtype(opts, device)
    base = adapter_base(opts.model)
    model = _from_pretrained(base or opts.model, dtype, opts.trust_remote_code)
    if base is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, opts.model, is_trainable=is_trainable)
        except Exception as e:  # any loader failure is reported as one line about the model
            raise PopeError(f"--model: could not load the adapter {opts.model}: {_one_line(e)}") from e
    return model.to(device).eval()


def _from_pretrained(name: str, dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as e:  # any loader failure is reported as one line about the model
        raise PopeError(f"--model: could not load {name}: {_one_line(e)}") from e


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
