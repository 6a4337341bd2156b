"""`pope train`: options (and an optional --config file under them) → TrainConfig → run_train."""

from __future__ import annotations

import json
import typing
from pathlib import Path

from typing import Annotated, Optional

import typer

from pope_cli.commands.common import (MODEL_PANEL, BackendOpt, BatchOpt, ChatTemplateOpt, DeviceOpt, DtypeOpt,
                                      GpuMemOpt, MaxModelLenOpt, MaxNewTokensOpt, OverwriteOpt, RewardOpt,
                                      RewardTimeoutOpt, RewardWorkersOpt, SeedOpt, SystemPromptOpt, TemperatureOpt,
                                      TopPOpt, TrustOpt, UnguidedTemplateOpt, print_table, user_errors)
from pope_cli.commands.rl_options import (MIX_PANEL, OBJECTIVE_PANEL, OPTIM_PANEL, AdvNormOpt, ClipHighOpt,
                                          ClipLowOpt, EasyFractionOpt, EasyOpt, GroupSizeOpt, GuidedRatioOpt,
                                          GuidedTemplateOpt, KlCoefOpt, LoraAlphaOpt, LoraOpt, LoraRankOpt,
                                          LossAggOpt, LrOpt, ModeOpt, PromptsPerStepOpt, WarmupStepsOpt)

OUTPUT = "Checkpoints and evaluation"
DRY = "Dry run"


