"""`pope train --dry-run`: what a training run will do and need, worked out from its config alone.

Nothing is loaded but the data file and the model's config (transformers `AutoConfig`); the
parameter counts come from building the model on PyTorch's meta device, which allocates nothing.
The numbers are estimates for sizing hardware and catching a run that cannot fit, made as follows.

- Parameters: exact. LoRA adds rank x (in + out) per adapted linear layer; `all-linear` is every
  linear layer but the LM head, as in peft.
- Policy memory, as `pope_cli/stages/train/policy.py` holds it: LoRA keeps the base in bf16 (2 B/param)
  and trains an fp32 adapter; a full run trains fp32 weights (4 B). Gradients are fp32 (4 B per
  trained param), AdamW keeps two fp32 moments (8 B), a full run with KL keeps an fp32 frozen
  copy. Under torchrun, DDP repeats all of it on every GPU; FSDP (full runs) divides it by the
  GPU count (`--data-parallel`).
- Logits: each (position, vocabulary) entry costs about 14 B (bf16 logits, then fp32 copies for
  the temperature-scaled log-softmax and its exp). With --logprob-chunk N (the default) only N
  positions' logits exist at once, each chunk recomputed in the backward pass
  (`pope_cli/stages/train/logprobs.py`): min(N, micro-batch x (completion + 1)) x vocabulary x
  14 B, whatever the micro-batch and length. With --logprob-chunk 0 the whole
  micro-batch x (completion + 1) x vocabulary x 14 B.
- Activations: 34 x tokens x hidden bytes per layer with 16-bit activations and flash attention
  (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models");
  with --grad-checkpointing each layer keeps only its input (2 B per token and hidden unit), plus
  one layer's full set while it is recomputed.
- vLLM (backend vllm or auto; under torchrun one engine per GPU, tensor parallel 1, for that
  rank's prompts): its own bf16 weights and a KV cache of 2 x layers x KV heads x head dim x 2 B
  per token, inside --gpu-memory-utilization of the GPU. It sleeps while the policy trains, so
  the two phases peak separately; the policy's weights and optimizer stay. With --backend hf
  the KV cache of `generate` holds --batch-size sequences at once.
- Time: generation at --gen-tokens-per-s per GPU, of the completions the policy samples (with
  --oracle-rollouts N, N of each unguided group of a problem with a solution are the oracle's,
  trained on but not generated; the data file's share of such problems sets their number); training FLOPs per token = 2 x params forward
  (plus 2 x layers x attention width x sequence length for attention), backward twice the
  forward for a full run and once for LoRA (a frozen weight needs no weight gradient), one more
  forward with --grad-checkpointing, one more LM-head projection (2 x hidden x vocabulary) with
  --logprob-chunk, and the extra forwards for old log-probs and KL, at --mfu x --peak-tflops per
  GPU.
- Upper bounds: every completion is counted at --max-new-tokens and every group as trained
  (a real run skips groups whose rewards are all equal).
- Without --gpus on a machine with no CUDA device the plan is for its CPU: the hf engine (what
  `--backend auto` takes there), memory without a GPU to fit in, and no time estimate (the
  throughput options describe GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pope_cli.shared.data import written_solution
from pope_cli.shared.errors import PopeError
from pope_cli.stages.train.config import DryRunConfig, TrainConfig
from pope_cli.stages.train.report import start_notes

GB = 1e9
LOGIT_BYTES = 14
ACTIVATION_BYTES = 34
CHARS_PER_TOKEN = 4


@dataclass
class Shape:
    """What the plan needs to know about the model."""

    name: str
    params: int
    """The base model's parameters."""
    trainable: int
    """The LoRA adapter's parameters, or all of them for a full run."""
    compute_params: int
    """Parameters a token's forward multiplies through (an untied input embedding is a lookup)."""
    layers: int
    hidden: int
    attention_width: int
    kv_bytes_per_token: int
    vocab: int


def load_model_config(model: str, model_config: str | None, trust_remote_code: bool = False):
    """The model's transformers config: from `model_config` (a config.json or a directory), else `--model`."""
    from transformers import AutoConfig

    from pope_cli.shared.models import adapter_base

    if model_config is not None and not Path(model_config).exists():
        raise PopeError(f"--model-config: {model_config}: no such file or directory", exit_code=2)
    source = model_config or adapter_base(model) or model
    option = "--model-config" if model_config else "--model"
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as error:  # hub, network and parse errors all mean the same to the user
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PopeError(f"{option}: could not read the model config of {source} ({first}); "
                        "offline, pass --model-config CONFIG.json", exit_code=2) from None


