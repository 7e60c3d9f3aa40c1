"""Can the language model find an earlier token by what it is? A text-only stage that teaches copying.

    python -m recipes.copying --model DIR --steps 2000 [--save OUT]

`recipes.looking` found the wall: a random language model does not learn to find the word a
question quotes among its image tokens, nor even to copy that word into its answer (`third`,
`ground`: gap 0.000 for hundreds of steps, with an ideal reader too). A pretrained language model
has copying (induction) heads; ours starts from random. This stage trains them on text alone,
cheaply: every row is `n` random UI-word tokens, `<|assistant|>`, then the same `n` tokens again,
and the loss is on the repeat (AdamW, lr 1e-3, constant or a cosine down to `--min-lr-ratio` of
it). `n` changes every step (6-24), so the repeat's distance says nothing: only the content of
the earlier tokens can find what comes next. The input embeddings stay frozen, so a reading
encoder aligned to them (`recipes.reading --align-to`) stays aligned.

Held out (another seed, `n` = 16): the share of the repeat's tokens after its first predicted
exactly (chance 1/389). The last line printed is `copy accuracy: X`.

Measured from `runs/rand/start` (the default recipe's random language model, a random ViT):
`python -m recipes.copying --model runs/rand/start --steps 2000 --every 250` alone on 2 CPU cores
gives 0.05 at 250 steps, 0.11 at 500, 0.35 at 1000, 0.56 at 1500, **0.69 at 2000** (9.6 min);
1000 more from that checkpoint (`--model` it; one core beside another job, 9 min) 0.87 at 500 and
**0.93 at 1000**, where it levels off (0.93 again at 1500 in a longer run). The recipe copies for
3000 steps (`--copying-steps`). Those runs left the MoE routing collapsed (every token on the same
two of eight experts, load max/mean 4.0; `runs/copy3000`'s mean router score 0.84-0.97 for one
expert per layer, 0.02-0.2 for the rest), which the trainer's bias updates (1e-3 a step) would
need ~800 steps to undo. With the routers balanced as training balances them (the default now),
3000 steps in one run from `runs/rand/start` (one core, beside two other jobs, 36 min) copy 0.05 /
0.33 / 0.70 / **0.95** at 250 / 1000 / 2000 / 3000, load max/mean 1.5-2.1.
An earlier run of the same loop (one core beside another job, 1200 steps then 800 more from that
checkpoint, 16 min) gave 0.34 at 1200 and 0.64 at 2000; with the repeat at a fixed distance
(n = 16 always) 1.00 by step 100, since a positional head suffices there. From the 2000-step model, `recipes.looking third` with the
word named first in its answers ("Cancel right", a probe variant) learns to copy the word: 34% of
answers exact at step 200 (right word, and the most common third), against 3% at step 500 from
the random model. With the 30-minute reader (aligned 0.29) the third still does not depend on
the picture (gap 0.000 at 300 steps), nor does plain `third`. With the ideal reader
(`--oracle-words embeddings`) plain `third` does, for the first time on three words: gap 0.012 at
300 steps, 0.038 at 750, 0.068 and 62% at 900 (from the random model: 0.000 at 500); `ground`
(boxes) not yet (0.000 at 600).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from recipes.looking import lr_factor
from recipes.looking_data import WORDS
from train import balance
from train.config import TrainConfig
from vlm import VLM

SEPARATOR = "<|assistant|>"


def word_tokens(tokenizer) -> list[int]:
    """The first token of every UI word: the vocabulary the rows are drawn from."""
    return sorted({tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in WORDS})


def rows(rng: random.Random, vocabulary: list[int], separator: int, *, batch: int, n: int) -> torch.Tensor:
    """(batch, 2n + 1): n random tokens, the separator, the same n again."""
    first = [[rng.choice(vocabulary) for _ in range(n)] for _ in range(batch)]
    return torch.tensor([r + [separator] + r for r in first])


def _predictions(model: torch.nn.Module, ids: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) for the tokens after position `first` of every row."""
    at = torch.zeros_like(ids, dtype=torch.bool)
    at[:, first:-1] = True
    return model(input_ids=ids, logits_at=at).logits.float(), ids[:, first + 1:].flatten()


