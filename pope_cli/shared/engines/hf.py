"""The transformers engine: batched `generate` on CPU or GPU, always available.

Requests are expanded into one row per sample (prompt, stream seed + j), rows are sorted by
prompt length so batches carry little padding, and each batch is left-padded and decoded
greedily over seeded Gumbel noise (`noise.SeededSampler`), so a sample does not depend on the
batch it lands in. The model is left as it was found: same training mode, same weights.

A row never runs past the model's context (`max_position_embeddings`): its completion stops at
the context minus its prompt, finish reason `length`, as vLLM stops one at `max_model_len`.
Beyond it a model only extrapolates positions it never saw, slowly (the toy's 256 positions at
`--max-new-tokens 4096` generated at a tenth of the speed of 64).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList

from pope_cli.shared.engines.base import Completion, Request, Sampling
from pope_cli.shared.engines.noise import SeededSampler
from pope_cli.shared.errors import PopeError

# Values of generation_config fields that switch generate's own logits processors off. Left
# unset (None), generate would fill them from the model's generation_config (e.g. Qwen2.5's
# repetition_penalty=1.05), changing the distribution we sample from and report logprobs for.
# (min_new_tokens=0 also overrides min_length; sampling warpers are off with do_sample=False.)
_NEUTRAL_GENERATION = dict(
    do_sample=False, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
    encoder_no_repeat_ngram_size=0, min_new_tokens=0, guidance_scale=1.0, renormalize_logits=False,
)

# Fields of a model's generation_config that add logits processors no neutral value turns off.
_UNSUPPORTED_GENERATION = (
    "bad_words_ids", "sequence_bias", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
    "begin_suppress_tokens", "exponential_decay_length_penalty", "watermarking_config",
)


@dataclass
class _Row:
    request: int
    sample: int
    prompt: list[int]
    seed: int


def eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and the model's (int or list)."""
    ids: list[int] = []
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and i not in ids:
                ids.append(int(i))
    return ids


def context_length(config) -> int | None:
    """Positions the model attends over (its text config's `max_position_embeddings`), if it says."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    positions = getattr(text, "max_position_embeddings", None)
    return positions if isinstance(positions, int) and positions > 0 else None


def _check_generation_config(model, eos: list[int]) -> None:
    name = getattr(model, "name_or_path", "") or type(model).__name__
    if not eos:
        raise PopeError(f"--model: {name}: neither the tokenizer nor the model defines an EOS token")
    config = model.generation_config
    unsupported = [f for f in _UNSUPPORTED_GENERATION if getattr(config, f, None) is not None]
    if unsupported:
        raise PopeError(f"--model: {name}: its generation_config sets {', '.join(unsupported)}, which would "
                        "change the sampling distribution; unset them to generate with pope")


def kv_cache(model, length: int, autocast_dtype: torch.dtype | None = None) -> dict:
    """A static KV cache of `length` positions on CPU, where the model supports one. The default
    dynamic cache concatenates every layer's keys and values at every step: 40% of a toy generate
    call on one thread, which a preallocated cache skips (3.6 -> 2.8 s for 256 rows of 64 tokens,
    the same tokens). GPUs keep transformers' default: not measured there, and mostly served by vLLM.

    The cache is built here, sized to this batch: `cache_implementation="static"` would size it
    to the longest batch the process has generated so far, and attention over a longer cache
    rounds differently, so a resumed run or another worker would sample from other log-probs.

    Not for float32 weights under autocast (a mixed-precision full fine-tuning): there the values
    come out of a bf16 matmul while transformers 5.16.1 (not 5.25) rotates the keys in float32
    with the float32 hidden states, and a static cache holds one dtype for both
    (`index_copy_(): ... Float and BFloat16`). LoRA over a bf16 base keeps it."""
    float32_under_autocast = (autocast_dtype is not None
                              and model.get_input_embeddings().weight.dtype == torch.float32)
    if model.device.type == "cpu" and getattr(model, "_can_compile_fullgraph", False) and not float32_under_autocast:
        from transformers import StaticCache

        cache = StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=length)
        return {cache_argument(model): cache}
    return {}


def cache_argument(model) -> str:
    """The keyword `generate` takes a cache under: `cache` from transformers 5.24 on (which
    deprecates the old name), `past_key_values` before (which rejects the new one as unused)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


