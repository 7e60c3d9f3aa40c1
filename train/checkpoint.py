"""Training checkpoints: atomic on disk, keep-last-N, and everything an exact resume needs.

A checkpoint is a directory `OUTPUT/checkpoints/step-000123/` holding

    trainer_state.json      step, data position (epoch, index into that epoch's order), tokens seen
    train_config.json       the run's TrainConfig, to refuse resuming a different run
    trainable.safetensors   every trainable parameter plus every MoE `e_score_correction_bias`
                            (the biases change in every mode, LoRA included, but are not trained
                            by gradient, so they are listed separately from the parameters),
                            full (unsharded) tensors by their name in the unwrapped model
    optimizer.pt, scheduler.pt
    rng-<rank>.pt           python / numpy / torch (CPU and CUDA) generator states per process
    adapter/                (LoRA runs) a standard peft adapter of this step

It is written into a hidden staging directory next to the final one and renamed into place
only when complete (rename is atomic on POSIX), so a run killed mid-save never leaves a
half-written checkpoint that `latest()` would pick up.

`save_trainable` / `load_trainable` write and read the tensors and optimiser state, sharded
(FSDP2) or not: under FSDP2 they gather full tensors onto rank 0 and cut each rank's shard back
out on resume (full_state.py), so every call is a collective there.

The `.pt` files are read with `torch.load(weights_only=True)` (`load_state`): tensors, plain
Python data and the numpy arrays of the RNG state, nothing else, so a checkpoint from elsewhere
cannot run code when a run resumes from it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import full_state

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")
# What `np.random.get_state()` pickles as, beyond torch's default allow-list (plain data, tensors).
_NUMPY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


@dataclass(frozen=True, kw_only=True)
class TrainerState:
    """Where the run is: optimiser steps done and the data position of the next batch."""

    step: int
    epoch: int
    index: int  # samples of `epoch`'s order already consumed
    tokens: int  # training tokens (non-padding) seen so far, all processes

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainerState:
        return cls(**json.loads(path.read_text()))


def checkpoints_dir(output: str | Path) -> Path:
    return Path(output) / "checkpoints"


def step_dir(output: str | Path, step: int) -> Path:
    return checkpoints_dir(output) / f"step-{step:06d}"


def staging_dir(output: str | Path, step: int) -> Path:
    """The hidden directory a checkpoint is written into before `commit`."""
    return checkpoints_dir(output) / f".staging-step-{step:06d}"


def begin(output: str | Path, step: int) -> Path:
    """Create an empty staging directory for `step` (removing a leftover from a killed run)."""
    staging = staging_dir(output, step)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def commit(output: str | Path, step: int, *, keep_last: int) -> Path:
    """Rename the staging directory of `step` into place, then prune to `keep_last`."""
    staging, final = staging_dir(output, step), step_dir(output, step)
    if final.exists():  # re-saving a step (e.g. a resumed run saving where it started)
        trash = final.with_name(f".trash-{final.name}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash)
    else:
        os.replace(staging, final)
    _fsync_dir(final.parent)
    prune(output, keep_last=keep_last)
    log.info("saved checkpoint %s", final)
    return final


def all_steps(output: str | Path) -> list[tuple[int, Path]]:
    """Completed checkpoints as (step, path), oldest first."""
    root = checkpoints_dir(output)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest(output: str | Path) -> Path | None:
    steps = all_steps(output)
    return steps[-1][1] if steps else None


def prune(output: str | Path, *, keep_last: int) -> None:
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last}: expected >= 1")
    for _, path in all_steps(output)[:-keep_last]:
        shutil.rmtree(path)
        log.info("removed old checkpoint %s", path)


def resume_names(model: nn.Module) -> list[str]:
    """What `trainable.safetensors` holds: every trainable parameter and every MoE correction bias,
    by name in the unwrapped model."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return names + [n for n, _ in model.named_buffers() if n.endswith("e_score_correction_bias")]


def save_trainable(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                   main: bool) -> dict[str, torch.Tensor]:
    """Write `trainable.safetensors` and `optimizer.pt` from the main process; returns the full
    tensors written (`{}` on the other processes). Call it on every process (a collective
    under FSDP2)."""
    tensors = full_state.gather(model, resume_names(model), main=main)
    optimizer_state = full_state.optimizer_state(model, optimizer, main=main)
    if main:
        save_file(tensors, str(directory / "trainable.safetensors"))
        torch.save(optimizer_state, directory / "optimizer.pt")
    return tensors


def load_trainable(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read what `save_trainable` wrote into the model (every process reads the files; under FSDP2
    each keeps its shard), refusing a file whose tensors do not match the model's by name."""
    tensors = load_file(str(directory / "trainable.safetensors"))
    known = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    missing, unknown = set(resume_names(model)) - set(tensors), set(tensors) - known
    if missing or unknown:
        raise ValueError(f"{directory}: checkpoint tensors do not match the model "
                         f"(missing {sorted(missing)[:3]}, unknown {sorted(unknown)[:3]})")
    full_state.load(model, tensors)
    full_state.load_optimizer_state(model, optimizer, load_state(directory / "optimizer.pt"))


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(directory: Path, rank: int) -> None:
    torch.save(rng_state(), directory / f"rng-{rank}.pt")


def load_rng(directory: Path, rank: int) -> None:
    path = directory / f"rng-{rank}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: was the checkpoint written with fewer processes?")
    set_rng_state(load_state(path))


def load_state(path: Path) -> Any:
    """A `.pt` file of this trainer's (optimizer, scheduler, RNG state), read without running code:
    anything but tensors, plain data and numpy arrays is refused with an error naming the file."""
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        reason = str(err).split("WeightsUnpickler error: ")[-1].split(". Please")[0]
        raise ValueError(f"{path} holds more than tensors and plain data ({reason}); refusing to load it, "
                         "since unpickling it could run code") from None


def _fsync_dir(path: Path) -> None:
    """Make the rename durable (a crash right after `commit` keeps the checkpoint)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
