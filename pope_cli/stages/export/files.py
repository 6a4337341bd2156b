"""The files `pope export` writes next to the data: a reward module, and the training settings.

The reward modules are a few lines that call `pope_cli.shared.reward.adapters`, so pope-cli must be
installed wherever verl's reward workers or the TRL trainer run. The settings map each
`pope train` option onto the key that does the same: for verl a launch script (key names checked
against verl 0.9.1's `verl/trainer/config/_generated_ppo_trainer.yaml`), for TRL the keyword
arguments of `GRPOConfig` (checked against `trl/trainer/grpo_config.py`).
"""

from __future__ import annotations

import shlex

from pope_cli.shared.errors import PopeError
from pope_cli.stages.export.config import ExportConfig
from pope_cli.stages.train.config import TrainConfig

_VERL_REWARD = '''"""pope's reward for verl, written by `pope export`.

Pass it to verl as reward.custom_reward_function.path=<this file> (name: compute_score). It scores
with pope's checker ({spec!r}), as `pope train` does: 1.0 for a correct final answer, else 0.0.
"""

from pope_cli.shared.reward import adapters as reward_adapters

reward_adapters.configure(spec={spec!r}, timeout={timeout!r}, workers=1)


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return reward_adapters.verl_score(solution_str, ground_truth, extra_info)
'''

_TRL_REWARD = '''"""pope's reward for TRL's GRPOTrainer, written by `pope export`.

    from pope_reward import pope_reward
    GRPOTrainer(..., reward_funcs=[pope_reward], train_dataset=load_dataset("json", data_files="train.jsonl")["train"])

It scores with pope's checker ({spec!r}), as `pope train` does: 1.0 for a correct final answer,
else 0.0. TRL passes the dataset's `answer` and `record` columns as keyword arguments.
"""

from pope_cli.shared.reward import adapters as reward_adapters

reward_adapters.configure(spec={spec!r}, timeout={timeout!r}, workers={workers!r})


def pope_reward(prompts, completions, answer, record=None, **kwargs):
    return reward_adapters.trl_rewards(completions, answer, record)
'''

_VERL_LOSS_AGG = {"token-mean": "token-mean", "seq-mean": "seq-mean-token-mean", "dr-grpo": "seq-mean-token-sum-norm"}
# TRL's "dapo" is the token mean over the whole batch, its "grpo" the per-sequence mean.
_TRL_LOSS_TYPE = {"token-mean": "dapo", "seq-mean": "grpo", "dr-grpo": "dr_grpo"}


def reward_module(cfg: ExportConfig) -> str:
    reward = cfg.train.reward
    if cfg.format == "verl":
        return _VERL_REWARD.format(spec=reward.spec, timeout=reward.timeout)
    return _TRL_REWARD.format(spec=reward.spec, timeout=reward.timeout, workers=reward.workers)


def _policy_keys(t: TrainConfig) -> list[str]:
    """Optimizer and LoRA settings: pope's AdamW, linear warmup then constant."""
    keys = [f"actor_rollout_ref.actor.optim.lr={t.lr}", f"actor_rollout_ref.actor.optim.lr_warmup_steps={t.warmup_steps}",
            f"actor_rollout_ref.actor.optim.weight_decay={t.weight_decay}",
            f"actor_rollout_ref.actor.optim.clip_grad={t.max_grad_norm}"]
    if t.lora:
        targets = t.lora_targets if t.lora_targets == "all-linear" else f"[{t.lora_targets}]"
        keys += [f"actor_rollout_ref.model.lora_rank={t.lora_rank}", f"actor_rollout_ref.model.lora_alpha={t.lora_alpha}",
                 f"actor_rollout_ref.model.target_modules={targets}"]
    return keys


def _objective_keys(t: TrainConfig) -> list[str]:
    """GRPO as `pope train` runs it: group-relative advantages, clipped surrogate, KL and entropy off by default."""
    mini_batch = t.prompts_per_step if t.mini_batch_size is None else max(1, t.mini_batch_size // t.group_size)
    return [
        "algorithm.adv_estimator=grpo", f"algorithm.norm_adv_by_std_in_grpo={t.adv_norm == 'std'}",
        "algorithm.use_kl_in_reward=False",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch}", f"actor_rollout_ref.actor.ppo_epochs={t.updates_per_step}",
        f"actor_rollout_ref.actor.clip_ratio_low={t.clip_low}", f"actor_rollout_ref.actor.clip_ratio_high={t.clip_high}",
        f"actor_rollout_ref.actor.loss_agg_mode={_VERL_LOSS_AGG[t.loss_agg]}",
        f"actor_rollout_ref.actor.use_kl_loss={t.kl_coef > 0}", f"actor_rollout_ref.actor.kl_loss_coef={t.kl_coef}",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl", f"actor_rollout_ref.actor.entropy_coeff={t.entropy_coef}",
    ]


def _rollout_keys(t: TrainConfig, max_prompt: int) -> list[str]:
    return [
        "actor_rollout_ref.rollout.name=vllm", f"actor_rollout_ref.rollout.n={t.group_size}",
        f"actor_rollout_ref.rollout.temperature={t.sampling.temperature}", f"actor_rollout_ref.rollout.top_p={t.sampling.top_p}",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"actor_rollout_ref.rollout.gpu_memory_utilization={t.model.gpu_memory_utilization}",
        "actor_rollout_ref.actor.use_dynamic_bsz=True",
        f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={max_prompt + t.sampling.max_new_tokens}",
    ]


