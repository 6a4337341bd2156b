"""Options `pope train` shares with the commands that mirror its settings (`pope export`).

One declaration each, so a flag means the same and reads the same wherever it appears.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pope_cli.commands.common import PROMPT_PANEL

MIX_PANEL = "Data mix"
OBJECTIVE_PANEL = "Objective"
OPTIM_PANEL = "Policy and optimizer"

ModeOpt = Annotated[str, typer.Option(help="pope: guided + unguided copies of each hard problem; grpo: unguided only (plain RL baseline); guided: guided only.", rich_help_panel=MIX_PANEL)]
GuidedRatioOpt = Annotated[float, typer.Option(help="pope mode: guided prompts per unguided prompt (1.0 = the paper's 1:1).", rich_help_panel=MIX_PANEL)]
GuidedTemplateOpt = Annotated[Optional[str], typer.Option(help="Guided template (pope, no-restate or a file) overriding the one each prefix record names.", rich_help_panel=PROMPT_PANEL)]
EasyOpt = Annotated[Optional[str], typer.Option(help="Problem file of easy problems to mix in, unguided (the paper's interference experiment).", rich_help_panel=MIX_PANEL)]
EasyFractionOpt = Annotated[float, typer.Option(help="Fraction of each step's prompts taken from --easy.", rich_help_panel=MIX_PANEL)]
PromptsPerStepOpt = Annotated[int, typer.Option(help="Prompts per step, drawn in seeded shuffled epochs.", rich_help_panel=MIX_PANEL)]
GroupSizeOpt = Annotated[int, typer.Option(help="Completions sampled per prompt (the GRPO group).", rich_help_panel=MIX_PANEL)]
AdvNormOpt = Annotated[str, typer.Option(help="Advantage = reward - group mean, divided by the group std (std, GRPO) or not (none, Dr. GRPO).", rich_help_panel=OBJECTIVE_PANEL)]
ClipLowOpt = Annotated[float, typer.Option(help="Lower clip of the importance ratio: 1 - clip_low.", rich_help_panel=OBJECTIVE_PANEL)]
ClipHighOpt = Annotated[float, typer.Option(help="Upper clip: 1 + clip_high (0.28 is DAPO's clip-higher, a failed baseline in the paper).", rich_help_panel=OBJECTIVE_PANEL)]
LossAggOpt = Annotated[str, typer.Option(help="token-mean (every token weighs the same), seq-mean (mean per sequence, then over sequences) or dr-grpo (sum / (sequences x max_new_tokens)).", rich_help_panel=OBJECTIVE_PANEL)]
KlCoefOpt = Annotated[float, typer.Option(help="Weight of a k3 KL penalty to the starting model (LoRA: the base with the adapter off).", rich_help_panel=OBJECTIVE_PANEL)]
LoraOpt = Annotated[bool, typer.Option("--lora/--full", help="Train a LoRA adapter (peft) or every weight.", rich_help_panel=OPTIM_PANEL)]
LoraRankOpt = Annotated[int, typer.Option(help="LoRA rank.", rich_help_panel=OPTIM_PANEL)]
LoraAlphaOpt = Annotated[int, typer.Option(help="LoRA alpha (scale alpha/rank).", rich_help_panel=OPTIM_PANEL)]
LrOpt = Annotated[Optional[float], typer.Option(help="AdamW learning rate (default 1e-5 with LoRA, 1e-6 full: LoRA needs a far larger rate).", rich_help_panel=OPTIM_PANEL, show_default=False)]
WarmupStepsOpt = Annotated[int, typer.Option(help="Linear learning-rate warmup steps, then constant.", rich_help_panel=OPTIM_PANEL)]
