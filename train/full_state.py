"""Full (unsharded) state of a model and its optimiser, for files written by one process.

Under FSDP2 (`fully_shard`; accelerate's `fsdp_version: 2`) every parameter is a DTensor of which
each process holds one shard, and so is every optimiser state tensor. safetensors cannot write a
DTensor ("Attempted to access the data pointer on an invalid python storage") and
`optimizer.state_dict()` would hold rank 0's shards only. So the checkpoint and the final save
gather full tensors with `torch.distributed.checkpoint.state_dict` (`full_state_dict=True`,
`cpu_offload=True`: the full tensors land on rank 0's CPU, the other ranks get `{}`), and a
resume hands the full tensors, read from the file by every rank, back to `set_*_state_dict`,
which cuts each rank's shard out of them. The files keep the unsharded layout: a run's
checkpoint is the same whatever the sharding.

Not sharded (one process, DDP): the tensors and `optimizer.state_dict()` as they are, read on
the main process only; the optimiser file is then keyed by parameter index, torch's own format
(a sharded run's is keyed by parameter name, the format of `get_optimizer_state_dict`). A run
resumes with the sharding it was saved with (the trainer also refuses another process count).

accelerate's own `save_state`/`get_state_dict` are not used: `save_state` writes its own layout
(not `trainable.safetensors`), and `get_state_dict` gathers every parameter, frozen ones too,
where a LoRA checkpoint needs only the adapter.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.tensor import DTensor

from .optim import MuonAdamW

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)


def is_sharded(model: nn.Module) -> bool:
    """Are `model`'s parameters DTensors (FSDP2 / `fully_shard`)?"""
    return any(isinstance(p, DTensor) for p in model.parameters())


def gather(model: nn.Module, names: Collection[str] | None = None, *, main: bool) -> dict[str, torch.Tensor]:
    """Full CPU tensors of the parameters and persistent buffers `names` (default: all) by their
    name in `model` (unwrapped), on the main process; `{}` on the others.

    Sharded: a collective, so every process calls it, and `main` must be rank 0's (where torch
    gathers). Frozen parameters are gathered only when `names` asks for one."""
    if not is_sharded(model):
        if not main:
            return {}
        tensors = {**dict(model.named_buffers()), **dict(model.named_parameters())}
        chosen = model.state_dict() if names is None else {n: tensors[n] for n in names}
        return {n: t.detach().to("cpu").contiguous() for n, t in chosen.items()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    skip_frozen = names is not None and not frozen.intersection(names)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                ignore_frozen_params=skip_frozen))
    if main != bool(full):
        raise RuntimeError(f"main={main} on a process that {'got' if full else 'did not get'} the gathered "
                           "tensors: torch gathers on rank 0, so the main process must be rank 0")
    if not main:
        return {}
    if names is None:
        return {n: t.contiguous() for n, t in full.items()}
    missing = [n for n in names if n not in full]
    if missing:
        raise KeyError(f"{missing[:3]} ({len(missing)} in all) are not parameters or persistent buffers of the model")
    return {n: full[n].contiguous() for n in names}


def load(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy full tensors (a subset of the model's parameters and buffers, by name) into `model`.
    Sharded: a collective; every process passes the same `tensors` (each keeps its shard)."""
    if not is_sharded(model):
        current = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        with torch.no_grad():
            for name, value in tensors.items():
                current[name].copy_(value)
        return
    # strict=False: the rest of the model (frozen weights) keeps what it was loaded with.
    set_model_state_dict(model, dict(tensors), options=StateDictOptions(full_state_dict=True, strict=False))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, *, main: bool) -> dict[str, Any]:
    """The optimiser's state to save, on the main process (`{}` on the others). Sharded: a
    collective, full tensors keyed by parameter name, gathered on rank 0 (as in `gather`)."""
    if not is_sharded(model):
        return optimizer.state_dict() if main else {}
    state = get_optimizer_state_dict(model, _parts(optimizer), options=_GATHER)
    return state if main else {}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load what `optimizer_state` returned (read back from its file on every process)."""
    sharded, by_name = is_sharded(model), _keyed_by_name(state)
    if sharded != by_name:
        raise ValueError(f"the optimiser state was saved by a {'sharded (FSDP2)' if by_name else 'not sharded'} "
                         f"run; this run is {'sharded' if sharded else 'not sharded'}: resume with the "
                         "accelerate config it was saved with")
    if not sharded:
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(model, _parts(optimizer), state, options=StateDictOptions(full_state_dict=True))
    inner = _unwrap(optimizer)
    if isinstance(inner, MuonAdamW):  # its inner optimisers got new group dicts: point at them
        inner.relink_groups()


def _keyed_by_name(state: dict[str, Any]) -> bool:
    """Is `state` in `get_optimizer_state_dict`'s format (parameters named, not numbered)?"""
    return any(isinstance(p, str) for group in state.get("param_groups", []) for p in group.get("params", []))


def _parts(optimizer: torch.optim.Optimizer) -> tuple[torch.optim.Optimizer, ...]:
    """The torch optimisers inside accelerate's wrapper and `MuonAdamW`: torch's state-dict
    functions read `state` and `param_groups` in torch's format, which `MuonAdamW` does not use."""
    inner = _unwrap(optimizer)
    return (inner.muon, inner.adamw) if isinstance(inner, MuonAdamW) else (inner,)


def _unwrap(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer
