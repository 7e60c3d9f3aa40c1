"""The embedded default model from nothing, in one command.

    python -m recipes.default_model --out assets/model [--hours 2] [--device auto]

Stages (`recipes.stages`), each kept in `--work` (default `runs/default_model`) and reused when
the command runs again, so an interrupted run continues where it stopped; the options that
decide the model are a `recipes.recipe.Recipe`:

1. data: `synth.dataset` generates the train split, pages in `--languages`, a `--nothink` share
   of the conversations with thinking off (held-out data comes later, from the eval's own seed
   stream, so no page, episode or video is shared);
2. tokenizer: a byte-level BPE retrained on that corpus plus the built-in multilingual one
   (`recipes.tokenizer`); the released prompt boilerplate then costs ~2.8x fewer tokens, and
   attention cost falls with its square. Its size stays 8192 and the special tokens keep their
   ids, so the model config is fixed only after this stage and never changes again;
3. config: GLM-4.5V's layout (ViT + projector + MoE language model) at the `small()` size,
   fitted to the tokenizer, with a pixel budget of ~400 vision tokens per 1280x720 screenshot
   (x0.59: 13-18 px UI text reaches the encoder 7.7-10.6 px high);
3b. reading: the vision encoder alone learns to read (`recipes.reading`: a label per patch on
   `synth.text` pictures, `--reading-minutes`); the model starts from random weights around it;
3c. copying: that random language model learns to copy on text alone (`recipes.copying`,
   `--copying-steps`), its embeddings frozen so the reading encoder stays aligned to them;
3d. grounding words: over the frozen reader, the language model learns which word and where on
   small pictures of three UI words, every word asked, one head told to look inside the box it
   writes (`recipes.looking ground`, `--ground-steps`);
4. train: the project trainer (`pretrain` preset, Muon), from that start (or from scratch
   with `--reading-minutes 0`), the reader's vision tower and projector frozen
   (`--no-freeze-reader` trains them too), resumed from its last checkpoint when there is one;
5. eval: `synth.eval` on fresh held-out data in the training languages for every task the
   issue sets a target for, plus grounding on pages in all six languages (and on drawn UIs
   when the data has them); `--eval browserless` runs only what needs no Chromium, ffmpeg or
   decord (grounding on drawn UIs) and records the rest as not run;
6. ship: `config.json`, `model.safetensors` (or `--max-shard-mb` shards and their index),
   tokenizer, chat template, preprocessor and generation configs and a `README.md` model card
   (`recipes.model_card`) with the measured numbers into `--out`; the run's record (options,
   plan, results, what was not run) is `work/eval.json`. `--pack DIR` also writes the
   checkpoint as a few files (`recipes.pack`: the weight shards, `checkpoint.tar`, `eval.json`).

A GPU machine without Chromium (README.md, "Training the default model on a GPU machine"):

    python -m recipes.default_model --device cuda --samples 0 --ui-samples 4000 --kinds grounding,read \
        --keep-tokenizer --reading-minutes 2 --minutes 5 --eval browserless --eval-n 50 --workers 16 \
        --max-shard-mb 16 --out runs/gpu/model --work runs/gpu/work --pack "$OUT" --deadline 9 --no-progress

`--deadline 9` (`recipes.deadline`) is for a machine that kills the command after 10 minutes: no
step of the reading, copying, grounding or training stage starts later than minute 9 less
`--deadline-reserve-s` (120 s), whatever their budgets, so the eval, the reliance check, shipping
and packing still run; `work/eval.json` and the card say what each stage planned and did. It
bounds those four stages only: data generation and the step calibration before them and the eval
after take what they take, and the reserve is an estimate of the latter.

and later, where Chromium is, the rest of the eval on what came back:

    python -m recipes.default_model --eval-only RETURNED --out runs/gpu/model --work runs/gpu/eval

Why float32 weights: on CPU the model runs in float32 (bfloat16 matmuls are hundreds of times
slower on these CPUs), and a float32 checkpoint loads as float32 with no cast; at ~11M
parameters it is ~45 MB, under the 50 MB limit, and two hours of two CPU cores could not train
a larger model further anyway (see `pilot` numbers in the model card).

On a GPU the trainer runs bf16 autocast over float32 weights (`train.trainer`) and the reading
stage bf16 autocast too; the checkpoint is float32 either way.

`--hours` (or `--minutes`) turns a time budget into a fixed number of optimiser steps by timing
a few steps on this machine (stage 3b, recorded in `work/plan.json`; on CUDA each step's time
ends after a synchronise); for a bit-exact rerun elsewhere pass the recorded `--steps`.
Everything else is a pure function of `--seed`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from recipes.deadline import RESERVE_S, Deadline
from recipes.model_card import model_card, target_rows
from recipes.pack import pack, unpack
from recipes.recipe import Recipe
from recipes.stages import (EVAL_MODES, EvalMode, budgets, evals_not_run, evaluate_model, machine, make_data,
                            make_processor, measure_reliance, plan_steps, ship, stage_result, train_model, training_stats,
                            write_config, write_json)
from recipes.start import make_start
from vlm.config import VLMConfig

log = logging.getLogger(__name__)


def run(recipe: Recipe, *, out: Path, work: Path, workers: int = 2, evaluate: bool = True,
        eval_mode: EvalMode = "full", max_shard_bytes: int | None = None, pack_to: Path | None = None,
        progress: bool = True, command: str = "", deadline: Deadline | None = None) -> dict[str, Any]:
    """All stages; returns the eval results (empty when `evaluate` is False). Under a `deadline`
    the reading, copying, grounding and training stages stop early to leave its reserve to the rest."""
    claim(work, recipe)
    started = time.perf_counter()
    corpus = make_data(recipe, work, workers=workers, progress=progress)
    log.info("data ready (%.0f s)", time.perf_counter() - started)
    init = make_processor(recipe, work, corpus)
    config = write_config(recipe, init)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # drawing pictures costs more than a CPU step: on CPU one worker draws while the trainer steps
    read = make_start(recipe, work, config, device=device, workers=workers if device == "cuda" else min(workers, 1),
                      deadline=deadline)
    copied, grounded = stage_result(work, "copying"), stage_result(work, "grounding")
    log.info("reading stage: %s; copying stage: %s; grounding stage: %s", read, copied, grounded)
    plan = plan_steps(recipe, work, progress=progress)
    log.info("training plan: %s", plan)
    run_dir = train_model(recipe, work, steps=plan["steps"], progress=progress,
                          stop=None if deadline is None else deadline.stopper())
    precision = "bf16 autocast, float32 weights" if device == "cuda" else "float32"
    train_stats = {**training_stats(run_dir / "metrics.jsonl"), "machine": f"{machine()}, {precision}"}
    results = evaluate_model(recipe, run_dir, work, workers=workers, mode=eval_mode) if evaluate else {}
    reliance = measure_reliance(run_dir, work) if evaluate else {}
    kinds: dict[str, int] = {}
    for line in corpus.read_text(encoding="utf-8").splitlines():
        kind = json.loads(line)["meta"].get("kind", "?")
        kinds[kind] = kinds.get(kind, 0) + 1
    record = {"recipe": dataclasses.asdict(recipe), "command": command, "plan": plan, "reading": read,
              "copying": copied, "grounding": grounded, "budgets": budgets(work, plan), "train_stats": train_stats,
              "data_stats": {"samples": sum(kinds.values()), "kinds": kinds},
              "results": results, "reliance": reliance, "not_run": evals_not_run(recipe, results)}
    write_json(work / "eval.json", record)
    ship(run_dir, out, card=card(record, config), config=config, max_shard_bytes=max_shard_bytes)
    if pack_to is not None:
        pack(out, pack_to, record=record, max_file_bytes=max_shard_bytes)
    return results


def evaluate_only(source: Path, *, out: Path, work: Path, workers: int = 2,
                  eval_mode: EvalMode = "full") -> dict[str, Any]:
    """Stage 5 on a checkpoint another run packed (`--pack`): rebuild it into `out`, run the
    evals of `eval_mode` its record lacks (in `work`), rewrite its card and the record
    (`work/eval.json`). How a GPU run without Chromium gets its full eval where Chromium is."""
    record = unpack(source, out)
    recipe = Recipe.of_record(record["recipe"])
    claim(work, recipe)
    for name, result in record["results"].items():  # measured there: kept, not measured again
        if not (work / "eval" / f"{name}.json").is_file():
            write_json(work / "eval" / f"{name}.json", result)
    if record["reliance"] and not (work / "eval" / "reliance.json").is_file():
        write_json(work / "eval" / "reliance.json", record["reliance"])
    results = {**record["results"], **evaluate_model(recipe, out, work, workers=workers, mode=eval_mode)}
    record = {**record, "results": results, "reliance": measure_reliance(out, work),
              "not_run": evals_not_run(recipe, results)}
    write_json(work / "eval.json", record)
    text = card(record, VLMConfig.load(out))
    (out / "README.md").write_text(text, encoding="utf-8")
    return results


def claim(work: Path, recipe: Recipe) -> None:
    """`work` is this recipe's (`work/recipe.json`): a rerun must not mix two recipes' stages."""
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "recipe.json"
    if saved.is_file() and Recipe.of_record(json.loads(saved.read_text())) != recipe:
        raise ValueError(f"{work} holds a run of another recipe ({saved}); pass the same options or another --work")
    write_json(saved, dataclasses.asdict(recipe))


def card(record: dict[str, Any], config: VLMConfig) -> str:
    """The model card from a run's record (`work/eval.json`)."""
    return model_card(Recipe.of_record(record["recipe"]), command=record["command"], config=config, plan=record["plan"],
                      results=record["results"], reliance=record["reliance"], train_stats=record["train_stats"],
                      reading=record["reading"], copying=record.get("copying", {}),  # older packs lack it
                      grounding=record.get("grounding", {}),  # and this
                      budgets=record.get("budgets", {}),  # and this
                      data_stats=record["data_stats"], not_run=record["not_run"])