class HFEngine:
    """Generates with `model.generate` (a transformers or peft causal LM) in batches of rows;
    `autocast_dtype` runs it under autocast, as a mixed-precision trainer's forward runs."""

    def __init__(self, model, tokenizer, batch_size: int = 64, autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.eos_ids = eos_ids(model, tokenizer)
        _check_generation_config(model, self.eos_ids)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]
        self.context = context_length(model.config)

    @classmethod
    def from_options(cls, opts) -> "HFEngine":
        """Load the model and tokenizer named by a `ModelOptions`."""
        from transformers.utils import logging as hf_logging

        from pope_cli.shared.models import load_model, load_tokenizer

        hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar, drawn by every stage's start
        return cls(load_model(opts), load_tokenizer(opts.model, opts.trust_remote_code), opts.batch_size)

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        rows = [_Row(i, j, list(r.prompt_ids), r.seed + j)
                for i, r in enumerate(requests) for j in range(r.n)]
        rows.sort(key=lambda row: len(row.prompt))  # stable: ties keep request order
        results: list[list[Completion | None]] = [[None] * r.n for r in requests]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), torch.autocast(self.model.device.type, dtype=self.autocast_dtype,
                                                         enabled=self.autocast_dtype is not None):
                for start in range(0, len(rows), self.batch_size):
                    batch = rows[start:start + self.batch_size]
                    for row, completion in zip(batch, self._generate_batch(batch, sampling)):
                        results[row.request][row.sample] = completion
        finally:
            self.model.train(was_training)
        return results

    def _generate_batch(self, rows: list[_Row], sampling: Sampling) -> list[Completion]:
        device = self.model.device
        budgets = [self.budget(len(row.prompt), sampling.max_new_tokens) for row in rows]
        steps = max(budgets)
        if steps == 0:  # every prompt fills the context
            return [Completion([], "", "length", [] if sampling.logprobs else None) for _ in rows]
        input_ids, attention_mask = self._left_pad([row.prompt for row in rows])
        width = input_ids.shape[1]
        sampler = SeededSampler([row.seed for row in rows], width, sampling.temperature, sampling.top_p,
                                device, record_logprobs=sampling.logprobs)
        sequences = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            logits_processor=LogitsProcessorList([sampler]), max_new_tokens=steps,
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id, use_cache=True,
            return_dict_in_generate=False, **_NEUTRAL_GENERATION,
            **kv_cache(self.model, width + steps, self.autocast_dtype),
        )
        # A row's tokens past its own budget were drawn beyond its context (a longer neighbour kept
        # the batch going): they go, as if it had stopped there.
        completions = [self._completion(tokens[:budget])
                       for tokens, budget in zip(sequences[:, width:].tolist(), budgets)]
        if sampling.logprobs:
            choices = torch.stack(sampler.choices, dim=1).tolist()
            logprobs = torch.stack(sampler.logprobs, dim=1).tolist()
            for c, chosen, lp in zip(completions, choices, logprobs):
                # the logprobs are only right if generate picked the tokens the sampler predicted
                if chosen[:len(c.token_ids)] != c.token_ids:
                    raise RuntimeError("generate picked other tokens than SeededSampler's argmax")
                c.logprobs = lp[:len(c.token_ids)]
        return completions

    def budget(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """New tokens a prompt of this length gets: the budget, within the model's context."""
        if self.context is None:
            return max_new_tokens
        return max(0, min(max_new_tokens, self.context - prompt_tokens))

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, padded on the left so every row's next token is last."""
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[i, width - len(prompt):] = 1
        return input_ids, attention_mask

    def _completion(self, tokens: list[int]) -> Completion:
        end = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
        if end is not None:
            tokens = tokens[:end + 1]
        return Completion(
            token_ids=tokens,
            text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            finish_reason="stop" if end is not None else "length",
        )
