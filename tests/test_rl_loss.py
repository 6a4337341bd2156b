"""Advantages and policy loss against numbers computed by hand (in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from pope_cli.stages.train.advantages import group_advantages
from pope_cli.stages.train.loss import LossSettings, aggregate, k3_kl, policy_loss, token_logprobs

torch.set_num_threads(1)


def approx(tensor, expected, tol=1e-5):
    return torch.allclose(torch.as_tensor(tensor, dtype=torch.float32), torch.tensor(expected, dtype=torch.float32), atol=tol)


# ---- advantages --------------------------------------------------------------------------

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


def test_advantages_std():
    adv, signal = group_advantages(REWARDS, "std")
    # group 0: mean .25, sample std sqrt((.75² + 3·.25²)/3) = .5 → 1.5, -.5, -.5, -.5
    # group 1: mean .5, sample std sqrt(4·.25/3) = 1/√3 → ±.5·√3 = ±0.866025
    h = 0.5 * math.sqrt(3)
    assert approx(adv[0], [1.5, -0.5, -0.5, -0.5])
    assert approx(adv[1], [h, h, -h, -h])
    assert approx(adv[2:], [[0.0] * 4] * 2, tol=0)
    assert signal.tolist() == [True, True, False, False]


def test_advantages_none_is_centred_only():
    adv, signal = group_advantages(REWARDS, "none")
    assert approx(adv, [[0.75, -0.25, -0.25, -0.25], [0.5, 0.5, -0.5, -0.5], [0.0] * 4, [0.0] * 4], tol=0)
    assert signal.tolist() == [True, True, False, False]


def test_advantages_reject_bad_input():
    with pytest.raises(ValueError):
        group_advantages(REWARDS, "batch")
    with pytest.raises(ValueError):
        group_advantages(torch.ones(3, 1))


# ---- aggregation -------------------------------------------------------------------------

VALUES = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [4.0, float("inf"), 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize("agg, expected", [
    ("token-mean", 2.5),   # (1+2+3+4) / 4 tokens
    ("seq-mean", 3.0),     # ((1+2+3)/3 + 4/1) / 2 sequences
    ("dr-grpo", 1.25),     # (1+2+3+4) / (2 sequences × 4 max_new_tokens)
])
def test_aggregations(agg, expected):
    # NaN and inf sit at padding positions: they must not leak into the result.
    assert aggregate(VALUES, MASK, agg, max_new_tokens=4).item() == pytest.approx(expected)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean", "dr-grpo"])
def test_micro_batches_add_up_to_the_mini_batch(agg):
    whole = aggregate(VALUES, MASK, agg, max_new_tokens=4)
    parts = sum(aggregate(VALUES[i:i + 1], MASK[i:i + 1], agg, 4, num_seqs=2, num_tokens=4) for i in range(2))
    assert parts.item() == pytest.approx(whole.item())


# ---- clipped surrogate -------------------------------------------------------------------

def test_clipping_both_sides_values_and_gradients():
    settings = LossSettings(clip_low=0.2, clip_high=0.2, agg="token-mean")
    # One sequence per advantage sign; ratios 1.5 and 0.5 sit outside [0.8, 1.2].
    ratios = torch.tensor([[1.5, 0.5], [0.5, 1.5]])
    logp = torch.log(ratios).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0])
    loss, metrics = policy_loss(logp, torch.zeros_like(logp), adv, torch.ones(2, 2, dtype=torch.bool), settings)
    # per token -min(r·A, clip(r)·A):
    #   A=+1, r=1.5: -min(1.5, 1.2) = -1.2 (clipped high, no gradient)
    #   A=+1, r=0.5: -min(0.5, 0.8) = -0.5 (gradient -r·A = -0.5)
    #   A=-1, r=0.5: -min(-0.5, -0.8) = 0.8 (clipped low, no gradient)
    #   A=-1, r=1.5: -min(-1.5, -1.2) = 1.5 (gradient -r·A = 1.5)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8 + 1.5) / 4)
    loss.backward()
    assert approx(logp.grad, [[0.0, -0.5 / 4], [0.0, 1.5 / 4]])
    assert metrics["clipped_high"].item() == 1 and metrics["clipped_low"].item() == 1
    assert metrics["tokens"].item() == 4


def test_clip_higher_moves_only_the_upper_bound():
    ratios = torch.tensor([[1.25, 1.5, 0.7]])
    logp = torch.log(ratios).requires_grad_(True)
    loss, metrics = policy_loss(logp, torch.zeros_like(logp), torch.tensor([1.0]), torch.ones(1, 3, dtype=torch.bool),
                                LossSettings(clip_low=0.2, clip_high=0.28, agg="token-mean"))
    # A=+1: r=1.25 inside [0.8, 1.28] → -1.25; r=1.5 → -1.28 (clipped); r=0.7 → -0.7 (low side never clips A>0)
    assert loss.item() == pytest.approx((-1.25 - 1.28 - 0.7) / 3)
    loss.backward()
    assert approx(logp.grad, [[-1.25 / 3, 0.0, -0.7 / 3]])
    assert metrics["clipped_high"].item() == 1 and metrics["clipped_low"].item() == 0


def test_on_policy_ratio_is_one_and_gradient_is_plain_policy_gradient():
    logp = torch.tensor([[-0.3, -2.0, -1.1]], requires_grad=True)
    loss, metrics = policy_loss(logp, logp.detach(), torch.tensor([-0.5]), torch.ones(1, 3, dtype=torch.bool),
                                LossSettings(agg="token-mean"))
    assert metrics["ratio"].item() == 3.0 and metrics["clipped_low"].item() == 0
    loss.backward()
    assert approx(logp.grad, [[0.5 / 3] * 3], tol=0)   # d(-A·logp)/dlogp / 3 tokens, A = -0.5


def test_zero_advantage_gives_zero_gradient_without_regularisers():
    logp = torch.tensor([[-0.3, -2.0]], requires_grad=True)
    loss, _ = policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2, dtype=torch.bool), LossSettings())
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(1, 2))


# ---- KL, entropy, log-probs --------------------------------------------------------------

def test_k3_kl_by_hand():
    logp = torch.log(torch.tensor([0.5, 0.25, 0.3]))
    ref = torch.log(torch.tensor([0.25, 0.5, 0.3]))
    # r = ref - logp: log .5 → .5 - log .5 - 1 = 0.193147;  log 2 → 2 - log 2 - 1 = 0.306853;  0 → 0
    assert approx(k3_kl(logp, ref), [0.5 + math.log(2) - 1, 1 - math.log(2), 0.0])


def test_kl_term_in_loss_and_its_gradient():
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_(True)
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    settings = LossSettings(agg="token-mean", kl_coef=0.1)
    loss, metrics = policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2, dtype=torch.bool), settings, ref_logp=ref)
    assert loss.item() == pytest.approx(0.1 * (0.193147 + 0.306853) / 2, abs=1e-6)
    assert metrics["kl"].item() == pytest.approx(0.5, abs=1e-5)
    loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp): 1 - .5 = .5 and 1 - 2 = -1; × 0.1 / 2 tokens
    assert approx(logp.grad, [[0.025, -0.05]])


def test_token_logprobs_and_entropy_with_temperature():
    # V=2 logits (0, 2·ln 3) at T=2 → softmax(0, ln 3) = (.25, .75)
    logits = torch.tensor([[[0.0, 2 * math.log(3)], [0.0, 0.0]]])
    logp, entropy = token_logprobs(logits, torch.tensor([[1, 0]]), temperature=2.0)
    assert approx(logp, [[math.log(0.75), math.log(0.5)]])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))   # 0.562335
    assert approx(entropy, [[h, math.log(2)]])
    assert not entropy.requires_grad


def test_entropy_bonus_lowers_the_loss_by_coef_times_entropy():
    logits = torch.zeros(1, 2, 4, requires_grad=True)   # uniform over 4 → entropy ln 4 per token
    logp, entropy = token_logprobs(logits, torch.tensor([[0, 1]]), entropy_grad=True)
    settings = LossSettings(agg="seq-mean", entropy_coef=0.01)
    loss, metrics = policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2, dtype=torch.bool), settings, entropy=entropy)
    assert loss.item() == pytest.approx(-0.01 * math.log(4))
    assert metrics["entropy"].item() == pytest.approx(2 * math.log(4))
    loss.backward()
    assert torch.allclose(logits.grad, torch.zeros_like(logits), atol=1e-7)   # uniform is the entropy maximum


def test_masked_positions_get_exactly_zero_gradient():
    # Positions 0-2 stand for prompt and oracle prefix, 3-4 for the completion (EOS last), 5 padding.
    logp = torch.tensor([[-1.0, -2.0, -0.5, -0.7, -0.1, -3.0]], requires_grad=True)
    mask = torch.tensor([[0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    for agg in ("token-mean", "seq-mean", "dr-grpo"):
        logp.grad = None
        loss, _ = policy_loss(logp, logp.detach(), torch.tensor([1.0]), mask, LossSettings(agg=agg, max_new_tokens=4, kl_coef=0.1),
                              ref_logp=torch.zeros_like(logp))
        loss.backward()
        assert torch.all(logp.grad[0, [0, 1, 2, 5]] == 0.0)
        assert torch.all(logp.grad[0, [3, 4]] != 0.0)


# ---- chunked log-probs -------------------------------------------------------------------

def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-6) -> bool:
    """Equal within `rel` of the larger magnitude (float32 sums in another order differ in the last bits)."""
    return bool((a - b).abs().max() <= rel * max(a.abs().max(), b.abs().max()))


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_chunked_logprobs_entropy_and_gradients_equal_the_full_logits(entropy_grad):
    from conftest import build_tiny_model
    from pope_cli.stages.train.batch import Sample, collate
    from pope_cli.stages.train.update import sequence_logprobs

    model = build_tiny_model(vocab_size=32_768, hidden=32).train()  # a real vocabulary: chunks of 7 of 26 positions
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 32_768, (30,), generator=generator).tolist()
    batch = collate([Sample(ids[:5], ids[5:18], 1.0), Sample(ids[18:21], ids[21:30], -1.0)], pad_id=0)
    weights = torch.randn(2, 13, generator=generator)
    results = []
    for chunk in (0, 7):
        model.zero_grad()
        logp, entropy = sequence_logprobs(model, batch, 0.8, entropy_grad, chunk=chunk)  # (B, C)
        (logp * weights + (entropy * weights.flip(1) if entropy_grad else 0)).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((logp.detach(), entropy.detach(), grads))
        assert entropy.requires_grad == entropy_grad
    (logp_full, entropy_full, grad_full), (logp_chunked, entropy_chunked, grad_chunked) = results
    mask = batch.loss_mask[:, batch.start:]
    assert _close(logp_full[mask], logp_chunked[mask]) and _close(entropy_full[mask], entropy_chunked[mask])
    assert grad_full.abs().max() > 0 and _close(grad_full, grad_chunked)
    with torch.no_grad():  # the scoring path (old and reference log-probs) takes no checkpoint
        assert _close(sequence_logprobs(model, batch, 0.8, chunk=7)[0][mask], logp_full[mask])


def test_chunked_logprobs_never_build_more_than_a_chunk_of_logits():
    from conftest import build_tiny_model
    from pope_cli.stages.train.batch import Sample, collate
    from pope_cli.stages.train.update import sequence_logprobs

    model = build_tiny_model(vocab_size=1_000)
    batch = collate([Sample([3, 4], list(range(5, 25)), 1.0)], pad_id=0)
    head = model.get_output_embeddings()
    seen = []
    original = head.forward
    hook = head.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    logp, _ = sequence_logprobs(model, batch, 1.0, chunk=8)
    logp.sum().backward()
    hook.remove()
    assert head.forward == original  # the head is itself again after the forward
    assert seen == [(1, 20, 2)]  # the model sees (log-prob, entropy) pairs, not logits
    calls = []
    head.forward = lambda hidden: (calls.append(tuple(hidden.shape)), original(hidden))[1]
    logp, _ = sequence_logprobs(model, batch, 1.0, chunk=8)
    logp.sum().backward()
    del head.forward
    # 20 positions in chunks of 8, then each chunk again, last first, in the backward pass
    assert calls == [(8, 32), (8, 32), (4, 32), (4, 32), (8, 32), (8, 32)]


# ---- rollout importance-sampling correction ----------------------------------------------

def test_rollout_correction_is_a_no_op_when_the_sampler_is_the_trainer():
    from pope_cli.stages.train.loss import rollout_weights

    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.7, 0.3]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    for mode in ("token-truncate", "sequence-truncate", "token-mask", "sequence-mask"):
        weights, metrics = rollout_weights(logp, logp.clone(), mask, mode, cap=2.0, low=0.5)
        assert torch.equal(weights, torch.ones(2, 3)), mode
        assert metrics["mismatch_ratio"].item() == 5 and metrics["mismatch_ratio_max"].item() == 1
        assert metrics["mismatch_kl"].item() == 0 and metrics["mismatch_masked"].item() == 0


def test_rollout_correction_truncates_and_masks_by_hand():
    from pope_cli.stages.train.loss import rollout_weights

    # Trainer minus sampler log-prob per token: row 0 ln 3, ln 0.5, 0; row 1 ln 1.5, ln 0.25 (padding).
    diff = torch.log(torch.tensor([[3.0, 0.5, 1.0], [1.5, 0.25, 1.0]]))
    sampler = torch.log(torch.tensor([[0.2, 0.6, 0.5], [0.4, 0.8, 0.5]]))
    train = sampler + diff
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    w, m = rollout_weights(train, sampler, mask, "token-truncate", cap=2.0, low=0.5)
    assert approx(w[mask], [2.0, 0.5, 1.0, 1.5])  # min(r, 2)
    # k3 = r - ln r - 1 per token: 3 - ln 3 - 1, .5 - ln .5 - 1, 0, 1.5 - ln 1.5 - 1
    k3 = (2 - math.log(3)) + (math.log(2) - 0.5) + 0 + (0.5 - math.log(1.5))
    assert m["mismatch_kl"].item() == pytest.approx(k3, rel=1e-5)
    assert m["mismatch_ratio"].item() == pytest.approx(3 + 0.5 + 1 + 1.5, rel=1e-6)
    assert m["mismatch_ratio_max"].item() == pytest.approx(3.0) and m["mismatch_masked"].item() == 0
    w, m = rollout_weights(train, sampler, mask, "token-mask", cap=2.0, low=0.6)
    assert approx(w[mask], [0.0, 0.0, 1.0, 1.5]) and m["mismatch_masked"].item() == 2  # 3 > 2 and .5 < .6
    # Sequence ratios: row 0 3 · .5 · 1 = 1.5, row 1 1.5 (its padding does not count).
    w, m = rollout_weights(train, sampler, mask, "sequence-truncate", cap=1.2, low=0.5)
    assert approx(w[mask], [1.2, 1.2, 1.2, 1.2])
    w, m = rollout_weights(train, sampler, mask, "sequence-mask", cap=2.0, low=0.5)
    assert approx(w[mask], [1.5, 1.5, 1.5, 1.5]) and m["mismatch_masked"].item() == 0
    w, m = rollout_weights(train, sampler, mask, "sequence-mask", cap=1.4, low=0.5)
    assert approx(w[mask], [0.0] * 4) and m["mismatch_masked"].item() == 4
    w, _ = rollout_weights(train, sampler, mask, "none", cap=2.0, low=0.5)
    assert torch.equal(w, torch.ones(2, 3))


def test_rollout_weights_scale_the_surrogate_gradient_only():
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_(True)
    settings = LossSettings(agg="token-mean", kl_coef=0.1)
    mask = torch.ones(1, 2, dtype=torch.bool)
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    base, _ = policy_loss(logp, logp.detach(), torch.tensor([1.0]), mask, settings, ref_logp=ref)
    (grad_base,) = torch.autograd.grad(base, logp)
    weighted, _ = policy_loss(logp, logp.detach(), torch.tensor([1.0]), mask, settings, ref_logp=ref,
                              is_weights=torch.tensor([[2.0, 0.0]]))
    (grad_weighted,) = torch.autograd.grad(weighted, logp)
    # surrogate gradient -A·r/2 = -0.5 per token, KL gradient as in test_kl_term_in_loss_and_its_gradient
    assert approx(grad_base, [[-0.5 + 0.025, -0.5 - 0.05]])
    assert approx(grad_weighted, [[2 * -0.5 + 0.025, 0 * -0.5 - 0.05]])
