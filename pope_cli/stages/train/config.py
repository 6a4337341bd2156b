"""`pope train`'s options: `TrainConfig` for the run, `DryRunConfig` for `--dry-run`'s plan.

Each field is one command-line option, declared here once (`pope_cli/shared/options.py`); the
algorithm the fields steer is stated in `trainer.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pope_cli.shared.config import (LOCAL_BACKEND_HELP, LOCAL_BACKENDS, PROMPT_PANEL, TRACKER_PANEL, ModelOptions,
                                    PromptOptions, RewardOptions, SamplingOptions, TrackerOptions, bad_option, int_list,
                                    overwrite_option, require_weights, seed_option)
from pope_cli.shared.options import check_choices, given, group, option
from pope_cli.stages.train.guidance import GUIDANCE_MODES

ORACLE_IS = ("plain", "luffy")

MIX_PANEL = "Data mix"
OBJECTIVE_PANEL = "Objective"
OPTIM_PANEL = "Policy and optimizer"
OUTPUT_PANEL = "Checkpoints and evaluation"
DRY_PANEL = "Dry run"

LORA_DEFAULT_LR = 1e-5
"""LoRA trains few weights from a zero start: it needs a rate ~10x full fine-tuning's (at 1e-6,
or the 5e-7 of trl#2872, a LoRA run barely moves)."""
FULL_DEFAULT_LR = 1e-6

ROLLOUT_IS_MODES = ("token-truncate", "sequence-truncate", "sequence-mask", "token-mask", "none")


@dataclass(kw_only=True)
class PolicyOptions:
    """The options `pope train` and `pope sft` share: the policy (LoRA or full), the optimizer
    settings whose defaults agree, the trackers and the logged completions. Keyword-only, so a
    stage's config derives from it and keeps its own positional fields."""

    micro_batch_size: int = option(8, "Sequences per forward/backward; memory only, the gradient is the same.",
                                   panel=OPTIM_PANEL)
    lora: bool = option(True, "Train a LoRA adapter (peft) or every weight.", flags=("--lora/--full",), panel=OPTIM_PANEL)
    lora_rank: int = option(64, "LoRA rank.", panel=OPTIM_PANEL)
    lora_alpha: int = option(128, "LoRA alpha (scale alpha/rank).", panel=OPTIM_PANEL)
    lora_targets: str = option("all-linear", "all-linear, or comma-separated module names (q_proj,v_proj).",
                               panel=OPTIM_PANEL)
    weight_decay: float = option(0.0, "AdamW weight decay.", panel=OPTIM_PANEL)
    max_grad_norm: float = option(1.0, "Gradient clipping norm.", panel=OPTIM_PANEL)
    grad_checkpointing: bool = option(False, "Recompute activations in the backward pass (less memory, slower).",
                                      flags=("--grad-checkpointing",), panel=OPTIM_PANEL)
    trackers: TrackerOptions = group(default_factory=TrackerOptions)
    log_completions: int = option(0, "Completions written to RUN/completions.jsonl (and the trackers) every "
                                     "--log-every steps; 0 = none. train: the step's own samples, spread over the prompt "
                                     "kinds; sft: the policy's answers to the first N training prompts.",
                                  panel=TRACKER_PANEL)
    log_every: int = option(10, "Steps between logged completions.", panel=TRACKER_PANEL)

    def _policy_checks(self) -> list[tuple[str, bool, str]]:
        full = "only for --lora runs (--full trains every weight)"
        return [
            ("--lora-rank", self.lora or not given(self, "lora_rank"), full),
            ("--lora-alpha", self.lora or not given(self, "lora_alpha"), full),
            ("--lora-targets", self.lora or not given(self, "lora_targets"), full),
            ("--micro-batch-size", self.micro_batch_size >= 1, "must be at least 1"),
            ("--lora-rank", self.lora_rank >= 1, "must be at least 1"),
            ("--lora-alpha", self.lora_alpha > 0, "must be > 0"),
            ("--max-grad-norm", self.max_grad_norm > 0, "must be > 0"),
            ("--log-completions", self.log_completions >= 0, "must be >= 0"),
            ("--log-every", self.log_every >= 1, "must be at least 1"),
        ]


