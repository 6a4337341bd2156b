"""pope lm make-data: seeded word problems whose worked solutions compute their answers, one step a sentence."""

from __future__ import annotations

import itertools
import json
import operator
import random
import re
import subprocess
import sys

import pytest

from pope_cli.lm.problems import WordProblemsConfig, make_problem, write_word_problems
from pope_cli.lm.reward import score
from pope_cli.shared.errors import PopeError
from pope_cli.shared.prompts import split_solution

STEP = re.compile(r"(\d+) ([-+×]) (\d+) = (\d+)")


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_files_tiers_and_fields(tmp_path):
    counts = write_word_problems(WordProblemsConfig(out=str(tmp_path), n_pool=5, n_heldout=3))
    assert counts == {"pool.jsonl": 30, "heldout.jsonl": 18}
    pool, heldout = read(tmp_path / "pool.jsonl"), read(tmp_path / "heldout.jsonl")
    tiers = [f"{steps}-step-{size}" for steps in (1, 2, 3) for size in ("small", "large")]
    assert [row["tier"] for row in pool] == [tier for tier in tiers for _ in range(5)]
    assert all(set(row) == {"id", "problem", "answer", "solution", "tier", "source"} for row in pool + heldout)
    assert len({row["id"] for row in pool + heldout}) == 48
    assert not {row["problem"] for row in pool} & {row["problem"] for row in heldout}


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
@pytest.mark.parametrize("size", ["small", "large"])
def test_each_solution_sentence_is_one_correct_step_and_the_last_states_the_answer(steps, size):
    rng = random.Random(f"test-{steps}-{size}")
    for _ in range(50):
        record = make_problem(rng, steps, size)
        sentences = split_solution(record["solution"])
        assert len(sentences) == steps + 1
        value, numbers = None, []
        for sentence in sentences[:-1]:
            (a, op, b, result), = STEP.findall(sentence)
            a, b, result = int(a), int(b), int(result)
            assert value is None or a == value
            assert result == (a + b if op == "+" else a - b if op == "-" else a * b) > 0
            value, numbers = result, numbers or [a]
            numbers.append(b)
        assert sentences[-1] == f"The answer is {value}." and record["answer"] == str(value)
        assert score(record["solution"], record) == 1.0
        assert record["problem"].endswith("have now?") and record["problem"].count(". ") == steps + 1
        assert value >= 10 and str(value) not in re.findall(r"\d+", record["problem"])
        one_step = {f(a, b) for a, b in itertools.permutations(numbers, 2) for f in (operator.add, operator.sub, operator.mul)}
        assert steps == 1 or value not in one_step


def test_same_seed_same_files_other_seed_other_problems(tmp_path):
    for name in ("a", "b"):
        write_word_problems(WordProblemsConfig(out=str(tmp_path / name), n_pool=4, n_heldout=2))
    write_word_problems(WordProblemsConfig(out=str(tmp_path / "c"), seed=1, n_pool=4, n_heldout=2))
    assert (tmp_path / "a" / "pool.jsonl").read_bytes() == (tmp_path / "b" / "pool.jsonl").read_bytes()
    assert (tmp_path / "a" / "pool.jsonl").read_bytes() != (tmp_path / "c" / "pool.jsonl").read_bytes()


def test_a_tier_does_not_depend_on_the_others(tmp_path):
    write_word_problems(WordProblemsConfig(out=str(tmp_path / "all"), n_pool=4, n_heldout=0))
    write_word_problems(WordProblemsConfig(out=str(tmp_path / "one"), n_pool=4, n_heldout=0, steps=[2], sizes=["large"]))
    every = [row for row in read(tmp_path / "all" / "pool.jsonl") if row["tier"] == "2-step-large"]
    assert read(tmp_path / "one" / "pool.jsonl") == every


def test_existing_files_are_kept_without_overwrite(tmp_path):
    write_word_problems(WordProblemsConfig(out=str(tmp_path), n_pool=2, n_heldout=1))
    before = (tmp_path / "pool.jsonl").read_bytes()
    with pytest.raises(PopeError, match="pool.jsonl exists; pass --overwrite"):
        write_word_problems(WordProblemsConfig(out=str(tmp_path), n_pool=3, n_heldout=1))
    assert (tmp_path / "pool.jsonl").read_bytes() == before
    write_word_problems(WordProblemsConfig(out=str(tmp_path), n_pool=3, n_heldout=1, overwrite=True))
    assert len(read(tmp_path / "pool.jsonl")) == 18


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps: give numbers of steps from 1 to 8"),
    (["--sizes", "huge"], "--sizes: 'huge' is not one of small, large"),
    (["--n-pool", "-1"], "--n-pool: must be >= 0"),
])
def test_bad_options_are_one_line_errors(tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "pope_cli.cli", "lm", "make-data", "--out", str(tmp_path), *args],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {message}"
    assert not list(tmp_path.iterdir())
