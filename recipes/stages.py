"""The default model's stages, each cached in the work directory so a rerun resumes: data,
processor (tokenizer and pixel budgets), config, step plan, training, held-out eval, the
image-reliance check, and shipping the checkpoint (the start training begins from, stages
3b-3d, is `recipes.start`). `recipes.default_model` runs them in order.

The eval has two modes: "full" needs Chromium (pages, episodes) and ffmpeg and decord (videos);
"browserless" runs what Pillow alone can make data for (grounding on drawn UIs), so a GPU
machine without them evaluates, and its record says which evals are still to run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoTokenizer

from recipes import first_use, reliance
from recipes import tokenizer as bpe
from recipes.deadline import stage_budget
from recipes.recipe import (EVAL_SEED, EVAL_TASKS, EVERY_LANGUAGE, UI_GROUNDING, VIDEO_MAX_PIXELS, Recipe,
                            model_config)
from synth import eval as heldout
from synth import ui
from synth.dataset import parse_languages, synthesize
from synth.vocab import LANGUAGES, Language
from train import checkpoint
from train.config import TrainConfig, pretrain
from train.model import fit_to_tokenizer
from train.trainer import Trainer
from vlm import VLM
from vlm.config import VLMConfig
from vlm.processor import ASSETS, Processor
from vlm.weights import bindings, save_weights

log = logging.getLogger(__name__)


def make_data(recipe: Recipe, work: Path, *, workers: int, progress: bool) -> Path:
    if recipe.ui_samples:
        return mix_ui_data(recipe, work, workers=workers, progress=progress)
    data = work / "data"
    if not (data / "data.jsonl").is_file():  # synthesize renames a complete directory into place
        synthesize(recipe.synth_config(recipe.samples), data, workers=workers, progress=progress, overwrite=True)
    return data / "data.jsonl"


def mix_ui_data(recipe: Recipe, work: Path, *, workers: int, progress: bool) -> Path:
    """`work/data/data.jsonl`: the pages' conversations (`work/pages/`, none when samples is 0)
    then the drawn UIs' (`work/ui/`), media paths relative to it; each part is reused if there."""
    mixed = work / "data" / "data.jsonl"
    if mixed.is_file():
        return mixed
    parts = []
    if recipe.samples:
        pages = work / "pages"
        if not (pages / "data.jsonl").is_file():
            synthesize(recipe.synth_config(recipe.samples), pages, workers=workers, progress=progress, overwrite=True)
        parts.append(pages)
    drawn = work / "ui"
    if not (drawn / "data.jsonl").is_file():
        ui.generate(recipe.ui_config(recipe.ui_samples), drawn, workers=workers, progress=progress, overwrite=True)
    parts.append(drawn)
    mixed.parent.mkdir(parents=True, exist_ok=True)
    staging = mixed.with_name(".data.jsonl.partial")
    with staging.open("w", encoding="utf-8") as f:
        for part in parts:
            for line in (part / "data.jsonl").read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                for message in record["messages"]:
                    for item in message["content"] if isinstance(message["content"], list) else ():
                        if item["type"] in ("image", "video"):
                            item[item["type"]] = f"../{part.name}/{item[item['type']]}"
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(staging, mixed)
    return mixed


def make_processor(recipe: Recipe, work: Path, corpus: Path) -> Path:
    """`work/init/`: tokenizer, chat template and preprocessing settings with our pixel budget."""
    init = work / "init"
    if (init / "tokenizer.json").is_file():
        return init
    staging = work / ".init.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if recipe.retrain_tokenizer:
        texts = itertools.chain(bpe.jsonl_corpus(corpus), bpe.generated_corpus(seed=recipe.seed))
        tokenizer = bpe.train(texts)
        bpe.save(tokenizer, staging)
        check_coordinates(staging)
    else:
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copyfile(ASSETS / name, staging / name)
    shutil.copyfile(ASSETS / "processor_config.json", staging / "processor_config.json")
    for name, budget in (("preprocessor_config.json", recipe.image_max_pixels),
                         ("video_preprocessor_config.json", VIDEO_MAX_PIXELS)):
        settings = json.loads((ASSETS / name).read_text())
        settings["size"] = {**settings.get("size", {}), "longest_edge": budget}
        (staging / name).write_text(json.dumps(settings, indent=2) + "\n")
    shutil.rmtree(init, ignore_errors=True)
    os.replace(staging, init)
    return init


