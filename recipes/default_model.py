"""The embedded default model from nothing, in one command.

    python -m recipes.default_model --out assets/model [--hours 2] [--device auto]

Stages, each kept in `--work` (default `runs/default_model`) and reused when the command runs
again, so an interrupted run continues where it stopped:

1. data: `synth.dataset` generates the train split, pages in `--languages`, a `--nothink` share
   of the conversations with thinking off (held-out data comes later, from the eval's own seed
   stream, so no page, episode or video is shared);
2. tokenizer: a byte-level BPE retrained on that corpus plus the built-in multilingual one
   (`recipes.tokenizer`); the released prompt boilerplate then costs ~2.8x fewer tokens, and
   attention cost falls with its square. Its size stays 8192 and the special tokens keep their
   ids, so the model config is fixed only after this stage and never changes again;
3. config: GLM-4.5V's layout (ViT + projector + MoE language model) at the `small()` size,
   fitted to the tokenizer, with a pixel budget of ~190 vision tokens per screenshot;
4. train: the project trainer from scratch (`pretrain` preset, Muon), resumed from its last
   checkpoint when there is one;
5. eval: `synth.eval` on fresh held-out data in the training languages for every task the
   issue sets a target for, plus grounding on pages in all six languages;
6. ship: `config.json`, `model.safetensors`, tokenizer, chat template, preprocessor and
   generation configs and a `README.md` model card (`recipes.model_card`) with the measured
   numbers into `--out`.

Why float32 weights: on CPU the model runs in float32 (bfloat16 matmuls are hundreds of times
slower on these CPUs), and a float32 checkpoint loads as float32 with no cast; at ~11M
parameters it is ~45 MB, under the 50 MB limit, and two hours of two CPU cores could not train
a larger model further anyway (see `pilot` numbers in the model card).

`--hours` turns a time budget into a fixed number of optimiser steps by timing a few steps on
this machine (stage 3b, recorded in `work/plan.json`); for a bit-exact rerun elsewhere pass the
recorded `--steps`. Everything else is a pure function of `--seed`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from synth.vocab import LANGUAGES

log = logging.getLogger(__name__)

Size = Literal["small", "tiny"]
Device = Literal["auto", "cpu", "cuda"]
EVAL_TASKS = ("grounding", "action", "video", "episodes", "qa")
EVAL_SEED = 1  # held-out stream seed for the reported numbers
EVERY_LANGUAGE = "grounding_every_language"  # extra eval when the recipe's pages are not all six
# Unit shares, chosen by compute rather than by count: an action or episode step carries the
# released agent prompt (~1,800-2,200 tokens with our tokenizer) for one short answer, a
# grounding unit is one ~430-token conversation of GROUNDING_TURNS questions about one
# screenshot. With "grounding:6,action:3,..." 88% of the tokens were action prompts and a
# checkpoint at step 306 of 699 had not yet learned the grounding answer's format. This mix
# gives grounding (which actions and episodes need too) ~40% of the tokens; it is the shipped
# model's mix. READING_KINDS adds reading conversations (every element's text, then its box) at
# about grounding's token share and doubles the cheap videos. With `--languages en --nothink 0.5`
# it was stopped at step 725 of 1,538: like the shipped model, it did not use the image at all
# (`python -m recipes.reliance`), so more steps of it would not have helped.
DEFAULT_KINDS = "grounding:24,action:1,episode:1,video:2,qa:1"
READING_KINDS = "grounding:24,read:16,action:1,episode:1,video:4,qa:1"
GROUNDING_TURNS = 6
IMAGE_MAX_PIXELS = 320_000  # counted over the duplicated frame pair: 1280x720 -> 532x280 = 190 tokens
VIDEO_MAX_PIXELS = 320_000  # over all sampled frames: a 6-10 s clip at 2 fps -> 150-180 tokens


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Everything that decides the model. Saved as `work/recipe.json`; a rerun must match it."""

    size: Size = "small"
    seed: int = 0
    samples: int = 6_000  # conversations generated; the pilot extrapolates ~4,500 seen in 2 CPU hours
    kinds: str = DEFAULT_KINDS
    grounding_turns: int = GROUNDING_TURNS
    languages: str = ",".join(LANGUAGES)  # UI languages of the training pages and the held-out eval
    nothink: float = 0.0  # share of conversations with /nothink (0.5: it answers in both modes)
    retrain_tokenizer: bool = True
    steps: int | None = None  # optimiser steps; None: from --hours and a measured step time
    hours: float = 2.0  # training budget when steps is None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-3
    warmup_steps: int = 50
    max_length: int = 3072  # longer samples (rare multi-step prompts) are skipped and counted
    eval_n: int = 100  # held-out samples per task (episodes: eval_n // 5)

    def __post_init__(self) -> None:
        if self.size not in ("small", "tiny"):
            raise ValueError(f"size {self.size!r}: expected 'small' or 'tiny'")
        if self.samples < self.batch_size * self.grad_accum:
            raise ValueError(f"samples={self.samples} is less than one batch ({self.batch_size * self.grad_accum})")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps={self.steps}: expected a positive number of optimiser steps")
        if self.hours <= 0:
            raise ValueError(f"hours={self.hours}: expected a positive training budget")
        self.synth_config(1)  # the data engine's own checks of languages and nothink, up front

    def synth_config(self, n: int) -> Any:
        """The `synth.dataset` config of this recipe's training data."""
        from synth.dataset import SynthConfig, parse_kinds, parse_languages

        return SynthConfig(n=n, seed=self.seed, kinds=parse_kinds(self.kinds), split="train",
                           grounding_turns=self.grounding_turns, nothink=self.nothink,
                           languages=parse_languages(self.languages))


