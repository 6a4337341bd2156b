"""How the ranks of a torchrun launch share the policy: DDP or FSDP2, and what each changes.

DDP (LoRA runs, and any run on CPU by default): every rank holds the whole model and its
optimizer; gradients are all-reduced in the last backward of each mini-batch. FSDP2
(`fully_shard` per decoder layer and at the root; the default for full fine-tuning on GPU):
each rank holds 1/N of every weight, gradient and optimizer state, and a forward all-gathers a
layer's weights. Both average gradients over ranks (the loss is scaled to match, see update.py).

Sampling is no collective: each rank generates its own prompts for as many decoding steps as
they take, so a sharded model is gathered whole for generation (`generating`). Checkpoints
hold full weights and the optimizer state in the one-process format, whatever the world size,
so a run resumes on any number of ranks.
"""

from __future__ import annotations

import contextlib

import torch

from pope_cli.shared.distributed import Ranks
from pope_cli.shared.errors import PopeError


def choose(requested: str, lora: bool, device: torch.device) -> str:
    """`--data-parallel` with `auto` resolved."""
    if requested == "auto":
        return "fsdp" if not lora and device.type == "cuda" else "ddp"
    return requested


def wrap(model, ranks: Ranks, strategy: str, device: torch.device):
    """The model the training forward/backward goes through: `model` itself on one rank, a DDP
    wrapper around it, or `model` sharded in place by FSDP2."""
    if ranks.world == 1:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # No buffer broadcast: it would make every forward, sampling included, a collective.
        devices = [torch.cuda.current_device()] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=devices, broadcast_buffers=False)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (ranks.world,))
    for layer in _decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    return model


def _decoder_layers(model) -> list:
    """The repeated blocks: the ModuleList holding the most parameters."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise PopeError("--data-parallel fsdp: found no list of decoder layers to shard in this model")
    return list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters())))


def _sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def accumulating(model):
    """A context for a backward whose gradient is only accumulated, not yet reduced over ranks."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    if _sharded(model):
        return _no_gradient_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _no_gradient_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


@contextlib.contextmanager
def generating(model):
    """A sharded model gathered whole (a collective) and kept whole until the context ends, so
    its forwards are local; a no-op for any other model."""
    if not _sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    model.set_reshard_after_forward(False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        model.set_reshard_after_forward(True)
        model.set_reshard_after_forward(False, recurse=False)  # as `wrap` left the root


def grad_norm(model, max_norm: float) -> float:
    """Clip the trainable weights' gradient to `max_norm`; returns its norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def full_weights(model) -> dict | None:
    """A sharded model's full state dict on rank 0 (a collective; {} elsewhere); None for any
    other model, whose own state dict is already whole."""
    if not _sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Tied weights come back as separate copies under each name; keep the name a save of the
    # unsharded model keeps (named_parameters lists a shared parameter once).
    names = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {name: tensor for name, tensor in full.items() if name in names}


def optimizer_state(model, optimizer) -> dict:
    """The optimizer state in the one-process format (a collective for a sharded model, whose
    full state lands on rank 0 alone)."""
    if not _sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    return {"state": {index[name]: value for name, value in by_name["state"].items()},
            "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                             for group in by_name["param_groups"]]}


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Load a one-process-format optimizer state (each rank keeps its shard of a sharded one)."""
    if not _sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _param_names(model, optimizer)
    by_name = {"state": {names[i]: value for i, value in state["state"].items()},
               "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                for group in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _param_names(model, optimizer) -> list[str]:
    """The optimizer's parameters by name, in its order (the one-process format's indices)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
