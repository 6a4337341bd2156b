"""filter-hard, make-prefixes and eval on vLLM itself (its CPU build), the shipped toy model in fp32.

Each stage writes valid files, and the same seeds give the same bytes in a second run on two
vLLM engines (`--workers 2`) that is killed with SIGKILL part-way and rerun. vLLM's pass
rates agree with the hf engine's on the same problems within sampling error: a paired t-test
over problems, which also has to reject two distributions known to differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processes import lines_in
from vllm_real import (
    COMMON, GUIDED, HF, TOY, UNGUIDED, VLLM, engine_script, killed_part_way, paired_t, per_problem_rates, pope, read_jsonl, require_vllm,
    toy_rows,
)

require_vllm()
pytestmark = pytest.mark.real_vllm

# |t| above this with 23-39 degrees of freedom happens by chance about once in 500 draws.
T_LIMIT = 3.5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """24 held-out hard problems with their shipped prefixes, the same plus 16 easy problems, and 12
    other hard problems."""
    root = tmp_path_factory.mktemp("data")
    pope("toy", "make-data", "--out", str(root / "toy"), "--n-easy", "16", "--n-hard", "1", "--n-heldout", "1")
    prefixes = toy_rows(TOY / "heldout" / "prefixes.jsonl", 24, root / "prefixes.jsonl")
    mixed = [{k: row[k] for k in ("id", "problem", "answer", "solution")} for row in read_jsonl(prefixes)]
    mixed += read_jsonl(root / "toy" / "easy.jsonl")
    (root / "mixed.jsonl").write_text("".join(json.dumps(row) + "\n" for row in mixed))
    hard = toy_rows(TOY / "heldout" / "hard.jsonl", 12, root / "hard.jsonl")
    return {"prefixes": prefixes, "mixed": root / "mixed.jsonl", "hard": hard}


@pytest.fixture(scope="module")
def single_engine(data, tmp_path_factory):
    """`single_engine(stage)`: that stage's files from one vLLM engine, run once per module for
    the tests that compare other runs against it."""
    runs: dict[str, list[Path]] = {}

    def files_of(name: str) -> list[Path]:
        if name not in runs:
            argv, files, _ = stage(name, data, tmp_path_factory.mktemp(name))
            pope(*argv, *VLLM)
            check_valid(name, files)
            runs[name] = files
        return runs[name]
    return files_of


def stage(name: str, data: dict[str, Path], out: Path) -> tuple[list[str], list[Path], Path]:
    """(argv, the files that must match, the file to watch for a kill) of one stage on the toy.
    A small --batch-size makes many rounds, so a kill lands between them."""
    model = ["--model", str(TOY / "model"), "--batch-size", "16", *COMMON]
    unguided = ["--unguided-template", UNGUIDED]
    if name == "filter-hard":
        argv = ["filter-hard", str(data["mixed"]), *model, *unguided, "--k", "16", "--chunk", "8", "--save-samples",
                "--out", str(out)]
        return argv, [out / f for f in ("stats.jsonl", "hard.jsonl", "easy.jsonl", "samples.jsonl")], out / "stats.jsonl"
    if name == "make-prefixes":
        argv = ["make-prefixes", str(data["hard"]), *model, *GUIDED, "--n", "8", "--max-fraction", "0.7",
                "--out", str(out / "prefixes.jsonl")]
        return argv, [out / "prefixes.jsonl"], out / "prefixes.jsonl"
    argv = ["eval", str(data["prefixes"]), "--prefixes", str(data["prefixes"]), *model, *unguided, *GUIDED, "--mode",
            "unguided,guided", "--n", "8", "--k", "1,8", "--bootstrap", "200", "--out", str(out)]
    return argv, [out / "samples.jsonl", out / "summary.json"], out / "samples.jsonl"


def check_valid(name: str, files: list[Path]) -> None:
    rows = read_jsonl(files[0]) if files[0].suffix == ".jsonl" else []
    if name == "filter-hard":
        assert len(rows) == 40 and all(r["hard"] == (r["correct"] == 0) for r in rows)
        assert sum(not r["hard"] for r in rows) >= 12  # most of the easy problems are solved
    elif name == "make-prefixes":
        assert len(rows) == 12 and {r["status"] for r in rows} <= {"found", "not_found"}
        assert any(r["status"] == "found" and r["prefix"] for r in rows)
    else:
        assert len(rows) == 24 * 2 * 8 and all(isinstance(r["correct"], bool) for r in rows)


@pytest.mark.parametrize("name", ["filter-hard", "make-prefixes", "eval"])
def test_a_stage_on_two_vllm_engines_killed_part_way_and_rerun_writes_the_bytes_of_one_engine(tmp_path, data, name,
                                                                                            single_engine):
    files = single_engine(name)
    argv, two_files, watched = stage(name, data, tmp_path / "two")
    killed_part_way([*argv, *VLLM, "--workers", "2"], lines_in(watched, 3))
    pope(*argv, *VLLM, "--workers", "2")
    for first, second in zip(files, two_files):
        assert second.read_bytes() == first.read_bytes(), f"--workers 2, killed and rerun: {first.name}"


def test_vllm_samples_the_distribution_the_hf_engine_samples(tmp_path, data, single_engine):
    """Per-problem correct rates of `pope eval` on both engines, 8 samples per problem and mode."""
    argv, files, _ = stage("eval", data, tmp_path / "hf")
    pope(*argv, *HF)
    rates = {"vllm": read_jsonl(single_engine("eval")[0]), "hf": read_jsonl(files[0])}
    for mode in ("unguided", "guided"):
        vllm, hf = per_problem_rates(rates["vllm"], mode), per_problem_rates(rates["hf"], mode)
        assert vllm.keys() == hf.keys()
        t = paired_t([vllm[k] for k in sorted(vllm)], [hf[k] for k in sorted(vllm)])
        print(f"{mode}: vllm {sum(vllm.values()) / len(vllm):.3f} hf {sum(hf.values()) / len(hf):.3f} t {t:+.2f}")
        assert abs(t) < T_LIMIT, f"{mode}: vLLM and hf disagree beyond sampling error (t = {t:.2f})"
    # The test has power: the same problems with and without a prefix are told apart.
    guided, unguided = per_problem_rates(rates["vllm"], "guided"), per_problem_rates(rates["vllm"], "unguided")
    t = paired_t([guided[k] for k in sorted(guided)], [unguided[k] for k in sorted(guided)])
    print(f"guided against unguided on the same hard problems: t {t:+.2f}")
    assert abs(t) > T_LIMIT


def test_seeded_prompts_longer_than_one_prefill_step_sample_on_cpu():
    """128 seeded prompts of 48 tokens are 6,144 prompt tokens, over vLLM's 4,096 per step: with
    chunked prefill the CPU build rewinds a generator that has no offset and its engine dies
    ('CPU Generator does not use offset'). Each sample must also be the one it is alone."""
    printed = engine_script(
        "import json\n"
        "from pope_cli.shared.engines.base import Request, Sampling\n"
        "prompts = [[5 + (i + j) % 200 for j in range(48)] for i in range(128)]\n"
        "sampling = Sampling(temperature=1.0, max_new_tokens=8)\n"
        "together = engine.generate([Request(p, 1, 1000 + i) for i, p in enumerate(prompts)], sampling)\n"
        "alone = [engine.generate([Request(prompts[i], 1, 1000 + i)], sampling)[0] for i in (0, 77, 127)]\n"
        "print(json.dumps([[g[0].token_ids for g in together], [a[0].token_ids for a in alone]]))\n")
    together, alone = json.loads(printed.splitlines()[-1])
    assert len(together) == 128 and all(len(tokens) >= 1 for tokens in together)
    assert [together[i] for i in (0, 77, 127)] == alone


def test_vllm_engines_as_ray_actors_write_the_bytes_of_one_engine(tmp_path, data, single_engine):
    """`--ray local`: a Ray cluster started on 127.0.0.1 for the run, two vLLM actors."""
    files = single_engine("eval")
    ray_argv, ray_files, _ = stage("eval", data, tmp_path / "ray")
    pope(*ray_argv, *VLLM, "--ray", "local", "--workers", "2")
    for first, second in zip(files, ray_files):
        assert second.read_bytes() == first.read_bytes(), first.name