def repeat_loss(model: torch.nn.Module, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Cross-entropy of the repeat, predicted from the separator on."""
    return torch.nn.functional.cross_entropy(*_predictions(model, ids, n))


def copy_accuracy(model: torch.nn.Module, ids: torch.Tensor, n: int) -> float:
    """Exact next tokens of the repeat after its first (which nothing before can predict)."""
    with torch.no_grad():
        logits, targets = _predictions(model, ids, n + 1)
    return (logits.argmax(-1) == targets).float().mean().item()


@dataclass(frozen=True)
class Copied:
    """What a copying run did: its optimiser steps and the held-out copy accuracy after the last."""

    steps: int
    accuracy: float


def train(vlm: VLM, *, steps: int, every: int = 50, batch: int = 32, lr: float = 1e-3, seed: int = 0,
          lengths: tuple[int, int] = (6, 24), min_lr_ratio: float = 1.0,
          balance_rate: float = TrainConfig.bias_update_rate, stop: Callable[[], bool] | None = None,
          log_line: Callable[[str], object] = print) -> Copied:
    """`steps` AdamW steps on copying rows (20 warm-up steps, then constant `lr`, or a cosine down to
    `min_lr_ratio * lr`); the input embeddings stay as they are. After each step the MoE routers'
    biases move toward balance as the trainer moves them (`train.balance`, `balance_rate`; 0: off),
    so the stage does not hand training a language model that routes every token alike. `stop`,
    called after each step, ends the run there when it returns True (the schedule stays the one of
    `steps`); the accuracy is measured every `every` steps and where the run ends."""
    tokenizer = vlm.processor.tokenizer
    vocabulary, separator = word_tokens(tokenizer), tokenizer.convert_tokens_to_ids(SEPARATOR)
    model = vlm.model.train()
    embeddings = model.language_model.embed_tokens.weight
    embeddings.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    moe = balance.find_moe_layers(model)
    rng, test_n = random.Random(f"copying/{seed}"), 16
    device = embeddings.device
    test = rows(random.Random(f"copying/{seed}/test"), vocabulary, separator, batch=64, n=test_n).to(device)
    start, accuracy, step = time.monotonic(), 0.0, 0
    try:
        for step in range(1, steps + 1):
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(step, steps, min_lr_ratio)
            n = rng.randint(*lengths)  # the repeat's distance changes: only content can find it
            loss = repeat_loss(model, rows(rng, vocabulary, separator, batch=batch, n=n).to(device), n)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            loads = balance.current_loads(moe)  # the step's one forward
            if balance_rate:
                balance.update_biases(moe, loads, rate=balance_rate)
            stopping = step < steps and stop is not None and stop()
            if step % every == 0 or step == steps or stopping:
                accuracy = copy_accuracy(model, test, test_n)
                routing = balance.load_stats(moe, loads).get("moe/max_over_mean", 1.0)
                log_line(f"step {step} ({time.monotonic() - start:.0f} s): loss {loss.item():.3f}, "
                         f"held-out copy accuracy {accuracy:.3f}, expert load max/mean {routing:.2f}"
                         + (f"; stopped before step {steps}" if stopping else ""))
            if stopping:
                break
    finally:
        embeddings.requires_grad_(True)
    return Copied(steps=step, accuracy=accuracy)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.copying", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint directory (weights, config, processor)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-lr-ratio", type=float, default=1.0,
                   help="after 20 warm-up steps a cosine decays the lr (1e-3) to this fraction of it (1: constant)")
    p.add_argument("--balance-rate", type=float, default=TrainConfig.bias_update_rate,
                   help="MoE router bias step toward balance after each step, as the trainer's (0: off)")
    p.add_argument("--save", default=None, help="write the trained checkpoint here")
    args = p.parse_args(argv)
    for flag in ("steps", "every", "batch"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} {getattr(args, flag)}: expected at least 1")
    if not 0 <= args.min_lr_ratio <= 1:
        p.error(f"--min-lr-ratio {args.min_lr_ratio}: expected 0..1")
    if args.balance_rate < 0:
        p.error(f"--balance-rate {args.balance_rate}: expected 0 or more")
    torch.manual_seed(args.seed)
    vlm = VLM.from_pretrained(args.model)
    copied = train(vlm, steps=args.steps, every=args.every, batch=args.batch, seed=args.seed,
                   min_lr_ratio=args.min_lr_ratio, balance_rate=args.balance_rate)
    if args.save:
        vlm.save_pretrained(args.save)
    print(f"copy accuracy: {copied.accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
