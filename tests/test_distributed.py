"""Data-parallel training on CPU: `pope train` under torchrun on two gloo ranks takes the same
steps as one process on the same global batch (LoRA with DDP, full fine-tuning with FSDP2),
checkpoints pass between one process and two ranks both ways, and with (a fake) vLLM each rank's
engine samples its block and is put to sleep, synced and woken around every update."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pope_cli.shared.distributed import Ranks
from test_trainer import data, make_cfg, metric_rows  # noqa: F401  (data is a fixture)

TESTS = Path(__file__).parent
# Ranks add the same terms in another order, so gradients agree to float32 noise; Adam divides
# each entry by its own running magnitude, which turns that noise in entries near its eps (1e-8)
# into an update difference of up to a small fraction of the learning rate (1e-2 in these runs):
# three FSDP2 steps differed by 1.3e-5 under transformers 5.24 (below 1e-5 under earlier ones).
ATOL = 3e-5


def test_ranks_split_prompts_in_blocks_and_sequences_in_equal_micro_batch_counts():
    blocks = [list(range(10))[Ranks(r, 3).block(10)] for r in range(3)]
    assert blocks == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    chunk = [7, 3, 9, 1, 4]
    parts = [Ranks(r, 2).micro_batches(chunk, 2) for r in range(2)]
    assert parts == [[[7, 9], [4]], [[3, 1], []]]  # rank 1 runs an idle pass to join the reduction
    assert Ranks().micro_batches(chunk, 2) == [[7, 3], [9, 1], [4]]


def train_on_two_ranks(data: Path, model_dir, out: Path, *options: str, env: dict | None = None,
                       program: tuple[str, ...] = ("-m", "pope_cli.cli")) -> None:
    """`torchrun --standalone --nproc-per-node 2 -m pope_cli.cli train ...` on CPU, in float32: in bf16 the
    kernels' rounding depends on the shape of each rank's batch, so ranks match one process only up to it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "OMP_NUM_THREADS": "1",
           **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *program, "train", str(data / "prefixes.jsonl"), "--model", str(model_dir),
               "--out", str(out),
               "--unguided-template", str(data / "unguided.txt"), "--reward", "train_rewards:starts_lower",
               "--reward-workers", "1", "--max-new-tokens", "8", "--temperature", "1.0", "--prompts-per-step", "4",
               "--group-size", "8", "--warmup-steps", "0", "--backend", "hf", "--device", "cpu", "--dtype", "float32",
               *options]
    # A later --backend overrides the one above.
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    adapter = model_dir / "adapter_model.safetensors"
    return load_file(adapter if adapter.exists() else model_dir / "model.safetensors")


def assert_same_weights(two: Path, one: Path, atol: float) -> None:
    a, b = weights(two), weights(one)
    assert a.keys() == b.keys()
    worst = max((a[name] - b[name]).abs().max().item() for name in b)
    assert worst <= atol, worst