def command(
    ctx: typer.Context,
    prefixes: Annotated[Optional[str], typer.Argument(metavar="PREFIXES", help="prefixes.jsonl from `pope make-prefixes`: the hard problems and their oracle prefixes.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Starting policy: hub id, local model dir or PEFT adapter dir.", rich_help_panel=MODEL_PANEL, show_default=False)] = None,
    out: Annotated[Optional[str], typer.Option(help="Run directory: config.json, metrics.jsonl, checkpoints/, final/. Rerunning the same command resumes it.", show_default=False)] = None,
    config: Annotated[Optional[str], typer.Option(help="TOML or JSON file of options (keys are option names, e.g. lora-rank = 32); command-line options override it.")] = None,
    mode: ModeOpt = "pope",
    guided_ratio: GuidedRatioOpt = 1.0,
    template: GuidedTemplateOpt = None,
    easy: EasyOpt = None,
    easy_fraction: EasyFractionOpt = 0.0,
    steps: Annotated[int, typer.Option(help="Training steps (a rerun with more steps extends a finished run).", rich_help_panel=MIX_PANEL)] = 200,
    prompts_per_step: PromptsPerStepOpt = 32,
    group_size: GroupSizeOpt = 8,
    adv_norm: AdvNormOpt = "std",
    clip_low: ClipLowOpt = 0.2,
    clip_high: ClipHighOpt = 0.2,
    loss_agg: LossAggOpt = "token-mean",
    kl_coef: KlCoefOpt = 0.0,
    entropy_coef: Annotated[float, typer.Option(help="Weight of an entropy bonus (a failed baseline in the paper).", rich_help_panel=OBJECTIVE_PANEL)] = 0.0,
    mask_truncated: Annotated[bool, typer.Option("--mask-truncated", help="Leave completions that hit --max-new-tokens out of the loss.", rich_help_panel=OBJECTIVE_PANEL)] = False,
    updates_per_step: Annotated[int, typer.Option(help="Passes over each step's batch; 1 = fully on-policy (ratio exactly 1, no old-log-prob pass).", rich_help_panel=OBJECTIVE_PANEL)] = 1,
    mini_batch_size: Annotated[Optional[int], typer.Option(help="Sequences per optimizer step (default: the whole batch).", rich_help_panel=OBJECTIVE_PANEL)] = None,
    micro_batch_size: Annotated[int, typer.Option(help="Sequences per forward/backward; memory only, the gradient is the same.", rich_help_panel=OPTIM_PANEL)] = 8,
    lora: LoraOpt = True,
    lora_rank: LoraRankOpt = 64,
    lora_alpha: LoraAlphaOpt = 128,
    lora_targets: Annotated[str, typer.Option(help="all-linear, or comma-separated module names (q_proj,v_proj).", rich_help_panel=OPTIM_PANEL)] = "all-linear",
    lr: LrOpt = None,
    warmup_steps: WarmupStepsOpt = 10,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.", rich_help_panel=OPTIM_PANEL)] = 0.0,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm.", rich_help_panel=OPTIM_PANEL)] = 1.0,
    grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing", help="Recompute activations in the backward pass (less memory, slower).", rich_help_panel=OPTIM_PANEL)] = False,
    data_parallel: Annotated[str, typer.Option(help="Under torchrun: ddp (a whole model per rank), fsdp (FSDP2 shards, --full only) or auto (fsdp for --full on GPU, else ddp).", rich_help_panel=OPTIM_PANEL)] = "auto",
    max_nan_steps: Annotated[int, typer.Option(help="Stop after this many steps in a row whose update was skipped for a non-finite loss.", rich_help_panel=OPTIM_PANEL)] = 3,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps (and at the last).", rich_help_panel=OUTPUT)] = 50,
    keep: Annotated[int, typer.Option(help="Checkpoints to keep (the newest).", rich_help_panel=OUTPUT)] = 2,
    merge: Annotated[bool, typer.Option("--merge", help="Also write merged full weights to RUN/final_merged for serving (LoRA runs).", rich_help_panel=OUTPUT)] = False,
    eval_data: Annotated[Optional[str], typer.Option(help="Problems or prefixes file to evaluate on during training (a prefixes file adds guided accuracy).", rich_help_panel=OUTPUT)] = None,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps (and at the last); needs --eval-data.", rich_help_panel=OUTPUT)] = 0,
    eval_n: Annotated[int, typer.Option(help="Samples per evaluation problem.", rich_help_panel=OUTPUT)] = 8,
    eval_k: Annotated[Optional[str], typer.Option(help="Comma-separated k for pass@k (default: 1 and eval-n).", rich_help_panel=OUTPUT)] = None,
    max_new_tokens: MaxNewTokensOpt = 4096,
    temperature: TemperatureOpt = 0.8,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = 0,
    reward: RewardOpt = "math",
    reward_timeout: RewardTimeoutOpt = 5.0,
    reward_workers: RewardWorkersOpt = 2,
    backend: BackendOpt = "auto",
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    gpu_memory_utilization: GpuMemOpt = 0.5,
    max_model_len: MaxModelLenOpt = None,
    trust_remote_code: TrustOpt = False,
    chat_template: ChatTemplateOpt = True,
    system_prompt: SystemPromptOpt = None,
    unguided_template: UnguidedTemplateOpt = None,
    overwrite: OverwriteOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Load no weights: check the data and the model config, print prompts, tokens, memory per GPU and time per step, and exit.", rich_help_panel=DRY)] = False,
    gpus: Annotated[int, typer.Option(help="Dry run: GPUs to plan for (torchrun ranks).", rich_help_panel=DRY)] = 1,
    gpu_memory_gb: Annotated[float, typer.Option(help="Dry run: memory per GPU in GB (H100: 80).", rich_help_panel=DRY)] = 80.0,
    gen_tokens_per_s: Annotated[float, typer.Option(help="Dry run: generated tokens/s per GPU (an assumption for vLLM on a ~4B model; use the tokens/s a real run logs).", rich_help_panel=DRY)] = 5000.0,
    mfu: Annotated[float, typer.Option(help="Dry run: fraction of peak FLOP/s the training passes reach.", rich_help_panel=DRY)] = 0.3,
    peak_tflops: Annotated[float, typer.Option(help="Dry run: peak dense bf16 TFLOP/s per GPU (H100 SXM: 989).", rich_help_panel=DRY)] = 989.0,
    model_config: Annotated[Optional[str], typer.Option(help="Dry run: the model's config.json (or a directory), read instead of --model's config (e.g. offline).", rich_help_panel=DRY)] = None,
):
    """RL on hard problems with guided (oracle-prefix) and unguided copies: on-policy GRPO, LoRA or full."""
    options = {name: value for name, value in locals().items() if name != "ctx"}
    with user_errors():
        if config is not None:
            options = merge_config_file(ctx, options, config)
        cfg = train_config(options)
        if dry_run:
            from pope_cli.config import DryRunConfig
            from pope_cli.dryrun import dry_run as plan_text

            typer.echo(plan_text(cfg, DryRunConfig(gpus, gpu_memory_gb, gen_tokens_per_s, mfu, peak_tflops, model_config)))
            return
        from pope_cli.distributed import main_process
        from pope_cli.rl.trainer import run_train

        summary = run_train(cfg)
        if not main_process():
            return  # under torchrun, rank 0 reports for all
        print_table("train", [
            ("steps", f"{summary['steps']} ({summary['trained_this_run']} this run, resumed after {summary['resumed_from']})"),
            ("hard problems solved unguided (ever)", summary["solved_unguided_ever"]),
            ("last reward guided / unguided / easy", " / ".join("-" if v is None else f"{v:.3f}" for v in summary["last_reward"].values())),
            ("time (s)", summary["seconds"]),
            ("written", f"{cfg.out}/metrics.jsonl, {cfg.out}/final"),
        ])


# Options that are where the config comes from, not part of it.
_NOT_IN_FILE = ("config", "dry_run")


