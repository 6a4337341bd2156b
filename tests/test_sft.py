"""`pope sft` on tiny Qwen2 models: the loss falls, only response tokens are targets, a SIGKILLed
run resumes to the same metrics and weights, guided samples are kept by the reward, and the
output trains and evaluates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pope_cli.shared.config import FieldMap, ModelOptions, PromptOptions, RewardOptions, SamplingOptions
from pope_cli.shared.errors import PopeError
from pope_cli.stages.sft.config import SftConfig
from pope_cli.stages.sft.trainer import response_token_stats, run_sft, step_indices
from pope_cli.stages.train.batch import Sample, collate

torch.set_num_threads(1)
TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def data(tmp_path):
    """Eight problems with oracle solutions, as a problems file and as a prefixes file."""
    (tmp_path / "unguided.txt").write_text("Q:{problem} A:")
    (tmp_path / "guided.txt").write_text("Q:{problem} P:{prefix} C:")
    rows = [{"id": f"p{i}", "problem": f"{i}+{i}", "answer": str(2 * i), "solution": f"{i} and {i} make {2 * i}",
             "prefix": f"{i} and", "prefix_fraction": 0.3, "status": "found", "template": str(tmp_path / "guided.txt")}
            for i in range(8)]
    (tmp_path / "prefixes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps({k: r[k] for k in ("id", "problem", "answer", "solution")})
                                                     + "\n" for r in rows))
    return tmp_path


def make_cfg(root: Path, model_dir, **overrides) -> SftConfig:
    fields = dict(data=str(root / "problems.jsonl"), out=str(root / "run"),
                  model=ModelOptions(str(model_dir), backend="hf", device="cpu"), fields=FieldMap(),
                  prompt=PromptOptions(unguided_template=str(root / "unguided.txt")),
                  sampling=SamplingOptions(max_new_tokens=16), reward=RewardOptions("math", workers=1),
                  steps=20, examples_per_step=4, micro_batch_size=4, lora=False, lr=1e-2, save_every=100)
    fields.update(overrides)
    return SftConfig(**fields)


def metric_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "final" / "model.safetensors")


def no_engine():
    raise AssertionError("oracle SFT samples nothing")


def test_loss_falls_and_metrics_are_logged(data, tiny_model_dir):
    summary = run_sft(make_cfg(data, tiny_model_dir), no_engine, no_engine)
    rows = metric_rows(data / "run")
    assert [r["step"] for r in rows] == list(range(1, 21)) and summary["data"] == {"problems": 8, "kept": 8}
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    assert rows[-1]["token_accuracy"] > rows[0]["token_accuracy"]
    assert all(0 <= r["token_accuracy"] <= 1 and r["entropy"] > 0 and r["sequences"] == 4 for r in rows)
    assert rows[1]["epoch"] == 1.0  # 8 examples, 4 per step


def test_steps_cover_shuffled_epochs_and_epochs_set_the_step_count(data, tiny_model_dir):
    first_epoch = step_indices(8, 4, 0, 0) + step_indices(8, 4, 0, 1)
    assert sorted(first_epoch) == list(range(8)) and first_epoch != list(range(8))
    assert step_indices(8, 4, 0, 1) == step_indices(8, 4, 0, 1)  # a pure function of (seed, step)
    assert step_indices(8, 3, 0, 2)[-1:] == step_indices(8, 1, 0, 8)  # positions run across epochs
    run_sft(make_cfg(data, tiny_model_dir, steps=None, epochs=1.5, examples_per_step=4), no_engine, no_engine)
    assert len(metric_rows(data / "run")) == 3


def test_only_response_tokens_are_targets(tiny_model_dir, char_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt, short_prompt = char_tokenizer("Q:1+1 A:").input_ids, char_tokenizer("Q:2 A:").input_ids
    samples = [Sample(prompt, [40, 41, 42, 1], 1.0), Sample(short_prompt, [43, 1], 1.0)]
    batch = collate(samples, 0)
    grads = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, i, out: None if out.register_hook(grads.append) else None)
    stats = response_token_stats(model, batch)
    ((stats["nll"] * stats["mask"]).sum() / 6).backward()
    hook.remove()
    (grad,) = grads  # (B, C + 1, V): the prompt's logits are never built
    assert grad.shape[1] == 4 + 1
    assert torch.all(grad[:, -1] == 0) and torch.all(grad[1, 2:4] == 0)  # past the last target; padding
    assert torch.all(grad[0, :4].abs().sum(-1) > 0) and torch.all(grad[1, :2].abs().sum(-1) > 0)
    with torch.no_grad():  # the loss is the mean NLL of the six response tokens, by a plain full forward
        expected = []
        for s in samples:
            logp = torch.log_softmax(model(input_ids=torch.tensor([s.prompt + s.completion])).logits[0], -1)
            expected += [-logp[len(s.prompt) - 1 + t, tok] for t, tok in enumerate(s.completion)]
    model.zero_grad()
    from pope_cli.stages.sft.trainer import sft_step as step

    class Frozen:
        def step(self):
            pass

        def zero_grad(self, set_to_none=True):
            pass

        def get_last_lr(self):
            return [0.0]

    row = step(model, Frozen(), Frozen(), samples, 1, 0, torch.device("cpu"), 1.0)
    assert row["loss"] == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5) and row["tokens"] == 6


def test_micro_batches_do_not_change_the_step(data, tiny_model_dir):
    run_sft(make_cfg(data, tiny_model_dir, steps=3, micro_batch_size=4), no_engine, no_engine)
    run_sft(make_cfg(data, tiny_model_dir, steps=3, micro_batch_size=1, out=str(data / "micro")), no_engine, no_engine)
    whole, micro = metric_rows(data / "run"), metric_rows(data / "micro")
    for a, b in zip(whole, micro):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)


def command_line(data: Path, model_dir, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pope_cli.cli", "sft", str(data / "problems.jsonl"), "--model", str(model_dir),
            "--out", str(out), "--unguided-template", str(data / "unguided.txt"), "--full", "--lr", "1e-2",
            "--examples-per-step", "4", "--micro-batch-size", "4", "--backend", "hf", "--device", "cpu", *extra]


def test_resume_after_sigkill_gives_the_same_metrics_and_weights(data, tiny_model_dir):
    args = ["--steps", "60", "--save-every", "10"]
    killed = data / "killed"
    proc = subprocess.Popen(command_line(data, tiny_model_dir, killed, *args), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics, deadline = killed / "metrics.jsonl", time.time() + 120
    while not metrics.exists() or metrics.read_bytes().count(b"\n") < 12:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()  # it really died mid-run
    resumed = subprocess.run(command_line(data, tiny_model_dir, killed, *args), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after step" in resumed.stderr
    run_sft(make_cfg(data, tiny_model_dir, out=str(data / "whole"), steps=60, save_every=10), no_engine, no_engine)
    assert metric_rows(killed) == metric_rows(data / "whole")
    whole = final_weights(data / "whole")
    assert all(torch.equal(tensor, whole[name]) for name, tensor in final_weights(killed).items())


def test_guided_samples_keep_the_completions_the_reward_accepts(data, tiny_model_dir, char_tokenizer):
    from fakes import ScriptedEngine

    from pope_cli.stages.sft.data import joined_response

    assert joined_response("a\nb", "c") == "a\nb\nc" and joined_response("a\nb", "a\nb\nc") == "a\nb\nc"

    class EndsRight:
        def score(self, completions, records):
            assert all("prefix" not in r for r in records)  # judged as unguided solutions
            return [float(c.endswith(f"make {r['answer']}")) for c, r in zip(completions, records)]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    def answer(prompt: str, seed: int) -> str:  # even streams right, odd ones wrong; some restate the prefix
        i = int(prompt.split("Q:")[1].split("+")[0])
        text = f"{i} make {2 * i}" if seed % 2 == 0 else f"{i} make 99"
        return f"{i} and {text}" if seed % 3 == 0 else text

    cfg = make_cfg(data, tiny_model_dir, data=str(data / "prefixes.jsonl"), source="guided-samples", n=4, steps=2)
    summary = run_sft(cfg, lambda: ScriptedEngine(char_tokenizer, answer), EndsRight)
    examples = [json.loads(line) for line in (data / "run" / "sft_data.jsonl").read_text().splitlines()]
    assert summary["data"] == {"problems": 8, "samples": 32, "kept": len(examples), "problems_kept": 8}
    assert 8 <= len(examples) < 32
    for e in examples:  # prefix + completion, or the completion alone where it restated the prefix
        i = e["id"][1]
        assert e["response"] in (f"{i} and\n{i} make {2 * int(i)}", f"{i} and {i} make {2 * int(i)}")
    rerun = run_sft(cfg, lambda: pytest.fail("a resume reads sft_data.jsonl back"), EndsRight)
    assert rerun["data"] == summary["data"]


def test_bad_input_is_refused_before_anything_is_written(data, tiny_model_dir):
    (data / "bare.jsonl").write_text(json.dumps({"id": "a", "problem": "1+1", "answer": "2"}) + "\n")
    with pytest.raises(PopeError, match=r"bare.jsonl: 1 problem\(s\) have no oracle solution"):
        run_sft(make_cfg(data, tiny_model_dir, data=str(data / "bare.jsonl")), no_engine, no_engine)
    with pytest.raises(PopeError, match="not a prefixes file"):
        run_sft(make_cfg(data, tiny_model_dir, data=str(data / "bare.jsonl"), source="guided-samples"), no_engine,
                no_engine)
    assert not (data / "run").exists()
    with pytest.raises(PopeError, match="--source: 'rl' is not one of oracle, guided-samples"):
        make_cfg(data, tiny_model_dir, source="rl")


def test_final_trains_and_evaluates(data, tiny_model_dir):
    from pope_cli.shared.runtime import engine_factory, scorer_factory
    from pope_cli.stages.evaluate import EvalConfig, run_eval
    from pope_cli.stages.train.config import TrainConfig
    from pope_cli.stages.train.trainer import run_train

    run_sft(make_cfg(data, tiny_model_dir, steps=2, lora=True, lora_rank=4, lora_alpha=8, lr=1e-2), no_engine, no_engine)
    final = data / "run" / "final"
    assert (final / "adapter_config.json").is_file()
    model = ModelOptions(str(final), backend="hf", device="cpu")
    prompt, reward = PromptOptions(unguided_template=str(data / "unguided.txt")), RewardOptions("train_rewards:starts_lower", workers=1)
    run_train(TrainConfig(prefixes=str(data / "prefixes.jsonl"), out=str(data / "rl"), model=model, prompt=prompt,
                          sampling=SamplingOptions(temperature=1.0, max_new_tokens=4), reward=reward, steps=1,
                          prompts_per_step=2, group_size=2))
    assert (data / "rl" / "final" / "adapter_config.json").is_file()
    summary = run_eval(EvalConfig(data=str(data / "problems.jsonl"), out=str(data / "eval"), models=[str(final)],
                                  model=model, fields=FieldMap(), prompt=prompt, sampling=SamplingOptions(max_new_tokens=4),
                                  reward=reward, n=2, ks=[1, 2], modes=["unguided"], bootstrap=0, seed=0),
                       lambda opts: engine_factory(opts)(), scorer_factory(reward))
    (modes,) = summary["models"].values()
    assert modes["unguided"]["problems"] == 8


def test_trackers_get_every_step_and_logged_completions_are_the_policys_own(data, tiny_model_dir):
    from pope_cli.shared.config import TrackerOptions
    from pope_cli.shared.runtime import scorer_factory
    from test_trackers import tensorboard_scalars

    cfg = make_cfg(data, tiny_model_dir, steps=10, trackers=TrackerOptions(report_to=["tensorboard"]),
                   log_completions=2, log_every=5)
    run_sft(cfg, no_engine, scorer_factory(cfg.reward))
    rows = metric_rows(data / "run")
    scalars = tensorboard_scalars(data / "run" / "tensorboard")
    assert [step for step, _ in scalars["loss"]] == list(range(1, 11))
    assert [value for _, value in scalars["loss"]] == pytest.approx([row["loss"] for row in rows], rel=1e-6)
    assert [value for _, value in scalars["token_accuracy"]] == pytest.approx([r["token_accuracy"] for r in rows])
    logged = [json.loads(line) for line in (data / "run" / "completions.jsonl").read_text().splitlines()]
    assert [(row["step"], row["problem_id"], row["kind"]) for row in logged] == [
        (5, "p0", "unguided"), (5, "p1", "unguided"), (10, "p0", "unguided"), (10, "p1", "unguided")]
    assert [row["prompt_tail"].endswith("Q:0+0 A:<|end|><|assistant|>") for row in logged] == [True, False] * 2
    assert all(row["reward"] in (0.0, 1.0) and 0 < row["length"] <= 16 for row in logged)
    assert logged[0]["completion"] != logged[2]["completion"]  # the policy changed between the two

    straight = (data / "run" / "completions.jsonl").read_bytes()
    run_sft(make_cfg(data, tiny_model_dir, steps=5, save_every=5, log_completions=2, log_every=5, overwrite=True),
            no_engine, scorer_factory(cfg.reward))
    run_sft(make_cfg(data, tiny_model_dir, steps=10, save_every=5, log_completions=2, log_every=5), no_engine,
            scorer_factory(cfg.reward))
    assert (data / "run" / "completions.jsonl").read_bytes() == straight