# ---- the model ------------------------------------------------------------------------------


def model_config(size: Size) -> Any:
    """GLM-4.5V's architecture at the default model's size (before fitting to the tokenizer).

    small: 6 text layers of width 256 (the first dense, five MoE with 8 routed experts, top-2,
    plus one shared), 4 query / 2 KV heads of 64; a 4-block ViT of width 128. ~11M parameters,
    ~4M active per token besides the embeddings. tiny: the same shape at test size."""
    from vlm.config import TextConfig, VisionConfig, VLMConfig

    if size == "tiny":
        text = TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=32, mrope_section=(2, 3, 3), max_position_embeddings=8192,
                          n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
                          first_k_dense_replace=1)
        vision = VisionConfig(depth=1, hidden_size=32, num_heads=1, out_hidden_size=64, intermediate_size=96,
                              image_size=336)
    else:
        text = TextConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=64, mrope_section=(4, 6, 6), max_position_embeddings=8192,
                          n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=128,
                          first_k_dense_replace=1)
        vision = VisionConfig(depth=4, hidden_size=128, num_heads=2, out_hidden_size=256, intermediate_size=512,
                              image_size=336)
    return VLMConfig(model_type="glm4v_moe", text=text, vision=vision)


# ---- stages ---------------------------------------------------------------------------------


def make_data(recipe: Recipe, work: Path, *, workers: int, progress: bool) -> Path:
    from synth.dataset import synthesize

    data = work / "data"
    if not (data / "data.jsonl").is_file():  # synthesize renames a complete directory into place
        synthesize(recipe.synth_config(recipe.samples), data, workers=workers, progress=progress, overwrite=True)
    return data / "data.jsonl"


def make_processor(recipe: Recipe, work: Path, corpus: Path) -> Path:
    """`work/init/`: tokenizer, chat template and preprocessing settings with our pixel budget."""
    from vlm.processor import ASSETS

    init = work / "init"
    if (init / "tokenizer.json").is_file():
        return init
    staging = work / ".init.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if recipe.retrain_tokenizer:
        from recipes import tokenizer as bpe

        texts = _chain(bpe.jsonl_corpus(corpus), bpe.generated_corpus(seed=recipe.seed))
        tokenizer = bpe.train(texts)
        bpe.save(tokenizer, staging)
        check_coordinates(staging)
    else:
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copyfile(ASSETS / name, staging / name)
    shutil.copyfile(ASSETS / "processor_config.json", staging / "processor_config.json")
    for name, budget in (("preprocessor_config.json", IMAGE_MAX_PIXELS),
                         ("video_preprocessor_config.json", VIDEO_MAX_PIXELS)):
        settings = json.loads((ASSETS / name).read_text())
        settings["size"] = {**settings.get("size", {}), "longest_edge": budget}
        (staging / name).write_text(json.dumps(settings, indent=2) + "\n")
    shutil.rmtree(init, ignore_errors=True)
    os.replace(staging, init)
    return init


def _chain(*iterables):
    for it in iterables:
        yield from it


