"""`pope train` on real vLLM with a probe at every weight sync, for test_vllm_real_train.py.

`python tests/vllm_probe.py train ...` is `pope train ...` where each `EngineSync.sync` (after
every update, and once after a resume) is wrapped: vLLM samples a fixed probe prompt before and
after the sync, and the policy's own forward pass scores the same tokens the trainer's way
(`completion_logprobs`, at the sampling temperature). One JSON line per sync goes to
VLLM_PROBE_LOG (`{rank}` in it becomes the torchrun rank): the largest |vLLM - policy| log-prob difference before the sync (vLLM still on
the old weights: what a skipped sync would leave) and after it. VLLM_PROBE_SKIP_SYNC=1 skips the
sync itself, to show the check catches it.
"""

from __future__ import annotations

import json
import os
import sys

import torch

PROBE_PROMPT = "4*6*4-6-1*6*8\n"
PROBE = dict(samples=4, seed=12345, temperature=0.8, tokens=24)


def probe_difference(engine, policy) -> float:
    """Max |log p_vLLM - log p_policy| over the probe's sampled tokens."""
    from pope_cli.shared.engines.base import Request, Sampling
    from pope_cli.stages.train.logprobs import completion_logprobs

    prompt = policy.tokenizer(PROBE_PROMPT)["input_ids"]
    sampling = Sampling(PROBE["temperature"], 1.0, PROBE["tokens"], logprobs=True)
    worst = 0.0
    for completion in engine.generate([Request(prompt, PROBE["samples"], PROBE["seed"])], sampling)[0]:
        ids = torch.tensor([prompt + completion.token_ids], device=policy.device)
        with torch.no_grad():
            mine, _ = completion_logprobs(policy.model, ids, torch.ones_like(ids), None, len(prompt),
                                          PROBE["temperature"], False, 0)
        worst = max(worst, (mine[0].float().cpu() - torch.tensor(completion.logprobs)).abs().max().item())
    return worst


def install() -> None:
    from pope_cli.stages.train.policy import EngineSync

    original = EngineSync.sync
    skip = os.environ.get("VLLM_PROBE_SKIP_SYNC") == "1"

    def probed_sync(self) -> None:
        if not self.vllm:
            return original(self)
        before = None if self.engine.asleep else probe_difference(self.engine, self.policy)
        if not skip:
            original(self)
        if self.engine.asleep:  # sleep mode (GPU): the probe needs the engine awake
            self.engine.wake_up()
        after = probe_difference(self.engine, self.policy)
        with open(os.environ["VLLM_PROBE_LOG"].format(rank=os.environ.get("RANK", "0")), "a") as log:
            log.write(json.dumps({"before": before, "after": after}) + "\n")

    EngineSync.sync = probed_sync


if __name__ == "__main__":
    install()
    from pope_cli.cli import app

    sys.argv[0] = "pope"
    app()
