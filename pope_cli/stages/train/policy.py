"""The trained policy: building it (LoRA or full, fresh or from a checkpoint), its optimizer and
schedule, the KL reference, keeping a vLLM engine in step with it, and writing `final/`.

Precision: trainable weights and the optimizer state are float32 (a LoRA adapter over a frozen
base held in `--dtype`, or a full float32 model). When `--dtype` resolves to bfloat16 (a GPU, or a
CPU with bf16 matrix units: models.auto_dtype) every forward runs under bf16 autocast, on the GPU
and on the CPU alike: matmuls in bf16, fp32 weights cast once per forward (autocast's cache), the
log-probs, the loss and the chunked head's log-softmax in fp32 (loss.token_logprobs upcasts).
bf16 master weights would round away most AdamW updates at RL learning rates. The hf engine
generates under the same autocast, so the sampler computes as the trainer does.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from pope_cli.shared.distributed import SOLO, Ranks
from pope_cli.shared.errors import PopeError
from pope_cli.shared.outputs import publish_modes
from pope_cli.stages.train.config import TrainConfig
from pope_cli.stages.train.parallel import full_weights


@dataclass
class Policy:
    model: object
    tokenizer: object
    device: torch.device
    autocast_dtype: torch.dtype | None
    frozen_reference: object | None
    """A copy of the starting model for the KL term of a full run; None with LoRA (the
    reference is the base with the adapter disabled) or without KL."""

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id


def _model_path(name: str) -> str:
    """Local paths are recorded absolute, so an adapter's base resolves from any directory."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def _causal_lm(name: str, dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(_model_path(name), dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise PopeError(f"--model: could not load {name}: {str(error).splitlines()[0]}") from None


def _starting_model(cfg: TrainConfig, dtype):
    """The model `--model` names; a PEFT adapter dir gives base + adapter (trainable)."""
    from pope_cli.shared.models import adapter_base

    base_name = adapter_base(cfg.model.model)
    if base_name is None:
        return _causal_lm(cfg.model.model, dtype, cfg.model.trust_remote_code)
    from peft import PeftModel

    base = _causal_lm(base_name, dtype, cfg.model.trust_remote_code)
    return PeftModel.from_pretrained(base, _model_path(cfg.model.model), is_trainable=cfg.lora)


def _merged(model):
    """A full model: a peft model's adapter folded into its base."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def _checkpoint_activations(model) -> None:
    """Recompute activations in backward: `activation_checkpointing_enable` where transformers has it
    (5.24 deprecates the older name), `gradient_checkpointing_enable` before."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_policy(cfg: TrainConfig, checkpoint: Path | None) -> Policy:
    """The policy at the start of training, or as `checkpoint` saved it."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from pope_cli.shared.models import adapter_base, load_tokenizer, resolve_device, resolve_dtype

    device = resolve_device(cfg.model)
    tokenizer = load_tokenizer(cfg.model.model, cfg.model.trust_remote_code)
    compute_dtype = resolve_dtype(cfg.model, device)
    base_dtype = compute_dtype if cfg.lora else torch.float32
    if cfg.lora and checkpoint is not None:
        base = _causal_lm(adapter_base(cfg.model.model) or cfg.model.model, base_dtype, cfg.model.trust_remote_code)
        model = PeftModel.from_pretrained(base, checkpoint / "model", is_trainable=True)
    elif cfg.lora:
        model = _starting_model(cfg, base_dtype)
        if not isinstance(model, PeftModel):
            targets = cfg.lora_targets
            if targets != "all-linear":
                targets = [name.strip() for name in targets.split(",")]
            # Dropout 0: the trained log-probs must be those of the policy that sampled.
            lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=targets, lora_dropout=0.0,
                              task_type="CAUSAL_LM")
            model = get_peft_model(model, lora)
    elif checkpoint is not None:
        model = _causal_lm(str(checkpoint / "model"), base_dtype, cfg.model.trust_remote_code)
    else:
        model = _merged(_starting_model(cfg, base_dtype))
    frozen = None
    if cfg.kl_coef and not cfg.lora:
        frozen = _merged(_starting_model(cfg, base_dtype)) if checkpoint else copy.deepcopy(model)
        frozen = frozen.requires_grad_(False).eval().to(device)
    if cfg.grad_checkpointing:
        _checkpoint_activations(model)
    model.to(device).train()
    return Policy(model, tokenizer, device, autocast_dtype(compute_dtype), frozen)


def autocast_dtype(compute_dtype: torch.dtype) -> torch.dtype | None:
    """The autocast dtype of a policy computing in `compute_dtype`: None (no autocast) for float32;
    bf16 for bf16, and for a float16 base too, since fp16 training would need loss scaling."""
    return None if compute_dtype == torch.float32 else torch.bfloat16


def make_optimizer(cfg: TrainConfig, model, mixed_precision: bool = False):
    """AdamW over the trainable weights, linear warmup over `warmup_steps` then constant.

    A mixed-precision run uses torch's fused AdamW, one kernel over all weights: 0.1 s a step for a
    135M model on one CPU thread against 0.6 s for the per-op (foreach) version, which would
    otherwise be a sixth of the update. float32 runs keep the foreach version, whose rounding the
    recorded float32 runs were made with (the two differ by ~1e-7); FSDP2's sharded weights too."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = mixed_precision and not any(hasattr(p, "full_tensor") for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    warmup = cfg.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
    return optimizer, scheduler


