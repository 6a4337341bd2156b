"""Batch-independent seeded sampling for the hf engine.

`torch.multinomial` draws from one generator shared by the whole batch, so a row's sample
depends on its neighbours. Here each random number is a pure function of (row stream seed,
generation step, vocabulary index): a counter-based hash turned into a uniform, then into Gumbel
noise. Adding Gumbel noise to the (temperature-scaled, top-p-filtered) logits and taking the
argmax draws exactly from their softmax, so `generate` can run greedily and still sample, and
a row's tokens do not depend on which other rows share its batch.

Only the argmax of the noised scores matters, and a 32-bit uniform's Gumbel noise is bounded
(GUMBEL_MAX, 22.9), so a token scoring more than that below the best noised score cannot win:
the noise is computed for the tokens within a few nats of the top first, then for those that
could still beat the best of them, and every other token is left at -inf. The argmax, and so
every sample, is the dense computation's exactly (the same noise values where they are
computed), at a fraction of the cost on a real model's peaked distribution: for
SmolLM2-135M-Instruct at temperature 0.8, 1-14% of a 49,152-token vocabulary is within 20 nats
of the top, where hashing the whole (rows, vocab) block cost about as much as a bf16 forward.
"""

from __future__ import annotations

import math

import torch
from transformers import LogitsProcessor

MASK32 = 0xFFFFFFFF
_SEED_SALT = 0x2545F491
_STEP_SALT = 0x68E31DA4
_INDEX_SALT = 0x1B873593


def _signed(const: int) -> int:
    """`const` or `const - 2**32`, whichever is below 2**31: the same multiplier mod 2**32, and
    its product with any x in [0, 2**32) stays within +-2**63, so int64 never overflows."""
    return const - (1 << 32) if const >= 1 << 31 else const


_M1, _M2 = _signed(0x85EBCA6B), _signed(0xC2B2AE35)


def _fmix32_(x):
    """`fmix32` in place on a tensor (augmented assignment just rebinds a Python int)."""
    x ^= x >> 16
    x *= _M1
    x &= MASK32
    x ^= x >> 13
    x *= _M2
    x &= MASK32
    x ^= x >> 16
    return x


def fmix32(x):
    """murmur3's 32-bit finaliser, a bijection of [0, 2**32) with full avalanche, on a Python
    int or an int64 tensor (left unchanged)."""
    return _fmix32_(x.clone() if isinstance(x, torch.Tensor) else x)


def stream_key(seed: int) -> int:
    """A 32-bit key for a random stream, mixing in all 64 low bits of the seed."""
    return fmix32(fmix32((seed & MASK32) ^ _SEED_SALT) ^ ((seed >> 32) & MASK32))


def index_hashes(vocab_size: int, device) -> torch.Tensor:
    """A distinct pseudo-random 32-bit code per vocabulary index, computed once per sampler."""
    return fmix32(torch.arange(vocab_size, dtype=torch.int64, device=device) ^ _INDEX_SALT)


def _row_keys(keys: torch.Tensor, step: int) -> torch.Tensor:
    return fmix32(keys ^ fmix32((step & MASK32) ^ _STEP_SALT))


def _uniform(bits: torch.Tensor) -> torch.Tensor:
    # in place: these can be (rows, vocab) tensors, and on CPU every extra one costs
    return bits.to(torch.float64).add_(0.5).mul_(2.0**-32)


def uniforms(keys: torch.Tensor, step: int, codes: torch.Tensor) -> torch.Tensor:
    """float64 uniforms in (0, 1), shape (rows, vocab), 32 random bits each.

    `keys` holds one `stream_key` per row, `codes` the `index_hashes` of the vocabulary. Within
    a row the values are distinct: xor with the row's key and `fmix32` are bijections. Hashing
    the index first (rather than the index itself) keeps two rows' noise from being the same
    values shifted along the vocabulary.
    """
    return _uniform(_fmix32_(codes.unsqueeze(0) ^ _row_keys(keys, step).unsqueeze(1)))


