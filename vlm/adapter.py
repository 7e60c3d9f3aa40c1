"""LoRA adapters in peft's layout: load onto our model, save, merge into the base weights.

An adapter directory is what peft writes: `adapter_config.json` + `adapter_model.safetensors`,
keys `base_model.model.<module>.lora_{A,B}.weight`. Our modules are named as the checkpoint keys
without the leading `model.` (weights.py); transformers' names have it. A saved adapter uses the
*released* names (`base_model.model.model.language_model...`), so it loads with peft onto
transformers' `Glm4vMoeForConditionalGeneration` (the target list still matches there: peft
accepts a target that is a dotted suffix of the module name); loading maps them back to ours.
Which modules get adapters, and training them, is the trainer's side (`train/lora.py`).

Interop caveat (peft 0.21, issue 3711): on transformers' GLM-4.5V model peft rewrites every
target ending in gate_proj / up_proj / down_proj, even fully qualified dense or shared-expert
ones, into the *routed experts'* parameters. Adapters from the `attention` preset are unaffected;
adapters that touch MLPs load correctly with our model (`VLM.from_pretrained(base, adapter=DIR)`)
but not with transformers + peft 0.21.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
import torch
from torch import nn

from .weights import checkpoint_key, module_name

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # peft's wrapper around the model; a module name follows


def save_adapter(peft_model: PeftModel, directory: str | Path, *,
                 state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` with the released module names,
    atomically (staging directory, then rename). `state_dict`: the model's tensors to take the
    adapter from (peft's names), in place of its own `state_dict()`: a sharded (FSDP2) model's
    full tensors, gathered first (`train.full_state.gather`)."""
    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config = copy.copy(peft_model.peft_config["default"])
    config.inference_mode = True  # as peft's own save_pretrained writes it
    config.save_pretrained(str(staging))
    state = get_peft_model_state_dict(peft_model, state_dict=state_dict)
    state = {released_key(k): v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
    directory.mkdir(parents=True, exist_ok=True)
    for file in staging.iterdir():  # per-file rename: `directory` may hold other outputs
        os.replace(file, directory / file.name)
    staging.rmdir()
    return directory


def load_adapter(model: nn.Module, directory: str | Path) -> PeftModel:
    """Wrap `model` with the adapter saved in `directory` (ours or any peft adapter whose keys
    use the released names)."""
    directory = Path(directory)
    config_file, weights_file = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for file in (config_file, weights_file):
        if not file.is_file():
            raise FileNotFoundError(f"adapter directory {str(directory)!r} has no {file.name}")
    config = LoraConfig.from_pretrained(str(directory))
    config.target_modules = _our_targets(config.target_modules)
    base_path, config.base_model_name_or_path = config.base_model_name_or_path, None
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = base_path
    return load_adapter_weights(peft_model, directory)


def load_adapter_weights(peft_model: PeftModel, directory: str | Path) -> PeftModel:
    """Copy the adapter weights saved in `directory` into `peft_model`, whose adapters (ranks,
    targets, trained embeddings) must be the saved ones: anything missing or left over is an
    error naming the first few keys (a tensor of another shape: peft's "size mismatch" error)."""
    weights_file = Path(directory) / WEIGHTS_FILE
    if not weights_file.is_file():
        raise FileNotFoundError(f"adapter directory {str(directory)!r} has no {WEIGHTS_FILE}")
    state = {our_key(k): v for k, v in load_file(str(weights_file)).items()}
    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"adapter {weights_file} does not fit the model: missing {missing[:5]}, "
                         f"unexpected {list(result.unexpected_keys)[:5]}")
    return peft_model


def merge(peft_model: PeftModel) -> nn.Module:
    """Fold the adapters into the base weights and return the plain model."""
    return peft_model.merge_and_unload()


def released_key(key: str) -> str:
    """A peft state key on our model -> the same key on transformers' model."""
    if not key.startswith(PEFT_PREFIX):
        return key
    return PEFT_PREFIX + checkpoint_key(key.removeprefix(PEFT_PREFIX))


def our_key(key: str) -> str:
    """The inverse of `released_key` (keys already in our names pass through)."""
    if not key.startswith(PEFT_PREFIX):
        return key
    return PEFT_PREFIX + module_name(key.removeprefix(PEFT_PREFIX))


def _our_targets(targets: object) -> object:
    """Adapters made on transformers' model may name targets `model.language_model...`."""
    if isinstance(targets, (list, set, tuple)):
        return sorted(module_name(t) for t in targets)
    return targets
