"""A stand-in for the vLLM engine that records what it is asked, for `pope train --backend vllm` on CPU.

It generates with the hf engine over its own copy of the model, loaded from `--model`, which
changes only through `load_weights` (full runs) or `set_lora` (LoRA runs): if the trainer forgot
a sync, or synced the wrong weights, its rollouts would drift from a run whose engine is the
policy itself. Every call is appended to FAKE_VLLM_LOG/rank<RANK>.jsonl, and generating while
asleep fails, as it would on a GPU whose memory went to training.

`install()` makes `make_engine` build it; `python tests/fake_vllm.py train ...` is `pope` with it
installed (what torchrun starts on every rank).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path


class FakeVLLM:
    def __init__(self, opts):
        from pope_cli.shared.engines.hf import HFEngine
        from pope_cli.shared.models import load_model, load_tokenizer

        self.base = load_model(opts)
        self.tokenizer = load_tokenizer(opts.model, opts.trust_remote_code)
        self.hf = HFEngine(self.base, self.tokenizer, opts.batch_size)
        self.awake = True
        self.log = Path(os.environ["FAKE_VLLM_LOG"]) / f"rank{os.environ.get('RANK', '0')}.jsonl"

    @classmethod
    def from_options(cls, opts, *, max_lora_rank=None, enable_sleep_mode=False, full_weight_sync=False,
                     tensor_parallel_size=1) -> "FakeVLLM":
        assert tensor_parallel_size == 1, "pope runs one engine per rank, tensor parallel 1"
        return cls(opts)

    def _record(self, event: str, **details) -> None:
        with self.log.open("a") as f:
            f.write(json.dumps({"event": event, **details}) + "\n")

    def generate(self, requests, sampling):
        assert self.awake, "generate while asleep"
        groups = self.hf.generate(requests, sampling)
        self._record("generate", rollouts=[[c.token_ids for c in group] for group in groups])
        return groups

    def sleep(self) -> None:
        self.awake = False
        self._record("sleep")

    def wake_up(self) -> None:
        self.awake = True
        self._record("wake")

    def close(self) -> None:
        self._record("close")

    def load_weights(self, weights) -> None:
        loaded = {name: tensor.detach().clone() for name, tensor in weights}
        missing, unexpected = self.base.load_state_dict(loaded, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # tied to the embedding
        self._record("sync", weights=len(loaded))

    def set_lora(self, adapter_dir) -> None:
        from peft import PeftModel

        self.hf.model = PeftModel.from_pretrained(copy.deepcopy(self.base), str(adapter_dir)).eval()
        self._record("sync", adapter=Path(adapter_dir).name)


def install() -> None:
    import pope_cli.shared.engines.vllm as vllm_engine

    vllm_engine.VLLMEngine = FakeVLLM


def events(log_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (log_dir / f"rank{rank}.jsonl").read_text().splitlines()]


if __name__ == "__main__":
    install()
    from pope_cli.cli import app

    sys.argv[0] = "pope"
    app()