def _adapted(name: str, targets: str) -> bool:
    if targets == "all-linear":
        return not name.endswith("lm_head")
    return any(name == t or name.endswith("." + t) for t in (t.strip() for t in targets.split(",")))


def model_shape(config, lora: bool, lora_rank: int, lora_targets: str) -> Shape:
    """Parameter counts from the model built on the meta device, and the sizes the memory model needs."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    adapter = sum(lora_rank * (m.in_features + m.out_features) for name, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and _adapted(name, lora_targets))
    embedding = model.get_input_embeddings().weight
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embedding
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads, hidden = text.num_attention_heads, text.hidden_size
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return Shape(
        name=(config.architectures or [type(model).__name__])[0], params=params,
        trainable=adapter if lora else params, compute_params=params - (0 if tied else embedding.numel()),
        layers=text.num_hidden_layers, hidden=hidden, attention_width=heads * head_dim,
        kv_bytes_per_token=2 * text.num_hidden_layers * kv_heads * head_dim * 2, vocab=text.vocab_size,
    )


def prompt_lengths(cfg: TrainConfig, hard: list[dict], easy: list[dict]) -> tuple[dict, bool]:
    """Prompt tokens per kind, {kind: (mean, max)}, and whether a tokenizer counted them.

    A local model directory gives the exact prompts `pope train` encodes; otherwise the length is
    estimated from the text at CHARS_PER_TOKEN characters per token.
    """
    from pope_cli.stages.export.writer import messages
    from pope_cli.shared.runtime import PromptBuilder

    tokenizer = None
    if Path(cfg.model.model).is_dir():
        from pope_cli.shared.models import load_tokenizer

        tokenizer = load_tokenizer(cfg.model.model, cfg.model.trust_remote_code)
    builder = PromptBuilder(tokenizer, cfg.prompt, cfg.template)
    pools = {"guided": [r for r in hard if r.get("prefix")] if cfg.mode != "grpo" else [],
             "unguided": hard if cfg.mode != "guided" else [], "easy": easy if cfg.easy_fraction or cfg.curriculum else []}
    lengths = {}
    for kind, records in pools.items():
        if tokenizer is not None:
            counts = [len(builder.build(kind, r)) for r in records]
        else:
            counts = [sum(len(m["content"]) for m in messages(builder, kind, r)) // CHARS_PER_TOKEN for r in records]
        if counts:
            lengths[kind] = (sum(counts) / len(counts), max(counts))
    return lengths, tokenizer is not None


def data_plan(cfg: TrainConfig) -> dict:
    """The prompts of a step and of the run, from the data file and the same DataMix train draws from."""
    from pope_cli.stages.train.batch import KINDS, DataMix
    from pope_cli.stages.train.trainer import read_training_data

    hard, easy = read_training_data(cfg)
    mix = DataMix(hard, easy, cfg.mode, cfg.guided_ratio, cfg.easy_fraction, cfg.prompts_per_step, cfg.seed,
                  curriculum=cfg.curriculum)
    totals = {kind: sum(mix.counts(step)[kind] for step in range(cfg.steps)) for kind in KINDS}
    pools = {kind: len(stream.records) for kind, stream in mix.streams.items()}
    lengths, exact = prompt_lengths(cfg, hard, easy)
    # --oracle-rollouts: the last N samples of an unguided group whose problem has a solution are
    # the oracle's, trained on but not generated.
    with_solution = sum(1 for r in hard if written_solution(r)) / len(hard) if hard else 0.0
    oracle = totals["unguided"] / cfg.steps * with_solution * min(cfg.oracle_rollouts, cfg.group_size)
    return {"hard": len(hard), "with_prefix": sum(r.get("prefix") is not None for r in hard), "pools": pools, "per_step": {k: v / cfg.steps for k, v in totals.items() if v},
            "epochs": {k: totals[k] / pools[k] for k in pools}, "prompt_tokens": lengths, "exact_tokens": exact,
            "oracle_per_step": oracle}


def _strategy(cfg: TrainConfig, gpus: int) -> str:
    if gpus == 1:
        return "one process"
    import torch

    from pope_cli.stages.train.parallel import choose

    return choose(cfg.data_parallel, cfg.lora, torch.device("cuda"))


def policy_memory(cfg: TrainConfig, shape: Shape, shards: int) -> dict:
    """Bytes per GPU for the policy's weights, gradients, AdamW moments and KL reference."""
    if cfg.lora:
        base = 4 if cfg.model.dtype == "float32" else 2  # --dtype auto is bf16 on a GPU
        weights, trained = base * shape.params + 4 * shape.trainable, shape.trainable
    else:
        weights, trained = 4 * shape.params / shards, shape.trainable / shards
    reference = 4 * shape.params / shards if cfg.kl_coef and not cfg.lora else 0
    return {"weights": weights, "gradients": 4 * trained, "AdamW moments": 8 * trained, "KL reference": reference}


