"""The trainer on tiny Qwen2 models: masking, skipped groups, learning, LoRA vs full, reloading,
checkpoints, resume after SIGKILL, config files, NaN handling."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pope_cli.shared.config import ModelOptions, PromptOptions, RewardOptions, SamplingOptions
from pope_cli.shared.errors import PopeError
from pope_cli.stages.train.batch import DataMix, Sample, collate
from pope_cli.stages.train.config import TrainConfig
from pope_cli.stages.train.loss import LossSettings, policy_loss, token_logprobs
from pope_cli.stages.train.trainer import Run, run_train, train_step
from pope_cli.stages.train.update import policy_update, sequence_logprobs
from processes import killed_when, started_until
from conftest import default_sigint, write_prefix_workspace
from train_rewards import starts_lower

torch.set_num_threads(1)
TESTS = Path(__file__).parent
TIMING = ("time/", "throughput/")


class LowerScorer:
    def score(self, completions, records):
        return [starts_lower(c, r) for c, r in zip(completions, records)]


@pytest.fixture
def data(tmp_path):
    """A prefixes file of 8 hard problems with short templates (char-level prompts stay short)."""
    return write_prefix_workspace(tmp_path, [
        {"id": f"p{i}", "problem": f"{i * 7 % 10}+{i}", "answer": "x", "solution": "abcd", "prefix": "ab"[: 1 + i % 2],
         "prefix_fraction": 0.25 * (1 + i % 2)} for i in range(8)])


def make_cfg(data: Path, model_dir, **overrides) -> TrainConfig:
    fields = dict(prefixes=str(data / "prefixes.jsonl"), out=str(data / "run"),
                  # float32: these tests check exact equalities (micro-batching, ranks, reloads); bf16 has its own
                  model=ModelOptions(str(model_dir), backend="hf", device="cpu", dtype="float32"),
                  prompt=PromptOptions(unguided_template=str(data / "unguided.txt")),
                  sampling=SamplingOptions(temperature=1.0, max_new_tokens=8),
                  reward=RewardOptions("train_rewards:starts_lower", workers=1),
                  steps=4, prompts_per_step=4, group_size=8, lora=False, lr=1e-2, warmup_steps=0, save_every=100)
    fields.update(overrides)
    return TrainConfig(**fields)


def finished_steps(run_dir: Path) -> int:
    """Whole lines in metrics.jsonl so far (0 before it exists), for polling a live run."""
    path = run_dir / "metrics.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def metric_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in rows]


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# ---- data mix and tensors ----------------------------------------------------------------

def test_data_mix_proportions_and_resumable_position():
    hard = [{"id": f"h{i}", "prefix": "x"} for i in range(5)]
    easy = [{"id": f"e{i}"} for i in range(3)]
    mix = DataMix(hard, easy, "pope", 1.0, 0.25, 6, seed=1)
    totals = {"guided": 0, "unguided": 0, "easy": 0}
    for step in range(8):
        for kind, count in mix.counts(step).items():
            totals[kind] += count
    assert totals == {"guided": 18, "unguided": 18, "easy": 12}  # 48 prompts: 1/4 easy, hard 1:1
    three_to_one = DataMix(hard, [], "pope", 3.0, 0.0, 4, seed=1)
    assert [three_to_one.counts(s)["guided"] for s in range(4)] == [3, 3, 3, 3]
    assert DataMix(hard, [], "grpo", 1.0, 0.0, 4, seed=1).counts(0) == {"guided": 0, "unguided": 4, "easy": 0}
    first = [[item.record["id"] for item in mix.draw(s)] for s in range(3)]
    resumed = DataMix(hard, easy, "pope", 1.0, 0.25, 6, seed=1, state=mix.state())
    again = DataMix(hard, easy, "pope", 1.0, 0.25, 6, seed=1)
    expected = [[item.record["id"] for item in again.draw(s)] for s in range(6)]
    assert first == expected[:3]
    assert [[item.record["id"] for item in resumed.draw(s)] for s in range(3, 6)] == expected[3:]
    # Each epoch of the guided stream visits every problem once.
    epoch = [r["id"] for r in DataMix(hard, [], "guided", 1.0, 0.0, 5, seed=2).streams["guided"].take(5)]
    assert sorted(epoch) == [f"h{i}" for i in range(5)]


def test_a_curriculum_trains_on_easy_problems_first_then_on_hard_ones_only(data, tiny_model_dir):
    hard = [{"id": f"h{i}", "prefix": "x"} for i in range(5)]
    easy = [{"id": f"e{i}"} for i in range(3)]
    mix = DataMix(hard, easy, "pope", 1.0, 0.0, 4, seed=1, curriculum=3)
    assert [mix.counts(step) for step in range(5)] == [{"guided": 0, "unguided": 0, "easy": 4}] * 3 + [
        {"guided": 2, "unguided": 2, "easy": 0}] * 2
    draws = [[item.record["id"][0] for item in mix.draw(step)] for step in range(5)]
    assert draws == [["e"] * 4] * 3 + [["h"] * 4] * 2
    straight = DataMix(hard, easy, "pope", 1.0, 0.0, 4, seed=1, curriculum=3)
    expected = [[item.record["id"] for item in straight.draw(step)] for step in range(5)]
    killed = DataMix(hard, easy, "pope", 1.0, 0.0, 4, seed=1, curriculum=3)
    for step in range(2):
        killed.draw(step)
    resumed = DataMix(hard, easy, "pope", 1.0, 0.0, 4, seed=1, curriculum=3, state=killed.state())
    assert [[item.record["id"] for item in resumed.draw(step)] for step in range(2, 5)] == expected[2:]
    (data / "easy.jsonl").write_text("".join(json.dumps({"id": f"e{i}", "problem": f"{i}", "answer": "x"}) + "\n"
                                             for i in range(3)))
    with pytest.raises(PopeError, match=r"^--curriculum: needs --easy FILE, the problems of its first steps$"):
        make_cfg(data, tiny_model_dir, curriculum=2)
    with pytest.raises(PopeError, match=r"^--easy: goes with --easy-fraction > 0 or --curriculum N > 0$"):
        make_cfg(data, tiny_model_dir, easy=str(data / "easy.jsonl"))
    with pytest.raises(PopeError, match=r"--curriculum: must be in \[0, --steps=4\)"):
        make_cfg(data, tiny_model_dir, easy=str(data / "easy.jsonl"), curriculum=4)
    with pytest.raises(PopeError, match=r"--curriculum: --curriculum and --easy-fraction are two uses"):
        make_cfg(data, tiny_model_dir, easy=str(data / "easy.jsonl"), curriculum=2, easy_fraction=0.5)


def test_loss_mask_is_exactly_the_completion_tokens_with_eos():
    samples = [Sample([5, 6, 7], [8, 1], 1.0), Sample([9], [10, 11, 12, 1], -1.0)]
    batch = collate(samples, pad_id=0)
    assert batch.start == 3
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 1, 0, 0], [0, 0, 9, 10, 11, 12, 1]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]]
    assert batch.loss_mask.int().tolist() == [[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1]]


def test_training_samples_and_rollout_metrics():
    from pope_cli.shared.engines.base import Completion
    from pope_cli.stages.train.advantages import group_advantages
    from pope_cli.stages.train.batch import Item, Rollout, rollout_metrics, training_samples

    stop, cut = Completion([3, 1], "a", "stop"), Completion([3, 4, 5], "b", "length")
    items = [Item("guided", {"id": "h1"}), Item("unguided", {"id": "h1"}), Item("unguided", {"id": "h2"})]
    rewards = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    result = Rollout(items, [[7], [8], [9]], [[stop, cut], [cut, stop], [stop, stop]], rewards, rewards >= 1)
    advantages, signal = group_advantages(rewards, "none")
    kept = training_samples(result, advantages, signal, mask_truncated=True)
    assert [(s.prompt, s.completion, s.advantage) for s in kept] == [([7], [3, 1], 0.5), ([8], [3, 1], -0.5)]
    assert len(training_samples(result, advantages, signal, mask_truncated=False)) == 4
    metrics, solved = rollout_metrics(result, signal)
    assert solved == {"h1"}  # solved unguided; h1's guided success does not count
    assert metrics["reward/guided"] == 0.5 and metrics["reward/unguided"] == 0.25 and metrics["reward/easy"] is None
    assert metrics["signal/unguided"] == 0.5 and metrics["groups_without_signal"] == 1
    assert metrics["truncation_rate"] == 2 / 6 and metrics["response_length"] == 14 / 6


def test_prompt_and_prefix_positions_get_exactly_zero_gradient(data, tiny_model_dir):
    run = Run(make_cfg(data, tiny_model_dir), None, LowerScorer())
    record = json.loads((data / "prefixes.jsonl").read_text().splitlines()[1])
    prompt = run.prompt_ids(record, run.shown_guided(record, 1.0))
    prefix_ids = run.policy.tokenizer("P:" + record["prefix"], add_special_tokens=False).input_ids
    assert any(prompt[i:i + len(prefix_ids)] == prefix_ids for i in range(len(prompt)))  # the prefix is in the prompt
    batch = collate([Sample(prompt, [40, 41, 1], 1.0), Sample(prompt[2:], [42, 1], -0.5)], run.policy.pad_id)
    model = run.policy.model
    # Full-sequence log-probs as a leaf: its gradient is the gradient each position receives.
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]  # (B, L-1, V)
    logp, _ = token_logprobs(logits, batch.input_ids[:, 1:])
    logp = logp.detach().requires_grad_(True)
    mask = batch.loss_mask[:, 1:]
    loss, _ = policy_loss(logp, logp.detach(), batch.advantages, mask, LossSettings(kl_coef=0.1, entropy_coef=0.1),
                          ref_logp=torch.zeros_like(logp), entropy=torch.ones_like(logp))
    loss.backward()
    assert torch.all(logp.grad[~mask] == 0.0)  # prompt, prefix and padding targets
    assert torch.all(logp.grad[mask] != 0.0)
    # The trainer's own path builds logits for the completion columns only (plus the one before).
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    sequence_logprobs(model, batch, 1.0)
    hook.remove()
    assert seen == [batch.input_ids.shape[1] - batch.start + 1]


def test_updates_per_step_one_spends_no_old_logprob_forward(data, tiny_model_dir):
    run = Run(make_cfg(data, tiny_model_dir), None, LowerScorer())
    samples = [Sample([5, 6, 7], [40 + i, 1], float(i % 2) - 0.5) for i in range(6)]
    calls = []
    hook = run.policy.model.register_forward_hook(lambda *args: calls.append(1))
    settings = replace(run.settings, micro_batch_size=3)
    policy_update(run.policy.model, run.optimizer, samples, settings, 0, "cpu", 0)
    assert len(calls) == 2  # two micro-batches, one forward each
    calls.clear()
    policy_update(run.policy.model, run.optimizer, samples, replace(settings, updates_per_step=2), 0, "cpu", 0)
    assert len(calls) == 2 + 2 * 2  # old log-probs once, then two passes
    hook.remove()


def test_micro_batching_does_not_change_the_gradient(data, tiny_model_dir):
    grads = []
    for micro in (1, 4):
        run = Run(make_cfg(data, tiny_model_dir, loss_agg="seq-mean"), None, LowerScorer())
        samples = [Sample([5, 6, 7][: 1 + i % 3], [40 + i] * (1 + i) + [1], float(i % 2) - 0.5) for i in range(4)]
        run.optimizer.step = lambda: None  # keep the gradient for inspection
        run.optimizer.zero_grad = lambda set_to_none=True: None
        policy_update(run.policy.model, run.optimizer, samples, replace(run.settings, micro_batch_size=micro), 0, "cpu", 0)
        grads.append(torch.cat([p.grad.flatten() for p in run.policy.model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def _gradient(run, samples, settings) -> torch.Tensor:
    run.optimizer.step = lambda: None  # keep the gradient for inspection
    run.optimizer.zero_grad = lambda set_to_none=True: None
    for p in run.policy.model.parameters():
        p.grad = None
    update = policy_update(run.policy.model, run.optimizer, samples, settings, 0, "cpu", 0)
    return torch.cat([p.grad.flatten() for p in run.policy.model.parameters()]), update


def test_length_sorted_micro_batches_give_the_unsorted_gradient_with_less_padding(data, tiny_model_dir):
    run = Run(make_cfg(data, tiny_model_dir), None, LowerScorer())
    # Completions of 1, 9, 2 and 8 tokens after 2-token prompts: unsorted micro-batches of 2 are
    # (1, 9) and (2, 8), 11 and 10 columns wide; sorted ones (1, 2) and (8, 9), 4 and 11 columns.
    samples = [Sample([5, 6], [40 + i] * n, float(i % 2) - 0.5) for i, n in enumerate((1, 9, 2, 8))]
    whole, _ = _gradient(run, samples, replace(run.settings, micro_batch_size=4))
    sorted_parts, update = _gradient(run, samples, replace(run.settings, micro_batch_size=2))
    assert torch.allclose(whole, sorted_parts, atol=1e-7) and whole.abs().max() > 0
    real = 4 * 2 + 1 + 9 + 2 + 8
    assert update["train/pad_fraction_unsorted"] == pytest.approx(1 - real / (2 * 11 + 2 * 10))
    assert update["train/pad_fraction"] == pytest.approx(1 - real / (2 * 4 + 2 * 11))


def _with_sampler_logprobs(run, samples, shift):
    """The samples with engine log-probs = the trainer's own minus `shift(position)`."""
    from pope_cli.stages.train.update import sequence_logprobs

    out = []
    for s in samples:
        with torch.no_grad():
            logp, _ = sequence_logprobs(run.policy.model, collate([s], 0), run.settings.temperature)
        out.append(replace(s, sampler_logprobs=[v - shift(k) for k, v in enumerate(logp[0].tolist())]))
    return out