def check_coordinates(directory: Path) -> None:
    """Every model-space number 0-999 must be its digits, one token each (coarse to fine)."""
    tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    merged = [n for n in range(1000) if tok.tokenize(str(n)) != list(str(n))]
    if merged:
        raise RuntimeError(f"retrained tokenizer does not write coordinates {merged[:10]} digit by digit")


def write_config(recipe: Recipe, init: Path) -> VLMConfig:
    config = fit_to_tokenizer(model_config(recipe.size), Processor.from_pretrained(init).tokenizer)
    if (init / "config.json").is_file():  # fixed once written: the vocab must not change under it
        if VLMConfig.load(init) != config:
            raise ValueError(f"{init / 'config.json'} differs from the recipe's config: another run's work "
                             "directory? choose another --work")
        return config
    config.save(init)
    return config


def stage_result(work: Path, stage: str) -> dict[str, Any]:
    """`work/<stage>/result.json`, or {} for a stage that did not run."""
    result_file = work / stage / "result.json"
    return json.loads(result_file.read_text()) if result_file.is_file() else {}


def train_config(recipe: Recipe, work: Path, *, steps: int, progress: bool, resume: bool) -> TrainConfig:
    start = work / "start" if (work / "start" / "config.json").is_file() else None
    return pretrain(model=str(start or work / "init"), from_scratch=start is None, data=str(work / "data" / "data.jsonl"),
                    output=str(work / "run"), max_steps=steps, lr=recipe.lr,
                    warmup_steps=min(recipe.warmup_steps, steps), batch_size=recipe.batch_size,
                    grad_accum=recipe.grad_accum, max_length=recipe.max_length, seed=recipe.seed,
                    save_every=max(1, steps // 20), keep_last=2, log_every=1, progress=progress, resume=resume,
                    box_attention_weight=recipe.box_attention, freeze_vision=recipe.frozen_reader,
                    freeze_projector=recipe.frozen_reader)


def plan_steps(recipe: Recipe, work: Path, *, progress: bool) -> dict[str, Any]:
    """The number of optimiser steps: the recipe's, or what fits `hours` at the measured speed.
    Written once to `work/plan.json` and reused by every rerun."""
    plan_file = work / "plan.json"
    if plan_file.is_file():
        return json.loads(plan_file.read_text())
    plan: dict[str, Any] = {"steps": recipe.steps, "source": "--steps"}
    if recipe.steps is None:
        plan = calibrate(recipe, work, progress=progress)
        plan["steps"] = max(1, int(recipe.hours * 3600 / plan["seconds_per_step"]))
        plan["source"] = f"--hours {recipe.hours:g}" if recipe.hours >= 1 else f"--minutes {recipe.hours * 60:g}"
    write_json(plan_file, plan)
    return plan


def calibrate(recipe: Recipe, work: Path, *, progress: bool, steps: int = 8) -> dict[str, Any]:
    """Seconds per optimiser step on this machine, from `steps` real steps (the first two are
    warm-up and not counted). Measured as tokens/s and converted to the dataset's mean step
    size, because the first steps' length group need not be typical."""
    out = work / "calibrate"
    shutil.rmtree(out, ignore_errors=True)
    cfg = dataclasses.replace(train_config(recipe, work, steps=steps, progress=progress, resume=False),
                              output=str(out), save_every=0)
    trainer = Trainer(cfg)
    trainer.train()
    timed = [r for r in step_records(out / "metrics.jsonl") if r["step"] > 2]
    tokens, seconds = sum(r["step_tokens"] for r in timed), sum(r["seconds"] for r in timed)
    lengths = trainer.train_data.lengths
    step_tokens = trainer.global_batch * sum(lengths) / len(lengths)
    shutil.rmtree(out, ignore_errors=True)
    return {"tokens_per_s": tokens / seconds, "mean_step_tokens": step_tokens,
            "seconds_per_step": step_tokens * seconds / tokens, "calibration_steps": steps}


def train_model(recipe: Recipe, work: Path, *, steps: int, progress: bool,
                stop: Callable[[], bool] | None = None) -> Path:
    """Stage 4 in `work/run/`, resumed from its last checkpoint when there is one; `stop` (checked
    after each step) may end it early, and then it is finished as if it had run its `steps`."""
    run = work / "run"
    if (run / "model.safetensors").is_file() and (run / "train_config.json").is_file():
        return run  # finished
    resume = checkpoint.latest(run) is not None
    result = Trainer(train_config(recipe, work, steps=steps, progress=progress, resume=resume)).train(stop=stop)
    log.info("trained %d of %d steps; %s", trained_steps(run), steps, result.bad_records.summary())
    return run


def trained_steps(run: Path) -> int:
    """The steps a finished training run did: its last checkpoint's (one is saved where it ends)."""
    return checkpoint.TrainerState.load(checkpoint.latest(run) / "trainer_state.json").step


def budgets(work: Path, plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each step-bounded stage's plan, done steps and whether the deadline cut it
    (`recipes.deadline.stage_budget`), training's from its plan and its last checkpoint; a stage
    that did not run, or ran before budgets were recorded, is left out."""
    out = {stage: result["budget"] for stage in ("reading", "copying", "grounding")
           if "budget" in (result := stage_result(work, stage))}
    done = trained_steps(work / "run")
    return {**out, "training": stage_budget(planned_steps=plan["steps"], done_steps=done, cut=done < plan["steps"])}


def step_records(metrics_file: Path) -> list[dict[str, Any]]:
    """The optimiser-step records of a `metrics.jsonl`, each with its own `step_tokens` and
    `seconds` (its tokens over its tokens/s). A step's tokens are counted from the latest
    earlier step's record, so a run resumed from a checkpoint (whose cumulative count restarts
    at the checkpoint's) adds only what each step did."""
    records, seen = [], {0: 0}  # step -> cumulative tokens after it
    for record in map(json.loads, metrics_file.read_text().splitlines()):
        if "tokens_per_s" not in record:
            continue  # eval records carry no step time
        step = record["step"]
        step_tokens = record["tokens"] - seen[max(k for k in seen if k < step)]
        seen[step] = record["tokens"]
        records.append({**record, "step_tokens": step_tokens, "seconds": step_tokens / record["tokens_per_s"]})
    return records


def training_stats(metrics_file: Path) -> dict[str, float]:
    """Final loss and training hours, summed over the steps' own times (not wall time), so a
    run resumed across sessions counts only its steps."""
    records = step_records(metrics_file)
    return {"final_loss": records[-1]["loss"] if records else float("nan"),
            "hours": sum(r["seconds"] for r in records) / 3600}


EvalMode = Literal["full", "browserless"]
EVAL_MODES: tuple[EvalMode, ...] = ("full", "browserless")
RELIANCE_N = 24  # conversations per kind in the image-reliance check


def eval_runs(recipe: Recipe, mode: EvalMode) -> list[tuple[str, heldout.Task, tuple[Language, ...]]]:
    """(result name, task, page languages) of each held-out eval of `mode`. "full": every task
    the issue sets a target for, grounding on pages in all six languages when the recipe's are
    not all six, and grounding on drawn UIs when it trains on them; "browserless": the last alone."""
    if mode not in EVAL_MODES:
        raise ValueError(f"eval mode {mode!r}: expected one of {EVAL_MODES}")
    languages = parse_languages(recipe.languages)
    runs: list[tuple[str, heldout.Task, tuple[Language, ...]]] = []
    if mode == "full":
        runs += [(task, task, languages) for task in EVAL_TASKS]
        if languages != LANGUAGES:  # how far it carries beyond its training languages
            runs.append((EVERY_LANGUAGE, "grounding", LANGUAGES))
    if mode == "browserless" or recipe.ui_samples:
        runs.append((UI_GROUNDING, "ui_grounding", recipe.ui_config(1).languages))
    return runs


def evals_not_run(recipe: Recipe, results: dict[str, Any]) -> list[str]:
    """The full eval's result names that `results` lacks."""
    return [name for name, _, _ in eval_runs(recipe, "full") if name not in results]


def machine() -> str:
    """Where an eval ran, in words for the card (the model itself is evaluated on the CPU)."""
    if torch.cuda.is_available():
        return f"the {torch.cuda.get_device_name(0)} machine"
    return f"a CPU machine ({os.cpu_count()} cores)"


def evaluate_model(recipe: Recipe, model: Path, work: Path, *, workers: int,
                   mode: EvalMode = "full") -> dict[str, Any]:
    """The evals of `mode` (`eval_runs`) on fresh held-out data; results cached per name in
    `work/eval/`, each saying where it was measured. The drawn UIs' eval also draws held-out
    reading conversations, for the image-reliance check (`measure_reliance`); "full" also tries
    the model as a new user would (`recipes.first_use`)."""
    results: dict[str, Any] = {}
    policy = None
    for name, task, langs in eval_runs(recipe, mode):
        cached = work / "eval" / f"{name}.json"
        if cached.is_file():
            results[name] = json.loads(cached.read_text())
            continue
        policy = policy or heldout.load_model(str(model))
        n = max(2, recipe.eval_n // 5) if task == "episodes" else recipe.eval_n
        started = time.perf_counter()
        data = work / "eval" / ("data" if name == task else f"data-{name}")
        result = heldout.evaluate(task, policy, n=n, seed=EVAL_SEED, workdir=data, workers=workers, languages=langs)
        results[name] = {"accuracy": result.accuracy, "n": result.total, "seconds": time.perf_counter() - started,
                         "groups": {g: {"correct": c, "total": t} for g, (c, t) in sorted(result.groups.items())},
                         "measured": f"{mode} eval on {machine()}"}
        if task == "ui_grounding":
            reading_n = max(2, min(RELIANCE_N, recipe.eval_n))
            ui.generate(dataclasses.replace(recipe.ui_config(reading_n), seed=EVAL_SEED, split="heldout",
                                            kinds=("read",), nothink=0.0),
                        data / "ui_read", workers=workers, progress=False, overwrite=True)
        write_json(cached, results[name])
        log.info("%s", result.report())
    if mode == "full":  # issue #16's first use: the README's question on plain pages, the demo's red square
        cached = work / "eval" / "first_use.json"
        if not cached.is_file():
            tried = first_use.measure(VLM.from_pretrained(model)).as_dict()
            write_json(cached, {**tried, "measured": f"{mode} eval on {machine()}"})
        results["first_use"] = json.loads(cached.read_text())
    return results


# held-out data directories (under work/eval/data/) the image-reliance check reads, by the name
# its result is kept under; the drawn UIs' grounding and reading show whether it looks without Chromium
RELIANCE_DATA = {"grounding": "grounding", "qa": "qa", "video": "video", "ui_grounding": "ui_grounding",
                 "ui_read": "ui_read"}


def measure_reliance(model: Path, work: Path, *, n: int = RELIANCE_N) -> dict[str, Any]:
    """`recipes.reliance` on the held-out data the eval generated: does the model look? Cached
    in `work/eval/reliance.json`; a later eval's new data adds its kinds to it."""
    cached = work / "eval" / "reliance.json"
    out = json.loads(cached.read_text()) if cached.is_file() else {}
    todo = {name: data for name, folder in RELIANCE_DATA.items()
            if name not in out and (data := work / "eval" / "data" / folder / "data.jsonl").is_file()}
    if todo:
        vlm, processor = VLM.from_pretrained(model).model.eval(), Processor.from_pretrained(model)
        for name, data in todo.items():
            records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
            for r in reliance.measure(vlm, processor, records, root=data.parent, n=n):
                out[name] = {"n": r.n, "own": r.own, "swapped": r.swapped, "gap": r.gap}
    if todo or not cached.is_file():
        write_json(cached, out)
    return out


SHIPPED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
           "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json")


def ship(run: Path, out: Path, *, card: str, config: VLMConfig, max_shard_bytes: int | None = None) -> None:
    """Copy the checkpoint into `out`, one atomic rename per file (`out` may hold other files).
    The weights are one `model.safetensors`, or shard files of at most `max_shard_bytes` each,
    header included (for transfers that limit a file's size), with the standard
    `model.safetensors.index.json`; a tensor larger than that would be a shard alone."""
    out.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        if name != "model.safetensors":
            _copy_atomic(run / name, out / name)
    # saved again rather than copied: `save_weights` shards them, and switches between one file
    # and shards atomically, so no stale index of an earlier ship is left to shadow them
    weights = VLM.from_pretrained(run).model
    if max_shard_bytes is None:
        save_weights(weights, out)
    else:  # save_weights counts tensor bytes only, as transformers does
        save_weights(weights, out, max_shard_bytes=max_shard_bytes - header_bound(weights))
    text = config.text
    generation = {"eos_token_id": list(text.eos_token_ids), "pad_token_id": text.pad_token_id,
                  "do_sample": False, "max_new_tokens": 512}
    write_json(out / "generation_config.json", generation)
    _write_text(out / "README.md", card)


def header_bound(model: torch.nn.Module) -> int:
    """More than the safetensors header of any shard of `model` takes: its length (8 bytes),
    the metadata, and per tensor its key and under 128 bytes of dtype, shape and offsets."""
    return 8 + 128 + sum(len(key) + 128 for key in bindings(model))


def _copy_atomic(source: Path, destination: Path) -> None:
    tmp = destination.with_name(f".{destination.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, destination)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