def pass_memory(cfg: TrainConfig, shape: Shape, seq_len: int, micro_batch: int) -> dict:
    """Bytes per GPU for one micro-batch's logits and activations at full length."""
    positions = micro_batch * (cfg.sampling.max_new_tokens + 1)
    if cfg.logprob_chunk:
        positions = min(positions, cfg.logprob_chunk)
    logits = positions * shape.vocab * LOGIT_BYTES
    per_layer = micro_batch * seq_len * shape.hidden
    if cfg.grad_checkpointing:
        activations = per_layer * (2 * shape.layers + ACTIVATION_BYTES)
    else:
        activations = per_layer * ACTIVATION_BYTES * shape.layers
    return {"logits": logits, "activations": activations}


def engine_memory(cfg: TrainConfig, shape: Shape, dry: DryRunConfig, samples_per_gpu: float, seq_len: int,
                  on_cpu: bool = False) -> dict:
    """The generation phase: vLLM's share of the GPU, or the hf engine's KV cache for one batch
    (on a CPU plan, where `--backend auto` takes it)."""
    per_sequence = seq_len * shape.kv_bytes_per_token
    if cfg.model.backend == "hf" or (cfg.model.backend == "auto" and on_cpu):
        return {"engine": "hf", "kv": cfg.model.batch_size * per_sequence, "total": cfg.model.batch_size * per_sequence}
    total = cfg.model.gpu_memory_utilization * dry.gpu_memory_gb * GB
    kv = total - 2 * shape.params
    concurrent = max(0, int(kv // per_sequence))
    waves = -(-int(samples_per_gpu) // concurrent) if concurrent else None
    return {"engine": "vllm", "total": total, "weights": 2 * shape.params, "kv": kv,
            "kv_tokens": max(0, int(kv // shape.kv_bytes_per_token)), "concurrent": concurrent, "waves": waves}


def step_time(cfg: TrainConfig, shape: Shape, dry: DryRunConfig, samples: int, generated: float,
              mean_prompt: float) -> dict:
    """Seconds per step for generation (of the `generated` samples; oracle rollouts are not) and for
    the training passes over all `samples`, from the stated throughputs."""
    seq = mean_prompt + cfg.sampling.max_new_tokens
    forward = 2 * shape.compute_params + 2 * shape.layers * shape.attention_width * seq  # FLOPs per token
    update = forward * (2 if cfg.lora else 3) + (forward if cfg.grad_checkpointing else 0)
    update += 2 * shape.hidden * shape.vocab if cfg.logprob_chunk else 0
    extra = (cfg.updates_per_step > 1 or cfg.mini_batch_size is not None) + (cfg.kl_coef > 0)
    flops = samples * seq * (cfg.updates_per_step * update + extra * forward)
    generate = generated * cfg.sampling.max_new_tokens / (dry.gen_tokens_per_s * dry.gpus)
    train = flops / (dry.gpus * dry.peak_tflops * 1e12 * dry.mfu)
    return {"generate": generate, "train": train, "flops": flops, "step": generate + train}


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan(cfg: TrainConfig, dry: DryRunConfig) -> dict:
    """Everything the dry run prints, as numbers (bytes, tokens, seconds); `gpus` 0 is a CPU plan."""
    gpus = dry.gpus if dry.gpus is not None else local_gpus()
    figures = plan_for(cfg, replace(dry, gpus=max(gpus, 1)))
    if not gpus:
        figures["engine"] = engine_memory(cfg, figures["shape"], dry, figures["samples"], figures["seq_len"], on_cpu=True)
    return {**figures, "gpus": gpus}


def plan_for(cfg: TrainConfig, dry: DryRunConfig) -> dict:
    data = data_plan(cfg)
    config = load_model_config(cfg.model.model, dry.model_config, cfg.model.trust_remote_code)
    shape = model_shape(config, cfg.lora, cfg.lora_rank, cfg.lora_targets)
    samples = cfg.prompts_per_step * cfg.group_size
    kinds = data["per_step"]
    mean_prompt = sum(data["prompt_tokens"][k][0] * n for k, n in kinds.items()) / cfg.prompts_per_step
    max_prompt = max(v[1] for v in data["prompt_tokens"].values())
    seq_len = max_prompt + cfg.sampling.max_new_tokens
    strategy = _strategy(cfg, dry.gpus)
    policy = policy_memory(cfg, shape, dry.gpus if strategy == "fsdp" else 1)
    # A micro-batch's activations grow linearly with its size, and so do its logits unless
    # they are chunked, when one chunk's logits are a fixed cost.
    one = pass_memory(cfg, shape, seq_len, 1)
    fixed = pass_memory(cfg, shape, seq_len, samples)["logits"] if cfg.logprob_chunk else 0
    per_sequence = one["activations"] + (0 if cfg.logprob_chunk else one["logits"])
    room = dry.gpu_memory_gb * GB - sum(policy.values()) - fixed
    largest = min(max(0, int(room // per_sequence)), -(-samples // dry.gpus))
    return {"data": data, "shape": shape, "config_source": dry.model_config or cfg.model.model, "samples": samples,
            "mean_prompt": mean_prompt, "max_prompt": max_prompt, "seq_len": seq_len, "strategy": strategy,
            "policy": policy, "pass": pass_memory(cfg, shape, seq_len, cfg.micro_batch_size),
            "largest_micro_batch": largest,
            "engine": engine_memory(cfg, shape, dry, (samples - data["oracle_per_step"]) / dry.gpus, seq_len),
            "time": step_time(cfg, shape, dry, samples, samples - data["oracle_per_step"], mean_prompt)}


def _gb(value: float) -> str:
    return f"{value / GB:6.1f}"


def _data_lines(cfg: TrainConfig, p: dict) -> list[str]:
    data = p["data"]
    per_step = ", ".join(f"{n:g} {kind}" for kind, n in data["per_step"].items())
    lengths = ", ".join(f"{kind} {mean:,.0f} / {top:,}" for kind, (mean, top) in data["prompt_tokens"].items())
    how = "counted with the tokenizer" if data["exact_tokens"] else f"estimated at {CHARS_PER_TOKEN} characters per token"
    oracle = data["oracle_per_step"]
    generated = round(p["samples"] - oracle) * cfg.sampling.max_new_tokens
    trained = p["samples"] * (p["mean_prompt"] + cfg.sampling.max_new_tokens)
    epochs = ", ".join(f"{kind} {n:.1f}" for kind, n in data["epochs"].items())
    return [
        f"data     {cfg.prefixes}: {data['hard']} hard problems, {data['with_prefix']} with a prefix; "
        f"mode {cfg.mode}" + (f", guided:unguided {cfg.guided_ratio:g}:1" if cfg.mode == "pope" else ""),
        f"step     {cfg.prompts_per_step} prompts ({per_step}) x {cfg.group_size} samples = {p['samples']:,} completions",
        f"         prompt tokens, mean / max: {lengths} ({how})",
        *([f"         of which {oracle:,.1f} a step are oracle solutions (--oracle-rollouts), not generated"]
          if oracle else []),
        f"         generated <= {generated:,} tokens; trained <= {trained:,.0f} tokens (prompt + completion)",
        f"run      {cfg.steps} steps; draws per problem over the run: {epochs}",
    ]


def _model_lines(cfg: TrainConfig, p: dict, dry: DryRunConfig) -> list[str]:
    shape = p["shape"]
    trained = (f"LoRA r{cfg.lora_rank} ({cfg.lora_targets}): {shape.trainable:,} trained "
               f"({100 * shape.trainable / shape.params:.2f}%)" if cfg.lora else f"full fine-tuning: all {shape.params:,} trained")
    if not p["gpus"]:
        where = "device   this machine's CPU: it has no CUDA device (--gpus N plans a run on N GPUs of --gpu-memory-gb)"
    else:
        where = (f"GPUs     {p['gpus']} x {dry.gpu_memory_gb:g} GB, {p['strategy']}"
                 + ("; each GPU samples its share of the prompts" if p["gpus"] > 1 else ""))
    return [f"model    {shape.name} from {p['config_source']}: {shape.params:,} parameters", f"         {trained}", where]


def _none_fits(cfg: TrainConfig) -> str:
    return "none, not even 1" + ("" if cfg.grad_checkpointing else " (--grad-checkpointing keeps far fewer activations)")


def _memory_lines(cfg: TrainConfig, p: dict, dry: DryRunConfig) -> list[str]:
    capacity = dry.gpu_memory_gb * GB if p["gpus"] else None  # a CPU plan has no GPU to fit in

    def verdict(total: float) -> str:
        return "" if capacity is None else "  fits" if total <= capacity else f"  OVER {dry.gpu_memory_gb:g} GB"

    where = " per GPU" if p["gpus"] else ""
    lines = [f"memory{where}, training phase (GB)"]
    rows = {**p["policy"], **{f"{k} (micro-batch {cfg.micro_batch_size})": v for k, v in p["pass"].items()}}
    lines += [f"  {name:<32}{_gb(value)}" for name, value in rows.items() if value]
    total = sum(rows.values())
    lines.append(f"  {'total':<32}{_gb(total)}{verdict(total)}")
    if capacity is not None:
        lines.append(f"  largest --micro-batch-size that fits: {p['largest_micro_batch'] or _none_fits(cfg)}")
    engine, kept = p["engine"], p["policy"]["weights"] + p["policy"]["AdamW moments"] + p["policy"]["KL reference"]
    lines += [f"memory{where}, generation phase (GB)", f"  {'policy kept (weights, moments)':<32}{_gb(kept)}"]
    if engine["engine"] == "hf":
        lines.append(f"  {f'hf KV cache (batch {cfg.model.batch_size})':<32}{_gb(engine['kv'])}")
    else:
        waves = (f"{engine['waves']} wave{'s' if engine['waves'] > 1 else ''}" if engine["waves"]
                 else "does not fit one sequence")
        lines += [f"  {f'vLLM at utilization {cfg.model.gpu_memory_utilization:g}':<32}{_gb(engine['total'])}",
                  f"    weights {engine['weights'] / GB:.1f}, KV cache {engine['kv'] / GB:.1f} = {engine['kv_tokens']:,} tokens "
                  f"= {engine['concurrent']} sequences of {p['seq_len']:,} at once ({waves} for this GPU's samples)"]
    total = kept + engine["total"]
    lines.append(f"  {'total':<32}{_gb(total)}{verdict(total)}")
    return lines


def _time_lines(cfg: TrainConfig, p: dict, dry: DryRunConfig) -> list[str]:
    if not p["gpus"]:
        return ["time per step: not estimated for a CPU (--gen-tokens-per-s, --mfu and --peak-tflops describe GPUs)"]
    t = p["time"]
    return [
        "time per step (estimate, upper bound)",
        f"  generation {t['generate']:8,.0f} s   at {dry.gen_tokens_per_s:,.0f} generated tokens/s per GPU",
        f"  training   {t['train']:8,.0f} s   {t['flops'] / 1e15:,.0f} PFLOP at {dry.mfu:.0%} of {dry.peak_tflops:g} TFLOP/s per GPU",
        f"  step       {t['step']:8,.0f} s   {cfg.steps} steps: {t['step'] * cfg.steps / 3600:,.1f} h",
    ]


def render(cfg: TrainConfig, dry: DryRunConfig, p: dict) -> str:
    """The plan as the text `pope train --dry-run` prints."""
    lines = ["pope train --dry-run: nothing loaded but the data file and the model config", ""]
    lines += _data_lines(cfg, p) + _model_lines(cfg, p, dry) + [""] + _memory_lines(cfg, p, dry) + [""]
    lines += _time_lines(cfg, p, dry)
    notes = start_notes(cfg)
    return "\n".join(lines + ([""] + notes if notes else []))


def dry_run(cfg: TrainConfig, dry: DryRunConfig) -> str:
    return render(cfg, dry, plan(cfg, dry))