def gumbel(keys: torch.Tensor, step: int, codes: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise (float64) for each row and vocabulary entry at `step`."""
    return uniforms(keys, step, codes).log_().neg_().log_().neg_()


def gumbel_at(keys: torch.Tensor, step: int, codes: torch.Tensor, rows: torch.Tensor,
              cols: torch.Tensor) -> torch.Tensor:
    """`gumbel(keys, step, codes)[rows, cols]`, computing only those entries."""
    bits = _fmix32_(codes[cols] ^ _row_keys(keys, step)[rows])
    return _uniform(bits).log_().neg_().log_().neg_()


GUMBEL_MAX = -math.log(-math.log(1 - 2.0**-33))
"""The largest noise `gumbel` gives (22.87): its uniforms are at most 1 - 2^-33."""
FIRST_LOOK = 4.0
"""Tokens within this many nats of the top are noised first, to bound the winner's score."""
SLACK = 1.0
"""Room for float32 rounding in the bound (scores + noise are summed in float32, ~1e-5 here)."""
DENSE_SHARE = 0.25
"""Above this share of possible winners the whole block is cheaper than gathering them."""


def noised_scores(scores: torch.Tensor, keys: torch.Tensor, step: int, codes: torch.Tensor) -> torch.Tensor:
    """`scores + gumbel(keys, step, codes)` where a token could be the argmax, -inf elsewhere: the
    same argmax as the dense sum (see the module docstring), shape (rows, vocab)."""
    top = scores.max(dim=-1, keepdim=True).values  # (rows, 1)
    rows, cols = (scores >= top - FIRST_LOOK).nonzero(as_tuple=True)
    near = scores[rows, cols] + gumbel_at(keys, step, codes, rows, cols).to(scores.dtype)
    best = torch.full((scores.shape[0],), float("-inf"), dtype=scores.dtype, device=scores.device)
    best = best.scatter_reduce(0, rows, near, reduce="amax")  # (rows,)
    possible = scores > (best - GUMBEL_MAX - SLACK).unsqueeze(1)  # (rows, vocab)
    if possible.sum() > DENSE_SHARE * possible.numel():
        return scores + gumbel(keys, step, codes).to(scores.dtype)
    rows, cols = possible.nonzero(as_tuple=True)
    out = torch.full_like(scores, float("-inf"))
    out[rows, cols] = scores[rows, cols] + gumbel_at(keys, step, codes, rows, cols).to(scores.dtype)
    return out


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every token outside the smallest set holding `top_p` of the probability mass."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= top_p  # the top token has mass_before 0, so it always stays
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class SeededSampler(LogitsProcessor):
    """Turns greedy `generate` into seeded sampling, one random stream per row.

    Scores arrive as raw float32 logits (generate's own processors are neutralised by the
    engine). With temperature 0 the scores pass through unchanged (greedy). When
    `record_logprobs` is set, it keeps, per step, the log-probability under
    log_softmax(logits / temperature) (temperature 0 counts as 1) of the token the argmax will
    pick, which avoids holding every step's full logits as `output_logits` would.
    """

    def __init__(self, seeds: list[int], prompt_len: int, temperature: float, top_p: float,
                 device: torch.device, record_logprobs: bool = False):
        self.keys = torch.tensor([stream_key(s) for s in seeds], dtype=torch.int64, device=device)
        self.codes: torch.Tensor | None = None
        self.prompt_len = prompt_len
        self.temperature = temperature
        self.top_p = top_p
        self.record_logprobs = record_logprobs
        self.logprobs: list[torch.Tensor] = []
        self.choices: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        if self.temperature > 0:
            scaled = scores / self.temperature
            if self.codes is None:
                self.codes = index_hashes(scores.shape[-1], scores.device)
            final = noised_scores(top_p_filter(scaled, self.top_p), self.keys, step, self.codes)
        else:
            scaled = final = scores
        if self.record_logprobs:
            chosen = final.argmax(dim=-1, keepdim=True)
            self.choices.append(chosen.squeeze(1))
            self.logprobs.append(torch.log_softmax(scaled, dim=-1).gather(-1, chosen).squeeze(1))
        return final
