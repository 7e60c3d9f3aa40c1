"""Stages 3b-3d of the default model: the start (`work/start/`) whole-model training begins from.

3b, reading: the vision encoder alone learns to read (`recipes.reading`), aligned to the
embeddings of the random language model it will sit under; 3c, copying: that language model
learns to copy on text alone (`recipes.copying`), its embeddings frozen so the reader stays
aligned; 3d, grounding: over the frozen reader it learns which word and where on small pictures
(`recipes.looking ground`). Each keeps its result in `work/<stage>/result.json` (the reader and the
copier their weights too), each stops early under a `--deadline`, and a rerun reuses what is there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from recipes import alignment, copying, looking, mimetic, reading
from recipes.deadline import Deadline, reading_budget, stage_budget
from recipes.recipe import Recipe
from recipes.stages import stage_result, write_json
from train.box_attention import BoxAttention
from train.config import TrainConfig
from vlm import VLM
from vlm.config import VLMConfig
from vlm.processor import Processor

log = logging.getLogger(__name__)
COPIER = "language_model.safetensors"  # stage 3c's language model, in work/copying/


def make_start(recipe: Recipe, work: Path, config: VLMConfig, *, device: str, workers: int,
                  deadline: Deadline | None = None) -> dict[str, Any]:
    """Stages 3b-3d, the start (`work/start/`) training begins from: the vision encoder alone
    learns to read (`recipes.reading`), the language model around it starts random (its attention
    mimetic with `lm_init`), learns to copy on text alone (`recipes.copying`, `copying_steps`),
    then which word and where on small pictures over the frozen reader (`ground_steps`). Without
    any of them training starts from `work/init/`'s config alone. Under a `deadline` each stops
    early when time runs short (`recipes.deadline`). Returns the reading stage's result
    (`stage_result(work, "copying")` and `"grounding"` are the others')."""
    start = work / "start"
    if (not recipe.reads and recipe.lm_init == "default" and not recipe.copying_steps) \
            or (start / "config.json").is_file():
        return stage_result(work, "reading")
    weights = work / "reading" / "encoder.safetensors"
    vlm = VLM.from_config(config, seed=recipe.seed)  # the start's language model: its tokens are aligned to
    vlm.processor = Processor.from_pretrained(work / "init")
    if recipe.reads and not weights.is_file():
        train_reader(recipe, work, vlm, device=device, workers=workers, deadline=deadline)
    if recipe.reads:
        reading.load_module(vlm.model.visual, weights)
    if recipe.lm_init == "mimetic":  # attention only: the embeddings the encoder aligned to stay
        mimetic.language(vlm.model.language_model, seed=recipe.seed)
    if recipe.copying_steps:  # text alone, embeddings frozen: the encoder stays aligned to them
        copier = work / "copying" / COPIER
        if copier.is_file():  # a rerun after a later stage failed: the copier it trained is kept
            reading.load_module(vlm.model.language_model, copier)
        else:
            train_copying(recipe, work, vlm, device=device, deadline=deadline)
    if recipe.grounds:
        train_grounding(recipe, work, vlm, device=device, deadline=deadline)
    staging = work / ".start.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(work / "init", staging)
    vlm.save_pretrained(staging)
    os.replace(staging, start)
    return stage_result(work, "reading")


def train_reader(recipe: Recipe, work: Path, vlm: VLM, *, device: str, workers: int, deadline: Deadline | None) -> None:
    """Stage 3b: `work/reading/encoder.safetensors` and its `result.json`, aligned to `vlm`'s embeddings."""
    settings = reading.ReadingConfig(seed=recipe.seed, init=recipe.reading_init, glyph_share=recipe.reading_glyph_share)
    budget = reading_budget(steps=recipe.reading_steps, minutes=recipe.reading_minutes, deadline=deadline)
    encoder, result = reading.train(vlm.config.vision, settings, **budget, device=device, workers=workers,
                                    align=alignment.Alignment.of(vlm))
    # the deadline cut it if it ended before its steps, or on a clock it shortened
    cut = result["steps"] < recipe.reading_steps if recipe.reading_steps else budget["minutes"] < recipe.reading_minutes
    record = stage_budget(planned_steps=recipe.reading_steps, done_steps=result["steps"], cut=cut,
                          planned_minutes=None if recipe.reading_steps else recipe.reading_minutes)
    reading.save_module(encoder, work / "reading" / "encoder.safetensors", {**dataclasses.asdict(settings), **result})
    write_json(work / "reading" / "result.json", {**result, "settings": dataclasses.asdict(settings), "budget": record})


def train_copying(recipe: Recipe, work: Path, vlm: VLM, *, device: str, deadline: Deadline | None) -> None:
    """Stage 3c on `vlm`, in place: its language model (`work/copying/language_model.safetensors`,
    what a rerun starts stage 3d from) and `work/copying/result.json`."""
    started = time.perf_counter()
    vlm.model.to(device)
    copied = copying.train(vlm, steps=recipe.copying_steps, seed=recipe.seed, every=max(1, recipe.copying_steps // 10),
                           stop=None if deadline is None else deadline.stopper(), log_line=log.info)
    vlm.model.to("cpu")
    reading.save_module(vlm.model.language_model, work / "copying" / COPIER, {"steps": copied.steps})
    write_json(work / "copying" / "result.json", {
        "steps": copied.steps, "copy_accuracy": copied.accuracy, "seconds": round(time.perf_counter() - started, 1),
        "budget": stage_budget(planned_steps=recipe.copying_steps, done_steps=copied.steps,
                               cut=copied.steps < recipe.copying_steps)})


def train_grounding(recipe: Recipe, work: Path, vlm: VLM, *, device: str, deadline: Deadline | None) -> None:
    """Stage 3d on `vlm`, in place: with the reader frozen, the language model answers where each of
    three UI words is on 224x112 pictures (`recipes.looking ground`, every word asked, one head told
    to look inside the box it writes); its `work/grounding/result.json` (held-out gap and boxes)."""
    started = time.perf_counter()
    vlm.model.to(device)
    vlm.model.visual.requires_grad_(False)
    layer = TrainConfig.box_attention_layer % vlm.config.text.num_hidden_layers  # the head stage 4 labels
    label = BoxAttention(vlm.model, vlm.processor.tokenizer, layer=layer)
    try:
        measured = looking.train(vlm, "ground", steps=recipe.ground_steps, every=max(1, recipe.ground_steps // 4),
                                 seed=recipe.seed, attend=(label, 1.0),
                                 stop=None if deadline is None else deadline.stopper(), log_line=log.info)
    finally:
        label.close()
        vlm.model.visual.requires_grad_(True)
        vlm.model.to("cpu")
    late = label.masses[-25:]  # the head's mass in the box over the last steps (one value a step)
    write_json(work / "grounding" / "result.json", {
        "steps": measured.steps, "gap": round(measured.gap, 4), "boxes": measured.accuracy,
        "box_attention": round(sum(late) / max(1, len(late)), 3),
        "seconds": round(time.perf_counter() - started, 1),
        "budget": stage_budget(planned_steps=recipe.ground_steps, done_steps=measured.steps,
                               cut=measured.steps < recipe.ground_steps)})