@pytest.mark.parametrize("mode", ["token-truncate", "sequence-truncate", "token-mask", "sequence-mask"])
def test_every_rollout_correction_is_a_no_op_for_an_exact_engine(data, tiny_model_dir, mode):
    run = Run(make_cfg(data, tiny_model_dir), None, LowerScorer())
    samples = _with_sampler_logprobs(run, [Sample([5, 6], [40 + i] * (1 + i), float(i % 2) - 0.5) for i in range(4)],
                                     lambda k: 0.0)
    plain, _ = _gradient(run, samples, replace(run.settings, rollout_is="none"))
    corrected, update = _gradient(run, samples, replace(run.settings, rollout_is=mode))
    assert torch.allclose(plain, corrected, atol=1e-7)
    assert update["mismatch/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert update["mismatch/ratio_max"] == pytest.approx(1.0, abs=1e-6)
    assert update["mismatch/masked_fraction"] == 0 and update["mismatch/kl"] == pytest.approx(0.0, abs=1e-6)


def test_a_perturbed_engine_is_measured_and_its_tokens_truncated_or_masked(data, tiny_model_dir):
    run = Run(make_cfg(data, tiny_model_dir), None, LowerScorer())
    # The engine's log-prob is below the trainer's by ln 3 at even positions: ratio 3 there, else 1.
    samples = _with_sampler_logprobs(run, [Sample([5, 6], [40, 41, 42, 43], 1.0), Sample([5, 6], [44, 45], -1.0)],
                                     lambda k: math.log(3) if k % 2 == 0 else 0.0)
    _, update = _gradient(run, samples, replace(run.settings, rollout_is="token-mask", rollout_is_cap=2.0))
    # tokens: 6, of which 3 at even positions with ratio 3 > cap 2 are masked
    assert update["mismatch/ratio_mean"] == pytest.approx((3 * 3 + 3 * 1) / 6, rel=1e-5)
    assert update["mismatch/ratio_max"] == pytest.approx(3.0, rel=1e-5)
    assert update["mismatch/masked_fraction"] == pytest.approx(0.5)
    assert update["mismatch/kl"] == pytest.approx(3 * (3 - math.log(3) - 1) / 6, rel=1e-5)
    # Truncation to 2 is the plain gradient with the ratio-3 tokens' surrogate doubled; masking
    # is the plain gradient without them: truncated = 2 x plain - masked, token by token.
    keep = replace(run.settings, rollout_is="none", max_grad_norm=1e9)  # no clipping: gradients add up
    plain, _ = _gradient(run, samples, keep)
    masked, _ = _gradient(run, samples, replace(keep, rollout_is="token-mask", rollout_is_cap=2.0))
    truncated, _ = _gradient(run, samples, replace(keep, rollout_is="token-truncate", rollout_is_cap=2.0))
    assert torch.allclose(truncated, 2 * plain - masked, atol=1e-6) and not torch.allclose(plain, masked)


# ---- training behaviour ------------------------------------------------------------------

def test_all_equal_groups_change_no_parameter(data, tiny_model_dir):
    cfg = make_cfg(data, tiny_model_dir, reward=RewardOptions("train_rewards:always_zero", workers=1), weight_decay=0.1)
    run = Run(cfg, None, type("Zero", (), {"score": lambda self, c, r: [0.0] * len(c)})())
    before = snapshot(run.policy.model)
    rows = [train_step(run, step) for step in range(2)]
    assert all(torch.equal(before[n], p) for n, p in run.policy.model.named_parameters())
    assert [r["groups_without_signal"] for r in rows] == [4, 4]
    assert [r["optimizer_steps"] for r in rows] == [0, 0]


def test_mean_reward_rises_on_an_easy_reward(data, tiny_model_dir):
    cfg = make_cfg(data, tiny_model_dir, steps=24)
    run = Run(cfg, None, LowerScorer())
    rewards = [train_step(run, step)["reward/all"] for step in range(cfg.steps)]
    early, late = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert late >= early + 0.3, rewards


def test_lora_changes_only_adapter_weights_and_full_changes_the_model(data, tiny_model_dir):
    lora = Run(make_cfg(data, tiny_model_dir, lora=True, lora_rank=4, lora_alpha=8, lr=5e-2), None, LowerScorer())
    before = snapshot(lora.policy.model)
    for step in range(3):
        train_step(lora, step)
    changed = {n for n, p in lora.policy.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)
    full = Run(make_cfg(data, tiny_model_dir), None, LowerScorer())
    before = snapshot(full.policy.model)
    for step in range(3):
        train_step(full, step)
    changed = [n for n, p in full.policy.model.named_parameters() if not torch.equal(before[n], p)]
    assert len(changed) > len(before) // 2


def test_final_reloads_to_identical_outputs(data, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pope_cli.shared.models import load_model
    from pope_cli.stages.train.policy import save_final

    run = Run(make_cfg(data, tiny_model_dir, lora=True, lora_rank=4, lora_alpha=8, lr=5e-2), None, LowerScorer())
    for step in range(3):
        train_step(run, step)
    ids = torch.tensor([[7, 8, 9, 10, 11]])
    with torch.no_grad():
        expected = run.policy.model.eval()(input_ids=ids).logits
    save_final(run.policy, data / "run", merge=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, expected)  # training moved it
        via_peft = PeftModel.from_pretrained(base, data / "run" / "final").eval()
        via_pope = load_model(ModelOptions(str(data / "run" / "final"), device="cpu", dtype="float32"))
        merged = AutoModelForCausalLM.from_pretrained(data / "run" / "final_merged")
        assert torch.equal(via_peft(input_ids=ids).logits, expected)
        assert torch.equal(via_pope(input_ids=ids).logits, expected)
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
    assert (data / "run" / "final" / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("lora", [True, False])
def test_kl_starts_at_zero_and_grows(data, tiny_model_dir, lora):
    # LoRA: the reference is the base with the adapter off; B starts at 0, so KL(step 1) is 0.
    adapter = dict(lora_rank=4, lora_alpha=8) if lora else {}
    cfg = make_cfg(data, tiny_model_dir, lora=lora, **adapter, lr=5e-2 if lora else 1e-2,
                   kl_coef=0.1, entropy_coef=0.01, grad_checkpointing=lora)
    run = Run(cfg, None, LowerScorer())
    rows = [train_step(run, step) for step in range(3)]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[2]["kl"] > 1e-5
    assert all(row["optimizer_steps"] == 1 and row["entropy"] > 0 for row in rows)


def test_lora_run_extended_from_its_checkpoint_matches_a_straight_run(data, tiny_model_dir):
    with (data / "easy.jsonl").open("w") as f:
        for i in range(3):
            f.write(json.dumps({"id": f"e{i}", "problem": f"{i}*{i}", "answer": "y"}) + "\n")
    common = dict(lora=True, lora_rank=4, lora_alpha=8, lr=5e-2, save_every=2, easy=str(data / "easy.jsonl"),
                  easy_fraction=0.25)
    run_train(make_cfg(data, tiny_model_dir, out=str(data / "a"), steps=2, **common))
    run_train(make_cfg(data, tiny_model_dir, out=str(data / "a"), steps=4, **common))  # resumes after step 2
    run_train(make_cfg(data, tiny_model_dir, out=str(data / "b"), steps=4, **common))
    extended, straight = metric_rows(data / "a"), metric_rows(data / "b")
    assert extended == straight and [r["prompts/easy"] for r in straight] == [1, 1, 1, 1]


def test_checkpoints_are_complete_and_only_the_last_are_kept(data, tiny_model_dir):
    cfg = make_cfg(data, tiny_model_dir, steps=5, save_every=2, keep=2)
    run_train(cfg)
    out = Path(cfg.out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000004", "step_000005"]
    ckpt = out / "checkpoints" / "step_000004"
    assert {p.name for p in ckpt.iterdir()} >= {"model", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 4 and set(state["data"]) == {"guided", "unguided"}
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-2
    assert [row["step"] for row in metric_rows(out)] == [1, 2, 3, 4, 5]
    # A finished run reruns as a no-op; a different config is refused, naming the options.
    assert run_train(cfg)["trained_this_run"] == 0
    with pytest.raises(PopeError, match=r"\(--clip-high: was 0.2, now 0.28; --lr: was 0.01, now 0.02\)"):
        run_train(replace(cfg, lr=2e-2, clip_high=0.28))


def test_a_torn_checkpoint_is_passed_over_for_the_last_complete_one(data, tiny_model_dir):
    import shutil

    cfg = make_cfg(data, tiny_model_dir, steps=4, save_every=2)
    run_train(cfg)
    checkpoints = Path(cfg.out) / "checkpoints"
    shutil.copytree(checkpoints / "step_000004", checkpoints / ".tmp_step_000006")  # died while writing
    shutil.copytree(checkpoints / "step_000004", checkpoints / "step_000006")
    (checkpoints / "step_000006" / "state.json").unlink()  # a checkpoint missing its last file
    (checkpoints / "step_000006" / "optimizer.pt").write_bytes(b"torn")
    summary = run_train(replace(cfg, steps=6))
    assert summary["resumed_from"] == 4 and summary["trained_this_run"] == 2
    run_train(replace(cfg, out=str(data / "straight"), steps=6, save_every=2))
    assert metric_rows(Path(cfg.out)) == metric_rows(data / "straight")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000004", "step_000006"]


def test_all_zero_reward_steps_run_and_log(data, tiny_model_dir):
    cfg = make_cfg(data, tiny_model_dir, steps=3, reward=RewardOptions("train_rewards:always_zero", workers=1))
    summary = run_train(cfg)
    rows = metric_rows(Path(cfg.out))
    assert [r["step"] for r in rows] == [1, 2, 3] and summary["trained_this_run"] == 3
    assert all(r["reward/all"] == 0.0 and r["groups_without_signal"] == 4 and r["optimizer_steps"] == 0 for r in rows)
    assert (Path(cfg.out) / "final").is_dir()


def test_groups_emptied_by_masking_truncated_completions_train_nothing(data, tiny_model_dir):
    cfg = make_cfg(data, tiny_model_dir, steps=2, mask_truncated=True, sampling=SamplingOptions(temperature=1.0,
                                                                                                max_new_tokens=1))
    run = Run(cfg, None, LowerScorer())
    before = snapshot(run.policy.model)
    rows = [train_step(run, step) for step in range(cfg.steps)]
    assert all(r["truncation_rate"] == 1.0 and r["trained_sequences"] == 0 and r["optimizer_steps"] == 0 for r in rows)
    assert any(r["groups_without_signal"] < 4 for r in rows)  # there was signal, but nothing left to train on
    assert all(torch.equal(before[n], p) for n, p in run.policy.model.named_parameters())


def test_non_finite_loss_skips_the_update_and_stops_the_run(data, tiny_model_dir, monkeypatch):
    import pope_cli.stages.train.trainer as trainer

    real = trainer.policy_update

    def poisoned(model, optimizer, samples, *args, **kwargs):
        return real(model, optimizer, [replace(s, advantage=float("nan")) for s in samples], *args, **kwargs)

    monkeypatch.setattr(trainer, "policy_update", poisoned)
    cfg = make_cfg(data, tiny_model_dir, steps=6, max_nan_steps=2)
    with pytest.raises(PopeError, match="not finite for 2 steps in a row"):
        run_train(cfg)
    rows = metric_rows(Path(cfg.out))
    assert [r["nan_skipped"] for r in rows] == [1, 1] and [r["optimizer_steps"] for r in rows] == [0, 0]


def test_eval_every_logs_avg_and_pass_at_k(data, tiny_model_dir):
    cfg = make_cfg(data, tiny_model_dir, steps=2, eval_data=str(data / "prefixes.jsonl"), eval_every=2, eval_n=4)
    run_train(cfg)
    last = metric_rows(Path(cfg.out))[-1]
    for mode in ("unguided", "guided"):
        assert 0 <= last[f"eval/{mode}/avg@n"] <= last[f"eval/{mode}/pass@4"] <= 1


# ---- the command: config files, resume after SIGKILL --------------------------------------

def command_line(data: Path, model_dir, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "import typer; from pope_cli.commands.train import command; typer.run(command)",
            str(data / "prefixes.jsonl"), "--model", str(model_dir), "--out", str(out),
            "--unguided-template", str(data / "unguided.txt"), "--reward", "train_rewards:slow_starts_lower",
            "--reward-workers", "1", "--max-new-tokens", "8", "--temperature", "1.0", "--prompts-per-step", "4",
            "--group-size", "8", "--full", "--lr", "1e-2", "--warmup-steps", "0", "--backend", "hf", "--device", "cpu",
            "--dtype", "float32", *extra]


@pytest.mark.parametrize("kill_after_rows, dtype", [(5, "float32"), (10, "float32"), (5, "bfloat16")])
def test_resume_after_sigkill_reproduces_the_uninterrupted_run(data, tiny_model_dir, kill_after_rows, dtype):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    args = ["--steps", "12", "--save-every", "4", "--dtype", dtype]
    killed = data / "killed"
    killed_when(command_line(data, tiny_model_dir, killed, *args), lambda: finished_steps(killed) >= kill_after_rows,
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert len(metric_rows(killed)) < 12  # it really died mid-run
    resumed = subprocess.run(command_line(data, tiny_model_dir, killed, *args), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after step {4 * ((kill_after_rows - 1) // 4)}" in resumed.stderr
    whole = data / "whole"  # the uninterrupted run, in this process (also one torch thread)
    run_train(make_cfg(data, tiny_model_dir, out=str(whole), steps=12, save_every=4,
                       model=ModelOptions(str(tiny_model_dir), backend="hf", device="cpu", dtype=dtype),
                       reward=RewardOptions("train_rewards:slow_starts_lower", workers=1)))
    assert metric_rows(killed) == metric_rows(whole)


def test_ctrl_c_ends_training_with_the_checkpoint_to_resume_from(data, tiny_model_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    out = data / "interrupted"
    proc = started_until(command_line(data, tiny_model_dir, out, "--steps", "50", "--save-every", "2"),
                         lambda: finished_steps(out) >= 3, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, preexec_fn=default_sigint)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert re.search(r"interrupted: stopped in step \d+; the last checkpoint is step \d+; rerun the same command", stderr)
    saved = int(re.search(r"last checkpoint is step (\d+)", stderr).group(1))
    assert saved >= 2 and (out / "checkpoints" / f"step_{saved:06d}" / "state.json").exists()


def test_config_file_sits_under_the_command_line(data, tiny_model_dir):
    (data / "train.toml").write_text('steps = 1\nlr = 0.02\nclip-high = 0.28\nfull = true\nsave_every = 1\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    cmd = command_line(data, tiny_model_dir, data / "cfg", "--config", str(data / "train.toml"))
    cmd[cmd.index("--lr") + 1] = "3e-3"  # the command line wins over the file's lr
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    config = json.loads((data / "cfg" / "config.json").read_text())
    assert (config["steps"], config["lr"], config["clip_high"], config["lora"]) == (1, 3e-3, 0.28, False)
    (data / "bad.toml").write_text("stepz = 2\n")
    bad = subprocess.run(command_line(data, tiny_model_dir, data / "bad", "--config", str(data / "bad.toml")),
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option 'stepz'" in bad.stderr


def test_a_curriculum_run_logs_easy_rewards_first_and_hard_ones_after(data, tiny_model_dir):
    (data / "easy.jsonl").write_text("".join(json.dumps({"id": f"e{i}", "problem": f"{i}", "answer": "x"}) + "\n"
                                             for i in range(3)))
    run_train(make_cfg(data, tiny_model_dir, easy=str(data / "easy.jsonl"), curriculum=2, group_size=4))
    rows = metric_rows(data / "run")
    logged = [[kind for kind in ("guided", "unguided", "easy") if rows[i].get(f"reward/{kind}") is not None]
              for i in range(4)]
    assert logged == [["easy"], ["easy"], ["guided", "unguided"], ["guided", "unguided"]]


def test_annealed_guidance_shows_whole_lines_from_the_whole_derivation_down(char_tokenizer):
    from pope_cli.stages.train.guidance import AnnealedPrefixes, prefix_share

    assert [prefix_share("anneal", step, 4) for step in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert {prefix_share("fixed", step, 4) for step in range(6)} == {1.0}
    annealed = AnnealedPrefixes(char_tokenizer)
    # 10 characters; the derivation (all lines but the answer's) is 8 of them: D = 0.8, whatever
    # rung make-prefixes chose. Lines are shown whole: 0.75 x 0.8 = 0.6 shows 2 lines (0.5), not 6 characters.
    record = {"id": "p", "solution": "12\n34\n56\nA", "prefix": "12", "prefix_fraction": 0.2}
    shown = [annealed.record(record, share) for share in (1.0, 0.75, 0.5, 0.25, 0.2)]
    assert [r and r["prefix"] for r in shown] == ["12\n34\n56", "12\n34", "12", "12", None]
    fractions = [annealed.record(record, share) for share in (1.0, 0.75, 0.5, 0.19)]
    assert [r["prefix_fraction"] if r else 0.0 for r in fractions] == [0.8, 0.5, 0.2, 0.0]
    assert annealed.record({"id": "q", "solution": "one line, the answer"}, 1.0) is None


def test_an_annealed_run_logs_its_schedule_and_ends_on_unguided_prompts(tmp_path, tiny_model_dir):
    data = write_prefix_workspace(tmp_path, [
        {"id": f"p{i}", "problem": f"{i}+{i}", "answer": "x", "solution": "ab\ncd\nx", "prefix": "ab",
         "prefix_fraction": 0.25} for i in range(8)])
    run_train(make_cfg(data, tiny_model_dir, guidance="anneal", anneal_steps=2, group_size=4, log_completions=8,
                       log_every=1))
    rows = metric_rows(data / "run")
    assert [row["guidance/prefix_share"] for row in rows] == [1.0, 0.5, 0.0, 0.0]
    # "ab\ncd" is 5 of the 7 tokens, "ab" 2: half of 5/7 leaves room for "ab" only, then nothing.
    assert [row["guidance/prefix_fraction"] for row in rows] == pytest.approx([5 / 7, 2 / 7, 0.0, 0.0])
    logged = [json.loads(line) for line in (data / "run" / "completions.jsonl").read_text().splitlines()]
    tails = {row["step"]: row["prompt_tail"] for row in logged if row["kind"] == "guided"}
    assert tails[1].endswith("P:ab\ncd C:<|end|><|assistant|>") and tails[2].endswith("P:ab C:<|end|><|assistant|>")
    assert tails[3].endswith("A:<|end|><|assistant|>") and tails[4].endswith("A:<|end|><|assistant|>")
    (tmp_path / "unwritten").mkdir()
    unwritten = write_prefix_workspace(tmp_path / "unwritten", [{"id": "p0", "problem": "1+1", "answer": "x",
                                                                 "prefix": "ab", "prefix_fraction": 0.5}])
    with pytest.raises(PopeError, match="--guidance anneal: .* 1 guided record\\(s\\) have no `solution`"):
        run_train(make_cfg(unwritten, tiny_model_dir, guidance="anneal"))
    with pytest.raises(PopeError, match="--anneal-steps: only with --guidance anneal"):
        make_cfg(data, tiny_model_dir, anneal_steps=3)
    with pytest.raises(PopeError, match="--guidance: 'sometimes' is not one of fixed, anneal, adaptive"):
        make_cfg(data, tiny_model_dir, guidance="sometimes")
    with pytest.raises(PopeError, match="--guidance: adaptive decides from the unguided groups: it needs --mode pope"):
        make_cfg(data, tiny_model_dir, guidance="adaptive", mode="guided")


def test_adaptive_guidance_decides_from_a_scripted_history():
    from pope_cli.stages.train.guidance import AdaptiveGuidance

    record = {"id": "p", "prefix": "abcdef", "prefix_fraction": 0.5, "rung": 3, "ladder": [[2, 2], [4, 4], [6, 6]],
              "solution_tokens": 12}
    rule = AdaptiveGuidance(0.5)
    assert rule.wanted(record) and rule.record(record) is record
    assert rule.observe("guided", record, [True, False, False, False]) is False  # 1 of 4 is not more than half
    assert rule.observe("guided", record, [True, True, False, False]) is False  # 2 of 4 neither
    assert rule.observe("guided", record, [True, True, True, False]) is True
    assert rule.record(record)["prefix"] == "abcd" and rule.record(record)["prefix_fraction"] == 4 / 12
    rule.observe("unguided", record, [False, False])
    assert rule.wanted(record)
    rule.observe("unguided", record, [False, True])
    assert not rule.wanted(record)
    resumed = AdaptiveGuidance(0.5, rule.state())
    for current in (rule, resumed):
        assert current.observe("guided", record, [True] * 4) is True  # rung 2 -> 1
        assert current.observe("guided", record, [True] * 4) is False  # the first rung is the shortest
        assert current.record(record)["prefix"] == "ab" and not current.wanted(record)
    assert resumed.state() == rule.state() == {"unguided_solved": {"p": True}, "rung": {"p": 1}}


def test_an_adaptive_run_logs_its_decisions_and_resumes_to_the_same_rows(tmp_path, tiny_model_dir):
    from conftest import write_prefix_workspace

    rows = [{"id": f"p{i}", "problem": f"{i}+{i}", "answer": "x", "solution": "abcdefgh", "prefix": "abcd",
             "prefix_fraction": 0.5, "rung": 2, "rungs": 2, "ladder": [[2, 2], [4, 4]], "solution_tokens": 8}
            for i in range(4)]
    data = write_prefix_workspace(tmp_path, rows)
    common = dict(guidance="adaptive", guidance_shorten_at=0.2, group_size=4, steps=6, save_every=3)
    run_train(make_cfg(data, tiny_model_dir, out=str(data / "whole"), **common))
    whole = metric_rows(data / "whole")
    assert all({"guidance/guided_skipped", "guidance/shortened", "guidance/prefix_fraction"} <= set(r) for r in whole)
    assert sum(r["guidance/shortened"] for r in whole) >= 1  # starts_lower solves some guided groups
    state = json.loads((data / "whole" / "checkpoints" / "step_000006" / "state.json").read_text())["guidance"]
    assert state["rung"] == {pid: 1 for pid in state["rung"]}  # each shortening took a problem from rung 2 to 1
    assert len(state["rung"]) == sum(r["guidance/shortened"] for r in whole)
    assert whole[0]["guidance/prefix_fraction"] == 0.5
    assert all(r["prompts/guided"] + r["guidance/guided_skipped"] == 2 for r in whole)  # 4 prompts, 1:1
    run_train(make_cfg(data, tiny_model_dir, out=str(data / "extended"), **{**common, "steps": 3}))
    run_train(make_cfg(data, tiny_model_dir, out=str(data / "extended"), **common))
    assert metric_rows(data / "extended") == whole
    del rows[0]["ladder"]
    write_prefix_workspace(tmp_path, rows)
    with pytest.raises(PopeError, match=r"--guidance adaptive: .*1 record\(s\) have no rung ladder \(first: 'p0'\)"):
        run_train(make_cfg(data, tiny_model_dir, out=str(data / "old"), **common))
