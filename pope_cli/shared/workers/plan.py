"""Where each worker runs: its GPUs (CUDA_VISIBLE_DEVICES) or its share of the CPU threads.

Everything here is decided, and every impossible request refused, before a worker starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pope_cli.shared.errors import PopeError


@dataclass(frozen=True)
class Slot:
    """One worker's place: the GPUs it sees (None on CPU) and its torch thread budget."""

    index: int
    gpus: tuple[str, ...] | None
    threads: int

    def environment(self) -> dict[str, str]:
        """Variables the worker sets before it imports torch."""
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "TOKENIZERS_PARALLELISM": "false"}
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        return env


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (or their indices)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [name.strip() for name in listed.split(",") if name.strip() and name.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def uses_gpus(device: str, gpus: list[str]) -> bool:
    """Whether workers are pinned to GPUs: `--device auto` or `cuda` with GPUs present."""
    if device == "cpu":
        return False
    if device.startswith("cuda:"):
        raise PopeError(f"--device {device}: with several workers each one is pinned to its own GPU; "
                        "use --device auto or cuda", exit_code=2)
    if device == "cuda" and not gpus:
        raise PopeError("--device cuda: no GPU is visible", exit_code=2)
    return bool(gpus)


def local_slots(workers: int, tensor_parallel: int, device: str, gpus: list[str] | None = None,
                cpus: int | None = None) -> list[Slot]:
    """Worker i gets GPUs [i*tp, (i+1)*tp) of the visible ones, or cpus // workers threads."""
    gpus = visible_gpus() if gpus is None and device != "cpu" else (gpus or [])
    threads = max(1, (cpus or cpu_count()) // workers)
    if uses_gpus(device, gpus):
        needed = workers * tensor_parallel
        if needed > len(gpus):
            raise PopeError(f"--workers {workers} x --tensor-parallel-size {tensor_parallel} needs {needed} GPUs; "
                            f"{len(gpus)} visible ({','.join(gpus)})", exit_code=2)
        return [Slot(i, tuple(gpus[i * tensor_parallel:(i + 1) * tensor_parallel]), threads) for i in range(workers)]
    if tensor_parallel > 1:
        raise PopeError("--tensor-parallel-size: needs GPUs (and --backend vllm); none are in use", exit_code=2)
    return [Slot(i, None, threads) for i in range(workers)]