def check_coordinates(directory: Path) -> None:
    """Every model-space number 0-999 must be its digits, one token each (coarse to fine)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    merged = [n for n in range(1000) if tok.tokenize(str(n)) != list(str(n))]
    if merged:
        raise RuntimeError(f"retrained tokenizer does not write coordinates {merged[:10]} digit by digit")


def write_config(recipe: Recipe, init: Path) -> Any:
    from vlm.config import VLMConfig
    from vlm.processor import Processor

    from train.model import fit_to_tokenizer

    config = fit_to_tokenizer(model_config(recipe.size), Processor.from_pretrained(init).tokenizer)
    if (init / "config.json").is_file():  # fixed once written: the vocab must not change under it
        if VLMConfig.load(init) != config:
            raise ValueError(f"{init / 'config.json'} differs from the recipe's config: another run's work "
                             "directory? choose another --work")
        return config
    config.save(init)
    return config


def train_config(recipe: Recipe, work: Path, *, steps: int, progress: bool, resume: bool) -> Any:
    from train.config import pretrain

    return pretrain(model=str(work / "init"), from_scratch=True, data=str(work / "data" / "data.jsonl"),
                    output=str(work / "run"), max_steps=steps, lr=recipe.lr,
                    warmup_steps=min(recipe.warmup_steps, steps), batch_size=recipe.batch_size,
                    grad_accum=recipe.grad_accum, max_length=recipe.max_length, seed=recipe.seed,
                    save_every=max(1, steps // 20), keep_last=2, log_every=1, progress=progress, resume=resume)


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
        plan["source"] = f"--hours {recipe.hours}"
    _write_json(plan_file, plan)
    return plan


def calibrate(recipe: Recipe, work: Path, *, progress: bool, steps: int = 8) -> dict[str, Any]:
    """Seconds per optimiser step on this machine, from `steps` real steps (the first two are
    warm-up and not counted). Measured as tokens/s and converted to the dataset's mean step
    size, because the first steps' length group need not be typical."""
    from train.trainer import Trainer

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


def train_model(recipe: Recipe, work: Path, *, steps: int, progress: bool) -> Path:
    from train import checkpoint
    from train.trainer import Trainer

    run = work / "run"
    if (run / "model.safetensors").is_file() and (run / "train_config.json").is_file():
        return run  # finished
    resume = checkpoint.latest(run) is not None
    result = Trainer(train_config(recipe, work, steps=steps, progress=progress, resume=resume)).train()
    log.info("trained %d steps; %s", steps, result.bad_records.summary())
    return run


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


def evaluate_model(recipe: Recipe, model: Path, work: Path, *, workers: int) -> dict[str, Any]:
    """Every task on fresh held-out data; results cached per task in `work/eval/`."""
    from synth import eval as heldout
    from synth.dataset import parse_languages

    results: dict[str, Any] = {}
    policy = heldout.load_model(str(model))
    languages = parse_languages(recipe.languages)
    runs = [(task, task, languages) for task in EVAL_TASKS]
    if languages != LANGUAGES:  # how far it carries beyond its training languages
        runs.append((EVERY_LANGUAGE, "grounding", LANGUAGES))
    for name, task, langs in runs:
        cached = work / "eval" / f"{name}.json"
        if cached.is_file():
            results[name] = json.loads(cached.read_text())
            continue
        n = max(2, recipe.eval_n // 5) if task == "episodes" else recipe.eval_n
        started = time.perf_counter()
        data = work / "eval" / ("data" if name == task else f"data-{name}")
        result = heldout.evaluate(task, policy, n=n, seed=EVAL_SEED, workdir=data, workers=workers, languages=langs)
        results[name] = {"accuracy": result.accuracy, "n": result.total, "seconds": time.perf_counter() - started,
                         "groups": {g: {"correct": c, "total": t} for g, (c, t) in sorted(result.groups.items())}}
        _write_json(cached, results[name])
        log.info("%s", result.report())
    return results


RELIANCE_KINDS = ("grounding", "qa", "video")


def measure_reliance(model: Path, work: Path, *, n: int = 24) -> dict[str, Any]:
    """`recipes.reliance` on the held-out data the eval just generated: does the model look?"""
    from recipes import reliance
    from vlm import VLM
    from vlm.processor import Processor

    cached = work / "eval" / "reliance.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    vlm, processor, out = VLM.from_pretrained(model).model.eval(), Processor.from_pretrained(model), {}
    for kind in RELIANCE_KINDS:
        data = work / "eval" / "data" / kind / "data.jsonl"
        if data.is_file():
            records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
            for r in reliance.measure(vlm, processor, records, root=data.parent, n=n):
                out[r.kind] = {"n": r.n, "own": r.own, "swapped": r.swapped, "gap": r.gap}
    _write_json(cached, out)
    return out


# ---- shipping -------------------------------------------------------------------------------

SHIPPED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
           "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json")


