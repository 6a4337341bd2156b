"""bf16 on the CPU: training learns in mixed precision, bf16 sampling agrees with fp32, and the
sampler/trainer log-prob mismatch stays within a measured bound. On a CPU without bf16 units
these run emulated (slower), with the same assertions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pope_cli.shared.config import ModelOptions
from pope_cli.stages.sft.trainer import run_sft
from pope_cli.stages.train.batch import Sample, collate
from pope_cli.stages.train.trainer import Run, train_step
from pope_cli.stages.train.update import policy_update, sequence_logprobs
from test_trainer import LowerScorer, data, make_cfg, snapshot  # noqa: F401  (data is a fixture)



def bf16_cfg(data: Path, model_dir, **overrides):
    return make_cfg(data, model_dir, model=ModelOptions(str(model_dir), backend="hf", device="cpu", dtype="bfloat16"),
                    **overrides)


def fixed_batch() -> list[Sample]:
    return [Sample([5, 6, 7][: 1 + i % 3], [40 + i, 41 + i, 42, 1], 1.0 if i % 2 else -1.0) for i in range(8)]


def batch_loss(run: Run, samples: list[Sample]) -> float:
    """The mean log-prob of the positive samples' completions minus the negatives' (what the
    surrogate raises), under the run's autocast."""
    batch = collate(samples, 0)
    with torch.no_grad():
        logp, _ = sequence_logprobs(run.policy.model, batch, 1.0, autocast_dtype=run.policy.autocast_dtype)
    sign = torch.tensor([s.advantage for s in samples]).unsqueeze(1)
    return float(-(sign * logp).mean())


@pytest.mark.parametrize("lora", [False, True])
def test_a_bf16_step_lowers_the_loss_on_a_fixed_batch_with_float32_weights_and_optimizer(data, tiny_model_dir, lora):
    kind = dict(lora=True, lora_rank=4, lora_alpha=8) if lora else {}
    run = Run(bf16_cfg(data, tiny_model_dir, lr=1e-2, **kind), None, LowerScorer())
    assert run.policy.autocast_dtype == torch.bfloat16
    trainable = [p for p in run.policy.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    frozen = [p for p in run.policy.model.parameters() if not p.requires_grad]
    assert all(p.dtype == torch.bfloat16 for p in frozen) and bool(frozen) == lora  # LoRA over a bf16 base
    samples, before = fixed_batch(), snapshot(run.policy.model)
    losses = [batch_loss(run, samples)]
    for step in range(3):
        policy_update(run.policy.model, run.optimizer, samples, run.settings, 0, "cpu", step)
        losses.append(batch_loss(run, samples))
    assert losses[-1] < losses[0] - 0.05, losses
    changed = [n for n, p in run.policy.model.named_parameters() if p.requires_grad and not torch.equal(before[n], p)]
    assert len(changed) == len(trainable)
    state = run.optimizer.state[trainable[0]]
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    assert run.optimizer.defaults["fused"]  # one kernel over the fp32 weights


def test_bf16_sampler_and_trainer_log_probs_agree_within_the_bf16_bound(data, tiny_model_dir):
    """The hf engine samples with the policy under the trainer's autocast; what remains is the
    kernels' rounding between a cached decode and a full forward. Measured on this tiny model (AVX512-BF16):
    mismatch/kl 2e-10 to 6e-9 and ratio_max up to 1.001 in bf16, 1e-14 and 1.000000 in fp32; the bounds
    leave a factor of 100 or more for other CPUs' kernels."""
    rows = {}
    for dtype in ("float32", "bfloat16"):
        out = data / dtype
        run = Run(make_cfg(data, tiny_model_dir, out=str(out), model=ModelOptions(
            str(tiny_model_dir), backend="hf", device="cpu", dtype=dtype)), None, LowerScorer())
        rows[dtype] = [train_step(run, step) for step in range(3)]
    for dtype, bound_kl, bound_ratio in (("float32", 1e-10, 1.0001), ("bfloat16", 1e-6, 1.05)):
        kl = [row["mismatch/kl"] for row in rows[dtype]]
        ratio = [row["mismatch/ratio_max"] for row in rows[dtype]]
        assert all(0 <= k < bound_kl for k in kl), (dtype, kl)
        assert all(1 <= r < bound_ratio for r in ratio), (dtype, ratio)
    assert max(row["mismatch/kl"] for row in rows["bfloat16"]) > max(row["mismatch/kl"] for row in rows["float32"])


def test_bf16_sft_lowers_its_loss(data, tiny_model_dir):
    from test_sft import make_cfg as sft_cfg

    rows = [json.loads(line) for line in (data / "prefixes.jsonl").read_text().splitlines()]
    (data / "problems.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = sft_cfg(data, tiny_model_dir, steps=6, model=ModelOptions(str(tiny_model_dir), backend="hf", device="cpu",
                                                                     dtype="bfloat16"))
    summary = run_sft(cfg, lambda: None, lambda: None)
    assert summary["last_loss"] < summary["first_loss"] - 0.1, summary
    manifest = json.loads((data / "run" / "manifest.json").read_text())
    assert manifest["precision"]["dtype"] == "bfloat16"


def test_bf16_and_fp32_eval_of_the_toy_agree_within_a_paired_bound(tmp_path):
    """The toy model on toy chains with one uncertain look-up each (solved about half the time), 16
    samples each, in fp32 and in bf16: the per-problem pass rates' paired mean difference is within 3
    standard errors (plus 2 points of slack)."""
    import random

    from pope_cli.toy.model import SHIPPED_MODEL_DIR
    from pope_cli.toy.pretrain import TEMPLATES_DIR
    from pope_cli.shared.outputs import atomic_write_jsonl
    from pope_cli.toy.task import make_record, sample_easy

    rng = random.Random(3)
    atomic_write_jsonl(tmp_path / "easy.jsonl", [make_record(f"lookup-{i}", "toy", *sample_easy(rng, 1.0, 1.0)) for i in range(24)])
    rates = {}
    for dtype in ("float32", "bfloat16"):
        done = subprocess.run(
            [sys.executable, "-m", "pope_cli.cli", "eval", str(tmp_path / "easy.jsonl"), "--model", str(SHIPPED_MODEL_DIR),
             "--out", str(tmp_path / dtype), "--n", "16", "--k", "1,16", "--backend", "hf", "--device", "cpu",
             "--dtype", dtype, "--max-new-tokens", "64", "--reward", "pope_cli.toy.reward:score", "--reward-workers", "1",
             "--unguided-template", str(TEMPLATES_DIR / "unguided.txt"), "--bootstrap", "0"],
            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr
        assert f"eval: dtype {dtype} (--dtype)" in done.stderr
        samples = [json.loads(line) for line in (tmp_path / dtype / "samples.jsonl").read_text().splitlines()]
        per_problem: dict[str, list[float]] = {}
        for sample in samples:
            per_problem.setdefault(sample["id"], []).append(float(sample["score"] or 0.0))
        rates[dtype] = {pid: sum(scores) / len(scores) for pid, scores in per_problem.items()}
    ids = sorted(rates["float32"])
    assert ids == sorted(rates["bfloat16"]) and len(ids) == 24
    diffs = [rates["bfloat16"][i] - rates["float32"][i] for i in ids]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    assert 0.2 < sum(rates["float32"].values()) / len(ids) < 0.95  # the toy solves some, not all: a real comparison
    assert abs(mean) <= 3 * sd / math.sqrt(len(diffs)) + 0.02, (mean, sd)
