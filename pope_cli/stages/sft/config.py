"""`pope sft`'s options: `SftConfig`, one field per command-line option."""

from __future__ import annotations

from dataclasses import dataclass

from pope_cli.shared.config import (LOCAL_BACKEND_HELP, LOCAL_BACKENDS, PROMPT_PANEL, FieldMap, ModelOptions,
                                    PromptOptions, RewardOptions, SamplingOptions, bad_option, overwrite_option,
                                    require_weights, seed_option)
from pope_cli.shared.options import check_choices, group, option
from pope_cli.stages.train.config import OPTIM_PANEL, PolicyOptions

DATA_PANEL = "SFT data"
OUTPUT_PANEL = "Checkpoints"

SOURCES = ("oracle", "guided-samples")


@dataclass
class SftConfig(PolicyOptions):
    """`pope sft`: supervised fine-tuning on oracle solutions or on correct guided samples."""

    data: str = option(help="Problems with oracle solutions (--source oracle) or a prefixes.jsonl from `pope "
                            "make-prefixes` (--source guided-samples; oracle also reads one).", argument=True,
                       metavar="INPUT")
    out: str = option(help="Run directory: config.json, sft_data.jsonl, metrics.jsonl, checkpoints/, final/. Rerunning "
                           "the same command resumes it.", metavar="DIR")
    model: ModelOptions = group(help={"model": "Starting model: hub id, local model dir or PEFT adapter dir.",
                                      "backend": LOCAL_BACKEND_HELP}, choices={"backend": LOCAL_BACKENDS})
    fields: FieldMap = group()
    prompt: PromptOptions = group()
    sampling: SamplingOptions = group()
    reward: RewardOptions = group()
    source: str = option("oracle", "oracle: train on each problem's full oracle solution; guided-samples: sample the "
                                   "model on the guided prompts (the prefix file's prefix), keep the completions the "
                                   "reward scores correct, train on prefix + completion.", panel=DATA_PANEL,
                         choices=SOURCES)
    template: str | None = option(None, "guided-samples: guided template (pope, no-restate or a file) overriding the "
                                        "one each prefix record names.", panel=PROMPT_PANEL, metavar="NAME|FILE")
    n: int = option(8, "guided-samples: samples per problem.", panel=DATA_PANEL)
    steps: int | None = option(None, "Optimizer steps (default: --epochs passes over the data).", panel=DATA_PANEL,
                               show_default=False)
    epochs: float = option(1.0, "Passes over the data when --steps is not given.", panel=DATA_PANEL)
    examples_per_step: int = option(16, "Sequences per optimizer step.", panel=OPTIM_PANEL)
    lr: float | None = option(None, "AdamW learning rate (default 1e-4 with LoRA, 1e-5 full).", panel=OPTIM_PANEL,
                              show_default=False)
    warmup_steps: int = option(0, "Linear learning-rate warmup steps, then constant.", panel=OPTIM_PANEL)
    save_every: int = option(50, "Checkpoint every N steps (and at the last).", panel=OUTPUT_PANEL)
    keep: int = option(2, "Checkpoints to keep (the newest).", panel=OUTPUT_PANEL)
    seed: int = seed_option()
    overwrite: bool = overwrite_option()

    # The policy builder is shared with `pope train`, whose KL reference SFT never needs.
    kl_coef = 0.0

    def __post_init__(self):
        check_choices(self)
        require_weights(self.model)
        if self.lr is None:
            self.lr = 1e-4 if self.lora else 1e-5
        for flag, ok, message in self._policy_checks() + self._checks():
            if not ok:
                raise bad_option(flag, message)

    def _checks(self) -> list[tuple[str, bool, str]]:
        return [
            ("--n", self.n >= 1, "must be at least 1"),
            ("--steps", self.steps is None or self.steps >= 1, "must be at least 1"),
            ("--epochs", self.epochs > 0, "must be > 0"),
            ("--examples-per-step", self.examples_per_step >= 1, "must be at least 1"),
            ("--lr", self.lr > 0, "must be > 0"),
            ("--warmup-steps", self.warmup_steps >= 0, "must be >= 0"),
            ("--save-every", self.save_every >= 1, "must be at least 1"),
            ("--keep", self.keep >= 1, "must be at least 1"),
        ]
