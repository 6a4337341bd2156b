"""The real model (SmolLM2-135M-Instruct) on vLLM's CPU build in bf16, against pope's hf engine:
pass rates and how often an answer is stated agree per problem within sampling error (a paired
t-test over problems), and a LoRA run sampling on vLLM logs a bf16 sampler/trainer mismatch within
the bound the hf run meets (tests/test_lm_stages.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lm_real import TEMPLATES, real_lm_dir
from pope_cli.lm.problems import WordProblemsConfig, write_word_problems
from pope_cli.lm.reward import stated_answer
from test_lm_stages import GUIDED, HF, MISMATCH_KL_BOUND, SAMPLE, TRAIN, UNGUIDED
from vllm_real import paired_t, per_problem_rates, pope, read_jsonl, require_vllm

require_vllm()
MODEL = real_lm_dir()
pytestmark = [pytest.mark.real_vllm, pytest.mark.real_lm]

VLLM = ["--backend", "vllm", "--enforce-eager"]
# |t| above this with 15 degrees of freedom happens by chance about once in 300 draws.
T_LIMIT = 3.5


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> Path:
    """16 one-step problems with small operands: the tier this model solves sometimes."""
    out = tmp_path_factory.mktemp("lm-data")
    write_word_problems(WordProblemsConfig(out=str(out), n_pool=16, n_heldout=0, steps=[1], sizes=["small"]))
    return out / "pool.jsonl"


def statement_rates(samples: list[dict]) -> dict[str, float]:
    """id → share of samples that state an answer at all ("The answer is ...")."""
    stated: dict[str, list[bool]] = {}
    for row in samples:
        stated.setdefault(row["id"], []).append(stated_answer(row["text"]) is not None)
    return {key: sum(values) / len(values) for key, values in stated.items()}


def test_vllm_and_hf_sample_the_same_distribution_in_bf16(tmp_path, problems):
    argv = ["eval", str(problems), *SAMPLE, *UNGUIDED, "--n", "8", "--k", "1,8", "--bootstrap", "0"]
    samples = {}
    for name, backend in (("vllm", VLLM), ("hf", HF)):
        pope(*argv, *backend, "--out", str(tmp_path / name))
        samples[name] = read_jsonl(tmp_path / name / "samples.jsonl")
    for what, rates in (("pass rate", per_problem_rates), ("answer stated", statement_rates)):
        vllm, hf = rates(samples["vllm"]), rates(samples["hf"])
        assert vllm.keys() == hf.keys() and len(vllm) == 16
        t = paired_t([vllm[k] for k in sorted(vllm)], [hf[k] for k in sorted(vllm)])
        print(f"{what}: vllm {sum(vllm.values()) / 16:.3f} hf {sum(hf.values()) / 16:.3f} t {t:+.2f}")
        assert abs(t) < T_LIMIT, f"{what}: vLLM and hf disagree beyond sampling error (t = {t:.2f})"


def test_a_lora_run_sampling_on_vllm_logs_a_small_bf16_mismatch(tmp_path, problems):
    prefixes = tmp_path / "prefixes.jsonl"
    rows = read_jsonl(problems)[:4]
    template = str(TEMPLATES / "guided.txt")
    prefixes.write_text("".join(json.dumps({**row, "prefix": row["solution"].split(". ")[0] + ".", "prefix_fraction": 0.5,
                                            "template": template}) + "\n" for row in rows))
    pope("train", str(prefixes), *SAMPLE, *UNGUIDED, *VLLM, *GUIDED, *TRAIN, "--out", str(tmp_path / "run"))
    metrics = [row for row in read_jsonl(tmp_path / "run" / "metrics.jsonl") if row["train_tokens"]]
    assert metrics
    for row in metrics:
        print(f"vLLM bf16 step {row['step']}: mismatch/kl {row['mismatch/kl']:.2e} "
              f"ratio_max {row['mismatch/ratio_max']:.4f}")
        assert 0 <= row["mismatch/kl"] < MISMATCH_KL_BOUND and abs(row["mismatch/ratio_mean"] - 1) < 0.05
    assert max(row["mismatch/kl"] for row in metrics) > 1e-9  # two bf16 implementations do differ
