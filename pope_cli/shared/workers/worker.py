"""The worker side: set up the process, build the engine once, then generate batch after batch.

A worker holds no state about problems: it is sent (batch id, requests, sampling) and answers
(batch id, completions, seconds). Losing one loses only the batches it held, which the driver
sends again.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class EngineSpec:
    """A picklable recipe for a worker's engine: `build(*args)`, called in the worker."""

    build: Callable
    args: tuple = ()

    def make(self):
        return self.build(*self.args)


def model_engine(opts, tensor_parallel_size: int = 1):
    """The engine of a `ModelOptions`, as the driver would build it in-process."""
    from pope_cli.shared.engines import make_engine

    return make_engine(opts, tensor_parallel_size=tensor_parallel_size)


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def generate(engine, batch_id: int, requests, sampling) -> tuple[int, list, float]:
    started = time.perf_counter()
    results = engine.generate(requests, sampling)
    return batch_id, results, time.perf_counter() - started


def serve(conn, spec: EngineSpec) -> None:
    """A local worker's main loop. Its environment (CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, which
    torch reads when imported) was set by the driver when it spawned the process."""
    # Ctrl-C goes to the whole process group; the driver decides, so workers do not react.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine = spec.make()
    except Exception as error:  # reported to the driver, which restarts or stops
        conn.send((None, None, f"engine failed to start: {type(error).__name__}: {error}"))
        return
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the driver is gone
            return
        if message is None:
            return
        batch_id, requests, sampling = message
        try:
            answer = generate(engine, batch_id, requests, sampling)
        except Exception as error:  # a CUDA error, say: this process may be unusable, so it ends
            answer = (batch_id, None, f"{type(error).__name__}: {error}")
        try:
            conn.send(answer)
        except OSError:  # the driver is gone
            return
        if answer[1] is None:
            return


class RayWorker:
    """The same worker as a Ray actor (Ray sets CUDA_VISIBLE_DEVICES from its num_gpus)."""

    def __init__(self, spec: EngineSpec, threads: int):
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        set_threads(threads)
        self.engine = spec.make()

    def generate(self, batch_id: int, requests, sampling) -> tuple[int, list, float]:
        return generate(self.engine, batch_id, requests, sampling)
