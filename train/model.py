"""The model a run trains: load or build it, pick its processor, choose what trains.

* `--model DIR` loads a checkpoint in the released layout (`VLM.from_pretrained`);
  `--from-scratch` keeps only its `config.json` and starts from random weights.
* `--model tiny` (any preset function of `vlm.config`) builds that preset from scratch, resized to
  the processor's tokenizer: vocabulary size and the vision special-token ids are taken from the
  tokenizer, so a new small model and the project tokenizer always agree.
* No `--model`: the embedded default model in `assets/model/`.

The freeze switches name the three parts of the diagram: the vision encoder (`visual.*` except
the merger), the projector (`visual.merger`) and the language model (`language_model.*` and
`lm_head`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

import vlm.config as presets
from vlm import VLM, VLMConfig
from vlm.processor import ASSETS, Processor

from .config import TrainConfig

log = logging.getLogger(__name__)

PARTS = ("vision", "projector", "language")


def part_of(name: str) -> str:
    """Which freezable part a parameter name belongs to (names as in `VisionLanguageModel`)."""
    if name.startswith("visual.merger."):
        return "projector"
    if name.startswith("visual."):
        return "vision"
    if name.startswith(("language_model.", "lm_head.")):
        return "language"
    raise ValueError(f"parameter {name!r} belongs to no known part (vision / projector / language)")


PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json")


def processor_dir(model: str | None) -> Path:
    """The checkpoint's own tokenizer directory when it ships one, else the project's."""
    if model is not None and Path(model).is_dir() and (Path(model) / "tokenizer_config.json").exists():
        return Path(model)
    return ASSETS


def load_processor(model: str | None) -> Processor:
    return Processor.from_pretrained(processor_dir(model))


def copy_processor_files(source: Path, destination: Path) -> None:
    """Ship the tokenizer and preprocessing settings next to trained weights, so the result
    loads with its processor."""
    for name in PROCESSOR_FILES:
        if (source / name).is_file() and source.resolve() != destination.resolve():
            tmp = destination / f".{name}.tmp"
            shutil.copyfile(source / name, tmp)
            os.replace(tmp, destination / name)


def preset_for_tokenizer(name: str, tokenizer: Any) -> VLMConfig:
    """A `vlm.config` preset resized to `tokenizer` (vocabulary and vision special ids)."""
    fn = getattr(presets, name, None)
    if name.startswith("_") or not callable(fn):
        raise ValueError(f"--model {name!r}: not a directory and not a preset of vlm.config (e.g. 'tiny')")
    return fit_to_tokenizer(fn(), tokenizer)


def fit_to_tokenizer(cfg: VLMConfig, tokenizer: Any) -> VLMConfig:
    """`cfg` with the vocabulary size, end and padding ids and vision special ids of `tokenizer`."""
    ids = {field: tokenizer.convert_tokens_to_ids(token) for field, token in (
        ("image_token_id", "<|image|>"), ("video_token_id", "<|video|>"),
        ("image_start_token_id", "<|begin_of_image|>"), ("image_end_token_id", "<|end_of_image|>"),
        ("video_start_token_id", "<|begin_of_video|>"), ("video_end_token_id", "<|end_of_video|>"))}
    eos = tuple(tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>"))
    text = dataclasses.replace(cfg.text, vocab_size=len(tokenizer), eos_token_id=eos,
                               pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0])
    return dataclasses.replace(cfg, text=text, **ids)


def load_model(cfg: TrainConfig, processor: Processor) -> VLM:
    """The VLM to train, in float32 on CPU (accelerate moves it and autocasts on GPU)."""
    source = cfg.model if cfg.model is not None else str(ASSETS)
    if not Path(source).is_dir():
        model_cfg = preset_for_tokenizer(source, processor.tokenizer)
        log.info("building preset %r from scratch", source)
        return VLM.from_config(model_cfg, seed=cfg.seed)
    if not (Path(source) / "config.json").exists():
        raise FileNotFoundError(f"model directory {source!r} has no config.json"
                                + (" (the embedded default model has not shipped yet: pass --model DIR or --model tiny)"
                                   if cfg.model is None else ""))
    if cfg.from_scratch:
        log.info("building %s from scratch (config only)", source)
        return VLM.from_config(VLMConfig.load(source), seed=cfg.seed)
    vlm = VLM.from_pretrained(source)
    vlm.model.float()  # float32 master weights; bf16 comes from autocast on GPU
    return vlm


def apply_freeze(model: nn.Module, cfg: TrainConfig) -> dict[str, int]:
    """Set requires_grad from the freeze switches; returns trainable parameter counts per part."""
    frozen = {"vision": cfg.freeze_vision, "projector": cfg.freeze_projector, "language": cfg.freeze_language}
    counts = dict.fromkeys(PARTS, 0)
    for name, param in model.named_parameters():
        part = part_of(name)
        param.requires_grad_(not frozen[part])
        if not frozen[part]:
            counts[part] += param.numel()
    return counts


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    model.language_model.gradient_checkpointing = enabled
    model.visual.gradient_checkpointing = enabled


def set_record_routing(model: nn.Module, enabled: bool) -> None:
    for module in model.modules():
        if hasattr(module, "record_routing"):
            module.record_routing = enabled
