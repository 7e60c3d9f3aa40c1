"""LoRA adapters with peft: target presets, a readable report of what is wrapped, save/load/merge.

Target presets (the routed experts are stacked 3-D parameters, not `nn.Linear`s, and are never
wrapped; neither are `lm_head` and the router):

    attention       language_model.layers.N.self_attn.{q,k,v,o}_proj
                    (+ vision: visual.blocks.N.attn.{qkv,proj})
    attention_mlp   attention + the dense layers' mlp.{gate,up,down}_proj and every
                    mlp.shared_experts.{gate,up,down}_proj
                    (+ vision: visual.blocks.N.mlp.{gate,up,down}_proj)
    all_linear      every nn.Linear of the language model except lm_head
                    (+ vision: every nn.Linear of the vision encoder and the projector)

Targets are written as full module names so nothing is matched by accident. Our modules are
named as the checkpoint keys without the leading `model.`; transformers' names have it. A saved
adapter uses the *released* names (`base_model.model.model.language_model...`), so it loads with
peft onto transformers' `Glm4vMoeForConditionalGeneration` (the target list still matches there:
peft accepts a target that is a dotted suffix of the module name).

Interop caveat (peft 0.21, issue 3711): on transformers' GLM-4.5V model peft rewrites every
target ending in gate_proj / up_proj / down_proj, even fully qualified dense or shared-expert
ones, into the *routed experts'* parameters. Adapters from the `attention` preset are unaffected;
adapters that touch MLPs load correctly with our model (`VLM.from_pretrained(base, adapter=DIR)`)
but not with transformers + peft 0.21.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from .config import LoraOptions

log = logging.getLogger(__name__)

_ATTENTION = re.compile(r"language_model\.layers\.\d+\.self_attn\.[qkvo]_proj")
_MLP = re.compile(r"language_model\.layers\.\d+\.mlp\.(shared_experts\.)?(gate|up|down)_proj")
_VISION_ATTENTION = re.compile(r"visual\.blocks\.\d+\.attn\.(qkv|proj)")
_VISION_MLP = re.compile(r"visual\.blocks\.\d+\.mlp\.(gate|up|down)_proj")
OURS, RELEASED = "base_model.model.", "base_model.model.model."


def target_module_names(model: nn.Module, options: LoraOptions) -> list[str]:
    """Full names of the `nn.Linear` modules the preset wraps, in model order."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name == "lm_head":
            continue
        language = options.targets == "all_linear" and name.startswith("language_model.")
        language |= bool(_ATTENTION.fullmatch(name))
        language |= options.targets == "attention_mlp" and bool(_MLP.fullmatch(name))
        vision = options.targets == "all_linear" and name.startswith("visual.")
        vision |= bool(_VISION_ATTENTION.fullmatch(name))
        vision |= options.targets == "attention_mlp" and bool(_VISION_MLP.fullmatch(name))
        if language or (options.vision and vision):
            names.append(name)
    if not names:
        raise ValueError(f"LoRA preset {options.targets!r} (vision={options.vision}) matches no nn.Linear")
    return names


def wrap(model: nn.Module, options: LoraOptions, *, base_path: str | None = None) -> PeftModel:
    """Freeze `model` and add LoRA adapters on the preset's modules."""
    config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=target_module_names(model, options), bias="none")
    peft_model = get_peft_model(model, config)
    # Set after wrapping: peft overwrites it with the (absent) `model.name_or_path`.
    peft_model.peft_config["default"].base_model_name_or_path = base_path
    return peft_model


def describe(peft_model: PeftModel) -> str:
    """Wrapped modules (layer indices folded: `language_model.layers.{0-2}.self_attn.q_proj`) and
    the trainable / total parameter counts."""
    wrapped = [n.removeprefix(OURS) for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and n.startswith(OURS)]
    folded: dict[str, list[int]] = defaultdict(list)
    for name in wrapped:
        m = re.search(r"\.(\d+)\.", name)
        key = name[:m.start(1)] + "{}" + name[m.end(1):] if m else name
        folded[key].append(int(m.group(1)) if m else -1)
    lines = [key.format(_ranges(indices)) if "{}" in key else key for key, indices in folded.items()]
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    return (f"LoRA wraps {len(wrapped)} modules:\n  " + "\n  ".join(lines)
            + f"\ntrainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")


def save_adapter(peft_model: PeftModel, directory: str | Path) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` with the released module names,
    atomically (staging directory, then rename)."""
    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config = copy.copy(peft_model.peft_config["default"])
    config.inference_mode = True  # as peft's own save_pretrained writes it
    config.save_pretrained(str(staging))
    state = get_peft_model_state_dict(peft_model)
    state = {_to_released(k): v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(state, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
    directory.mkdir(parents=True, exist_ok=True)
    for file in staging.iterdir():  # per-file rename: `directory` may hold other outputs
        os.replace(file, directory / file.name)
    staging.rmdir()
    return directory


def load_adapter(model: nn.Module, directory: str | Path) -> PeftModel:
    """Wrap `model` with the adapter saved in `directory` (ours or any peft adapter whose keys
    use the released names)."""
    directory = Path(directory)
    config_file, weights_file = directory / "adapter_config.json", directory / "adapter_model.safetensors"
    for file in (config_file, weights_file):
        if not file.is_file():
            raise FileNotFoundError(f"adapter directory {str(directory)!r} has no {file.name}")
    config = LoraConfig.from_pretrained(str(directory))
    config.target_modules = _our_targets(config.target_modules)
    base_path, config.base_model_name_or_path = config.base_model_name_or_path, None
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = base_path
    state = {_to_ours(k): v for k, v in load_file(str(weights_file)).items()}
    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"adapter {weights_file} does not fit the model: missing {missing[:5]}, "
                         f"unexpected {list(result.unexpected_keys)[:5]}")
    return peft_model


def merge(peft_model: PeftModel) -> nn.Module:
    """Fold the adapters into the base weights and return the plain model."""
    return peft_model.merge_and_unload()


def merge_checkpoint(*, model: str | Path, adapter: str | Path, output: str | Path) -> Path:
    """Base checkpoint + adapter -> a full checkpoint in the released layout at `output`."""
    from vlm import VLM

    from .model import copy_processor_files, processor_dir

    base = VLM.from_pretrained(model)
    merged = merge(load_adapter(base.model, adapter))
    output = Path(output)
    VLM(merged).save_pretrained(output)
    copy_processor_files(processor_dir(str(model)), output)
    return output


def _to_released(key: str) -> str:
    if key.startswith(OURS) and not key.startswith(OURS + "lm_head"):
        return RELEASED + key.removeprefix(OURS)
    return key


def _to_ours(key: str) -> str:
    return OURS + key.removeprefix(RELEASED) if key.startswith(RELEASED) else key


def _our_targets(targets: object) -> object:
    """Adapters made on transformers' model may name targets `model.language_model...`."""
    if isinstance(targets, (list, set, tuple)):
        return sorted(t.removeprefix("model.") for t in targets)
    return targets


def _ranges(indices: list[int]) -> str:
    indices = sorted(set(indices))
    spans, start = [], indices[0]
    for a, b in zip(indices, indices[1:] + [None]):
        if b != a + 1:
            spans.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ",".join(spans)