def _read_config_file(path: str) -> dict:
    from pope_cli.errors import PopeError

    file = Path(path)
    if not file.is_file():
        raise PopeError(f"--config: {path}: no such file", exit_code=2)
    try:
        if file.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(file.read_text(encoding="utf-8"))
        else:
            data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:  # tomllib and json errors are ValueErrors
        raise PopeError(f"--config: {path}: not valid {'TOML' if file.suffix.lower() == '.toml' else 'JSON'} ({error})", exit_code=2) from None
    if not isinstance(data, dict):
        raise PopeError(f"--config: {path}: expected a table/object of options", exit_code=2)
    return data


def _convert(key: str, value, hint):
    """A config-file value as the command's parameter type (int, float, str, bool, or Optional)."""
    from pope_cli.errors import PopeError

    types = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    wanted = types[0]
    if value is None and len(typing.get_args(hint)) > 1:
        return None
    if key == "eval_k" and isinstance(value, list):
        value = ",".join(str(k) for k in value)
    if wanted is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, wanted) and not (wanted is int and isinstance(value, bool)):
        return value
    raise PopeError(f"--config: option '{key.replace('_', '-')}': expected {wanted.__name__}, got {value!r}", exit_code=2)


def merge_config_file(ctx: typer.Context, options: dict, path: str) -> dict:
    """Options from the file where the command line left the default, type-checked."""
    from pope_cli.errors import PopeError

    hints = {name: typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
             for name, hint in typing.get_type_hints(command, include_extras=True).items()}
    merged = dict(options)
    for raw_key, value in _read_config_file(path).items():
        key = raw_key.replace("-", "_")
        if key == "full":  # the file may say `full = true` for --full
            key, value = "lora", not value if isinstance(value, bool) else value
        if key not in options or key in _NOT_IN_FILE:
            raise PopeError(f"--config: {path}: unknown option '{raw_key}'", exit_code=2)
        source = ctx.get_parameter_source(key)
        if source is not None and source.name != "DEFAULT":
            continue  # given on the command line (or by environment): it wins
        merged[key] = _convert(key, value, hints[key])
    return merged


def _int_list(text: str | None) -> list[int] | None:
    from pope_cli.errors import PopeError

    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PopeError(f"--eval-k: expected comma-separated integers, got {text!r}", exit_code=2) from None


def train_config(o: dict):
    """The TrainConfig for a dict of option values (command line merged over a config file)."""
    from pope_cli.config import ModelOptions, PromptOptions, RewardOptions, SamplingOptions, TrainConfig, bad_option
    from pope_cli.models import check_model_ref
    from pope_cli.reward import validate_reward_spec

    for name in ("prefixes", "model", "out"):
        if o[name] is None:
            flag = "PREFIXES" if name == "prefixes" else f"--{name}"
            raise bad_option(flag, "missing (give it on the command line or in --config)")
    validate_reward_spec(o["reward"])
    check_model_ref(o["model"])
    return TrainConfig(
        prefixes=o["prefixes"], out=o["out"],
        model=ModelOptions(o["model"], o["backend"], o["dtype"], o["device"], o["trust_remote_code"], o["batch_size"],
                           o["gpu_memory_utilization"], o["max_model_len"]),
        prompt=PromptOptions(o["chat_template"], o["system_prompt"], o["unguided_template"]),
        sampling=SamplingOptions(o["temperature"], o["top_p"], o["max_new_tokens"]),
        reward=RewardOptions(o["reward"], o["reward_timeout"], o["reward_workers"]),
        mode=o["mode"], guided_ratio=o["guided_ratio"], template=o["template"], easy=o["easy"],
        easy_fraction=o["easy_fraction"], steps=o["steps"], prompts_per_step=o["prompts_per_step"],
        group_size=o["group_size"], adv_norm=o["adv_norm"], clip_low=o["clip_low"], clip_high=o["clip_high"],
        loss_agg=o["loss_agg"], kl_coef=o["kl_coef"], entropy_coef=o["entropy_coef"], mask_truncated=o["mask_truncated"],
        updates_per_step=o["updates_per_step"], mini_batch_size=o["mini_batch_size"],
        micro_batch_size=o["micro_batch_size"], lora=o["lora"], lora_rank=o["lora_rank"], lora_alpha=o["lora_alpha"],
        lora_targets=o["lora_targets"], lr=o["lr"], warmup_steps=o["warmup_steps"], weight_decay=o["weight_decay"],
        max_grad_norm=o["max_grad_norm"], grad_checkpointing=o["grad_checkpointing"],
        data_parallel=o["data_parallel"], save_every=o["save_every"],
        keep=o["keep"], merge=o["merge"], eval_data=o["eval_data"], eval_every=o["eval_every"], eval_n=o["eval_n"],
        eval_k=_int_list(o["eval_k"]), max_nan_steps=o["max_nan_steps"], seed=o["seed"], overwrite=o["overwrite"],
    )
