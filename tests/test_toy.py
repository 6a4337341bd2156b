"""The toy testbed: deterministic problem sets, the derivation-checking reward, the tokenizer,
the `pope toy` commands, and the shipped model (solves easy problems, fails hard ones)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from pope_cli.commands.toy import app as toy_app
from pope_cli.shared.reward.checker import is_correct
from pope_cli.toy.model import SHIPPED_MODEL_DIR
from pope_cli.toy.reward import score
from pope_cli.toy.task import easy_problems, hard_problems, make_record, write_problem_sets


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def steps_of(record):
    return record["solution"].split("\n")[:-1]


def test_problem_sets_are_deterministic_and_disjoint(tmp_path):
    counts = write_problem_sets(tmp_path / "a", seed=3, n_easy=20, n_hard=40, n_heldout=10)
    write_problem_sets(tmp_path / "b", seed=3, n_easy=20, n_hard=40, n_heldout=10)
    write_problem_sets(tmp_path / "c", seed=4, n_easy=20, n_hard=40, n_heldout=10)
    assert counts == {"easy.jsonl": 20, "hard_pool.jsonl": 40, "heldout.jsonl": 10, "mix.jsonl": 60}
    for name in counts:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "hard_pool.jsonl").read_bytes() != (tmp_path / "c" / "hard_pool.jsonl").read_bytes()
    pool, heldout = read_jsonl(tmp_path / "a" / "hard_pool.jsonl"), read_jsonl(tmp_path / "a" / "heldout.jsonl")
    assert not {r["problem"] for r in pool} & {r["problem"] for r in heldout}
    assert len({r["id"] for r in read_jsonl(tmp_path / "a" / "mix.jsonl")}) == 60


def test_tiers_have_their_shape():
    for record in easy_problems(0, 300):
        assert record["source"] == "toy-easy"
        assert 2 <= len(steps_of(record)) <= 6 and record["problem"].count("*") <= 1
    pool, heldout = hard_problems(0, 50, 50)
    for record in pool + heldout:
        assert record["source"] == "toy-hard"
        assert len(steps_of(record)) == 6 and record["problem"].count("*") == 4
        for line in steps_of(record):
            if "*" in line:  # a look-up in the hard table: by 4-9, input 2-9, nonzero result
                assert line[0] not in "01" and line[2] in "456789" and not line.endswith("=0")


def test_oracle_solutions_score_one_and_verify():
    pool, _ = hard_problems(0, 20, 0)
    for record in easy_problems(0, 20) + pool:
        assert score(record["solution"], record) == 1.0
        assert is_correct(record["solution"], record["answer"]) is True
        lines = record["solution"].split("\n")
        for given in range(1, len(lines) - 1):
            guided = dict(record, prefix="\n".join(lines[:given]))
            assert score(record["solution"], guided) == 1.0  # restating the given lines
            assert score("\n".join(lines[given:]), guided) == 1.0  # continuing after them


def test_the_cached_answer_check_agrees_with_math_verify_on_the_whole_completion():
    from pope_cli.toy.reward import answer_matches

    (record,), _ = hard_problems(0, 1, 0)
    steps = record["solution"].split("\n")[:-1]
    for box in [f"\\boxed{{{d}}}" for d in range(10)] + ["\\boxed{ 4 }", "\\boxed{04}", "\\boxed{x}"]:
        for gold in map(str, range(10)):
            whole = bool(is_correct("\n".join([*steps, box]), gold))
            assert answer_matches(box, gold) == whole, (box, gold)
            assert score("\n".join([*steps, box, ""]), dict(record, answer=gold)) == float(whole)


def corruptions(record):
    lines = record["solution"].split("\n")
    wrong_step = lines[:2] + [lines[2][:-1] + str((int(lines[2][-1]) + 1) % 10)] + lines[3:]
    wrong_answer = lines[:-1] + [f"\\boxed{{{(int(record['answer']) + 1) % 10}}}"]
    return [
        "\n".join(wrong_step), "\n".join(wrong_answer), "\n".join(lines[1:]), "\n".join(lines[:-1]),
        "\n".join(lines[:3] + lines[4:]), "\n".join(lines[:-1] + lines[-2:]), lines[-1],
        record["solution"] + "\nmore", "", "\\boxed{", "}}}{{{\\boxed{\\boxed{1}", "\x00" * 50, "9" * 10000,
    ]


def test_corrupted_derivations_score_zero():
    pool, _ = hard_problems(0, 10, 0)
    for record in pool:
        for completion in corruptions(record):
            assert score(completion, record) == 0.0, completion
        lines = record["solution"].split("\n")
        # A guided completion may not skip steps the prefix did not give.
        assert score("\n".join(lines[3:]), dict(record, prefix="\n".join(lines[:2]))) == 0.0
    assert score(None, pool[0]) == 0.0
    assert score("\\boxed{1}", {"problem": "What is 1?", "answer": "1"}) is None
    assert score("\\boxed{1}", {}) is None


def test_tokenizer_round_trips_and_survives_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    from pope_cli.shared.prompts import encode_prompt
    from pope_cli.toy.model import toy_config
    from pope_cli.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    text = "Solve 7*9-5\nGiven:\n7*9=3\nRestate  and continue. \\boxed{}"
    ids = encode_prompt(tokenizer, text)
    assert tokenizer.decode(ids) == f"<|user|>{text}<|end|><|assistant|>"
    assert len(ids) == len(text) + 3
    assert tokenizer.eos_token == "<|end|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    # Beside a qwen2 config, AutoTokenizer picks Qwen2Tokenizer: it must tokenize the same way.
    tokenizer.save_pretrained(tmp_path)
    toy_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    other = "héllo\n\n  wörld 中 <|user|>"
    assert encode_prompt(loaded, text) == ids
    assert loaded.decode(loaded(other, add_special_tokens=False)["input_ids"]) == other
    assert loaded.eos_token_id == tokenizer.eos_token_id and loaded.pad_token_id == tokenizer.pad_token_id


def test_cli_make_data_and_pretrain(tmp_path):
    runner = CliRunner()
    result = runner.invoke(toy_app, ["make-data", "--out", str(tmp_path / "data"), "--n-easy", "3",
                                     "--n-hard", "4", "--n-heldout", "2"])
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(tmp_path / "data" / "mix.jsonl")) == 7
    result = runner.invoke(toy_app, ["pretrain", "--out", str(tmp_path / "model"), "--steps", "2",
                                     "--batch-size", "8", "--threads", "1", "--warmup", "1"])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "model").chat_template
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "model").num_parameters() > 500_000
    assert json.loads((tmp_path / "model" / "pretrain.json").read_text())["config"]["steps"] == 2
    result = runner.invoke(toy_app, ["pretrain", "--out", str(tmp_path / "bad"), "--steps", "0"])
    assert result.exit_code == 2 and "--steps" in result.output


@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL_DIR).eval(), AutoTokenizer.from_pretrained(SHIPPED_MODEL_DIR)


def generate(shipped, records, n, sample):
    """Completions (n per record) for the unguided prompts of `records`, left-padded in one batch."""
    from pope_cli.shared.prompts import encode_prompt, load_unguided_template, unguided_text

    model, tokenizer = shipped
    template = load_unguided_template(str(SHIPPED_MODEL_DIR.parent / "templates" / "unguided.txt"))
    prompts = [encode_prompt(tokenizer, unguided_text(template, r["problem"])) for r in records]
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    torch.manual_seed(0)
    with torch.inference_mode():
        # top_k=0: plain temperature-1 sampling (generate would otherwise default to top-50).
        options = {"do_sample": True, "top_k": 0} if sample else {"do_sample": False}
        out = model.generate(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(),
                             num_return_sequences=n, max_new_tokens=64, **options)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [texts[i * n:(i + 1) * n] for i in range(len(records))]


def test_shipped_model_solves_easy_problems(shipped):
    records = easy_problems(123, 32)
    solved = sum(score(texts[0], r) for r, texts in zip(records, generate(shipped, records, 1, sample=False)))
    assert solved >= 28


def test_shipped_model_fails_hard_problems_unguided(shipped):
    # Unfiltered hard problems: a few are made of table entries the model happens to know, so
    # the bar is "almost never", not "never" (filter-hard keeps only the 0-of-k ones).
    _, heldout = hard_problems(0, 0, 8)
    outputs = generate(shipped, heldout, 16, sample=True)
    solved = [sum(score(t, r) for t in texts) for r, texts in zip(heldout, outputs)]
    assert sum(solved) <= 4 and sum(s == 0 for s in solved) >= 6


def test_terse_solutions_skip_every_other_result_and_the_reward_checks_them_as_steps(tmp_path):
    write_problem_sets(tmp_path / "steps", seed=1, n_easy=6, n_hard=6, n_heldout=0)
    write_problem_sets(tmp_path / "terse", seed=1, n_easy=6, n_hard=6, n_heldout=0, style="terse")
    read = {style: [json.loads(line) for line in (tmp_path / style / "mix.jsonl").read_text().splitlines()]
            for style in ("steps", "terse")}
    # The same problems in the same order; only the written solutions differ.
    assert [(r["id"], r["problem"], r["answer"]) for r in read["steps"]] == [
        (r["id"], r["problem"], r["answer"]) for r in read["terse"]]
    record = make_record("h", "toy-hard", 7, [("*", 9), ("-", 5), ("*", 9), ("*", 7), ("+", 9), ("*", 4)], "terse")
    assert record["solution"] == "7*9-5=8\n8*9*7=4\n4+9*4=2\n\\boxed{2}"
    steps = make_record("h", "toy-hard", 7, [("*", 9), ("-", 5), ("*", 9), ("*", 7), ("+", 9), ("*", 4)])["solution"]
    for terse, plain in zip(read["terse"], read["steps"]):
        assert score(terse["solution"], terse) == score(plain["solution"], terse) == 1.0
    assert score(record["solution"], record) == score(steps, record) == 1.0
    assert score(record["solution"].replace("=4\n", "=5\n"), record) == 0.0  # a merged line's result is checked
    assert score("7*9-5=8\n8*9*7=4\n\\boxed{4}", record) == 0.0  # and the chain must end
    # Guided by a terse prefix: restating it, or continuing after the steps it stands for.
    guided = {**record, "prefix": "7*9-5=8"}
    assert score(steps, guided) == score("\n".join(steps.splitlines()[2:]), guided) == 1.0
    assert score("\n".join(steps.splitlines()[3:]), guided) == 0.0


def test_a_terse_reader_is_shown_terse_lines_and_answers_one_step_a_line():
    import random
    import re

    from pope_cli.toy.pretrain import PretrainConfig, load_templates, training_text
    from pope_cli.toy.reward import parse_problem
    from pope_cli.toy.task import solution_lines

    def ops(line: str) -> int:
        return sum(map(line.count, "+-*"))

    templates, forms = load_templates(), {"restate": 0, "no-restate": 0}
    reader = PretrainConfig(out="unused", read_terse=1.0, copy_rate=0.0)
    rng = random.Random(3)
    for _ in range(200):
        text, response = training_text(rng, templates, reader)
        start, steps = parse_problem(re.search(r"Solve (\S+)", text).group(1))
        given = text.split("Given:\n")[1].split("\n")[:-1] if "Given:" in text else []
        assert score(response, {**make_record("", "", start, steps), "prefix": "\n".join(given)}) == 1.0
        if not given:
            continue
        assert given == solution_lines(start, steps, "terse")[:len(given)]
        restate = response.startswith("\n".join(given) + "\n")
        forms["restate" if restate else "no-restate"] += 1
        written = response.split("\n")[len(given) if restate else 0:-1]
        # After the given lines, one step a line from the step they reach: nothing terse it was not shown.
        assert written == solution_lines(start, steps)[min(2 * len(given), len(steps)):]
        assert all(ops(line) == 1 for line in written)
    assert min(forms.values()) > 20
    plain = PretrainConfig(out="unused")
    assert [training_text(random.Random(5), templates, plain) for _ in range(20)] == \
        [training_text(random.Random(5), templates, PretrainConfig(out="unused", read_terse=0.0)) for _ in range(20)]


def test_make_data_keeps_other_problem_sets_unless_told_to_replace_them(tmp_path):
    from pope_cli.shared.errors import PopeError

    first = write_problem_sets(tmp_path, seed=3, n_easy=4, n_hard=4, n_heldout=2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert write_problem_sets(tmp_path, seed=3, n_easy=4, n_hard=4, n_heldout=2) == first  # the same sets: a no-op
    with pytest.raises(PopeError, match=r"^--out: .*easy.jsonl already holds other problems .*use --overwrite") as error:
        write_problem_sets(tmp_path, seed=4, n_easy=4, n_hard=4, n_heldout=2)
    assert error.value.exit_code == 2 and {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    write_problem_sets(tmp_path, seed=4, n_easy=4, n_hard=4, n_heldout=2, overwrite=True)
    assert (tmp_path / "easy.jsonl").read_bytes() != before["easy.jsonl"]
