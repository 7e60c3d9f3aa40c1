"""Speculative decoding with the MTP layer: decode tokens/s with and without it, and its acceptance.

    .venv/bin/python -m benchmarks.generate --mtp [--threads 1] [--draft-tokens 1,2,3] [--json out.json]

Two models, greedy, batch 1, float32, the same thread count:
- the shipped default model (`assets/model`, with its trained MTP layer and draft vocabulary;
  the rows "whole vocabulary" draft from every token) on held-out prompts:
  `--prompts JSONL` (the first user turn of each conversation), else screens drawn by `synth.ui`
  (held-out split, seed 1, grounding and reading questions). The checkpoint's stop tokens apply,
  at most `--new` tokens per answer. Decode tokens/s = all decoded tokens / all decode time (the
  engine's own decode clock, prefill excluded), best of `--repeats` passes, the modes interleaved.
- the benchmark config of benchmarks/generate.py (random weights written by transformers) with an
  MTP layer trained here by self-distillation (`--train-steps` steps of train/mtp.py's
  `distill_mtp` on the model's own greedy continuations of random prompts: what the drafts must
  agree with), measured on fresh random prompts: 64 new tokens after 64, no stop ids.
Acceptance rate = accepted drafts / drafts (rows still running); tokens per step = tokens
committed per verifying forward. "identical" says whether every MTP answer equals the plain one.
Prefill ms = mean time to the first token per prompt; with drafts it includes the MTP layer's own
pass over the prompt (its prefill, speculative.py), so that cost is shown, not hidden.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from recipes.mtp_layer import Measure, compare, conversation_prompts


# ---- the shipped model ---------------------------------------------------------------------------


def shipped_prompts(vlm, path: Path | None, n: int) -> list[dict]:
    """Inputs for the first user turn of `n` conversations of `path`, else of screens drawn by synth.ui."""
    if path is not None:
        return conversation_prompts(vlm, path, n)
    from synth.ui import UIConfig, generate

    with tempfile.TemporaryDirectory() as tmp:
        data = generate(UIConfig(n=n, seed=1, split="heldout", kinds=("grounding", "read")), Path(tmp) / "ui",
                        progress=False) / "data.jsonl"
        return conversation_prompts(vlm, data, n)


# ---- the benchmark config with a self-distilled MTP layer -----------------------------------------


def distilled_mtp_model(model, *, steps: int, prompt: int, new: int, seed: int = 0):
    """`model` given an MTP layer trained on its own greedy continuations of 16 random prompts
    (train/mtp.py, as recipes.mtp_layer trains the shipped model's)."""
    from train.mtp import distill_mtp, own_answers
    from vlm.mtp import add_mtp_layer

    prompts = random_prompts(model.cfg.text.vocab_size, n=16, length=prompt, seed=seed)
    answers = own_answers(model, prompts, max_new_tokens=new, stop_token_ids=())
    model = add_mtp_layer(model, seed=seed)
    distill_mtp(model, answers, steps=steps, lr=2e-3, batch_size=4, seed=seed, log_every=0)
    return model.eval()


def random_prompts(vocab: int, *, n: int, length: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(100, vocab, (1, length), generator=generator)} for _ in range(n)]


def rows(name: str, measures: list[Measure], whole: list[Measure] = ()) -> list[str]:
    """Table rows: plain, then each draft count (with the checkpoint's draft vocabulary), then
    `whole`: the same draft counts drafting from the whole vocabulary."""
    plain = measures[0].tok_s
    out = [f"| {name} | plain | {plain:.1f} | 1.00x | | | | {measures[0].prefill_ms:.1f} |"]
    for m, note in [*((m, "") for m in measures[1:]), *((m, ", whole vocabulary") for m in whole)]:
        label = f"MTP, {m.draft_tokens} draft{'s' if m.draft_tokens > 1 else ''}{note}"
        out.append(f"| {name} | {label} | {m.tok_s:.1f} | "
                   f"{m.tok_s / plain:.2f}x | {m.acceptance_rate:.1%} | {m.tokens_per_step:.2f} | "
                   f"{'yes' if m.identical else 'NO'} | {m.prefill_ms:.1f} |")
    return out


def run(*, threads: int, drafts: list[int], repeats: int, new: int, prompts_path: Path | None, n_prompts: int,
        train_steps: int) -> tuple[str, dict]:
    from vlm import VLM
    from vlm.mtp import draft_vocab, set_draft_vocab

    from .generate import NEW, PROMPT, checkpoint_bytes, write_checkpoint  # noqa: F401 (same config)

    torch.set_num_threads(threads)
    shipped = VLM.from_pretrained()
    if not len(shipped.model.language_model.mtp_layers):
        raise SystemExit("assets/model has no MTP layer: train one (README, 'MTP') before this benchmark")
    prompts = shipped_prompts(shipped, prompts_path, n_prompts)
    ship = compare(shipped.model, prompts, drafts, new=new, stop_ids=shipped.stop_token_ids(), repeats=repeats)
    vocab, whole = draft_vocab(shipped.model), []
    if vocab is not None:  # the same layer drafting from every token: what the draft vocabulary saves
        set_draft_vocab(shipped.model, None)
        whole = compare(shipped.model, prompts, drafts, new=new, stop_ids=shipped.stop_token_ids(), repeats=repeats)[1:]
        set_draft_vocab(shipped.model, vocab)
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp))
        base = VLM.from_pretrained(tmp).model
    bench = distilled_mtp_model(base, steps=train_steps, prompt=PROMPT, new=NEW)
    random = random_prompts(bench.cfg.text.vocab_size, n=4, length=PROMPT, seed=7)
    config = compare(bench, random, drafts, new=NEW, stop_ids=(), repeats=repeats)
    lines = [f"float32, {threads} thread(s), greedy, batch 1; best of {repeats}", "",
             "| model | decoding | decode tok/s | vs plain | acceptance | tokens / forward | identical | prefill ms |",
             "|---|---|---|---|---|---|---|---|",
             *rows(f"shipped ({len(prompts)} held-out prompts)", ship, whole),
             *rows(f"benchmark config (self-distilled MTP, {train_steps} steps)", config)]
    record = {"threads": threads, "shipped": [vars(m) | {"outputs": None} for m in ship],
              "shipped_whole_vocabulary": [vars(m) | {"outputs": None} for m in whole],
              "benchmark_config": [vars(m) | {"outputs": None} for m in config]}
    return "\n".join(lines), record
