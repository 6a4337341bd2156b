"""`--oracle-rollouts`: the oracle solution as a group sample, its importance weights (plain and
LUFFY's shaped one) against numbers computed by hand (in the comments), the union advantages,
and a real tiny run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pope_cli.stages.train.loss import LossSettings, policy_loss
from test_trainer import data  # noqa: F401  (the fixture)

torch.set_num_threads(1)

# Two rows of two tokens: row 0 the policy's own sample (on-policy, ratio 1), row 1 the oracle's,
# whose tokens the policy gives probabilities 0.5 and 0.1 (old log-prob 0: behaviour probability 1).
LOGP = [[math.log(0.4), math.log(0.9)], [math.log(0.5), math.log(0.1)]]
MASK = torch.ones(2, 2, dtype=torch.bool)
ORACLE = torch.tensor([False, True])


def loss_of(mode: str, advantages: list[float], oracle=ORACLE):
    logp = torch.tensor(LOGP, requires_grad=True)
    old = torch.where(oracle.unsqueeze(1), 0.0, logp.detach())
    settings = LossSettings(agg="token-mean", oracle_is=mode, oracle_gamma=0.1)
    loss, metrics = policy_loss(logp, old, torch.tensor(advantages), MASK, settings, oracle=oracle)
    loss.backward()
    return loss.item(), logp.grad, metrics


def test_plain_weights_are_the_policy_probabilities_under_the_usual_clip():
    # A = -0.25 (own), +0.75 (oracle). Own tokens: -(1 · -0.25) = 0.25 each. Oracle: r = 0.5, 0.1;
    # the clip [0.8, 1.2] does not bind for A > 0 and r < 1.2: -min(r A, clip(r) A) = -r A
    # = -0.375, -0.075. token-mean over 4: (0.25 + 0.25 - 0.375 - 0.075) / 4 = 0.0125.
    loss, grad, metrics = loss_of("plain", [-0.25, 0.75])
    assert loss == pytest.approx(0.0125)
    # d/dlogp: own -A/4 = 0.0625; oracle -r A / 4 = -0.09375, -0.01875: an unlikely token barely moves.
    assert grad.flatten().tolist() == pytest.approx([0.0625, 0.0625, -0.09375, -0.01875])
    assert float(metrics["oracle_tokens"]) == 2 and float(metrics["oracle_weight"]) == pytest.approx(0.6)
    assert float(metrics["oracle_weight_max"]) == pytest.approx(0.5) and float(metrics["oracle_clipped"]) == 0
    # share of the surrogate's absolute size: (0.375 + 0.075) / (0.25 + 0.25 + 0.375 + 0.075)
    assert float(metrics["oracle_loss_abs"]) / float(metrics["loss_abs"]) == pytest.approx(0.45 / 0.95)


def test_plain_clips_an_oracle_row_with_a_negative_advantage():
    # A = -0.5 on the oracle: -min(r A, clip(r) A) = -min(-0.25, -0.4) = 0.4 and -min(-0.05, -0.4) = 0.4:
    # the clipped term wins on both tokens (r < 0.8), so they get no gradient.
    _, grad, metrics = loss_of("plain", [0.5, -0.5])
    assert grad[1].tolist() == [0.0, 0.0] and float(metrics["oracle_clipped"]) == 2


def test_luffy_shapes_the_weight_and_never_clips():
    # Oracle terms -A r / (r + 0.1): r = 0.5 → -0.75 · 0.5/0.6 = -0.625; r = 0.1 → -0.75 · 0.5 = -0.375.
    # token-mean: (0.25 + 0.25 - 0.625 - 0.375) / 4 = -0.125.
    loss, grad, metrics = loss_of("luffy", [-0.25, 0.75])
    assert loss == pytest.approx(-0.125)
    # d/dlogp of -A r/(r+g) is -A g r / (r+g)^2: r = .5 → -.75·.05/.36 = -0.1041667; r = .1 → -.75·.01/.04 = -0.1875;
    # over 4 tokens. The unlikely token now moves more than the likely one (plain: 5x less).
    assert grad[1].tolist() == pytest.approx([-0.1041667 / 4, -0.1875 / 4], rel=1e-5)
    assert grad[0].tolist() == pytest.approx([0.0625, 0.0625])  # the policy's own row is as without shaping
    _, negative, metrics = loss_of("luffy", [0.5, -0.5])
    assert float(metrics["oracle_clipped"]) == 0 and all(g > 0 for g in negative[1].tolist())


def test_without_oracle_rows_the_loss_is_the_on_policy_one():
    none = torch.tensor([False, False])
    plain, plain_grad, metrics = loss_of("plain", [-0.25, 0.75], oracle=none)
    luffy, luffy_grad, _ = loss_of("luffy", [-0.25, 0.75], oracle=none)
    assert plain == luffy and torch.equal(plain_grad, luffy_grad) and "oracle_tokens" not in metrics


class CountingEngine:
    """Every sample a wrong answer; records how many samples each request asked for."""

    def __init__(self):
        self.asked = []

    def generate(self, requests, sampling):
        from pope_cli.shared.engines.base import Completion

        self.asked.append([r.n for r in requests])
        return [[Completion([5, 6, 1], "\\boxed{0}", "stop") for _ in range(r.n)] for r in requests]


def test_oracle_samples_join_the_group_and_count_in_its_advantages_only():
    from fakes import BoxScorer
    from pope_cli.shared.engines.base import Completion, Sampling
    from pope_cli.stages.train.advantages import group_advantages
    from pope_cli.stages.train.batch import Item, rollout, rollout_metrics, training_samples

    items = [Item("unguided", {"id": "h1", "answer": "7"}), Item("guided", {"id": "h1", "answer": "7"}),
             Item("unguided", {"id": "h2", "answer": "7"})]
    oracle = [Completion([7, 7, 1], "\\boxed{7}", "stop"), None, None]  # h2 has no solution
    engine = CountingEngine()
    result, _ = rollout(items, [[1], [2], [3]], engine, BoxScorer(), Sampling(1.0, 1.0, 8), 4, 0, 0,
                        oracle=oracle, oracle_n=1)
    assert engine.asked == [[3, 4, 4]]  # the policy samples G - N where the oracle fills the rest
    assert result.oracle.tolist() == [[False, False, False, True], [False] * 4, [False] * 4]
    assert result.rewards.tolist() == [[0, 0, 0, 1], [0] * 4, [0] * 4]
    # Dr. GRPO advantages over the union: mean 0.25 → -0.25 for each own sample, +0.75 for the oracle.
    advantages, signal = group_advantages(result.rewards, "none")
    samples = training_samples(result, advantages, signal, mask_truncated=False)
    assert [(s.completion, s.advantage, s.oracle) for s in samples] == [
        ([5, 6, 1], -0.25, False)] * 3 + [([7, 7, 1], 0.75, True)]
    metrics, solved = rollout_metrics(result, signal)
    # The policy solved nothing: the oracle's success is neither reward nor a solved problem.
    assert solved == set() and metrics["reward/unguided"] == 0 and metrics["reward/all"] == 0
    assert metrics["oracle/groups"] == 1 and metrics["oracle/reward"] == 1 and metrics["gen_tokens"] == 11 * 3


def test_oracle_rollouts_options_are_checked(tmp_path):
    from pope_cli.shared.config import ModelOptions, PromptOptions, RewardOptions, SamplingOptions
    from pope_cli.shared.errors import PopeError
    from pope_cli.stages.train.config import TrainConfig

    def cfg(**fields):
        return TrainConfig(prefixes="p.jsonl", out=str(tmp_path), model=ModelOptions("m"), prompt=PromptOptions(),
                           sampling=SamplingOptions(), reward=RewardOptions(), group_size=4, **fields)

    with pytest.raises(PopeError, match=r"--oracle-rollouts: must be in \[0, --group-size=4\)"):
        cfg(oracle_rollouts=4)
    with pytest.raises(PopeError, match="--mode guided has no unguided groups"):
        cfg(oracle_rollouts=1, mode="guided")
    with pytest.raises(PopeError, match="--oracle-is: 'ppo' is not one of plain, luffy"):
        cfg(oracle_rollouts=1, oracle_is="ppo")
    with pytest.raises(PopeError, match="--oracle-is-gamma: must be > 0"):
        cfg(oracle_rollouts=1, oracle_is_gamma=0)


@pytest.mark.parametrize("mode", ["plain", "luffy"])
def test_a_tiny_run_trains_on_the_oracle_and_logs_its_weights(data, tiny_model_dir, mode):
    from pope_cli.stages.train.trainer import run_train
    from test_trainer import make_cfg

    run_train(make_cfg(data, tiny_model_dir, mode="grpo", steps=2, oracle_rollouts=1, oracle_is=mode))
    rows = [json.loads(line) for line in (data / "run" / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        # The oracle "abcd" starts lower-case: the test reward scores it 1, as the real reward would.
        assert row["oracle/groups"] == row["prompts/unguided"] == 4 and row["oracle/reward"] == 1
        assert row["oracle/tokens"] == 4 * 5  # four groups' oracle: a, b, c, d, EOS
        assert 0 < row["oracle/weight_mean"] <= row["oracle/weight_max"] <= 1  # pi_theta of the oracle's tokens
        assert 0 < row["oracle/loss_share"] < 1 and row["oracle/entropy"] > 0 and row["optimizer_steps"] == 1
        assert row["oracle/clip_fraction"] == 0


def test_the_rollout_correction_measures_the_sampler_and_leaves_the_oracle_at_weight_one():
    from pope_cli.stages.train.batch import Sample
    from pope_cli.stages.train.loss import LossSettings
    from pope_cli.stages.train.update import Accumulator, UpdateSettings, _rollout_correction

    # The own row's sampler gave log 0.2 where the trainer has log 0.4: r = 2, truncated at the cap 1.5.
    part = [Sample([1], [5, 6], 1.0, [math.log(0.2)] * 2), Sample([1], [7, 8], 1.0, None, oracle=True)]
    train = torch.tensor([[math.log(0.4)] * 2, [0.0, 0.0]])
    mask = torch.tensor([[True, True], [False, False]])  # the oracle row left out, as _backward does
    acc = Accumulator()
    settings = UpdateSettings(LossSettings(), 1.0, rollout_is="token-truncate", rollout_is_cap=1.5)
    weights = _rollout_correction(part, train, mask, settings, acc)
    assert weights.tolist() == [[1.5, 1.5], [1.0, 1.0]]
    assert acc.sums["mismatch_tokens"] == 2 and acc.sums["mismatch_ratio"] == pytest.approx(4.0)