def build_parser() -> argparse.ArgumentParser:
    d = Recipe()
    p = argparse.ArgumentParser(prog="python -m recipes.default_model", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="checkpoint directory to write (assets/model ships it)")
    p.add_argument("--work", default="runs/default_model", help="stage outputs; rerun to resume")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--hours", type=float, default=d.hours, help="training budget (ignored with --steps)")
    budget.add_argument("--minutes", type=float, default=None, help="training budget in minutes, instead of --hours")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (reproducible on any machine)")
    p.add_argument("--deadline", type=float, default=None, metavar="MINUTES",
                   help="wall-clock limit from the process start: the reading, copying, grounding and training stages each "
                        "stop early, at a step boundary, when one more step would leave less than "
                        "--deadline-reserve-s before it, the time kept for the eval, reliance check, ship and "
                        "pack; what each planned and did is recorded (eval.json, the card). Data generation, "
                        "the step calibration and the eval are not bounded. Unset: no limit")
    p.add_argument("--deadline-reserve-s", type=float, default=RESERVE_S, metavar="SECONDS",
                   help="with --deadline: seconds kept free before it for what follows training")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--size", choices=("small", "tiny"), default=d.size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--samples", type=int, default=d.samples, help="training conversations to generate")
    p.add_argument("--ui-samples", type=int, default=d.ui_samples,
                   help="conversations on PIL-drawn UIs (python -m synth.ui) mixed in; with --samples 0 no Chromium is needed")
    p.add_argument("--kinds", default=d.kinds, help="unit mix for python -m synth (kind:weight,...)")
    p.add_argument("--grounding-turns", type=int, default=d.grounding_turns,
                   help="grounding questions per training conversation (one screenshot each)")
    p.add_argument("--languages", default=d.languages, help="UI languages of the training and held-out pages")
    p.add_argument("--nothink", type=float, default=d.nothink, help="share of conversations with thinking off")
    p.add_argument("--keep-tokenizer", action="store_true", help="use assets/model's tokenizer instead of retraining")
    p.add_argument("--max-length", type=int, default=d.max_length, help="longest conversation trained, in tokens "
                   "(v1: 3072)")
    p.add_argument("--image-max-pixels", type=int, default=d.image_max_pixels,
                   help="processor budget per image, over the duplicated frame pair (v1: 320000)")
    p.add_argument("--reading-minutes", type=float, default=d.reading_minutes,
                   help="stage 3b: minutes of the vision encoder learning to read (0: skip)")
    p.add_argument("--reading-steps", type=int, default=d.reading_steps,
                   help="stage 3b's budget in steps instead of --reading-minutes (the same on any machine)")
    p.add_argument("--reading-init", choices=("default", "mimetic"), default=d.reading_init)
    p.add_argument("--reading-glyph-share", type=float, default=d.reading_glyph_share,
                   help="the share of the reading stage that trains the character heads alone first")
    p.add_argument("--copying-steps", type=int, default=d.copying_steps,
                   help="stage 3c: steps of the language model learning to copy on text alone (0: skip)")
    p.add_argument("--ground-steps", type=int, default=d.ground_steps,
                   help="stage 3d: steps of the language model boxing words on small pictures over the frozen reader "
                        "(0: skip; needs a reading stage)")
    p.add_argument("--freeze-reader", action=argparse.BooleanOptionalAction, default=d.freeze_reader,
                   help="stage 4 keeps the reading stage's vision tower and projector as they are")
    p.add_argument("--box-attention", type=float, default=d.box_attention,
                   help="weight of the box-attention label: one head looks inside the box it writes (0: off)")
    p.add_argument("--lm-init", choices=("default", "mimetic"), default=d.lm_init,
                   help="the language model's attention at step 0 (mimetic: starts by content)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--eval-n", type=int, default=d.eval_n, help="held-out samples per task (episodes: a fifth)")
    p.add_argument("--no-eval", action="store_true", help="skip stage 5 (the card then says 'not run')")
    p.add_argument("--eval", choices=EVAL_MODES, default="full", dest="eval_mode",
                   help="stage 5: every eval (needs Chromium, ffmpeg, decord), or only grounding on drawn UIs")
    p.add_argument("--eval-only", default=None, metavar="PACK",
                   help="no training: rebuild the checkpoint a --pack folder holds into --out and run the evals "
                        "its record lacks; the other recipe options are the record's")
    p.add_argument("--max-shard-mb", type=float, default=None,
                   help="weights as shards of at most this many MiB, with their index; unset: one file")
    p.add_argument("--pack", default=None, metavar="DIR",
                   help="also write the checkpoint as its weight files, checkpoint.tar (the rest) and eval.json")
    p.add_argument("--workers", type=int, default=2,
                   help="data-engine processes; on CUDA also the reading stage's DataLoader workers")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.device == "cpu":
        # CUDA starts lazily (no import above queries a device), so this still hides the GPUs
        # from torch and the trainer picks the CPU
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
    if args.workers < 1:
        raise SystemExit(f"--workers {args.workers}: expected at least 1")
    if args.max_shard_mb is not None and args.max_shard_mb <= 0:
        raise SystemExit(f"--max-shard-mb {args.max_shard_mb}: expected a positive size")
    if args.minutes is not None and args.minutes <= 0:
        raise SystemExit(f"--minutes {args.minutes}: expected a positive training budget")
    if args.deadline is not None and not 0 < args.deadline < math.inf:
        raise SystemExit(f"--deadline {args.deadline:g}: expected a positive number of minutes")
    if args.deadline is not None and not 0 <= args.deadline_reserve_s < 60 * args.deadline:
        raise SystemExit(f"--deadline-reserve-s {args.deadline_reserve_s:g}: expected 0 or more seconds, fewer than "
                         f"the {60 * args.deadline:g} of --deadline {args.deadline:g}")
    if args.eval_only is not None:
        results = evaluate_only(Path(args.eval_only), out=Path(args.out), work=Path(args.work), workers=args.workers,
                                eval_mode=args.eval_mode)
        report(results, f"checkpoint and card in {args.out}, record in {Path(args.work) / 'eval.json'}")
        return 0
    hours = args.minutes / 60 if args.minutes is not None else args.hours
    recipe = Recipe(size=args.size, seed=args.seed, samples=args.samples, ui_samples=args.ui_samples, kinds=args.kinds,
                    grounding_turns=args.grounding_turns, languages=args.languages, nothink=args.nothink,
                    retrain_tokenizer=not args.keep_tokenizer, image_max_pixels=args.image_max_pixels, max_length=args.max_length,
                    reading_minutes=args.reading_minutes, reading_steps=args.reading_steps,
                    reading_init=args.reading_init, reading_glyph_share=args.reading_glyph_share,
                    lm_init=args.lm_init, copying_steps=args.copying_steps, ground_steps=args.ground_steps,
                    freeze_reader=args.freeze_reader, box_attention=args.box_attention, steps=args.steps, hours=hours,
                    batch_size=args.batch_size, lr=args.lr, eval_n=args.eval_n)
    command = "python -m recipes.default_model " + " ".join(argv if argv is not None else sys.argv[1:])
    max_shard_bytes = None if args.max_shard_mb is None else int(args.max_shard_mb * 2**20)
    deadline = (None if args.deadline is None
                else Deadline.from_process_start(args.deadline, reserve_s=args.deadline_reserve_s))
    results = run(recipe, out=Path(args.out), work=Path(args.work), workers=args.workers, evaluate=not args.no_eval,
                  eval_mode=args.eval_mode, max_shard_bytes=max_shard_bytes,
                  pack_to=None if args.pack is None else Path(args.pack), progress=not args.no_progress,
                  command=command, deadline=deadline)
    report(results, f"checkpoint written to {args.out}" + (f", packed into {args.pack}" if args.pack else ""))
    return 0


def report(results: dict[str, Any], done: str) -> None:
    for name, measured, target, ok in target_rows(results):
        print(f"{name}: {'not run' if measured is None else f'{measured:.3f}'} (target {target:.2f})")
    for name, result in results.items():
        print(f"{name}: {result['accuracy']:.3f} of {result['n']} ({result.get('measured', '')})")
    print(done)


if __name__ == "__main__":
    sys.exit(main())
