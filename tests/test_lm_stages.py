"""Every stage on the real model (SmolLM2-135M-Instruct from `pope lm get`) in bf16, as a user runs
them: `pope filter-hard`, `make-prefixes`, `train` (LoRA) and `eval` on word problems with the
stated-answer reward, a few samples each, on the hf engine (and, in tests/test_lm_vllm.py, on
vLLM's CPU build). What a toy cannot show: a BPE tokenizer cutting prefixes, the chat template, two
end tokens and a bf16 sampler beside a bf16 trainer on a real model's log-probs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lm_real import TEMPLATES, real_lm_dir
from pope_cli.lm.problems import WordProblemsConfig, write_word_problems
from vllm_real import pope, read_jsonl

MODEL = real_lm_dir()
pytestmark = pytest.mark.real_lm

REWARD = "pope_cli.lm.reward:score"
SAMPLE = ["--model", str(MODEL), "--dtype", "bfloat16", "--temperature", "0.8", "--max-new-tokens", "64",
          "--reward", REWARD, "--reward-workers", "1"]
UNGUIDED = ["--unguided-template", str(TEMPLATES / "unguided.txt")]
GUIDED = ["--template", str(TEMPLATES / "guided.txt")]
HF = ["--backend", "hf", "--device", "cpu"]
# Largest mean k3 KL between the bf16 sampler's and the bf16 trainer's log-probs of the same tokens
# we accept on this model: measured 1.6e-3 and 1.7e-3 (hf, LoRA over the bf16 base), where the toy
# gave 1.6e-6 to 2.2e-4 (vLLM) and up to 4.8e-6 (hf).
MISMATCH_KL_BOUND = 1e-2
# Two short LoRA steps rewarded for stating an answer at all (lm_real.states_an_answer): the real
# reward gives this model's hard problems no group with signal, and then nothing trains.
TRAIN = ["--mode", "pope", "--steps", "2", "--prompts-per-step", "2", "--group-size", "4", "--lora-rank", "8",
         "--lora-alpha", "16", "--lr", "1e-3", "--reward", "lm_real:states_an_answer"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    """filter-hard → make-prefixes → train → eval on 6 three-step problems, all on hf in bf16."""
    work = tmp_path_factory.mktemp("lm-chain")
    write_word_problems(WordProblemsConfig(out=str(work / "data"), n_pool=6, n_heldout=0, steps=[3], sizes=["small"]))
    pope("filter-hard", str(work / "data" / "pool.jsonl"), *SAMPLE, *UNGUIDED, *HF, "--k", "4", "--chunk", "4",
         "--out", str(work / "filter"))
    # Nearly every three-step problem is hard for this model; the few solved ones go to easy.jsonl.
    hard = work / "filter" / "hard.jsonl"
    pope("make-prefixes", str(hard), *SAMPLE, *HF, *GUIDED, "--max-fraction", "0.75", "--n", "4",
         "--out", str(work / "prefixes.jsonl"))
    pope("train", str(work / "prefixes.jsonl"), *SAMPLE, *UNGUIDED, *HF, *GUIDED, *TRAIN, "--out", str(work / "run"))
    pope("eval", str(work / "prefixes.jsonl"), "--mode", "unguided,guided", "--model", str(work / "run" / "final"),
         *SAMPLE[2:], *UNGUIDED, *HF, *GUIDED, "--n", "2", "--k", "1,2", "--bootstrap", "0", "--out", str(work / "eval"))
    return work


def test_filter_hard_decides_every_problem_in_bf16(chain):
    stats = read_jsonl(chain / "filter" / "stats.jsonl")
    assert sorted(r["id"] for r in stats) == [f"3-step-small-pool-{i:04d}" for i in range(6)]
    hard = read_jsonl(chain / "filter" / "hard.jsonl")
    easy = read_jsonl(chain / "filter" / "easy.jsonl")
    assert len(hard) + len(easy) == 6 and len(hard) >= 1
    manifest = json.loads((chain / "filter" / "manifest.json").read_text())
    assert manifest["precision"]["dtype"] == "bfloat16"


def test_prefixes_are_whole_sentences_of_the_worked_solution(chain):
    rows = read_jsonl(chain / "prefixes.jsonl")
    hard = {r["id"]: r for r in read_jsonl(chain / "filter" / "hard.jsonl")}
    assert rows and {r["id"] for r in rows} <= set(hard)
    for row in rows:
        solution = hard[row["id"]]["solution"]
        assert solution.startswith(row["prefix"]) and row["prefix"].endswith(".")
        assert 0 < row["prefix_fraction"] <= 0.75


def test_training_on_the_real_model_logs_a_small_bf16_mismatch_and_moves_the_adapter(chain):
    from safetensors.torch import load_file

    rows = read_jsonl(chain / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert sum(r["train_tokens"] for r in rows) > 0
    for row in rows:
        print(f"hf bf16 step {row['step']}: mismatch/kl {row['mismatch/kl']} ratio_max {row['mismatch/ratio_max']}")
        if row["train_tokens"]:
            assert 0 <= row["mismatch/kl"] < MISMATCH_KL_BOUND, row
            assert abs(row["mismatch/ratio_mean"] - 1) < 0.05
    adapter = load_file(chain / "run" / "final" / "adapter_model.safetensors")
    assert any(name.endswith("lora_B.weight") and tensor.abs().max() > 0 for name, tensor in adapter.items())
    config = json.loads((chain / "run" / "config.json").read_text())
    assert config["model"]["dtype"] == "bfloat16"


def test_eval_scores_every_unit_of_both_modes(chain):
    samples = read_jsonl(chain / "eval" / "samples.jsonl")
    prefixes = read_jsonl(chain / "prefixes.jsonl")
    for mode in ("unguided", "guided"):
        assert len([s for s in samples if s["mode"] == mode]) == 2 * len(prefixes)
    assert all("<|im_end|>" not in s["text"] and "<|endoftext|>" not in s["text"] for s in samples)
    summary = json.loads((chain / "eval" / "summary.json").read_text())
    (model,) = summary["models"]
    assert set(summary["models"][model]) == {"unguided", "guided"}
