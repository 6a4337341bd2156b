"""Per-token log-probs and entropies of completions without the (positions x vocabulary) logits.

The plain path asks the model for the logits of every completion position, (B, C, V), and takes
a float32 log-softmax over them: at 16k positions and a 152k vocabulary one fp32 copy is 10 GB,
and autograd keeps several copies for the backward pass. The chunked path (`chunk` > 0) swaps
the model's LM head, for the length of one forward, for a function that receives the final
hidden states (B, C + 1, H) and, for each run of `chunk` positions, projects them through the
original head, takes the temperature-scaled log-softmax, keeps the target token's log-prob and
the entropy, and drops the chunk's logits. Each chunk runs under activation checkpointing: its
backward recomputes the projection from the saved hidden states instead of keeping the logits,
so this part's peak memory is one chunk's logits whatever the sequence length, for the price of
one more LM-head matmul per token.

Doing it inside the model's own forward, rather than on hidden states taken out of it, keeps
DDP's gradient hooks, FSDP2's unsharded root weights and a peft-wrapped head working as they
are. The values are the plain path's: each position's log-softmax depends on that position only.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint

from pope_cli.stages.train.loss import token_logprobs


def _output_head(model) -> torch.nn.Module:
    """The LM head of a causal LM, a peft model over one, or a DDP wrapper around either."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    head = inner.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no output embeddings to chunk; use --logprob-chunk 0")
    return head


def _chunk(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, entropy_grad: bool):
    """Log-prob of each target and the entropy for N positions: hidden (N, H), targets (N,)."""
    return token_logprobs(head(hidden), targets, temperature, entropy_grad)  # (N,), (N,)


def chunked_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, entropy_grad: bool,
                     chunk: int) -> torch.Tensor:
    """(B, C, 2): log-probs and entropies of targets (B, C) from hidden states (B, C, H), `chunk`
    positions at a time (rows are flattened first, so a chunk may span sequences)."""
    rows, width, size = hidden.shape
    flat_hidden, flat_targets = hidden.reshape(rows * width, size), targets.reshape(rows * width)
    logps, entropies = [], []
    for start in range(0, rows * width, chunk):
        part = (head, flat_hidden[start:start + chunk], flat_targets[start:start + chunk], temperature, entropy_grad)
        if torch.is_grad_enabled():
            logp, entropy = checkpoint(_chunk, *part, use_reentrant=False)
        else:
            logp, entropy = _chunk(*part)
        logps.append(logp)
        entropies.append(entropy)
    return torch.stack([torch.cat(logps), torch.cat(entropies)], dim=-1).view(rows, width, 2)


@contextlib.contextmanager
def _head_replaced(model, forward):
    """`model`'s LM head computes `forward(original_forward, hidden)` until the context ends."""
    head = _output_head(model)
    own = head.__dict__.get("forward")  # an instance-level forward (e.g. a hook library's) to restore
    original = head.forward
    head.forward = lambda hidden: forward(original, hidden)
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def completion_logprobs(model, input_ids, attention_mask, position_ids, start: int, temperature: float,
                        entropy_grad: bool, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies (B, C) of the tokens at columns `start:` of input_ids (B, L).

    Only the C + 1 positions that predict completion tokens reach the LM head; with `chunk` > 0
    their logits exist `chunk` positions at a time (see the module docstring).
    """
    width = input_ids.shape[1] - start  # C
    targets = input_ids[:, start:]  # (B, C)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  logits_to_keep=width + 1, use_cache=False)
    if not chunk:
        logits = model(**inputs).logits  # (B, C + 1, V)
        return token_logprobs(logits[:, :-1], targets, temperature, entropy_grad)

    def head(original, hidden):  # hidden (B, C + 1, H)
        return chunked_logprobs(original, hidden[:, :-1], targets, temperature, entropy_grad, chunk)

    with _head_replaced(model, head):
        out = model(**inputs).logits  # (B, C, 2)
    entropy = out[..., 1] if entropy_grad else out[..., 1].detach()
    return out[..., 0], entropy
