"""pope train --dry-run: exact parameter counts from a config alone, the memory model, and the CLI plan."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_model
from pope_cli.shared.config import ModelOptions, PromptOptions, RewardOptions, SamplingOptions
from pope_cli.stages.train.config import DryRunConfig, TrainConfig
from pope_cli.stages.train.dryrun import Shape, engine_memory, model_shape, pass_memory, policy_memory

GB = 1e9


def train_config(**overrides) -> TrainConfig:
    values = dict(prefixes="p.jsonl", out="run", model=ModelOptions("m/x", gpu_memory_utilization=0.5),
                  prompt=PromptOptions(), sampling=SamplingOptions(temperature=0.8, max_new_tokens=1000),
                  reward=RewardOptions())
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_from_the_config_matches_a_real_model(tied):
    from transformers import Qwen2ForCausalLM

    config = build_tiny_model(vocab_size=100).config
    config.tie_word_embeddings = tied
    real = Qwen2ForCausalLM(config)
    shape = model_shape(real.config, lora=False, lora_rank=8, lora_targets="all-linear")
    assert shape.params == sum(p.numel() for p in real.parameters()) == shape.trainable
    assert shape.compute_params == shape.params - (0 if tied else 100 * 32)
    assert (shape.layers, shape.hidden, shape.vocab) == (2, 32, 100)
    assert shape.kv_bytes_per_token == 2 * 2 * 2 * (32 // 4) * 2  # K and V, layers, KV heads, head dim, bf16


@pytest.mark.parametrize("targets", ["all-linear", "q_proj,v_proj"])
def test_lora_count_matches_peft(targets):
    from peft import LoraConfig, get_peft_model

    model = build_tiny_model(vocab_size=100)
    shape = model_shape(model.config, lora=True, lora_rank=4, lora_targets=targets)
    wanted = targets if targets == "all-linear" else targets.split(",")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=wanted, task_type="CAUSAL_LM"))
    assert shape.trainable == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_memory_model_follows_pope_trains_precision():
    shape = Shape("m", params=1_000, trainable=10, compute_params=1_000, layers=2, hidden=8, attention_width=8,
                  kv_bytes_per_token=64, vocab=50)
    lora = policy_memory(train_config(), shape, shards=1)
    assert lora == {"weights": 2 * 1_000 + 4 * 10, "gradients": 40, "AdamW moments": 80, "KL reference": 0}
    full = Shape(**{**shape.__dict__, "trainable": 1_000})
    sharded = policy_memory(train_config(lora=False, kl_coef=0.1), full, shards=4)
    assert sharded == {"weights": 1_000, "gradients": 1_000, "AdamW moments": 2_000, "KL reference": 1_000}
    plain = pass_memory(train_config(logprob_chunk=0), shape, seq_len=1_100, micro_batch=2)
    assert plain == {"logits": 2 * 1_001 * 50 * 14, "activations": 2 * 1_100 * 8 * 34 * 2}
    chunked = pass_memory(train_config(logprob_chunk=256), shape, seq_len=1_100, micro_batch=2)
    assert chunked == {"logits": 256 * 50 * 14, "activations": plain["activations"]}  # one chunk's logits
    short = pass_memory(train_config(logprob_chunk=4096), shape, seq_len=1_100, micro_batch=2)
    assert short["logits"] == plain["logits"]  # a chunk longer than the batch holds the batch
    checkpointed = pass_memory(train_config(grad_checkpointing=True), shape, seq_len=1_100, micro_batch=2)
    assert checkpointed["activations"] == 2 * 1_100 * 8 * (2 * 2 + 34)
    engine = engine_memory(train_config(), shape, DryRunConfig(gpu_memory_gb=1e-5), samples_per_gpu=10, seq_len=20)
    assert engine["kv"] == 0.5 * 1e4 - 2_000 and engine["concurrent"] == 3000 // (20 * 64) and engine["waves"] == 5


def write_prefixes(path: Path) -> Path:
    rows = [{"id": f"p{i}", "problem": f"What is {i} + 3?", "answer": str(i + 3), "prefix": "Add.",
             "prefix_fraction": 0.2, "status": "found", "template": "pope"} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pope(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pope_cli.cli", *args], capture_output=True, text=True, cwd=cwd)


def planned(tmp_path: Path, model, *options: str) -> str:
    """What `pope train --dry-run` prints for `write_prefixes`' data, run in `tmp_path`."""
    write_prefixes(tmp_path / "prefixes.jsonl")
    proc = pope("train", "prefixes.jsonl", "--model", str(model), "--out", "run", "--dry-run", *options, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_dry_run_plans_from_config_and_tokenizer_without_weights(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    for weights in model.glob("*.safetensors"):
        weights.unlink()  # a dry run that tried to load weights would fail
    out = planned(tmp_path, model, "--gpus", "2", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "64")
    assert "4 prompts (2 guided, 2 unguided) x 4 samples = 16 completions" in out
    assert "counted with the tokenizer" in out and "generated <= 1,024 tokens" in out
    from transformers import AutoConfig, AutoModelForCausalLM

    params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).parameters())
    assert f"{params:,} parameters" in out and "GPUs     2 x 80 GB, ddp" in out
    assert "total" in out and "time per step" in out
    assert "vLLM at utilization" in out.split("memory per GPU, generation phase")[1]  # one engine per rank
    assert not (tmp_path / "run").exists()
    hf = pope("train", "prefixes.jsonl", "--model", str(model), "--out", "run", "--dry-run", "--gpus", "2",
              "--backend", "hf", cwd=tmp_path)
    assert hf.returncode == 0, hf.stderr
    assert "hf KV cache" in hf.stdout.split("memory per GPU, generation phase")[1]


