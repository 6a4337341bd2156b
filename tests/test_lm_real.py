"""pope on a real instruct model (SmolLM2-135M-Instruct from `pope lm get`): its BPE tokenizer, chat
template and end tokens, where the toy's character tokenizer and single EOS show nothing.

Prompt ids are the chat template's own; a guided prompt holds the prefix's tokens and a training
batch puts none of them in the loss; generation stops at each of the model's end tokens; the
prefix ladder cuts worked solutions at sentence ends that are token boundaries; and the fetched
directory verifies.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lm_real import REPO, TEMPLATES, real_lm_dir
from pope_cli.lm.problems import WordProblemsConfig, write_word_problems
from pope_cli.shared.config import ModelOptions, PromptOptions
from pope_cli.shared.engines.base import Request, Sampling
from pope_cli.shared.engines.hf import HFEngine
from pope_cli.shared.prompts import prefix_ladder, split_solution
from pope_cli.shared.runtime import PromptBuilder

MODEL = real_lm_dir()
pytestmark = pytest.mark.real_lm

RECORD = {"id": "p0", "problem": "Maya has 12 apples. She picks 5 more apples. Then she eats 3 apples. How many apples "
                                 "does Maya have now?", "answer": "14",
          "prefix": "After picking 5 more apples, Maya has 12 + 5 = 17 apples.",
          "template": str(TEMPLATES / "guided.txt")}


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return HFEngine.from_options(ModelOptions(str(MODEL), backend="hf", dtype="float32", device="cpu", batch_size=8))


@pytest.fixture(scope="module")
def prompts(engine) -> PromptBuilder:
    return PromptBuilder(engine.tokenizer, PromptOptions(unguided_template=str(TEMPLATES / "unguided.txt")))


def chat_template_ids(tokenizer, text: str) -> list[int]:
    """The ids `apply_chat_template` gives for one user turn (a list, or a mapping in transformers 5)."""
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def contains(ids: list[int], part: list[int]) -> int | None:
    """Where `part` starts inside `ids` as a contiguous run, or None."""
    return next((i for i in range(len(ids) - len(part) + 1) if ids[i:i + len(part)] == part), None)


@pytest.mark.parametrize("kind", ["unguided", "guided"])
def test_prompt_ids_are_the_chat_templates(engine, prompts, kind):
    from pope_cli.shared.prompts import guided_text, load_template, load_unguided_template, unguided_text

    tokenizer = engine.tokenizer
    text = (guided_text(load_template(RECORD["template"]), RECORD["problem"], RECORD["prefix"]) if kind == "guided"
            else unguided_text(load_unguided_template(str(TEMPLATES / "unguided.txt")), RECORD["problem"]))
    ids = prompts.build(kind, RECORD)
    assert ids == chat_template_ids(tokenizer, text)
    # One <|im_start|> per turn (the template's default system turn, the user's, the assistant's), no extra BOS.
    assert ids.count(tokenizer.bos_token_id) == 3 and ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_the_guided_prompt_holds_the_prefix_tokens(engine, prompts):
    tokenizer = engine.tokenizer
    ids = prompts.build("guided", RECORD)
    prefix = tokenizer(RECORD["prefix"], add_special_tokens=False).input_ids
    assert contains(ids, prefix) is not None
    assert contains(prompts.build("unguided", RECORD), prefix) is None


def test_no_prefix_token_is_in_the_loss_mask(engine, prompts):
    from pope_cli.shared.reward.checker import Scorer
    from pope_cli.stages.train.batch import Item, collate, rollout, training_samples

    items = [Item("guided", RECORD), Item("unguided", RECORD)]
    ids = [prompts.build(item.kind, item.record) for item in items]
    with Scorer("pope_cli.lm.reward:score", workers=1) as scorer:
        result, _ = rollout(items, ids, engine, scorer, Sampling(temperature=0.8, max_new_tokens=12), group_size=2,
                            seed=0, step=0)
    samples = training_samples(result, torch.ones(2, 2), torch.ones(2, dtype=torch.bool), mask_truncated=False)
    batch = collate(samples, engine.pad_id)
    prefix = engine.tokenizer(RECORD["prefix"], add_special_tokens=False).input_ids
    for row, sample in enumerate(samples):
        tokens = batch.input_ids[row].tolist()
        masked = batch.loss_mask[row].nonzero().flatten().tolist()
        assert masked == list(range(batch.start, batch.start + len(sample.completion)))
        assert tokens[batch.start:batch.start + len(sample.completion)] == sample.completion
        at = contains(tokens, prefix)
        if sample.prompt == ids[0]:
            assert at is not None and at + len(prefix) <= batch.start
            assert not batch.loss_mask[row, at:at + len(prefix)].any()


def end_ids(engine) -> list[int]:
    ends = engine.model.generation_config.eos_token_id
    return list(ends) if isinstance(ends, (list, tuple)) else [ends]


def test_the_model_has_several_end_tokens_and_the_engine_stops_at_each(engine):
    assert [engine.tokenizer.convert_ids_to_tokens(i) for i in end_ids(engine)] == ["<|im_end|>", "<|endoftext|>"]
    assert set(end_ids(engine)) <= set(engine.eos_ids)


@pytest.mark.parametrize("position", [0, 1])
def test_generation_stops_at_every_end_token(engine, prompts, position):
    """Forcing an end token at the fourth generated position ends the completion there, with that
    token last, finish_reason "stop" and no special token in the text."""
    end = end_ids(engine)[position]
    step = {"count": 0}

    def force_end(module, args, output):
        if step["count"] == 3:
            output.logits[:, -1, :] = -1e9
            output.logits[:, -1, end] = 0.0
        step["count"] += 1
        return output

    handle = engine.model.register_forward_hook(force_end)
    try:
        completion = engine.generate([Request(prompts.build("unguided", RECORD), 1, 0)],
                                     Sampling(temperature=0.8, max_new_tokens=16))[0][0]
    finally:
        handle.remove()
    assert completion.token_ids[-1] == end and len(completion.token_ids) == 4
    assert completion.finish_reason == "stop"
    assert "<|" not in completion.text


def test_a_greedy_reply_ends_with_im_end(engine, prompts):
    ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                               add_generation_prompt=True, tokenize=False)
    request = Request(engine.tokenizer(ids, add_special_tokens=False).input_ids, 1, 0)
    completion = engine.generate([request], Sampling(temperature=0.0, max_new_tokens=32))[0][0]
    assert completion.finish_reason == "stop" and completion.token_ids[-1] == engine.tokenizer.eos_token_id
    assert completion.text == "The capital of France is Paris."


def test_the_prefix_ladder_cuts_worked_solutions_at_sentence_ends_on_token_boundaries(engine, tmp_path):
    write_word_problems(WordProblemsConfig(out=str(tmp_path), n_pool=8, n_heldout=0, steps=[1, 2, 3, 4]))
    tokenizer = engine.tokenizer
    for line in (tmp_path / "pool.jsonl").read_text().splitlines():
        solution = json.loads(line)["solution"]
        units = split_solution(solution)
        assert len(units) == solution.count(". ") + 1
        full = tokenizer(solution, add_special_tokens=False).input_ids
        ladder = prefix_ladder(units, tokenizer, 1.0, solution)
        assert len(ladder) == len(units)
        for rung in ladder:
            assert rung.text.endswith(".")
            assert full[:rung.tokens] == tokenizer(rung.text, add_special_tokens=False).input_ids


def test_pope_lm_get_verifies_the_fetched_directory():
    done = subprocess.run([sys.executable, "-m", "pope_cli.cli", "lm", "get", "--out", str(MODEL)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "verified" in done.stdout and "3ac0c172da6bdd04" in done.stdout
