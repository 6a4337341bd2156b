"""`pope export`: options → ExportConfig (around the TrainConfig being exported) → run_export."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pope_cli.commands.common import (MaxNewTokensOpt, OverwriteOpt, RewardOpt, RewardTimeoutOpt, RewardWorkersOpt,
                                      SeedOpt, SystemPromptOpt, TemperatureOpt, TopPOpt, UnguidedTemplateOpt,
                                      print_table, user_errors)
from pope_cli.commands.rl_options import (MIX_PANEL, AdvNormOpt, ClipHighOpt, ClipLowOpt, EasyFractionOpt, EasyOpt,
                                          GroupSizeOpt, GuidedRatioOpt, GuidedTemplateOpt, KlCoefOpt, LoraAlphaOpt,
                                          LoraOpt, LoraRankOpt, LossAggOpt, LrOpt, ModeOpt, PromptsPerStepOpt,
                                          WarmupStepsOpt)


def command(
    prefixes: Annotated[str, typer.Argument(metavar="PREFIXES", help="prefixes.jsonl from `pope make-prefixes`.")],
    out: Annotated[str, typer.Option(help="Directory to write: train/val data, pope_reward.py, run_verl.sh or trl_config.json, export.json.")],
    fmt: Annotated[str, typer.Option("--format", help="verl (Parquet in verl's RL schema + launch script) or trl (GRPOTrainer dataset as JSONL and Parquet).")] = "verl",
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Starting model written into run_verl.sh (else it reads $MODEL).", show_default=False)] = None,
    val: Annotated[Optional[str], typer.Option(help="Problems or prefixes file to export as val data (a prefixes file adds guided copies).", show_default=False)] = None,
    gpus: Annotated[int, typer.Option(help="GPUs per node in run_verl.sh.")] = 1,
    mode: ModeOpt = "pope",
    guided_ratio: GuidedRatioOpt = 1.0,
    template: GuidedTemplateOpt = None,
    easy: EasyOpt = None,
    easy_fraction: EasyFractionOpt = 0.0,
    steps: Annotated[int, typer.Option(help="Training steps: the data holds steps x prompts-per-step rows, in train's order.", rich_help_panel=MIX_PANEL)] = 200,
    prompts_per_step: PromptsPerStepOpt = 32,
    group_size: GroupSizeOpt = 8,
    adv_norm: AdvNormOpt = "std",
    clip_low: ClipLowOpt = 0.2,
    clip_high: ClipHighOpt = 0.2,
    loss_agg: LossAggOpt = "token-mean",
    kl_coef: KlCoefOpt = 0.0,
    lora: LoraOpt = True,
    lora_rank: LoraRankOpt = 64,
    lora_alpha: LoraAlphaOpt = 128,
    lr: LrOpt = None,
    warmup_steps: WarmupStepsOpt = 10,
    max_new_tokens: MaxNewTokensOpt = 4096,
    temperature: TemperatureOpt = 0.8,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = 0,
    reward: RewardOpt = "math",
    reward_timeout: RewardTimeoutOpt = 5.0,
    reward_workers: RewardWorkersOpt = 2,
    system_prompt: SystemPromptOpt = None,
    unguided_template: UnguidedTemplateOpt = None,
    overwrite: OverwriteOpt = False,
):
    """Write the data mix pope train would use, with its reward and GRPO settings, for verl or TRL."""
    with user_errors():
        from pope_cli.config import (ExportConfig, ModelOptions, PromptOptions, RewardOptions, SamplingOptions,
                                     TrainConfig)
        from pope_cli.export import run_export
        from pope_cli.prompts import load_template, load_unguided_template
        from pope_cli.reward import validate_reward_spec

        validate_reward_spec(reward)
        train = TrainConfig(
            prefixes=prefixes, out=out, model=ModelOptions(model or "", gpu_memory_utilization=0.5),
            prompt=PromptOptions(True, system_prompt, unguided_template),
            sampling=SamplingOptions(temperature, top_p, max_new_tokens),
            reward=RewardOptions(reward, reward_timeout, reward_workers),
            mode=mode, guided_ratio=guided_ratio, template=template, easy=easy, easy_fraction=easy_fraction,
            steps=steps, prompts_per_step=prompts_per_step, group_size=group_size, adv_norm=adv_norm,
            clip_low=clip_low, clip_high=clip_high, loss_agg=loss_agg, kl_coef=kl_coef, lora=lora,
            lora_rank=lora_rank, lora_alpha=lora_alpha, lr=lr, warmup_steps=warmup_steps, seed=seed,
        )
        cfg = ExportConfig(train=train, out=out, format=fmt, val=val, gpus=gpus, overwrite=overwrite)
        load_unguided_template(unguided_template)
        if template:
            load_template(template)
        summary = run_export(cfg)
        rows = [(f"{split} rows ({kind})", count) for split in ("train", "val")
                for kind, count in summary["counts"][split].items()]
        print_table(f"export ({fmt})", rows + [("written", f"{summary['out']}: {', '.join(summary['files'])}")])
