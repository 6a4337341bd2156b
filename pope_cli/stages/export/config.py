"""`pope export`'s options: the training run being exported, and where and how to write it."""

from __future__ import annotations

from dataclasses import dataclass

from pope_cli.shared.config import bad_option, overwrite_option
from pope_cli.shared.options import check_choices, group, option
from pope_cli.stages.train.config import TrainConfig

# The parts of `pope train`'s options that the exported data, reward and settings depend on.
EXPORTED_TRAIN_OPTIONS = (
    "prefixes", "out", "model.model", "prompt.system_prompt", "prompt.unguided_template", "sampling", "reward",
    "mode", "guided_ratio", "template", "easy", "easy_fraction", "curriculum", "steps", "prompts_per_step", "group_size",
    "adv_norm", "clip_low", "clip_high", "loss_agg", "kl_coef", "lora", "lora_rank", "lora_alpha", "lr",
    "warmup_steps", "seed",
)


@dataclass
class ExportConfig:
    """`pope export`: the prompts `pope train` would train on, with its reward and settings, for verl or TRL."""

    out: str = option(help="Directory to write: train/val data, pope_reward.py, run_verl.sh or trl_config.json, "
                           "export.json.", metavar="DIR")
    train: TrainConfig = group(
        show=EXPORTED_TRAIN_OPTIONS,
        defaults={"model.model": None},
        fixed={"model.gpu_memory_utilization": 0.5},
        help={"prefixes": "prefixes.jsonl from `pope make-prefixes`.",
              "model.model": "Starting model written into run_verl.sh (else it reads $MODEL).",
              "steps": "Training steps: the data holds steps x prompts-per-step rows, in train's order."})
    """The run being exported: its data mix, prompts, reward and GRPO settings (its `out` is this `out`)."""
    format: str = option("verl", "verl (Parquet in verl's RL schema + launch script) or trl (GRPOTrainer dataset as JSONL "
                                 "and Parquet).", choices=("verl", "trl"))
    val: str | None = option(None, "Problems or prefixes file to export as val data (a prefixes file adds guided "
                                   "copies).", show_default=False, metavar="FILE")
    gpus: int = option(1, "GPUs per node in run_verl.sh; for trl, the processes TRL runs on (accelerate launch "
                          "--num_processes), over which trl_config.json's batch settings divide pope's step.")
    overwrite: bool = overwrite_option()

    def __post_init__(self):
        check_choices(self)
        if self.train.model.model is None:
            self.train.model.model = ""
        if self.gpus < 1:
            raise bad_option("--gpus", "must be at least 1")