def assert_same_metrics(two: Path, one: Path) -> None:
    """Equal rows; losses and norms equal up to float noise (they would be off by a factor
    if a rank normalised by its own tokens or the gradient were summed, not averaged)."""
    rows_two, rows_one = metric_rows(two), metric_rows(one)
    assert [row.keys() for row in rows_two] == [row.keys() for row in rows_one]
    for a, b in zip(rows_two, rows_one):
        # The padding share describes how the work was split into micro-batches, which ranks change.
        for key in (k for k in b if not k.startswith("train/pad_fraction")):
            if isinstance(b[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
            else:
                assert a[key] == b[key], key


def test_lora_on_two_ranks_matches_one_process(data, tiny_model_dir):
    # KL exercises the reference log-probs each rank computes for its share and then exchanges.
    lora = dict(lora=True, lora_rank=4, lora_alpha=8, lr=1e-2, kl_coef=0.1, micro_batch_size=3, save_every=1)
    train_on_two_ranks(data, tiny_model_dir, data / "two", "--steps", "2", "--lora", "--lora-rank", "4",
                       "--lora-alpha", "8", "--lr", "1e-2", "--kl-coef", "0.1", "--micro-batch-size", "3",
                       "--save-every", "1")
    from pope_cli.stages.train.trainer import run_train

    run_train(make_cfg(data, tiny_model_dir, out=str(data / "one"), steps=2, **lora))
    step_one = Path("checkpoints") / "step_000001" / "model"
    assert_same_weights(data / "two" / step_one, data / "one" / step_one, ATOL)
    assert_same_weights(data / "two" / "final", data / "one" / "final", ATOL)
    assert_same_metrics(data / "two", data / "one")


def test_full_fsdp_steps_between_one_process_steps_match_one_process(data, tiny_model_dir):
    from pope_cli.stages.train.trainer import run_train

    # Several mini-batches, two passes and uneven shares: old log-probs, idle micro-batches.
    full = dict(mini_batch_size=5, micro_batch_size=2, updates_per_step=2, save_every=1)
    run_train(make_cfg(data, tiny_model_dir, out=str(data / "two"), steps=1, **full))
    # Two ranks resume the one-process checkpoint (each loads its shard of the optimizer state)...
    train_on_two_ranks(data, tiny_model_dir, data / "two", "--steps", "2", "--data-parallel", "fsdp", "--full",
                       "--lr", "1e-2", "--mini-batch-size", "5", "--micro-batch-size", "2", "--updates-per-step", "2",
                       "--save-every", "1")
    assert (data / "two" / "checkpoints" / "step_000002" / "rng_rank1.pt").is_file()
    # ...and one process resumes theirs, gathered from the shards.
    run_train(make_cfg(data, tiny_model_dir, out=str(data / "two"), steps=3, **full))
    run_train(make_cfg(data, tiny_model_dir, out=str(data / "one"), steps=3, **full))
    assert_same_weights(data / "two" / "final", data / "one" / "final", ATOL)
    assert_same_metrics(data / "two", data / "one")


def test_two_ranks_resume_their_own_checkpoint_and_a_rank_with_no_prompt_joins_in(data, tiny_model_dir):
    from pope_cli.stages.train.trainer import run_train

    # One prompt per step: rank 1's block is empty, so it only joins the collectives.
    options = ["--lora", "--lora-rank", "4", "--lora-alpha", "8", "--lr", "1e-2", "--prompts-per-step", "1",
               "--save-every", "1"]
    train_on_two_ranks(data, tiny_model_dir, data / "two", "--steps", "1", *options)
    first = data / "two" / "checkpoints" / "step_000001" / "state.json"
    written = first.stat().st_mtime_ns
    train_on_two_ranks(data, tiny_model_dir, data / "two", "--steps", "2", *options)
    assert first.stat().st_mtime_ns == written  # resumed from step 1, not trained again from the start
    run_train(make_cfg(data, tiny_model_dir, out=str(data / "one"), steps=2, prompts_per_step=1, lora=True,
                       lora_rank=4, lora_alpha=8, lr=1e-2, save_every=1))
    assert_same_weights(data / "two" / "final", data / "one" / "final", ATOL)
    assert_same_metrics(data / "two", data / "one")


@pytest.mark.parametrize("lora", [True, False], ids=["lora-ddp", "full-fsdp"])
def test_vllm_on_every_rank_samples_trains_and_syncs_as_one_process(data, tiny_model_dir, monkeypatch, lora):
    import pope_cli.shared.engines.vllm as vllm_engine
    from fake_vllm import FakeVLLM, events
    from pope_cli.shared.config import ModelOptions
    from pope_cli.stages.train.trainer import run_train

    kind = dict(lora=True, lora_rank=4, lora_alpha=8) if lora else dict(lora=False, data_parallel="fsdp")
    flags = ["--lora", "--lora-rank", "4", "--lora-alpha", "8"] if lora else ["--full", "--data-parallel", "fsdp"]
    settings = dict(steps=2, lr=1e-2, rollout_is="token-truncate", micro_batch_size=3, **kind)
    (data / "log_one").mkdir()
    (data / "log_two").mkdir()
    train_on_two_ranks(data, tiny_model_dir, data / "two", "--steps", "2", "--lr", "1e-2", "--rollout-is",
                       "token-truncate", "--micro-batch-size", "3", "--backend", "vllm", *flags,
                       env={"FAKE_VLLM_LOG": str(data / "log_two")}, program=(str(TESTS / "fake_vllm.py"),))
    # The same run in one process: with the fake engine, and with the hf engine (the policy itself).
    monkeypatch.setenv("FAKE_VLLM_LOG", str(data / "log_one"))
    monkeypatch.setattr(vllm_engine, "VLLMEngine", FakeVLLM)
    run_train(make_cfg(data, tiny_model_dir, out=str(data / "one"),
                       model=ModelOptions(str(tiny_model_dir), backend="vllm", device="cpu", dtype="float32"),
                       **settings))
    run_train(make_cfg(data, tiny_model_dir, out=str(data / "hf"), **settings))
    one, ranks = events(data / "log_one", 0), [events(data / "log_two", r) for r in range(2)]
    for log in [one, *ranks]:  # each engine, every step: generate, then sleep -> sync -> wake; closed at the end
        assert [e["event"] for e in log] == ["generate", "sleep", "sync", "wake"] * 2 + ["close"]
    for step in range(2):
        whole = [e for e in one if e["event"] == "generate"][step]["rollouts"]
        parts = [[e for e in log if e["event"] == "generate"][step]["rollouts"] for log in ranks]
        assert parts[0] and parts[1] and parts[0] + parts[1] == whole  # each rank its block, as one process
    if lora:
        assert {e.get("adapter") for log in ranks for e in log if e["event"] == "sync"} == {
            ".engine_adapter_rank0", ".engine_adapter_rank1"}
    assert_same_metrics(data / "two", data / "one")
    assert_same_metrics(data / "one", data / "hf")  # the synced engine samples what the policy would
    assert_same_weights(data / "two" / "final", data / "one" / "final", ATOL)
    assert_same_weights(data / "one" / "final", data / "hf" / "final", ATOL)
