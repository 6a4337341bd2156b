"""Engines: the counter-based noise, the hf engine's seeding rule and outputs, the backend choice
(the vLLM glue: test_vllm_engine.py against a fake, test_vllm_real.py against vLLM)."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from conftest import build_tiny_model
from pope_cli.shared.config import ModelOptions
from pope_cli.shared.engines import choose_backend, make_engine
from pope_cli.shared.engines.base import Request, Sampling
from pope_cli.shared.engines.hf import HFEngine
from pope_cli.shared.engines.noise import (
    MASK32, SeededSampler, fmix32, index_hashes, stream_key, top_p_filter, uniforms,
)
from pope_cli.shared.errors import PopeError

EOS, PAD = 1, 0


# ---------------------------------------------------------------- noise


def _reference_fmix32(x: int) -> int:
    """murmur3's finaliser written with Python's unbounded ints."""
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & MASK32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & MASK32
    return x ^ (x >> 16)


def test_hash_matches_on_ints_and_tensors_and_is_a_bijection():
    xs = [0, 1, 2, 12345, MASK32 - 1, MASK32, 0xDEADBEEF]
    assert fmix32(torch.tensor(xs)).tolist() == [fmix32(x) for x in xs] == [_reference_fmix32(x) for x in xs]
    block = torch.arange(1 << 16, dtype=torch.int64) * 65521
    assert fmix32(block).unique().numel() == block.numel()
    assert int(fmix32(block).max()) <= MASK32


def test_uniforms_look_uniform_and_distinct():
    keys = torch.tensor([stream_key(s) for s in range(8)])
    codes = index_hashes(4096, "cpu")
    u = uniforms(keys, 3, codes)
    assert u.shape == (8, 4096) and u.dtype == torch.float64 and 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01
    assert abs(u.var().item() - 1 / 12) < 0.002
    assert u.unique().numel() == u.numel()
    next_step = uniforms(keys, 4, codes)
    neighbour_seed = uniforms(keys[1:], 3, codes)
    neighbour_token = u[:, 1:]
    for other, mine in ((next_step, u), (neighbour_seed, u[:-1]), (neighbour_token, u[:, :-1])):
        corr = torch.corrcoef(torch.stack([other.flatten(), mine.flatten()]))[0, 1]
        assert abs(corr.item()) < 0.02


def test_stream_keys_use_the_high_bits_of_the_seed():
    assert len({stream_key(s) for s in (0, 1, 1 << 32, (1 << 32) + 1, 1 << 40)}) == 5


def _draw(logits: torch.Tensor, draws: int, temperature: float, top_p: float) -> torch.Tensor:
    sampler = SeededSampler(list(range(draws)), prompt_len=0, temperature=temperature, top_p=top_p,
                            device=torch.device("cpu"))
    scores = sampler(torch.zeros((draws, 5), dtype=torch.long), logits.expand(draws, -1).clone())
    return torch.bincount(scores.argmax(-1), minlength=logits.numel()).double()


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_gumbel_max_samples_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    counts = _draw(logits, 40000, temperature=0.7, top_p=1.0)
    # 5 degrees of freedom: P(chi2 > 20.5) = 0.001
    assert _chi_square(counts, torch.softmax(logits.double() / 0.7, -1)) < 20.5


def test_noising_only_possible_winners_picks_the_dense_argmax():
    """Peaked rows (a real LM's spread over a 49k vocabulary), flat rows, top-p's -inf and ties: the
    sparse noising picks the same token as noising every entry, and noises a small share of a peak."""
    from pope_cli.shared.engines.noise import DENSE_SHARE, GUMBEL_MAX, _uniform, gumbel, noised_scores

    assert torch.equal(-_uniform(torch.tensor([MASK32])).log().neg().log(), torch.tensor([GUMBEL_MAX], dtype=torch.float64))
    vocab, generator = 49152, torch.Generator().manual_seed(0)
    keys = torch.tensor([stream_key(s) for s in range(32)], dtype=torch.int64)
    codes = index_hashes(vocab, "cpu")
    peaked = torch.randn(16, vocab, generator=generator) * 6 - torch.rand(16, vocab, generator=generator) * 30
    flat = torch.randn(16, vocab, generator=generator) * 0.02
    scores = torch.cat([peaked, flat])
    scores[3, 100:200] = float("-inf")
    scores[20, :5] = scores[20].max() + 1  # five tied leaders
    for step in range(4):
        sparse = noised_scores(scores, keys, step, codes)
        dense = scores + gumbel(keys, step, codes).to(scores.dtype)
        assert torch.equal(sparse.argmax(-1), dense.argmax(-1))
        only_peaked = noised_scores(scores[:16], keys[:16], step, codes)
        kept = torch.isfinite(only_peaked)
        assert kept.float().mean() < DENSE_SHARE  # the sparse path: 12% of these entries noised
        assert torch.equal(only_peaked.argmax(-1), dense[:16].argmax(-1))
        assert torch.equal(only_peaked[kept], dense[:16][kept])  # the same noise where it is computed


def test_top_p_keeps_the_smallest_nucleus_and_renormalises():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    probs = torch.softmax(logits.double(), -1)  # cumulative: 0.56, 0.77, 0.89, ...
    filtered = top_p_filter(logits.unsqueeze(0), 0.75)[0]
    assert torch.isinf(filtered).tolist() == [False, False, True, True, True, True]
    assert torch.isinf(top_p_filter(logits.unsqueeze(0), 0.5)[0]).sum() == 5  # the top token always stays
    counts = _draw(logits, 20000, temperature=1.0, top_p=0.75)
    assert counts[2:].sum() == 0
    nucleus = torch.cat([probs[:2] / probs[:2].sum(), torch.zeros(4, dtype=torch.float64)])
    assert _chi_square(counts, nucleus) < 10.8  # 1 degree of freedom, p = 0.001


# ---------------------------------------------------------------- hf engine


@pytest.fixture(scope="module")
def engine(char_tokenizer):
    return HFEngine(build_tiny_model(len(char_tokenizer)), char_tokenizer, batch_size=4)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


SAMPLING = Sampling(temperature=1.0, max_new_tokens=12)


def test_a_sample_does_not_depend_on_its_batch(engine, char_tokenizer):
    prompt = ids(char_tokenizer, "What is 2+2?")
    alone = engine.generate([Request(prompt, 3, 11)], SAMPLING)[0]
    others = [Request(ids(char_tokenizer, "x"), 2, 5), Request(prompt, 3, 11),
              Request(ids(char_tokenizer, "a much longer prompt than the others"), 4, 9)]
    crowded = engine.generate(others, SAMPLING)[1]
    wide = HFEngine(engine.model, char_tokenizer, batch_size=16).generate(others, SAMPLING)[1]
    assert [c.token_ids for c in alone] == [c.token_ids for c in crowded] == [c.token_ids for c in wide]


def test_a_batch_samples_the_same_log_probs_whatever_the_process_generated_before(char_tokenizer):
    """A resumed run or another worker generates a batch after other batches than the first run
    did: its log-probs must not depend on them (transformers' own static cache grows to the
    longest batch so far, and attention over a longer cache rounds differently)."""
    engine = HFEngine(build_tiny_model(len(char_tokenizer)), char_tokenizer, batch_size=4)
    sampling = Sampling(temperature=1.0, max_new_tokens=6, logprobs=True)
    short = [Request(ids(char_tokenizer, "ab"), 3, 7)]
    first = engine.generate(short, sampling)[0]
    engine.generate([Request(ids(char_tokenizer, "a prompt far longer than the short one"), 2, 1)],
                    dataclasses.replace(sampling, max_new_tokens=40))
    again = engine.generate(short, sampling)[0]
    assert [c.token_ids for c in again] == [c.token_ids for c in first]
    assert [c.logprobs for c in again] == [c.logprobs for c in first]  # exactly, not approximately


def test_the_static_cache_goes_to_generate_under_the_name_this_transformers_takes(char_tokenizer, monkeypatch):
    """transformers 5.24 takes `cache=`, 5.19 (what vLLM installs) only `past_key_values=` and
    rejects `cache` as an unused model kwarg: every CPU generation failed there."""
    import inspect

    from pope_cli.shared.engines import hf

    model = build_tiny_model(len(char_tokenizer))
    name = hf.cache_argument(model)
    assert list(hf.kv_cache(model, 16)) == [name]
    # float32 weights under bf16 autocast take the dynamic cache (kv_cache's docstring); bf16 ones keep it
    assert hf.kv_cache(model, 16, torch.bfloat16) == {}
    assert list(hf.kv_cache(model.to(torch.bfloat16), 16, torch.bfloat16)) == [name]
    model.to(torch.float32)
    assert name in inspect.signature(type(model).forward).parameters
    seen = []
    original = type(model).forward
    monkeypatch.setattr(hf, "cache_argument", lambda model: name)  # the patched forward below hides its signature
    monkeypatch.setattr(type(model), "forward", lambda self, *a, **kw: seen.append(kw) or original(self, *a, **kw))
    HFEngine(model, char_tokenizer).generate([Request(ids(char_tokenizer, "ab"), 1, 0)], SAMPLING)
    assert seen and all(type(kw.get(name)).__name__ == "StaticCache" for kw in seen)


def test_sample_j_of_seed_s_is_sample_0_of_seed_s_plus_j(engine, char_tokenizer):
    prompt = ids(char_tokenizer, "seed rule")
    many = engine.generate([Request(prompt, 4, 100)], SAMPLING)[0]
    singles = engine.generate([Request(prompt, 1, 100 + j) for j in range(4)], SAMPLING)
    assert [c.token_ids for c in many] == [s[0].token_ids for s in singles]
    assert len({tuple(c.token_ids) for c in many}) == 4


def test_greedy_is_the_argmax_and_ignores_seeds(engine, char_tokenizer):
    prompt = ids(char_tokenizer, "greedy")
    greedy = Sampling(temperature=0.0, max_new_tokens=6, logprobs=True)
    a, b = engine.generate([Request(prompt, 1, 1), Request(prompt, 1, 2)], greedy)
    assert a[0].token_ids == b[0].token_ids
    logits = _logits(engine.model, prompt, a[0].token_ids)
    assert a[0].token_ids == logits.argmax(-1).tolist()
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(a[0].token_ids)[:, None])
    assert torch.allclose(torch.tensor(a[0].logprobs), expected.squeeze(1), atol=1e-4)


def _logits(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """The logits that predicted each completion token, by one plain forward pass."""
    with torch.no_grad():
        out = model(torch.tensor([prompt + completion])).logits[0].float()
    return out[len(prompt) - 1:len(prompt) + len(completion) - 1]


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_logprobs_match_a_forward_pass(engine, char_tokenizer, top_p):
    sampling = Sampling(temperature=0.7, top_p=top_p, max_new_tokens=10, logprobs=True)
    prompts = [ids(char_tokenizer, "logprobs"), ids(char_tokenizer, "and a longer one")]
    out = engine.generate([Request(p, 2, 3) for p in prompts], sampling)
    for prompt, completions in zip(prompts, out):
        for c in completions:
            logits = _logits(engine.model, prompt, c.token_ids) / 0.7
            expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
            assert len(c.logprobs) == len(c.token_ids)
            assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4)


def _biased_model(vocab_size: int, eos_bias: float):
    """A tiny model whose EOS logit is raised by `eos_bias` and that never picks the pad token,
    so any pad id in an output would be padding that leaked through."""
    model = build_tiny_model(vocab_size, seed=1)
    bias = torch.zeros(vocab_size)
    bias[EOS], bias[PAD] = eos_bias, -1e9
    model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    return model


def test_finish_reasons_and_no_padding(char_tokenizer):
    engine = HFEngine(_biased_model(len(char_tokenizer), eos_bias=3.0), char_tokenizer, batch_size=8)
    prompts = [ids(char_tokenizer, "stop?"), ids(char_tokenizer, "a longer prompt, stop?")]
    sampling = Sampling(temperature=1.0, max_new_tokens=8, logprobs=True)
    out = [c for cs in engine.generate([Request(p, 8, 0) for p in prompts], sampling) for c in cs]
    reasons = {c.finish_reason for c in out}
    assert reasons == {"stop", "length"}
    for c in out:
        assert PAD not in c.token_ids and len(c.logprobs) == len(c.token_ids)
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == EOS and EOS not in c.token_ids[:-1]
        else:
            assert len(c.token_ids) == 8 and EOS not in c.token_ids
        assert c.text == char_tokenizer.decode(c.token_ids, skip_special_tokens=True)
        assert "<eos>" not in c.text


def test_no_completion_runs_past_the_model_s_context(char_tokenizer):
    """A budget beyond max_position_embeddings stops each row at the context minus its own prompt,
    whatever shares its batch; within the context the samples are those of an unbounded model."""
    model = _biased_model(len(char_tokenizer), eos_bias=-1e9)  # never stops by itself
    model.config.max_position_embeddings = 40
    engine = HFEngine(model, char_tokenizer, batch_size=8)
    short, long = ids(char_tokenizer, "short"), ids(char_tokenizer, "a prompt of thirty characters.")
    sampling = Sampling(temperature=1.0, max_new_tokens=4096, logprobs=True)
    together = engine.generate([Request(short, 2, 3), Request(long, 2, 7)], sampling)
    assert [[len(c.token_ids) for c in group] for group in together] == [[40 - len(short)] * 2, [40 - len(long)] * 2]
    assert all(c.finish_reason == "length" and len(c.logprobs) == len(c.token_ids) for g in together for c in g)
    assert [c.token_ids for c in engine.generate([Request(long, 2, 7)], sampling)[0]] == [c.token_ids for c in together[1]]
    model.config.max_position_embeddings = 2048
    unbounded = HFEngine(model, char_tokenizer, batch_size=8).generate([Request(short, 2, 3)], Sampling(1.0, 1.0, 35))[0]
    assert [c.token_ids for c in unbounded] == [c.token_ids for c in together[0]]
    model.config.max_position_embeddings = len(long)  # a prompt that fills the context gets nothing
    assert HFEngine(model, char_tokenizer).generate([Request(long, 1, 0)], sampling)[0][0].token_ids == []


def test_model_generation_defaults_do_not_change_sampling(engine, char_tokenizer):
    prompt = ids(char_tokenizer, "defaults")
    before = engine.generate([Request(prompt, 2, 4)], SAMPLING)[0]
    model = build_tiny_model(len(char_tokenizer))
    model.generation_config.update(do_sample=True, temperature=0.3, top_k=3, repetition_penalty=2.0,
                                   no_repeat_ngram_size=2, min_new_tokens=5)
    after = HFEngine(model, char_tokenizer).generate([Request(prompt, 2, 4)], SAMPLING)[0]
    assert [c.token_ids for c in before] == [c.token_ids for c in after]


def test_generation_config_that_cannot_be_neutralised_is_refused(char_tokenizer):
    model = build_tiny_model(len(char_tokenizer))
    model.generation_config.forced_eos_token_id = EOS
    with pytest.raises(PopeError, match="forced_eos_token_id"):
        HFEngine(model, char_tokenizer)


def test_eos_ids_pad_fallback_and_training_mode(char_tokenizer):
    model = build_tiny_model(len(char_tokenizer))
    model.generation_config.eos_token_id = [EOS, 7]
    no_pad = types.SimpleNamespace(eos_token_id=EOS, pad_token_id=None, decode=char_tokenizer.decode)
    engine = HFEngine(model, no_pad)
    assert engine.eos_ids == [EOS, 7] and engine.pad_id == EOS
    model.train()
    out = engine.generate([Request(ids(char_tokenizer, "ab"), 2, 0), Request([5, 6, 8, 9, 10], 1, 0)], SAMPLING)
    assert model.training and [len(o) for o in out] == [2, 1]
    assert all(7 not in c.token_ids[:-1] for o in out for c in o)
    assert engine.generate([], SAMPLING) == [] and engine.generate([Request([5], 0, 0)], SAMPLING) == [[]]


# ---------------------------------------------------------------- backend choice


def test_choose_backend(monkeypatch):
    import importlib.util

    assert choose_backend("hf") == "hf" and choose_backend("vllm") == "vllm"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "vllm" else None)
    assert choose_backend("auto") == "vllm"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_backend("auto") == "hf"


def test_make_engine_hf(tiny_model_dir):
    engine = make_engine(ModelOptions(model=str(tiny_model_dir), backend="hf", batch_size=3))
    assert isinstance(engine, HFEngine) and engine.batch_size == 3
    out = engine.generate([Request(engine.tokenizer("hi")["input_ids"], 2, 0)], Sampling(max_new_tokens=4))
    assert len(out[0]) == 2
    assert all(len(c.token_ids) == 4 if c.finish_reason == "length" else c.token_ids[-1] == EOS for c in out[0])