def ship(run: Path, out: Path, *, card: str, config: Any) -> None:
    """Copy the checkpoint into `out`, one atomic rename per file (`out` may hold other files)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        _copy_atomic(run / name, out / name)
    text = config.text
    generation = {"eos_token_id": list(text.eos_token_ids), "pad_token_id": text.pad_token_id,
                  "do_sample": False, "max_new_tokens": 512}
    _write_json(out / "generation_config.json", generation)
    _write_text(out / "README.md", card)


def _copy_atomic(source: Path, destination: Path) -> None:
    tmp = destination.with_name(f".{destination.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, destination)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


# ---- the command ----------------------------------------------------------------------------


def run(recipe: Recipe, *, out: Path, work: Path, workers: int = 2, evaluate: bool = True,
        progress: bool = True, command: str = "") -> dict[str, Any]:
    """All stages; returns the eval results (empty when `evaluate` is False)."""
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "recipe.json"
    if saved.is_file() and Recipe(**json.loads(saved.read_text())) != recipe:
        raise ValueError(f"{work} holds a run of another recipe ({saved}); pass the same options or another --work")
    _write_json(saved, dataclasses.asdict(recipe))
    started = time.perf_counter()
    corpus = make_data(recipe, work, workers=workers, progress=progress)
    log.info("data ready (%.0f s)", time.perf_counter() - started)
    init = make_processor(recipe, work, corpus)
    config = write_config(recipe, init)
    plan = plan_steps(recipe, work, progress=progress)
    log.info("training plan: %s", plan)
    run_dir = train_model(recipe, work, steps=plan["steps"], progress=progress)
    train_stats = training_stats(run_dir / "metrics.jsonl")
    results = evaluate_model(recipe, run_dir, work, workers=workers) if evaluate else {}
    reliance = measure_reliance(run_dir, work) if evaluate else {}
    kinds: dict[str, int] = {}
    for line in corpus.read_text(encoding="utf-8").splitlines():
        kind = json.loads(line)["meta"].get("kind", "?")
        kinds[kind] = kinds.get(kind, 0) + 1
    from recipes.model_card import model_card

    card = model_card(recipe, command=command, config=config, plan=plan, results=results, reliance=reliance,
                      train_stats=train_stats,
                      data_stats={"samples": sum(kinds.values()), "kinds": kinds})
    ship(run_dir, out, card=card, config=config)
    return results


def build_parser() -> argparse.ArgumentParser:
    d = Recipe()
    p = argparse.ArgumentParser(prog="python -m recipes.default_model", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="checkpoint directory to write (assets/model ships it)")
    p.add_argument("--work", default="runs/default_model", help="stage outputs; rerun to resume")
    p.add_argument("--hours", type=float, default=d.hours, help="training budget (ignored with --steps)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (reproducible on any machine)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--size", choices=("small", "tiny"), default=d.size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--samples", type=int, default=d.samples, help="training conversations to generate")
    p.add_argument("--kinds", default=d.kinds, help="unit mix for python -m synth (kind:weight,...)")
    p.add_argument("--grounding-turns", type=int, default=d.grounding_turns,
                   help="grounding questions per training conversation (one screenshot each)")
    p.add_argument("--languages", default=d.languages, help="UI languages of the training and held-out pages")
    p.add_argument("--nothink", type=float, default=d.nothink, help="share of conversations with thinking off")
    p.add_argument("--keep-tokenizer", action="store_true", help="use assets/model's tokenizer instead of retraining")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--eval-n", type=int, default=d.eval_n, help="held-out samples per task (episodes: a fifth)")
    p.add_argument("--no-eval", action="store_true", help="skip stage 5 (the card then says 'not run')")
    p.add_argument("--workers", type=int, default=2, help="data-engine processes")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch sees a GPU: the trainer then picks the CPU
    elif args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
    recipe = Recipe(size=args.size, seed=args.seed, samples=args.samples, kinds=args.kinds,
                    grounding_turns=args.grounding_turns, languages=args.languages, nothink=args.nothink,
                    retrain_tokenizer=not args.keep_tokenizer, steps=args.steps, hours=args.hours,
                    batch_size=args.batch_size, lr=args.lr, eval_n=args.eval_n)
    command = "python -m recipes.default_model " + " ".join(argv if argv is not None else sys.argv[1:])
    results = run(recipe, out=Path(args.out), work=Path(args.work), workers=args.workers,
                  evaluate=not args.no_eval, progress=not args.no_progress, command=command)
    from recipes.model_card import target_rows

    for name, measured, target, ok in target_rows(results):
        print(f"{name}: {'not run' if measured is None else f'{measured:.3f}'} (target {target:.2f})")
    print(f"checkpoint written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