class EngineSync:
    """Keeps a vLLM engine generating with the current policy; a no-op for the hf engine,
    which generates with the policy object itself.

    Around each update the engine sleeps (KV cache freed; the weights too for a full run, whose
    weights are replaced anyway), so training has the GPU; then the new weights go in and it
    wakes: sleep -> sync -> wake. LoRA: the adapter is saved to RUN/.engine_adapter (one per
    rank under torchrun, each rank's engine reading its own) and loaded by a fresh
    `LoRARequest`. Full: each weight goes through the engine's `load_weights`; a weight sharded
    by FSDP2 is gathered whole first, one at a time, on every rank (a collective).
    """

    def __init__(self, engine, policy: Policy, run_dir: Path, lora: bool, vllm: bool, ranks: Ranks = SOLO):
        self.engine, self.policy, self.lora, self.vllm = engine, policy, lora, vllm
        name = ".engine_adapter" if ranks.world == 1 else f".engine_adapter_rank{ranks.rank}"
        self.adapter_dir = Path(run_dir) / name

    def before_update(self) -> None:
        if self.vllm:
            self.engine.sleep()

    def after_update(self) -> None:
        if self.vllm:
            self.sync()
            self.engine.wake_up()

    def close(self) -> None:
        """Shut a vLLM engine down while the run's process group is still up (see VLLMEngine.close)."""
        if self.vllm:
            self.engine.close()

    def sync(self) -> None:
        """Push the policy's current weights to the engine (also needed once after a resume)."""
        if not self.vllm:
            return
        if self.lora:
            if self.adapter_dir.exists():
                shutil.rmtree(self.adapter_dir)
            self.policy.model.save_pretrained(self.adapter_dir)
            self.engine.set_lora(self.adapter_dir)
        else:
            self.engine.load_weights(_whole_parameters(self.policy.model))


def _whole_parameters(model):
    """(name, full tensor) for every parameter, gathering FSDP2 shards one weight at a time."""
    for name, param in model.named_parameters():
        yield name, (param.full_tensor() if hasattr(param, "full_tensor") else param).detach()


def save_final(policy: Policy, run_dir: Path, merge: bool, ranks: Ranks = SOLO) -> list[Path]:
    """Write RUN/final (adapter or full model + tokenizer) atomically; `merge` also writes
    RUN/final_merged with the adapter folded into the base weights. Returns what was written.
    On N ranks every rank calls it and rank 0 writes."""
    weights = full_weights(policy.model)
    written = [Path(run_dir) / "final"] + ([Path(run_dir) / "final_merged"] if merge else [])
    if ranks.main:
        _save_atomic(policy.model, policy.tokenizer, written[0], weights)
        if merge:
            _save_atomic(policy.model.merge_and_unload(), policy.tokenizer, written[1])
    ranks.barrier()
    return written


def _save_atomic(model, tokenizer, target: Path, weights: dict | None = None) -> Path:
    tmp = target.with_name(f".tmp_{target.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, state_dict=weights)
    tokenizer.save_pretrained(tmp)
    publish_modes(tmp)  # safetensors writes its files 0600
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target
