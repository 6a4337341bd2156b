"""Configuration: one documented dataclass per stage, plus the option groups they share.

The CLI only maps options onto these; validation lives in `__post_init__` and raises
`PopeError(..., exit_code=2)` naming the option, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from pope_cli.errors import PopeError


def bad_option(option: str, message: str) -> PopeError:
    return PopeError(f"{option}: {message}", exit_code=2)


@dataclass
class ModelOptions:
    """Which model generates, and how it is loaded."""

    model: str
    """A hub id or a local directory (a full model, or a PEFT adapter dir with adapter_config.json)."""
    backend: str = "auto"
    """`hf` (transformers generate), `vllm`, or `auto` (vllm when importable and CUDA is present)."""
    dtype: str = "auto"
    """`auto` (bf16 on GPU, fp32 on CPU), `bfloat16`, `float16` or `float32`."""
    device: str = "auto"
    """`auto` (cuda when available), `cpu` or `cuda[:N]` (hf backend)."""
    trust_remote_code: bool = False
    batch_size: int = 64
    """hf backend: sequences per generate call."""
    gpu_memory_utilization: float = 0.85
    """vllm backend: fraction of GPU memory vLLM may take."""
    max_model_len: int | None = None
    """vllm backend: context length (prompt + completion); None lets vLLM decide."""

    def __post_init__(self):
        if self.backend not in ("auto", "hf", "vllm"):
            raise bad_option("--backend", f"must be auto, hf or vllm, not {self.backend!r}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise bad_option("--dtype", f"must be auto, bfloat16, float16 or float32, not {self.dtype!r}")
        if self.batch_size < 1:
            raise bad_option("--batch-size", "must be at least 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise bad_option("--gpu-memory-utilization", "must be in (0, 1]")


@dataclass
class FieldMap:
    """Which input columns hold each record field; a dotted path reaches into nested columns."""

    problem: str = "problem"
    answer: str = "answer"
    solution: str = "solution"
    id: str = "id"
    source: str = "source"


@dataclass
class PromptOptions:
    """How a problem becomes a prompt."""

    chat_template: bool = True
    """Send prompts through the tokenizer's chat template when it has one."""
    system_prompt: str | None = None
    unguided_template: str | None = None
    """A text file with a `{problem}` placeholder; None = the problem plus the default boxed-answer instruction."""


@dataclass
class SamplingOptions:
    """How completions are sampled."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 4096

    def __post_init__(self):
        if self.temperature < 0:
            raise bad_option("--temperature", "must be >= 0")
        if not 0 < self.top_p <= 1:
            raise bad_option("--top-p", "must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise bad_option("--max-new-tokens", "must be at least 1")


@dataclass
class RewardOptions:
    """Which checker scores completions, and its hard deadline."""

    spec: str = "math"
    """`math` or `module:function`."""
    timeout: float = 5.0
    workers: int = 2

    def __post_init__(self):
        if self.timeout <= 0:
            raise bad_option("--reward-timeout", "must be > 0")
        if self.workers < 1:
            raise bad_option("--reward-workers", "must be at least 1")


@dataclass
class FilterHardConfig:
    """`pope filter-hard`: sample each problem up to k times; hard = none of them correct."""

    data: str
    out: str
    model: ModelOptions
    fields: FieldMap
    prompt: PromptOptions
    sampling: SamplingOptions
    reward: RewardOptions
    k: int = 128
    """Samples per problem (the paper: 128 at a 32k-token budget)."""
    chunk: int = 16
    """Samples drawn per problem per round; sampling stops after the first round with a correct one."""
    exhaustive: bool = False
    """Draw all k samples even after a correct one (exact pass rates, k×N samples)."""
    save_samples: bool = False
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self):
        if self.k < 1:
            raise bad_option("--k", "must be at least 1")
        if self.chunk < 1:
            raise bad_option("--chunk", "must be at least 1")


@dataclass
class EvalConfig:
    """`pope eval`: guided and unguided accuracy, avg@n and unbiased pass@k."""

    data: str
    out: str
    models: list[str]
    model: ModelOptions
    """Loading options shared by every model in `models` (its `model` field is the first one)."""
    fields: FieldMap
    prompt: PromptOptions
    sampling: SamplingOptions
    reward: RewardOptions
    n: int = 16
    ks: list[int] = None
    modes: list[str] = None
    prefixes: str | None = None
    """A prefixes.jsonl for guided mode (not needed when DATA is one)."""
    template: str | None = None
    """Guided template overriding the one each prefix record names."""
    bootstrap: int = 1000
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self):
        self.ks = sorted(set(self.ks or [1]))
        self.modes = list(dict.fromkeys(self.modes or ["unguided"]))
        if self.n < 1:
            raise bad_option("--n", "must be at least 1")
        bad_k = [k for k in self.ks if k < 1 or k > self.n]
        if bad_k:
            raise bad_option("--k", f"each k must be in [1, n={self.n}], got {bad_k}")
        unknown = [m for m in self.modes if m not in ("unguided", "guided")]
        if unknown:
            raise bad_option("--mode", f"must be unguided and/or guided, got {unknown}")
        if not self.models:
            raise bad_option("--model", "at least one model is needed")
        if self.bootstrap < 0:
            raise bad_option("--bootstrap", "must be >= 0")


LORA_DEFAULT_LR = 1e-5
"""LoRA trains few weights from a zero start: it needs a rate ~10x full fine-tuning's (at 1e-6,
or the 5e-7 of trl#2872, a LoRA run barely moves)."""
FULL_DEFAULT_LR = 1e-6


