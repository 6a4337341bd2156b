"""The ranks of a `torchrun` launch: who this process is, and the few collectives training needs.

`torchrun --nproc-per-node N` starts N copies of a command and tells each its RANK, WORLD_SIZE
and LOCAL_RANK in the environment. Without them (a plain run) there is one rank, no process
group is created, and every collective here is the identity.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from datetime import timedelta

from pope_cli.shared.errors import PopeError

# Rank 0 evaluates and writes checkpoints alone while the others wait at the next collective;
# NCCL's default of 10 minutes would end a run during a long evaluation.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks, and what it exchanges with the others."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def block(self, n: int) -> slice:
        """This rank's contiguous part of n items; the parts in rank order make up the whole."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def micro_batches(self, indices: list[int], size: int) -> list[list[int]]:
        """This rank's share of `indices` (every world-th) in micro-batches of at most `size`.

        Every rank gets the same number of micro-batches, some possibly empty: each forward of
        a sharded model and each gradient reduction is a collective all ranks must join.
        """
        mine = indices[self.rank::self.world]
        count = math.ceil(math.ceil(len(indices) / self.world) / size)
        return [mine[k * size:(k + 1) * size] for k in range(count)]

    def gather(self, obj) -> list:
        """`obj` from every rank, in rank order (CPU tensors only: CUDA ones unpickle on their
        sender's device)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Per-key sums over ranks, added in rank order so every rank gets the same floats."""
        parts = self.gather(values)
        return {key: sum(part.get(key, 0.0) for part in parts) for key in sorted({k for p in parts for k in p})}

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def on_main(self, fn):
        """fn() run on rank 0 alone; every rank returns its result, or raises its PopeError."""
        if self.world == 1:
            return fn()
        import torch.distributed as dist

        outcome = [None]
        if self.main:
            try:
                outcome = [("ok", fn())]
            except Exception as error:
                dist.broadcast_object_list([("error", _message(error))], src=0)
                raise
        dist.broadcast_object_list(outcome, src=0)
        status, value = outcome[0]
        if status == "error":
            raise PopeError(*value)
        return value


def _message(error: Exception) -> tuple[str, int]:
    if isinstance(error, PopeError):
        return str(error), error.exit_code
    return f"rank 0 failed: {type(error).__name__}: {error}", 1


SOLO = Ranks()


def main_process() -> bool:
    """Whether this process is rank 0 of a torchrun launch, or not under torchrun at all."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def launched(device):
    """The Ranks of this process; under torchrun, a process group (NCCL on GPU, gloo on CPU)
    that lives as long as the context, unless one was already there."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield SOLO
        return
    import torch
    import torch.distributed as dist

    if device.type == "cuda" and device.index is not None:
        raise PopeError(f"--device {device}: under torchrun each rank takes the GPU LOCAL_RANK; "
                        "use --device cuda or auto", exit_code=2)
    owner = not dist.is_initialized()
    if owner:
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size())
    finally:
        if owner and dist.is_initialized():  # a vLLM engine in this process may have ended it
            dist.destroy_process_group()