def test_dry_run_reads_a_config_file_and_reports_a_bad_one_in_one_line(tmp_path):
    write_prefixes(tmp_path / "prefixes.jsonl")
    config = tmp_path / "config.json"
    build_tiny_model(vocab_size=100).config.to_json_file(config)
    ok = pope("train", "prefixes.jsonl", "--model", "org/absent", "--out", "run", "--dry-run",
              "--model-config", str(config), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "estimated at 4 characters per token" in ok.stdout
    bad = pope("train", "prefixes.jsonl", "--model", "org/absent", "--out", "run", "--dry-run",
               "--model-config", "nowhere.json", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.splitlines() == ["error: --model-config: nowhere.json: no such file or directory"]


def test_dry_run_counts_oracle_rollouts_as_trained_not_generated(tmp_path):
    rows = [{"id": f"p{i}", "problem": f"What is {i} + 3?", "answer": str(i + 3), "prefix": "Add.",
             "prefix_fraction": 0.2, "status": "found", "template": "pope", **({"solution": "Add."} if i % 2 else {})}
            for i in range(6)]
    (tmp_path / "prefixes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_tiny_model(vocab_size=100).config.to_json_file(tmp_path / "config.json")
    args = ("train", "prefixes.jsonl", "--model", "org/absent", "--out", "run", "--dry-run", "--model-config",
            "config.json", "--mode", "grpo", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "64")
    plain, oracle = pope(*args, cwd=tmp_path), pope(*args, "--oracle-rollouts", "1", cwd=tmp_path)
    assert plain.returncode == oracle.returncode == 0, oracle.stderr
    assert "generated <= 1,024 tokens" in plain.stdout and "oracle solutions" not in plain.stdout
    # 4 unguided prompts a step, half of the problems with a solution: 2 oracle samples of 16
    assert "of which 2.0 a step are oracle solutions (--oracle-rollouts), not generated" in oracle.stdout
    assert "generated <= 896 tokens" in oracle.stdout and "x 4 samples = 16 completions" in oracle.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="plans for this machine's GPUs where it has some")
def test_without_gpus_the_dry_run_plans_for_this_cpu_and_says_what_the_options_will_do(tmp_path, tiny_model_dir):
    out = planned(tmp_path, tiny_model_dir, "--steps", "3", "--prompts-per-step", "4", "--group-size", "4",
                  "--max-new-tokens", "4096")
    assert "device   this machine's CPU: it has no CUDA device (--gpus N plans a run on N GPUs of --gpu-memory-gb)" in out
    assert "GPU" not in out.replace("--gpus N plans a run on N GPUs of --gpu-memory-gb", "").replace(
        "describe GPUs", "") and "vLLM" not in out and "fits" not in out
    assert "hf KV cache (batch 64)" in out and "time per step: not estimated for a CPU" in out
    assert ("train: --warmup-steps 10 is not less than --steps 3: the learning rate never reaches --lr 1e-05 (it peaks "
            "at 2.7e-06 in the last step); lower --warmup-steps") in out
    assert f"train: --max-new-tokens 4096 is not less than the context of {tiny_model_dir} (2048 positions)" in out
    gpu = planned(tmp_path, tiny_model_dir, "--gpus", "1", "--mode", "grpo")
    assert "GPUs     1 x 80 GB, one process" in gpu and "(1 wave for this GPU's samples)" in gpu
    assert "6 hard problems, 6 with a prefix; mode grpo" in gpu