def verl_script(cfg: ExportConfig, max_prompt: int) -> str:
    """run_verl.sh: `python -m verl.trainer.main_ppo` with pope train's settings; extra overrides go last."""
    t = cfg.train
    val = "val.parquet" if cfg.val else "train.parquet"
    keys = [
        'data.train_files="$HERE/train.parquet"', f'data.val_files="$HERE/{val}"',
        f"data.train_batch_size={t.prompts_per_step}", f"data.max_prompt_length={max_prompt}",
        f"data.max_response_length={t.sampling.max_new_tokens}", "data.shuffle=False", "data.filter_overlong_prompts=False",
        'actor_rollout_ref.model.path="$MODEL"',
        *_policy_keys(t), *_objective_keys(t), *_rollout_keys(t, max_prompt),
        'reward.custom_reward_function.path="$HERE/pope_reward.py"', "reward.custom_reward_function.name=compute_score",
        f"trainer.n_gpus_per_node={cfg.gpus}", "trainer.nnodes=1", "trainer.total_epochs=1",
        f"trainer.total_training_steps={t.steps}", f"trainer.save_freq={t.save_every}",
        f"trainer.test_freq={t.save_every if cfg.val else -1}", f"trainer.val_before_train={bool(cfg.val)}",
        "trainer.logger='[\"console\"]'", 'trainer.default_local_dir="$HERE/checkpoints"',
    ]
    model = shlex.quote(t.model.model) if t.model.model else ""
    lines = "".join(f"    {key} \\\n" for key in keys)
    return f"""#!/usr/bin/env bash
# Written by `pope export --format verl`: GRPO in verl (0.9.x config keys) with `pope train`'s settings.
# The rows of train.parquet are pope train's prompts in its order ({t.prompts_per_step} per step, {t.steps} steps),
# so shuffling stays off. data.max_prompt_length is an upper bound (UTF-8 bytes of the longest prompt plus
# room for the chat template: a token is at least one byte); lower it to the real token count to save memory.
# Not mapped: {'--mask-truncated (no verl equivalent); ' if t.mask_truncated else ''}micro-batching (verl packs by tokens).
# Usage: MODEL=<hub id or dir> bash run_verl.sh [more verl overrides]
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
MODEL="${{MODEL:-{model}}}"
: "${{MODEL:?set MODEL to the starting model (hub id or local directory)}}"
python -m verl.trainer.main_ppo \\
{lines}    "$@"
"""


def trl_batch(cfg: ExportConfig) -> dict:
    """GRPOConfig's batch settings that take pope's step on `--gpus` processes: one generation batch
    of prompts_per_step x group_size completions (so TRL reads train's rows in train's order,
    prompts_per_step a step), cut into optimizer steps of --mini-batch-size sequences (the whole
    batch by default), each accumulated from micro-batches of at most --micro-batch-size per process.
    TRL counts optimizer steps; pope counts steps of (sequences / mini-batch) x --updates-per-step."""
    t, processes = cfg.train, cfg.gpus
    sequences = t.prompts_per_step * t.group_size
    mini = min(t.mini_batch_size or sequences, sequences)
    if sequences % mini or mini % processes:
        raise PopeError(f"--format trl: a step of {sequences} sequences in optimizer steps of {mini} (--mini-batch-size) "
                        f"over {processes} process(es) (--gpus) cannot be equal batches, as TRL's are; choose sizes "
                        "that divide", exit_code=2)
    per_device = max(d for d in range(1, min(t.micro_batch_size, mini // processes) + 1) if mini % (d * processes) == 0)
    per_step = sequences // mini * t.updates_per_step  # TRL's optimizer steps in one of pope's steps
    return {"per_device_train_batch_size": per_device, "gradient_accumulation_steps": mini // (per_device * processes),
            "steps_per_generation": sequences // (per_device * processes), "optimizer_steps_per_pope_step": per_step}


def trl_settings(cfg: ExportConfig) -> dict:
    """trl_config.json: `GRPOConfig(**grpo_config)`, and `peft.LoraConfig(**lora)` for a LoRA run.

    The batch settings (`trl_batch`) are for `--gpus` processes (`accelerate launch
    --num_processes`); the step counts are TRL's optimizer steps.
    """
    t = cfg.train
    batch = trl_batch(cfg)
    per_step = batch.pop("optimizer_steps_per_pope_step")
    grpo = {
        "max_steps": t.steps * per_step, **batch, "num_generations": t.group_size,
        "max_completion_length": t.sampling.max_new_tokens,
        "temperature": t.sampling.temperature, "top_p": t.sampling.top_p, "shuffle_dataset": False,
        "learning_rate": t.lr, "warmup_steps": t.warmup_steps * per_step, "lr_scheduler_type": "constant_with_warmup",
        "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm, "num_iterations": t.updates_per_step,
        "beta": t.kl_coef, "epsilon": t.clip_low, "epsilon_high": t.clip_high, "loss_type": _TRL_LOSS_TYPE[t.loss_agg],
        "scale_rewards": "group" if t.adv_norm == "std" else "none", "mask_truncated_completions": t.mask_truncated,
        "save_steps": t.save_every * per_step, "seed": t.seed,
    }
    lora = None
    if t.lora:
        targets = t.lora_targets if t.lora_targets == "all-linear" else [m.strip() for m in t.lora_targets.split(",")]
        lora = {"r": t.lora_rank, "lora_alpha": t.lora_alpha, "target_modules": targets, "lora_dropout": 0.0,
                "task_type": "CAUSAL_LM"}
    return {"grpo_config": grpo, "lora": lora, "prompts_per_step": t.prompts_per_step, "processes": cfg.gpus}
