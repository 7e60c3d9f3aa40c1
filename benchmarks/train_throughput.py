"""Training throughput (tokens/s), ours beside transformers' model in the same loop.

    .venv/bin/python -m benchmarks.train_throughput            # prints a markdown table
    .venv/bin/python -m benchmarks.train_throughput --steps 5 --threads 2 --json out.json

Checkpoint: the fixed configuration of issue 5 (`benchmarks.generate.TEXT` / `VISION`, text
hidden 512, 8 layers, 16 routed experts top-4, vision depth 8 ...), written with random weights
by transformers' `save_pretrained`; both models load the same files, in float32.

The loop is the same for both: forward on a batch of `--rows` rows, each one 224x224 image
(64 vision tokens) followed by text up to `--seq` tokens, token-mean cross-entropy over the text,
backward, fused AdamW step (as the project trainer runs it; ~15x faster than foreach AdamW on
CPU). Transformers runs with each of its experts implementations (eager and grouped_mm;
batched_mm runs out of memory, see IMPLEMENTATIONS) and its fastest one is reported. Each number
is the best of `--steps` timed steps after one warm-up step (the machine is shared; the minimum
is the least disturbed estimate), ours and transformers' interleaved step by step.

The table also gives each model's achieved GFLOP/s: a step's matmul and attention FLOPs counted
analytically (forward x 3 for forward + backward; causal attention at half) over its time,
beside the float32 matmul peak measured in the same run. The peak bounds any implementation of
this step, so it bounds the reachable speed-up too, which the last line prints.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.generate import SPECIAL, TEXT, VISION, forward_flop, matmul_gflop_s

# batched_mm is left out by default: it gathers one (2F, D) weight matrix per (token, expert) pair,
# (tokens * top_k * 2F * D floats: 4 GiB per layer for 2 x 512 tokens here), and the machine's OOM
# killer ends the run. Pass --implementations to try it.
IMPLEMENTATIONS = ("eager", "grouped_mm")
PATCHES = 256  # per row: one 224x224 image, 16x16 patches of 14 px, 64 vision tokens after the 2x2 merge


def write_checkpoint(directory: Path, *, text: dict = TEXT, vision: dict = VISION, device: str = "cpu",
                     dtype: torch.dtype = torch.float32) -> None:
    """A checkpoint with transformers' own initialisation (seed 0), built on `device` (a GPU
    initialises billions of parameters in seconds) and saved in `dtype`."""
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = Glm4vMoeForConditionalGeneration(Glm4vMoeConfig(text_config=text, vision_config=vision, **SPECIAL))
    model.to(dtype).save_pretrained(directory)


def next_token_targets(ids_BT: torch.Tensor, *, ignore_first: int = 0) -> torch.Tensor:
    """Each position's target is the next token; the last position and the first `ignore_first`
    (the image) have none (-100)."""
    targets_BT = torch.cat([ids_BT[:, 1:], torch.full((ids_BT.shape[0], 1), -100)], dim=1)
    targets_BT[:, :ignore_first] = -100
    return targets_BT


def text_batch(rows: int, seq: int, vocab_size: int) -> dict[str, torch.Tensor]:
    """Rows of `seq` random text tokens (ids from 100 up, clear of the special ones)."""
    ids_BT = torch.randint(100, vocab_size, (rows, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids_BT, "targets": next_token_targets(ids_BT)}


def make_batch(rows: int, seq: int) -> dict[str, torch.Tensor]:
    """Rows of [begin_image, 64 image tokens, end_image, random text]; grid 1x16x16 per image."""
    g = torch.Generator().manual_seed(0)
    image = [SPECIAL["image_start_token_id"]] + [SPECIAL["image_token_id"]] * 64 + [SPECIAL["image_end_token_id"]]
    text_len = seq - len(image)
    ids = torch.stack([torch.cat([torch.tensor(image), torch.randint(100, TEXT["vocab_size"], (text_len,), generator=g)])
                       for _ in range(rows)])
    is_image = ids == SPECIAL["image_token_id"]
    targets = next_token_targets(ids, ignore_first=len(image))
    patch_dim = 3 * 2 * 14 * 14
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": is_image.long(),
            "pixel_values": torch.randn(rows * PATCHES, patch_dim, generator=g),
            "image_grid_thw": torch.tensor([[1, 16, 16]] * rows), "targets": targets}


class Runner:
    """One model, its optimiser (over the parameters that train: all of them, or LoRA's) and the
    shared training step."""

    def __init__(self, name: str, model: torch.nn.Module, keys: tuple[str, ...]) -> None:
        self.name, self.model, self.keys = name, model.train(), keys
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=True)  # the trainer's (and fastest) AdamW
        self.cuda = trainable[0].device.type == "cuda"
        self.best_s = float("inf")
        self.last_loss = float("nan")

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One training step; returns its wall time in seconds (on CUDA, until the device is done)."""
        started = time.perf_counter()
        logits = self.model(**{k: batch[k] for k in self.keys}).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=-100)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        self.last_loss = loss.item()
        self.best_s = min(self.best_s, elapsed)
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2, help="rows per batch")
    parser.add_argument("--seq", type=int, default=512, help="tokens per row (64 of them vision tokens)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (best is reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS),
                        help="transformers experts implementations to time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from transformers import Glm4vMoeForConditionalGeneration

    from vlm import VLM

    batch = make_batch(args.rows, args.seq)
    tokens = batch["input_ids"].numel()
    theirs = []
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp))
        ours = Runner("ours", VLM.from_pretrained(tmp, dtype=torch.float32).model,
                      ("input_ids", "attention_mask", "pixel_values", "image_grid_thw"))
        ours.step(batch)  # warm-up
        # One transformers model at a time (each holds weights + AdamW state), interleaved with ours.
        for impl in args.implementations:
            model = Glm4vMoeForConditionalGeneration.from_pretrained(tmp, dtype=torch.float32)
            model.set_experts_implementation(impl)
            runner = Runner(f"transformers ({impl})", model, ("input_ids", "attention_mask", "pixel_values",
                                                             "image_grid_thw", "mm_token_type_ids"))
            runner.step(batch)
            for _ in range(args.steps):
                runner.step(batch)
                ours.step(batch)
            runner.model = runner.optimizer = None
            theirs.append(runner)
    step_gflop = 3 * forward_flop(ours.model, rows=args.rows, tokens=args.seq, patches_per_row=PATCHES,
                                  logit_rows=tokens) / 1e9
    peak = matmul_gflop_s(args.steps)
    runners = [ours, *theirs]
    best = min(theirs, key=lambda r: r.best_s)
    rows = [(r.name, tokens / r.best_s) for r in runners]
    print(f"\ntraining step, {args.rows} x {args.seq} tokens (image + text), float32, {args.threads} threads,"
          f" {step_gflop:.1f} GFLOP a step\n")
    print("| model | tokens/s | step s | GFLOP/s |\n|---|---|---|---|")
    for runner in runners:
        print(f"| {runner.name} | {tokens / runner.best_s:.0f} | {runner.best_s:.3f} | {step_gflop / runner.best_s:.0f} |")
    speedup, ceiling = best.best_s / ours.best_s, best.best_s * peak / step_gflop
    print(f"\nmatmul peak {peak:.0f} GFLOP/s: ours at {step_gflop / ours.best_s / peak:.0%} of it,"
          f" {best.name} at {step_gflop / best.best_s / peak:.0%}; a step at the peak would be {ceiling:.2f}x the latter")
    print(f"ours vs transformers' fastest ({best.name}): {speedup:.2f}x (goal >= 1.5x)")
    if args.json:
        out = Path(args.json)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"tokens_per_s": dict(rows), "speedup_vs_fastest": speedup, "step_gflop": step_gflop,
                                   "matmul_peak_gflop_s": peak, "speedup_at_peak": ceiling,
                                   "threads": args.threads, "rows": args.rows, "seq": args.seq}, indent=2))
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
