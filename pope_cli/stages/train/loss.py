"""The policy loss: per-token log-probs, the clipped surrogate, k3 KL, entropy, aggregation.

Pure tensor functions: no model, no optimizer. Every (B, T) tensor here is indexed by
completion position, and `mask` (B, T) is True exactly on the tokens the policy sampled
(EOS included); prompt, oracle-prefix and padding positions never reach these functions
with mask True, so they never get gradient.

Aggregations (how per-token losses become one number):
- `token-mean`: sum over all masked tokens / number of masked tokens (DAPO; long answers weigh
  more in total, every token weighs the same).
- `seq-mean`: mean over tokens within each sequence, then mean over sequences (original GRPO;
  a token of a short answer weighs more than a token of a long one).
- `dr-grpo`: sum over all masked tokens / (sequences × max_new_tokens), a constant normaliser,
  so neither the sequence length nor the batch's token count rescales the gradient (Dr. GRPO).

When one mini-batch is split into micro-batches for memory, pass the mini-batch's `num_tokens`
and `num_seqs`: each micro-batch loss then uses the mini-batch's denominator and the
micro-batch losses add up to the mini-batch loss exactly.

Oracle rows (`--oracle-rollouts`: a group sample that is the problem's written solution, not
the policy's): their behaviour probability is unknown and taken as 1 (LUFFY's assumption), so
their old log-prob is 0 and each token's importance weight is r_t = exp(logp_t) = pi_theta(o_t | ·),
token-level, A the row's advantage:
- `plain`: the usual clipped term -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A), the
  textbook off-policy estimator: r_t <= 1, so a token the policy finds unlikely gets almost
  no gradient (d/dtheta = A r_t grad log pi), and the clip cuts negative-advantage rows at 1 - eps_low;
- `luffy`: the shaped, unclipped term -A r_t / (r_t + gamma) (gamma 0.1, LUFFY's policy
  shaping): its gradient A gamma r_t / (r_t + gamma)^2 grad log pi peaks at r_t = gamma, so it
  favours the oracle's low-probability tokens over the ones the policy already has.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pope_cli.stages.train.config import ORACLE_IS, ROLLOUT_IS_MODES

AGGREGATIONS = ("token-mean", "seq-mean", "dr-grpo")


@dataclass(frozen=True)
class LossSettings:
    """The knobs of `policy_loss` (see TrainConfig for what each means to a user)."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    agg: str = "token-mean"
    max_new_tokens: int = 1024
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    oracle_is: str = "plain"
    oracle_gamma: float = 0.1

    def __post_init__(self):
        if self.agg not in AGGREGATIONS:
            raise ValueError(f"agg must be one of {AGGREGATIONS}, not {self.agg!r}")
        if self.oracle_is not in ORACLE_IS:
            raise ValueError(f"oracle_is must be one of {ORACLE_IS}, not {self.oracle_is!r}")


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, entropy_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target token and the entropy at each position, both under the
    temperature-scaled distribution the tokens were sampled from.

    logits (B, T, V) are the model's outputs at the positions that predict targets (B, T).
    The entropy is built without a graph unless `entropy_grad` (an entropy bonus is on).
    """
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = -(logp_all.exp() * logp_all).sum(dim=-1)  # (B, T)
    return logp, entropy


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(r) - r - 1 with r = ref - policy.

    Unbiased for the KL when tokens are sampled from the policy, and never negative.
    """
    log_ratio = ref_logp - logp  # (B, T)
    return torch.exp(log_ratio) - log_ratio - 1  # (B, T)


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, agg: str, max_new_tokens: int,
    num_seqs: int | None = None, num_tokens: int | None = None,
) -> torch.Tensor:
    """Reduce per-token values (B, T) over the masked positions to a scalar (see module doc)."""
    mask = mask.bool()  # (B, T)
    # where(), not multiply: a NaN or inf at a padding position must not leak into the sum.
    masked = torch.where(mask, values, 0.0)  # (B, T)
    seqs = num_seqs if num_seqs is not None else values.shape[0]
    if agg == "token-mean":
        tokens = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
        return masked.sum() / tokens
    if agg == "seq-mean":
        per_seq = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B,)
        return per_seq.sum() / max(seqs, 1)
    if agg == "dr-grpo":
        return masked.sum() / (max(seqs, 1) * max_new_tokens)
    raise ValueError(f"agg must be one of {AGGREGATIONS}, not {agg!r}")


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    settings: LossSettings, *, ref_logp: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
    num_seqs: int | None = None, num_tokens: int | None = None, is_weights: torch.Tensor | None = None,
    oracle: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate (+ k3 KL, − entropy bonus), aggregated; returns (loss, metrics).

    logp, old_logp, ref_logp, entropy, mask: (B, T); advantages: (B,), one per sequence.
    The ratio is clipped to [1 - clip_low, 1 + clip_high]. Fully on-policy with one update per
    batch, old_logp is logp.detach(): the ratio is exactly 1 and the gradient is the plain
    policy gradient. `metrics` holds sums over the masked tokens plus `tokens`, their count,
    so micro-batches add up; divide by `tokens` for per-token means. `is_weights` (B, T), the
    rollout correction's weights (`rollout_weights`), multiply the surrogate term alone, as in
    TRL: the KL and entropy terms are not policy-gradient estimates of sampled tokens.
    `oracle` (B,) bool marks oracle rows (their old_logp must be 0; see the module doc), which
    add `oracle_*` sums to the metrics.
    """
    mask = mask.bool()  # (B, T)
    adv = advantages.float().unsqueeze(1)  # (B, 1)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    clipped_ratio = ratio.clamp(1 - settings.clip_low, 1 + settings.clip_high)  # (B, T)
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)  # (B, T)
    oracle_rows = (oracle.bool().unsqueeze(1) if oracle is not None else torch.zeros_like(adv, dtype=torch.bool)
                   ).expand_as(mask)  # (B, T)
    shaped = settings.oracle_is == "luffy"
    if shaped:
        per_token = torch.where(oracle_rows, -adv * ratio / (ratio + settings.oracle_gamma), per_token)
    if is_weights is not None:
        per_token = per_token * is_weights
    surrogate = per_token
    # Tokens whose clipped term wins: their gradient is zero for this update (never a shaped oracle token's).
    clippable = ~oracle_rows if shaped else torch.ones_like(mask)  # (B, T)
    clipped_low = (ratio < 1 - settings.clip_low) & (adv < 0) & clippable  # (B, T)
    clipped_high = (ratio > 1 + settings.clip_high) & (adv > 0) & clippable  # (B, T)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)  # (B, T)
    if settings.kl_coef:
        per_token = per_token + settings.kl_coef * kl
    if settings.entropy_coef:
        per_token = per_token - settings.entropy_coef * entropy
    loss = aggregate(per_token, mask, settings.agg, settings.max_new_tokens, num_seqs, num_tokens)

    def masked_sum(values: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, values.detach().float(), 0.0).sum()

    metrics = {
        "tokens": mask.sum(),
        "clipped_low": (clipped_low & mask).sum(),
        "clipped_high": (clipped_high & mask).sum(),
        "kl": masked_sum(kl),
        "ratio": masked_sum(ratio),
        "loss_abs": masked_sum(surrogate.abs()),
    }
    if entropy is not None:
        metrics["entropy"] = masked_sum(entropy)
    if oracle is not None and bool(oracle.any()):
        metrics.update(_oracle_metrics(oracle_rows & mask, ratio, surrogate, clipped_low | clipped_high, entropy))
    return loss, metrics


def _oracle_metrics(on_oracle: torch.Tensor, ratio: torch.Tensor, surrogate: torch.Tensor,
                    clipped: torch.Tensor, entropy: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Sums over the oracle tokens (B, T masks): their weights r_t (and the largest), how many the
    clip stopped, their part of the surrogate's absolute size, their entropy."""
    def on(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        return torch.where(where, values.detach().float(), 0.0).sum()

    metrics = {"oracle_tokens": on_oracle.sum(), "oracle_weight": on(ratio, on_oracle),
               "oracle_weight_max": torch.where(on_oracle, ratio.detach(), 0.0).max(),
               "oracle_clipped": (clipped & on_oracle).sum(), "oracle_loss_abs": on(surrogate.abs(), on_oracle)}
    if entropy is not None:
        metrics["oracle_entropy"] = on(entropy, on_oracle)
    return metrics


def rollout_weights(train_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, mode: str,
                    cap: float, low: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Importance weights correcting for the sampler's distribution, and mismatch sums.

    train_logp, sampler_logp, mask: (B, T). With the token ratio r_t = exp(train_logp_t -
    sampler_logp_t) and the sequence ratio R = exp(sum over the sequence's tokens of
    (train_logp_t - sampler_logp_t)), the weight of token t is
    - token-truncate: min(r_t, cap); sequence-truncate: min(R, cap) on every token;
    - token-mask: r_t if low <= r_t <= cap, else 0; sequence-mask: R if low <= R <= cap, else 0;
    - none: 1.
    A weight of 0 drops the token from the gradient but not from the loss denominators.
    Metrics are sums over the masked tokens, so micro-batches add up: `mismatch_kl` of the k3
    estimate r_t - log r_t - 1 of KL(sampler || trainer) (unbiased: the tokens were drawn from the
    sampler), `mismatch_ratio` of r_t, `mismatch_masked` of the tokens a mask mode zeroed, and
    `mismatch_ratio_max`, the largest r_t.
    """
    if mode not in ROLLOUT_IS_MODES:
        raise ValueError(f"mode must be one of {ROLLOUT_IS_MODES}, not {mode!r}")
    mask = mask.bool()  # (B, T)
    # float64 and expm1: a sampler that agrees to 1e-6 has a k3 of ~1e-12, which float32 rounds to 0.
    log_ratio = torch.where(mask, train_logp.detach().double() - sampler_logp.double(), 0.0)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    weights = ratio
    if mode.startswith("sequence"):
        weights = torch.exp(log_ratio.sum(dim=1, keepdim=True)).expand_as(ratio)  # (B, T)
    kept = torch.ones_like(mask)  # (B, T)
    if mode.endswith("truncate"):
        weights = weights.clamp(max=cap)
    elif mode.endswith("mask"):
        kept = (weights >= low) & (weights <= cap)
        weights = torch.where(kept, weights, 0.0)
    else:
        weights = torch.ones_like(ratio)
    metrics = {
        "mismatch_kl": torch.where(mask, torch.expm1(log_ratio) - log_ratio, 0.0).sum(),
        "mismatch_ratio": torch.where(mask, ratio, 0.0).sum(),
        "mismatch_masked": (mask & ~kept).sum(),
        "mismatch_ratio_max": torch.where(mask, ratio, 0.0).max(),
    }
    return weights.float(), metrics
