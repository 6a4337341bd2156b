"""From `--workers/--ray/--tensor-parallel-size` to a `PooledEngine`, with every check done first.

`plan_workers` runs in the command before the stage starts: it counts GPUs (here, or in the Ray
cluster), refuses workers x tensor-parallel size over them, and connects to Ray. `pooled_engine`
then only builds objects; workers start when the stage drives them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pope_cli.shared.config import ModelOptions, WorkerOptions
from pope_cli.shared.errors import PopeError
from pope_cli.shared.workers.plan import Slot, local_slots
from pope_cli.shared.workers.worker import EngineSpec, model_engine


@dataclass
class WorkerPlan:
    """How many workers, and where: `slots` for local processes, `ray` (the module) for actors."""

    workers: int
    tensor_parallel: int
    max_restarts: int
    slots: list[Slot] | None = None
    ray: object | None = None
    num_gpus: int = 0

    def describe(self) -> str:
        where = "Ray actors" if self.ray is not None else "local processes"
        if self.slots and self.slots[0].gpus is not None:
            devices = ", ".join(f"worker {s.index}: GPU {','.join(s.gpus)}" for s in self.slots)
        elif self.slots:
            devices = f"{self.slots[0].threads} CPU thread(s) each"
        else:
            devices = f"{self.num_gpus} GPU(s) each" if self.num_gpus else "1 CPU each"
        return f"{self.workers} workers as {where} ({devices})"


def plan_workers(model: ModelOptions, parallel: WorkerOptions) -> WorkerPlan | None:
    """None when the stage samples in-process (one worker, no Ray)."""
    if not parallel.pooled():
        return None
    if model.backend == "openai":
        raise PopeError("--workers/--ray: not with --backend openai; the server batches (use --max-concurrency)",
                        exit_code=2)
    tp = parallel.tensor_parallel_size
    if tp > 1 and model.backend == "hf":
        raise PopeError("--tensor-parallel-size: needs --backend vllm (or auto with vLLM installed)", exit_code=2)
    if parallel.ray is None:
        slots = local_slots(parallel.workers or 1, tp, model.device)
        return WorkerPlan(len(slots), tp, parallel.max_restarts, slots=slots)
    from pope_cli.shared.workers.ray_backend import cluster_gpus, connect

    ray = connect(parallel.ray)
    gpus = cluster_gpus(ray) if model.device != "cpu" else 0
    workers = parallel.workers or max(1, gpus // tp)
    if gpus and workers * tp > gpus:
        raise PopeError(f"--workers {workers} x --tensor-parallel-size {tp} needs {workers * tp} GPUs; the Ray "
                        f"cluster has {gpus}", exit_code=2)
    if not gpus and tp > 1:
        raise PopeError("--tensor-parallel-size: the Ray cluster has no GPUs", exit_code=2)
    return WorkerPlan(workers, tp, parallel.max_restarts, ray=ray, num_gpus=tp if gpus else 0)


def pooled_engine(model: ModelOptions, plan: WorkerPlan, spec: EngineSpec | None = None, tokenizer=None):
    """The stage's engine: the driver holds the tokenizer, the workers the model."""
    from pope_cli.shared.workers.pool import PooledEngine

    spec = spec or EngineSpec(model_engine, (model, plan.tensor_parallel))
    if tokenizer is None:
        from pope_cli.shared.models import load_tokenizer

        tokenizer = load_tokenizer(model.model, model.trust_remote_code)
    if plan.ray is None:
        from pope_cli.shared.workers.local import LocalBackend

        def open_backend():
            return LocalBackend(spec, plan.slots)
    else:
        from pope_cli.shared.workers.ray_backend import RayBackend

        def open_backend():
            return RayBackend(plan.ray, spec, plan.num_gpus)
    return PooledEngine(tokenizer, open_backend, plan.workers, plan.max_restarts)