@dataclass
class TrainConfig(PolicyOptions):
    """`pope train`: fully on-policy GRPO on guided + unguided copies of hard problems."""

    prefixes: str = option(help="prefixes.jsonl from `pope make-prefixes`: the hard problems and their oracle prefixes.",
                           argument=True, metavar="PREFIXES")
    out: str = option(help="Run directory: config.json, metrics.jsonl, checkpoints/, final/. Rerunning the same command "
                           "resumes it.", metavar="DIR")
    model: ModelOptions = group(defaults={"gpu_memory_utilization": 0.5}, choices={"backend": LOCAL_BACKENDS},
                                help={"model": "Starting policy: hub id, local model dir or PEFT adapter dir.",
                                      "backend": LOCAL_BACKEND_HELP})
    prompt: PromptOptions = group()
    sampling: SamplingOptions = group(defaults={"temperature": 0.8})
    reward: RewardOptions = group()
    mode: str = option("pope", "pope: guided + unguided copies of each hard problem; grpo: unguided only (plain RL "
                               "baseline); guided: guided only.", panel=MIX_PANEL,
                      choices=("pope", "grpo", "guided"))
    guided_ratio: float = option(1.0, "pope mode: guided prompts per unguided prompt (1.0 = the paper's 1:1).",
                                 panel=MIX_PANEL)
    template: str | None = option(None, "Guided template (pope, no-restate or a file) overriding the one each prefix "
                                        "record names.", panel=PROMPT_PANEL, metavar="NAME|FILE")
    easy: str | None = option(None, "Problem file of easy problems to mix in, unguided (the paper's interference "
                                    "experiment).", panel=MIX_PANEL, metavar="FILE")
    easy_fraction: float = option(0.0, "Fraction of each step's prompts taken from --easy.", panel=MIX_PANEL)
    guidance: str = option("fixed", "How much of the solution a guided prompt shows: fixed (POPE: the chosen "
                                    "prefix, every step), anneal (whole lines of it, from the whole derivation "
                                    "falling linearly to none by --anneal-steps) or adaptive (guided copies only "
                                    "while the unguided group fails, the prefix a rung shorter once solved; see "
                                    "stages/train/guidance.py).", panel=MIX_PANEL,
                           choices=GUIDANCE_MODES)
    guidance_shorten_at: float = option(0.5, "--guidance adaptive: a problem's prefix steps one rung shorter after "
                                             "its guided group solves more than this share of its samples.",
                                        panel=MIX_PANEL)
    anneal_steps: int | None = option(None, "--guidance anneal: the step by which no prefix is shown (default: "
                                            "--steps).", panel=MIX_PANEL, show_default=False)
    curriculum: int = option(0, "Easy-to-hard curriculum: the first N steps train on --easy problems only, the "
                                "later ones on the hard ones only (as --mode says); 0 = off.", panel=MIX_PANEL)
    oracle_rollouts: int = option(0, "Off-policy RL on the oracle solutions: in each unguided hard group, the last N "
                                     "of --group-size samples are the problem's written solution (its `solution` "
                                     "field) instead of the policy's, scored by the same reward, advantages over the "
                                     "union (LUFFY); 0 = off.", panel=MIX_PANEL)
    steps: int = option(200, "Training steps (a rerun with more steps extends a finished run).", panel=MIX_PANEL)
    prompts_per_step: int = option(32, "Prompts per step, drawn in seeded shuffled epochs.", panel=MIX_PANEL)
    group_size: int = option(8, "Completions sampled per prompt (the GRPO group).", panel=MIX_PANEL)
    adv_norm: str = option("std", "Advantage = reward - group mean, divided by the group std (std, GRPO) or not (none, "
                                  "Dr. GRPO).", panel=OBJECTIVE_PANEL, choices=("std", "none"))
    clip_low: float = option(0.2, "Lower clip of the importance ratio: 1 - clip_low.", panel=OBJECTIVE_PANEL)
    clip_high: float = option(0.2, "Upper clip: 1 + clip_high (0.28 is DAPO's clip-higher, a failed baseline in the "
                                   "paper).", panel=OBJECTIVE_PANEL)
    loss_agg: str = option("token-mean", "token-mean (every token weighs the same), seq-mean (mean per sequence, then "
                                         "over sequences) or dr-grpo (sum / (sequences x max_new_tokens)).",
                           panel=OBJECTIVE_PANEL, choices=("token-mean", "seq-mean", "dr-grpo"))
    kl_coef: float = option(0.0, "Weight of a k3 KL penalty to the starting model (LoRA: the base with the adapter off).",
                            panel=OBJECTIVE_PANEL)
    entropy_coef: float = option(0.0, "Weight of an entropy bonus (a failed baseline in the paper).",
                                 panel=OBJECTIVE_PANEL)
    oracle_is: str = option("plain", "--oracle-rollouts: the oracle tokens' importance weight, their behaviour "
                                     "probability taken as 1: plain (the clipped ratio pi_theta(token)) or luffy (the "
                                     "shaped pi/(pi + gamma), unclipped); formulas in stages/train/loss.py.",
                            panel=OBJECTIVE_PANEL, choices=ORACLE_IS)
    oracle_is_gamma: float = option(0.1, "--oracle-is luffy: gamma of the shaped weight (LUFFY's 0.1).",
                                    panel=OBJECTIVE_PANEL)
    mask_truncated: bool = option(False, "Leave completions that hit --max-new-tokens out of the loss.",
                                  flags=("--mask-truncated",), panel=OBJECTIVE_PANEL)
    updates_per_step: int = option(1, "Passes over each step's batch; 1 = fully on-policy (ratio exactly 1, no "
                                      "old-log-prob pass).", panel=OBJECTIVE_PANEL)
    mini_batch_size: int | None = option(None, "Sequences per optimizer step (default: the whole batch).",
                                         panel=OBJECTIVE_PANEL)
    rollout_is: str = option("auto", "Rollout importance-sampling correction by the ratio trainer/sampler of the sampled "
                                     "tokens; auto = token-truncate with vllm, none with hf (it samples with the "
                                     "policy itself).", panel=OBJECTIVE_PANEL, choices=("auto",) + ROLLOUT_IS_MODES)
    rollout_is_cap: float = option(2.0, "Upper bound C of the rollout ratio: truncate modes use min(ratio, C), mask "
                                        "modes zero a ratio above C.", panel=OBJECTIVE_PANEL)
    rollout_is_min: float | None = option(None, "Mask modes: zero a ratio below this (default 1 / --rollout-is-cap).",
                                          panel=OBJECTIVE_PANEL, show_default=False)
    lr: float | None = option(None, "AdamW learning rate (default 1e-5 with LoRA, 1e-6 full: LoRA needs a far larger "
                                    "rate).", panel=OPTIM_PANEL, show_default=False)
    """None = LORA_DEFAULT_LR or FULL_DEFAULT_LR; the resolved value is recorded."""
    warmup_steps: int = option(10, "Linear learning-rate warmup steps, then constant.", panel=OPTIM_PANEL)
    logprob_chunk: int = option(512, "Positions whose vocabulary-wide logits exist at once in the loss (each chunk "
                                     "recomputed in backward); 0 = all at once (micro-batch x completion x vocabulary).",
                                panel=OPTIM_PANEL)
    """512: at Qwen's 152k vocabulary one chunk's logits and their gradients take ~1.3 GB in bf16/fp32,
    while its LM-head matmul (512 x hidden x 152k) is still large enough to keep a GPU busy."""
    data_parallel: str = option("auto", "Under torchrun: ddp (a whole model per rank), fsdp (FSDP2 shards, --full only) "
                                        "or auto (fsdp for --full on GPU, else ddp).", panel=OPTIM_PANEL,
                                choices=("auto", "ddp", "fsdp"))
    save_every: int = option(50, "Checkpoint every N steps (and at the last).", panel=OUTPUT_PANEL)
    keep: int = option(2, "Checkpoints to keep (the newest).", panel=OUTPUT_PANEL)
    merge: bool = option(False, "Also write merged full weights to RUN/final_merged for serving (LoRA runs).",
                         flags=("--merge",), panel=OUTPUT_PANEL)
    eval_data: str | None = option(None, "Problems or prefixes file to evaluate on during training (a prefixes file adds "
                                         "guided accuracy).", panel=OUTPUT_PANEL, metavar="FILE")
    eval_every: int = option(0, "Evaluate every N steps (and at the last); needs --eval-data.", panel=OUTPUT_PANEL)
    eval_n: int = option(8, "Samples per evaluation problem.", panel=OUTPUT_PANEL)
    eval_k: list[int] | None = option(None, "Comma-separated k for pass@k (default: 1 and eval-n).", cli_type=str,
                                      parse=int_list("--eval-k"), panel=OUTPUT_PANEL)
    max_nan_steps: int = option(3, "Stop after this many steps in a row whose update was skipped for a non-finite loss.",
                                panel=OPTIM_PANEL)
    seed: int = seed_option()
    overwrite: bool = overwrite_option()

    def __post_init__(self):
        check_choices(self)
        require_weights(self.model)
        if self.lr is None:
            self.lr = LORA_DEFAULT_LR if self.lora else FULL_DEFAULT_LR
        self.eval_k = sorted(set(self.eval_k or [1, self.eval_n]))
        for option, ok, message in self._policy_checks() + self._checks():
            if not ok:
                raise bad_option(option, message)

    def _checks(self) -> list[tuple[str, bool, str]]:
        return [
            ("--guided-ratio", self.guided_ratio > 0, "must be > 0"),
            ("--guided-ratio", self.mode == "pope" or not given(self, "guided_ratio"),
             f"only with --mode pope (--mode {self.mode} has no guided:unguided mix)"),
            ("--easy-fraction", 0 <= self.easy_fraction < 1, "must be in [0, 1)"),
            ("--curriculum", self.easy is not None or self.curriculum == 0, "needs --easy FILE, the problems of its "
                                                                           "first steps"),
            ("--easy-fraction", self.easy is not None or self.easy_fraction == 0, "needs --easy FILE, the problems "
                                                                                  "it mixes in"),
            ("--easy", self.easy is None or self.easy_fraction > 0 or self.curriculum > 0,
             "goes with --easy-fraction > 0 or --curriculum N > 0"),
            ("--anneal-steps", self.anneal_steps is None or self.anneal_steps >= 1, "must be at least 1"),
            ("--anneal-steps", self.anneal_steps is None or self.guidance == "anneal", "only with --guidance anneal"),
            ("--guidance", self.guidance == "fixed" or self.mode != "grpo", "--mode grpo has no guided prompts"),
            ("--guidance", self.guidance != "adaptive" or self.mode == "pope",
             "adaptive decides from the unguided groups: it needs --mode pope"),
            ("--guidance-shorten-at", 0 <= self.guidance_shorten_at < 1, "must be in [0, 1)"),
            ("--curriculum", 0 <= self.curriculum < self.steps, f"must be in [0, --steps={self.steps})"),
            ("--curriculum", not (self.curriculum and self.easy_fraction),
             "--curriculum and --easy-fraction are two uses of --easy: give one"),
            ("--oracle-rollouts", 0 <= self.oracle_rollouts < self.group_size,
             f"must be in [0, --group-size={self.group_size}): a group keeps at least one policy sample"),
            ("--oracle-rollouts", not self.oracle_rollouts or self.mode != "guided", "--mode guided has no unguided groups"),
            ("--oracle-is", self.oracle_rollouts > 0 or not given(self, "oracle_is"), "only with --oracle-rollouts N"),
            ("--oracle-is-gamma", self.oracle_is_gamma > 0, "must be > 0"),
            ("--oracle-is-gamma", self.oracle_is == "luffy" or not given(self, "oracle_is_gamma"),
             "only with --oracle-is luffy"),
            ("--temperature", self.sampling.temperature > 0, "must be > 0: training samples on-policy"),
            ("--steps", self.steps >= 1, "must be at least 1"),
            ("--prompts-per-step", self.prompts_per_step >= 1, "must be at least 1"),
            ("--group-size", self.group_size >= 2, "must be at least 2 (advantages compare samples within a group)"),
            ("--clip-low", 0 <= self.clip_low < 1, "must be in [0, 1)"),
            ("--clip-high", self.clip_high >= 0, "must be >= 0"),
            ("--kl-coef", self.kl_coef >= 0, "must be >= 0"),
            ("--entropy-coef", self.entropy_coef >= 0, "must be >= 0"),
            ("--updates-per-step", self.updates_per_step >= 1, "must be at least 1"),
            ("--mini-batch-size", self.mini_batch_size is None or self.mini_batch_size >= 1, "must be at least 1"),
            ("--logprob-chunk", self.logprob_chunk >= 0, "must be >= 0 (0 = off)"),
            ("--rollout-is-cap", self.rollout_is_cap >= 1, "must be >= 1"),
            ("--rollout-is-min", self.rollout_is_min is None or 0 <= self.rollout_is_min <= 1, "must be in [0, 1]"),
            ("--lr", self.lr > 0, "must be > 0"),
            ("--warmup-steps", self.warmup_steps >= 0, "must be >= 0"),
            ("--data-parallel", not (self.lora and self.data_parallel == "fsdp"), "fsdp is for --full runs"),
            ("--save-every", self.save_every >= 1, "must be at least 1"),
            ("--keep", self.keep >= 1, "must be at least 1"),
            ("--merge", self.lora or not self.merge, "only for --lora runs (a --full run's final/ is already full weights)"),
            ("--eval-every", self.eval_every >= 0, "must be >= 0"),
            ("--eval-every", (self.eval_data is None) == (self.eval_every == 0), "--eval-data FILE and --eval-every N > 0 go together"),
            ("--eval-k", all(1 <= k <= self.eval_n for k in self.eval_k), f"each k must be in [1, eval-n={self.eval_n}]"),
            ("--max-nan-steps", self.max_nan_steps >= 1, "must be at least 1"),
        ]