@dataclass
class TrainConfig:
    """`pope train`: fully on-policy GRPO on guided + unguided copies of hard problems.

    The algorithm is stated in `pope_cli/rl/trainer.py`; each field here is one CLI option.
    """

    prefixes: str
    """prefixes.jsonl from `pope make-prefixes` (the hard problems with their oracle prefixes)."""
    out: str
    model: ModelOptions
    prompt: PromptOptions
    sampling: SamplingOptions
    reward: RewardOptions
    mode: str = "pope"
    """`pope` (guided + unguided copies), `grpo` (unguided only) or `guided` (guided only)."""
    guided_ratio: float = 1.0
    """Guided prompts per unguided prompt in `pope` mode (1.0 = the paper's 1:1)."""
    template: str | None = None
    """Guided template overriding the one each prefix record names."""
    easy: str | None = None
    """A problem file of easy problems, mixed in unguided."""
    easy_fraction: float = 0.0
    """Fraction of each step's prompts drawn from `easy`."""
    steps: int = 200
    prompts_per_step: int = 32
    group_size: int = 8
    adv_norm: str = "std"
    """`std` (GRPO) or `none` (Dr. GRPO: centre only)."""
    clip_low: float = 0.2
    clip_high: float = 0.2
    loss_agg: str = "token-mean"
    """`token-mean`, `seq-mean` or `dr-grpo` (sum / (sequences x max_new_tokens))."""
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    mask_truncated: bool = False
    """Leave completions that hit max_new_tokens out of the loss."""
    updates_per_step: int = 1
    mini_batch_size: int | None = None
    """Sequences per optimizer step; None = the whole step's batch."""
    micro_batch_size: int = 8
    """Sequences per forward/backward (memory only: the gradient is the same)."""
    lora: bool = True
    lora_rank: int = 64
    lora_alpha: int = 128
    lora_targets: str = "all-linear"
    """`all-linear` or comma-separated module names."""
    lr: float | None = None
    """None = LORA_DEFAULT_LR or FULL_DEFAULT_LR; the resolved value is recorded."""
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    grad_checkpointing: bool = False
    data_parallel: str = "auto"
    """Under torchrun: `ddp` (whole model per rank), `fsdp` (FSDP2 shards, --full only) or
    `auto` (fsdp for full fine-tuning on GPU, else ddp). Ignored by a single process."""
    save_every: int = 50
    keep: int = 2
    merge: bool = False
    """Also write merged full weights to RUN/final_merged (LoRA runs)."""
    eval_data: str | None = None
    eval_every: int = 0
    eval_n: int = 8
    eval_k: list[int] | None = None
    max_nan_steps: int = 3
    """Stop after this many steps in a row whose update was skipped for a non-finite loss."""
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self):
        if self.lr is None:
            self.lr = LORA_DEFAULT_LR if self.lora else FULL_DEFAULT_LR
        self.eval_k = sorted(set(self.eval_k or [1, self.eval_n]))
        for option, ok, message in self._checks():
            if not ok:
                raise bad_option(option, message)

    def _checks(self) -> list[tuple[str, bool, str]]:
        return [
            ("--mode", self.mode in ("pope", "grpo", "guided"), f"must be pope, grpo or guided, not {self.mode!r}"),
            ("--guided-ratio", self.guided_ratio > 0, "must be > 0"),
            ("--easy-fraction", 0 <= self.easy_fraction < 1, "must be in [0, 1)"),
            ("--easy-fraction", (self.easy is None) == (self.easy_fraction == 0), "--easy FILE and --easy-fraction > 0 go together"),
            ("--temperature", self.sampling.temperature > 0, "must be > 0: training samples on-policy"),
            ("--steps", self.steps >= 1, "must be at least 1"),
            ("--prompts-per-step", self.prompts_per_step >= 1, "must be at least 1"),
            ("--group-size", self.group_size >= 2, "must be at least 2 (advantages compare samples within a group)"),
            ("--adv-norm", self.adv_norm in ("std", "none"), f"must be std or none, not {self.adv_norm!r}"),
            ("--clip-low", 0 <= self.clip_low < 1, "must be in [0, 1)"),
            ("--clip-high", self.clip_high >= 0, "must be >= 0"),
            ("--loss-agg", self.loss_agg in ("token-mean", "seq-mean", "dr-grpo"),
             f"must be token-mean, seq-mean or dr-grpo, not {self.loss_agg!r}"),
            ("--kl-coef", self.kl_coef >= 0, "must be >= 0"),
            ("--entropy-coef", self.entropy_coef >= 0, "must be >= 0"),
            ("--updates-per-step", self.updates_per_step >= 1, "must be at least 1"),
            ("--mini-batch-size", self.mini_batch_size is None or self.mini_batch_size >= 1, "must be at least 1"),
            ("--micro-batch-size", self.micro_batch_size >= 1, "must be at least 1"),
            ("--lora-rank", self.lora_rank >= 1, "must be at least 1"),
            ("--lora-alpha", self.lora_alpha > 0, "must be > 0"),
            ("--lr", self.lr > 0, "must be > 0"),
            ("--warmup-steps", self.warmup_steps >= 0, "must be >= 0"),
            ("--max-grad-norm", self.max_grad_norm > 0, "must be > 0"),
            ("--data-parallel", self.data_parallel in ("auto", "ddp", "fsdp"),
             f"must be auto, ddp or fsdp, not {self.data_parallel!r}"),
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
class PrefixConfig:
    """`pope make-prefixes`: per hard problem, the shortest oracle prefix the model can finish."""

    data: str
    out: str
    """The prefixes file (prefixes.jsonl); the run's other files are named after it."""
    model: ModelOptions
    fields: FieldMap
    prompt: PromptOptions
    sampling: SamplingOptions
    reward: RewardOptions
    template: str = "pope"
    """Guided template: `pope`, `no-restate` or a text file with {problem} and {prefix}."""
    split: str = "units"
    """`units` (paragraph, line and sentence boundaries outside math) or `tokens`."""
    max_fraction: float = 0.25
    """Largest prefix, as a fraction of the solution's tokens (the paper: a quarter)."""
    n: int = 16
    """Guided samples per rung."""
    max_rungs: int = 16
    """At most this many rungs per problem, spaced evenly in tokens; 0 = one per unit (`units` only)."""
    fallback: str = "largest"
    """No rung solved: `largest` keeps the largest rung (status not_found), `drop` leaves the problem out."""
    fixed_fraction: float | None = None
    """Skip the search: every prefix is the first `fixed_fraction` of the solution (QuestA-style)."""
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self):
        if self.split not in ("units", "tokens"):
            raise bad_option("--split", f"must be units or tokens, not {self.split!r}")
        if self.fallback not in ("largest", "drop"):
            raise bad_option("--fallback", f"must be largest or drop, not {self.fallback!r}")
        if not 0 < self.max_fraction <= 1:
            raise bad_option("--max-fraction", f"must be in (0, 1], not {self.max_fraction}")
        if self.fixed_fraction is not None and not 0 < self.fixed_fraction <= 1:
            raise bad_option("--fixed-fraction", f"must be in (0, 1], not {self.fixed_fraction}")
        if self.n < 1:
            raise bad_option("--n", "must be at least 1")
        if self.max_rungs < 0:
            raise bad_option("--max-rungs", "must be >= 0")
        if self.max_rungs == 0 and self.split == "tokens":
            raise bad_option("--max-rungs", "0 (one rung per unit) needs --split units; one rung per token is too slow")


