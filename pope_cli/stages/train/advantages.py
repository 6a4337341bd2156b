"""Group-relative advantages (GRPO) with optional std normalisation (Dr. GRPO drops it).

The completions sampled for one prompt form a group; a completion's advantage is its reward
minus the group's mean reward. GRPO also divides by the group's standard deviation (the sample
std, Bessel-corrected, as TRL and verl do); Dr. GRPO (`norm="none"`) does not, because that
division up-weights groups whose rewards barely vary (nearly solved or nearly unsolved).

A group whose rewards are all equal has advantage 0 everywhere: it carries no learning signal,
and `has_signal` marks the groups that do.
"""

from __future__ import annotations

import torch

NORMS = ("std", "none")


def group_advantages(rewards: torch.Tensor, norm: str = "std", eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages (G, n) and a has-signal mask (G,) from rewards (G groups × n samples).

    >>> adv, signal = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]), "none")
    >>> adv.tolist(), signal.tolist()
    ([[0.75, -0.25, -0.25, -0.25], [0.0, 0.0, 0.0, 0.0]], [True, False])
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (groups, samples) with at least 2 samples, got {tuple(rewards.shape)}")
    rewards = rewards.float()  # (G, n)
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # (G, n)
    if norm == "std":
        # eps keeps an all-equal group at 0/eps = 0 instead of 0/0.
        centred = centred / (rewards.std(dim=1, keepdim=True) + eps)  # (G, n)
    has_signal = rewards.amax(dim=1) > rewards.amin(dim=1)  # (G,)
    return centred, has_signal