@dataclass
class DryRunConfig:
    """`pope train --dry-run`: the hardware a plan is sized for, and the throughputs it assumes."""

    gpus: int | None = option(None, "Dry run: GPUs to plan for (torchrun ranks); default: this machine's CUDA devices, "
                                    "and where it has none a plan for its CPU, without GPU figures.", panel=DRY_PANEL,
                              show_default=False)
    gpu_memory_gb: float = option(80.0, "Dry run: memory per GPU in GB (H100: 80).", panel=DRY_PANEL)
    gen_tokens_per_s: float = option(5000.0, "Dry run: generated tokens/s per GPU (an assumption for vLLM on a ~4B "
                                             "model; use the tokens/s a real run logs).", panel=DRY_PANEL)
    mfu: float = option(0.3, "Dry run: fraction of peak FLOP/s the training passes reach.", panel=DRY_PANEL)
    peak_tflops: float = option(989.0, "Dry run: peak dense bf16 TFLOP/s per GPU (H100 SXM: 989).", panel=DRY_PANEL)
    model_config: str | None = option(None, "Dry run: the model's config.json (or a directory), read instead of "
                                            "--model's config (e.g. offline).", panel=DRY_PANEL, metavar="FILE|DIR")
    enabled: bool = option(False, "Load no weights: check the data and the model config, print prompts, tokens, memory "
                                  "per GPU and time per step, and exit.", flags=("--dry-run",), param="dry_run",
                           panel=DRY_PANEL, in_file=False)

    def __post_init__(self):
        checks = [("--gpus", self.gpus is None or self.gpus >= 1), ("--gpu-memory-gb", self.gpu_memory_gb > 0),
                  ("--gen-tokens-per-s", self.gen_tokens_per_s > 0), ("--mfu", 0 < self.mfu <= 1),
                  ("--peak-tflops", self.peak_tflops > 0)]
        for option_name, ok in checks:
            if not ok:
                raise bad_option(option_name, "must be > 0" + (" and at most 1" if option_name == "--mfu" else ""))