@dataclass
class DemoConfig:
    """`pope demo`: the four stages on the shipped toy model, plain GRPO against POPE."""

    out: str = "pope-demo"
    model: str | None = None
    """The starting model; None = the toy model shipped with the package."""
    seed: int = 0
    full: bool = False
    """Add the paper's other two arms: GRPO on easy + hard (interference) and POPE with no-restate."""
    n_easy: int = 64
    n_hard: int = 192
    n_heldout: int = 128
    """Held-out candidates: filter-hard keeps those the start model never solves."""
    k: int = 128
    """filter-hard samples per problem, for the training pool and the held-out set (the paper: 0 of 128)."""
    prefix_n: int = 16
    max_fraction: float = 0.85
    """Largest prefix as a fraction of the solution's tokens: toy solutions are short, so a
    prefix that leaves one or two look-ups to the model is most of the solution."""
    steps: int = 250
    prompts_per_step: int = 16
    group_size: int = 8
    lr: float = 2e-4
    warmup_steps: int = 20
    adv_norm: str = "none"
    eval_n: int = 32
    eval_k: list[int] = None
    parallel: int = 2
    """Commands of one phase (filters, arms, evaluations) run side by side, one CPU thread each."""
    overwrite: bool = False

    def __post_init__(self):
        self.eval_k = sorted(set(self.eval_k or [1, min(8, self.eval_n), self.eval_n]))
        for option, value in (("--steps", self.steps), ("--k", self.k), ("--eval-n", self.eval_n),
                              ("--parallel", self.parallel), ("--n-hard", self.n_hard), ("--n-heldout", self.n_heldout)):
            if value < 1:
                raise bad_option(option, "must be at least 1")
        if any(k < 1 or k > self.eval_n for k in self.eval_k):
            raise bad_option("--eval-k", f"each k must be in [1, eval-n={self.eval_n}]")
        if not 0 < self.max_fraction <= 1:
            raise bad_option("--max-fraction", "must be in (0, 1]")


