"""LoRA training with peft: target presets, wrapping, a readable report of what is wrapped, merge CLI.

Target presets (the routed experts are stacked 3-D parameters, not `nn.Linear`s, and are never
wrapped; neither are `lm_head` and the router):

    attention       language_model.layers.N.self_attn.{q,k,v,o}_proj
                    (+ vision: visual.blocks.N.attn.{qkv,proj})
    attention_mlp   attention + the dense layers' mlp.{gate,up,down}_proj and every
                    mlp.shared_experts.{gate,up,down}_proj
                    (+ vision: visual.blocks.N.mlp.{gate,up,down}_proj)
    all_linear      every nn.Linear of the language model except lm_head
                    (+ vision: every nn.Linear of the vision encoder and the projector)

`embeddings` (any preset) also trains `language_model.embed_tokens` and `lm_head` in full (peft's
`modules_to_save`; the adapter file then holds both matrices): the shipped model's tokenizer has
thousands of tokens its training never used, whose rows are still random.

Targets are written as full module names so nothing is matched by accident. The adapter file
format (released names on disk), loading and merging live in `vlm/adapter.py`; this file is the
training side: which modules get adapters, wrapping, the report, and `python -m train merge`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from vlm import VLM
from vlm.adapter import CONFIG_FILE, PEFT_PREFIX, load_adapter, load_adapter_weights, merge

from .config import LoraOptions
from .model import copy_processor_files, processor_dir

log = logging.getLogger(__name__)

_ATTENTION = re.compile(r"language_model\.layers\.\d+\.self_attn\.[qkvo]_proj")
_MLP = re.compile(r"language_model\.layers\.\d+\.mlp\.(shared_experts\.)?(gate|up|down)_proj")
_VISION_ATTENTION = re.compile(r"visual\.blocks\.\d+\.attn\.(qkv|proj)")
_VISION_MLP = re.compile(r"visual\.blocks\.\d+\.mlp\.(gate|up|down)_proj")
EMBEDDINGS = ["language_model.embed_tokens", "lm_head"]  # trained in full with `embeddings`


def target_module_names(model: nn.Module, options: LoraOptions) -> list[str]:
    """Full names of the `nn.Linear` modules the preset wraps, in model order."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name == "lm_head" or ".mtp_layers." in name:
            continue  # the MTP layer (vlm/mtp.py) has no key in peft's released-name adapter layout
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
    """Freeze `model` and add LoRA adapters on the preset's modules (zero-initialised as peft does, or
    the weights of the adapter `options.start` names)."""
    config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=target_module_names(model, options), bias="none",
                        modules_to_save=EMBEDDINGS if options.embeddings else None)
    peft_model = get_peft_model(model, config)
    # Set after wrapping: peft overwrites it with the (absent) `model.name_or_path`.
    peft_model.peft_config["default"].base_model_name_or_path = base_path
    if options.start is not None:
        try:
            load_adapter_weights(peft_model, options.start)
        except RuntimeError as err:  # peft's load_state_dict: "size mismatch for ..."
            detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err)[:300])
            raise ValueError(f"lora start {options.start!r} does not fit the adapters asked for (r={options.r}, "
                             f"targets={options.targets!r}, embeddings={options.embeddings}) on this base: "
                             f"{detail}") from None
    return peft_model


def describe(peft_model: PeftModel) -> str:
    """Wrapped modules (layer indices folded: `language_model.layers.{0-2}.self_attn.q_proj`) and
    the trainable / total parameter counts."""
    wrapped = [n.removeprefix(PEFT_PREFIX) for n, m in peft_model.named_modules()
               if hasattr(m, "lora_A") and n.startswith(PEFT_PREFIX)]
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


def recorded_base(adapter: str | Path) -> str | None:
    """The base an adapter records (`base_model_name_or_path` of its adapter_config.json); None
    when it records none, which is how adapters trained on the embedded default model are saved."""
    config_file = Path(adapter) / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"adapter directory {str(adapter)!r} has no {CONFIG_FILE}")
    return json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path") or None


def merge_checkpoint(*, model: str | Path | None = None, adapter: str | Path, output: str | Path) -> Path:
    """Base checkpoint + adapter -> a full checkpoint in the released layout at `output`.

    `model` None: the base the adapter records (the embedded default model when it records none).
    A base whose shapes do not match the adapter's raises `ValueError` naming both."""
    if model is None:
        model = recorded_base(adapter)
        if model is not None and not (Path(model) / "config.json").is_file():
            raise FileNotFoundError(f"adapter {str(adapter)!r} records the base {model!r}, which is not a "
                                    "checkpoint directory here; pass the base with --model")
    base = VLM.from_pretrained(model)
    try:
        merged = merge(load_adapter(base.model, adapter))
    except RuntimeError as err:  # peft's load_state_dict: "size mismatch for ..."
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err)[:300])
        raise ValueError(f"adapter {str(adapter)!r} does not fit the base {str(model or 'embedded default model')!r}: "
                         f"{detail}") from None
    output = Path(output)
    VLM(merged).save_pretrained(output)
    copy_processor_files(processor_dir(str(model)), output)
    return output


def _ranges(indices: list[int]) -> str:
    indices = sorted(set(indices))
    spans, start = [], indices[0]
    for a, b in zip(indices, indices[1:] + [None]):
        if b != a + 1:
            spans.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ",".join(spans)