@dataclass
class ExportConfig:
    """`pope export`: the prompts `pope train` would train on, with its reward and settings, for verl or TRL."""

    train: TrainConfig
    """The run being exported: its data mix, prompts, reward and GRPO settings (`out` is unused)."""
    out: str
    """The directory to write."""
    format: str = "verl"
    """`verl` (Parquet + reward module + run_verl.sh) or `trl` (JSONL and Parquet + reward module + trl_config.json)."""
    val: str | None = None
    """A problems or prefixes file to export as the validation set (unguided, plus guided for a prefixes file)."""
    gpus: int = 1
    """GPUs per node in the verl launch script."""
    overwrite: bool = False

    def __post_init__(self):
        if self.format not in ("verl", "trl"):
            raise bad_option("--format", f"must be verl or trl, not {self.format!r}")
        if self.gpus < 1:
            raise bad_option("--gpus", "must be at least 1")


@dataclass
class DryRunConfig:
    """`pope train --dry-run`: the hardware a plan is sized for, and the throughputs it assumes."""

    gpus: int = 1
    gpu_memory_gb: float = 80.0
    """Memory per GPU (an H100 has 80 GB)."""
    gen_tokens_per_s: float = 5000.0
    """Generated tokens per second per GPU: an assumption for vLLM on a ~4B model; replace it with
    the tokens/s a real run logs in metrics.jsonl."""
    mfu: float = 0.3
    """Fraction of the GPU's peak bf16 FLOP/s that the training passes reach."""
    peak_tflops: float = 989.0
    """Peak dense bf16 TFLOP/s per GPU (H100 SXM: 989)."""
    model_config: str | None = None
    """A config.json (or directory) describing the model, instead of `--model`'s own config."""

    def __post_init__(self):
        checks = [("--gpus", self.gpus >= 1), ("--gpu-memory-gb", self.gpu_memory_gb > 0),
                  ("--gen-tokens-per-s", self.gen_tokens_per_s > 0), ("--mfu", 0 < self.mfu <= 1),
                  ("--peak-tflops", self.peak_tflops > 0)]
        for option, ok in checks:
            if not ok:
                raise bad_option(option, "must be > 0" + (" and at most 1" if option == "--mfu" else ""))
