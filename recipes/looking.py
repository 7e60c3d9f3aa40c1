"""Does the language model learn to use what its image tokens show? The whole model, told directly.

    python -m recipes.looking colour|side|read|locate|ground --model DIR [--encoder ENC] [--steps 150]

`recipes.learnability` asks whether the vision encoder can learn to see; this asks the next
question, the one the default model fails (`python -m recipes.reliance`: answers do not depend on
the screenshot): does the language model above the encoder learn to use its tokens? Every step
trains the whole checkpoint `--model` (AdamW, lr 1e-3 after 20 warm-up steps, constant or a cosine
down to `--min-lr-ratio` of it) on 16 fresh 224x112 pictures (32 image tokens each) and one
question per picture:

- colour: a plain picture, dark or light? (a property of every token)
- side: one red square, on the left or the right? (a property of a few tokens: where they are)
- read: one UI word, what does it say? (what a few tokens show)
- locate: one UI word, its box, in the released grounding format (where, without which)
- ground: three UI words, the box of each (which word, then where)
- third: three UI words, which third of the picture the asked one is in (which word, without
  coordinates: `--shown 1` leaves nothing to find)

Held out (another seed stream, 48 pictures): the answers' loss with each picture and with the
next picture in its place; the gap (nats) says how much the answers depend on the image. Then
greedy answers to 32 of them: exact for colour, side and read, the box's centre inside the word
for ground. `--oracle-tokens` (side only) is the control: the image tokens are replaced by three
clean features (the square's tokens, their x, a constant), so the language model's part alone is
measured. `--encoder` puts a reading-stage encoder (`recipes.reading`) into the checkpoint first.
The last line printed is `gap: X accuracy: Y`.

Measured from `runs/v2/start` (random language model; 2 CPU cores): side with the reading-only
encoder (20 min, tokens 68% one shared vector) stays at chance (gap 0.000, 56% at 120 steps; 400
steps with a position loss too: gap 0.000); `--oracle-tokens` learns it by step 40-60 (gap 0.5);
with the reading stage's position and centre losses (`--start-from` that encoder, 6 min) 97% at
40 steps, 100% at 80, gap 0.55. ground (3 words, 250 steps) is not learned yet: gap 0.000, 6%.
locate (one word, 200 steps, from `runs/v3/start`): the 32-minute reader (`recipes.reading`,
tokens of norm 25 +- 18) gap 0.000, 9%; the ideal reader (`--oracle-words embeddings`) 0.10, 12%
(with its place as one-hot digits, `--oracle-place digits`: 0.000 at 100 steps); the same reader
fine-tuned to tokens of norm 4.5 +- 0.9 (`--token-norm 4`, `--place dims`) gap 0.29, 44%
(`--seed 1`: 0.18, 31%, the 32-minute reader 0.000, 12%). A fresh 30-minute reading stage with
those as defaults (`runs/v9/start`: characters 0.59 per patch, R^2 0.96, aligned 0.48, norm
4.6 +- 0.7) gives locate gap 0.033, 25% at 200 steps; ground with one question of three words
(`--questions 1`) from it is still not learned at 600 steps (gap 0.000, 9%).

Which word, not where, is what stops it. From a 30-minute reading stage run beside other jobs
(`runs/v9/start` of session 31: characters 0.40, aligned 0.29, R^2 0.96 / 0.94), `third --shown 1`
(one word, which third) is learned by step 100 (gap 0.41, 97%); with three words shown
(`third --questions 1`) it stays at gap 0.000 for 400 steps, with `--mimetic-lm` too, and after
those 100 one-word steps too (`--save`, then `--model` it: the gap falls to 0.000, the model learns
to ignore the picture). With the ideal reader (`--oracle-words embeddings`, a random start):
third 0.000 at 500 steps, ground 0.001 (0%) at 1500 steps; with `--attend-weight 1` that head's
mass in the box rises to 0.53 by step 500 while the gap stays 0.001. The random language model
has no copying heads to find the quoted word with; `recipes.copying` gives it them on text alone,
and from that model (`runs/ind2000`) third with the ideal reader reaches gap 0.068, 62% at 900
steps.

The reader must stay as it is. From a language model copied for 3000 steps (`runs/copy3000`, 93%
copied): the ideal reader's third gap 0.039 at 250 steps, 0.066 at 1000; a real reader
(`runs/r10`, 75 reading minutes: characters 0.62, aligned 0.52) trained along with the answers
0.000 for 750 steps; the same reader frozen (`--freeze-vision`) 0.036 at 250, 0.052 at 1000;
`locate` from it 0.37 (50%) at 500 steps, `ground --questions 1` 0.009 (9%) at 1000, 0.019 at
2000, 0.036 (3%) at 3000; ground after those 500 locate steps (`--save`, `--model` it) 0.023 at
250, 0.029 (9%) at 1000. With the box-attention label besides (`--attend-weight 1`: layer 4's
head 0 told to look inside the box while the answer is written) `ground` goes 0.016 at 500, 0.032
at 750 and 0.079 nats at 1000 (boxes 9%; that head's mass in the box 0.72, 0.79, 0.82): the
label that did nothing for the random language model is, over copying heads and a frozen reader,
the fastest way yet to "which word". From the copier trained with its routers balanced
(`runs/copyb3000`, 95% copied; `runs/copy3000` routes every token to the same two experts) the
same probe gives 0.002, 0.005, 0.009 and 0.038 nats (6%) at 250-1000 steps: half, one seed each.
Naming the word first (`--name-first`, from `runs/copy3000`, the label on): 0.002, 0.010, 0.027,
0.076 nats (the easy name tokens dilute it), boxes 6%, 3%, 28%, 3%: no clear gain.
All four heads of that layer labelled (`--attend-heads 0,1,2,3`, from `runs/copy3000`): 0.002,
0.021, 0.058, 0.069 nats (boxes 0%, 6%, 12%, 9%; mass 0.81): no gain over one head, so once the
heads look at the asked word, turning what they see into the box's digits is what is slow.
Locating first with the label (`locate --attend-weight 1`, 500 steps: gap 0.54, 62%; without the
label 0.37, 50%), then `ground` with it from that model: 0.025, 0.041, 0.047, 0.114 nats at
250-1000 (boxes 9%, 9%, 19%, 12%); `ground` alone for the same 1500 steps: 0.079 at 1000, 0.078
at 1250, 0.099 at 1500 (boxes 9%, 16%, 6%). `--seed 1` (other pictures, other held-out ones):
locate 0.26 nats, 38% at 500; then ground 0.011, 0.019, 0.028, 0.038 (boxes 22% at the end);
ground alone 0.045 (9%) at 1500. So the curriculum's boxes land more often in both seeds (12% and
22% against 6% and 9%, of 32), its gap is no larger; and one seed to the next differs by 2x.
The language model trained on the ideal
reader's tokens first (3000 steps) and then put over the real reader: 0.000 for 1000 steps
trained along, 0.013 frozen.

Telling the labelled head what to carry as well as where to look (`--place-weight 10`: a linear
readout regresses the answered box from that head's output, `train.box_attention`): from a fresh
copier (`runs/copyb`, 3000 steps, 98.6% copied, expert load max/mean rising to 3.0 by its end)
and a fresh reader (`runs/r11`, 3368 steps: characters 0.60 per patch, aligned 0.49, R^2 0.96),
`ground --questions 1 --attend-weight 1`, gap at 1000 steps (boxes of 32) without / with it:
the ideal reader 0.031 (9%) / 0.073 (3%), `--seed 1` 0.012 (6%) / 0.019 (12%); the real reader
frozen 0.038 (3%) / 0.027 (9%), `--seed 1` 0.021 (6%) / 0.028 (9%). The readout's error falls
from ~215 to ~90 (of 1000, the mean over x1 y1 x2 y2) and the head's mass in the box reaches
0.8 either way. So it helps over ideal tokens and not over a real reader's: what the head passes
on is not what holds the answer back.

Asking about every word shown is what does it. The same start and label with all three words
asked (`--questions 3`, the default; a step costs about what a one-question step does): the real
reader frozen 0.032, 0.140, 0.176, 0.227 nats at 250-1000 steps (first answers' boxes 9%, 9%,
22%, 22%), against 0.003, 0.005, 0.021, 0.038 with one question; the ideal reader 0.008, 0.043,
0.073, 0.102 (12% at 1000), against 0.031. `--seed 1`: 0.012, 0.092, 0.127, 0.220 (13%). Without
the label (seed 0) 0.013, 0.027, 0.045, 0.073: it takes both. Three answers about one picture
differ only by the word asked, so every step says which word three times over; the real reader
now beats the ideal one, whose tokens know their place only to the 28-px square. The recipe runs
this as its stage 3d (`recipes.start`, `--ground-steps`).

On small drawn UIs (`screen --questions 4 --attend-weight 1 --freeze-vision --measure-start`, 200
steps): from the seed-1 model above (`--save`), gap 0.007 before the first step (it already
writes boxes: answer loss 2.3 nats, from the copier 21.7), 0.010, 0.010, 0.011, 0.021 at 50-200,
the head's mass in the box 0.42 -> 0.63; from the copier and the reader alone 0.001 throughout,
mass 0.15 -> 0.31. The word pictures carry over, a little; boxes land 12% of the time either way
(32 first answers: layouts make a guess land that often).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from recipes import mimetic
from recipes.looking_data import TASKS, Example, Task, WordOracle, correct, example, oracle_tokens
from recipes.reading import load_module
from train.box_attention import BoxAttention
from train.collate import IGNORE, Encoder, pack
from train.optim import lr_multiplier
from vlm import VLM


def answer_loss(model: torch.nn.Module, encoder: Encoder, conversations: list[list[dict[str, Any]]], *,
                attend: tuple[BoxAttention, float] | None = None) -> torch.Tensor:
    """The answers' cross-entropy; with `attend` (looking, weight) plus the weighted box-attention loss."""
    batch = pack([encoder.encode(m) for m in conversations], row_length=1 << 16, one_per_row=True)
    device = next(model.parameters()).device
    targets = batch.targets.to(device)
    answered = targets != IGNORE  # the vocabulary projection only where an answer token is learned
    logits = model(**batch.model_inputs(device), logits_at=answered).logits.float()
    loss = torch.nn.functional.cross_entropy(logits, targets[answered])
    if attend is not None:
        looking, weight = attend
        loss = loss + weight * looking.loss(batch)
    return loss


@dataclass(frozen=True)
class Measure:
    own: float  # held-out answer loss with each picture (nats)
    swapped: float  # ... with the next picture in its place
    accuracy: float  # greedy answers
    steps: int = 0  # training steps before it was measured

    @property
    def gap(self) -> float:
        return self.swapped - self.own


def measure(vlm: VLM, encoder: Encoder, task: Task, test: list[Example], *, answers: int = 32,
            oracle: WordOracle | None = None, steps: int = 0) -> Measure:
    expect = oracle.expect if oracle else lambda examples: None
    model = vlm.model.eval()
    with torch.no_grad():
        expect(test)
        own = answer_loss(model, encoder, [ex.messages() for ex in test]).item()
        expect([test[(i + 1) % len(test)] for i in range(len(test))])
        swapped = answer_loss(model, encoder, [ex.messages(test[(i + 1) % len(test)].image)
                                               for i, ex in enumerate(test)]).item()
        hits = 0
        for ex in test[:answers]:
            expect([ex])
            hits += correct(task, ex, vlm.generate(ex.turns[0][0], images=[ex.image], thinking=False,
                                                   max_new_tokens=32).text)
    model.train()
    return Measure(own, swapped, hits / min(answers, len(test)), steps)


def lr_factor(step: int, steps: int, min_lr_ratio: float = 1.0, warmup: int = 20) -> float:
    """The probes' lr multiplier at 1-based `step` of `steps`: linear warm-up over `warmup` steps,
    then constant (`min_lr_ratio` 1) or a cosine down to `min_lr_ratio` (`train.optim`'s)."""
    if step <= warmup:
        return step / warmup
    return lr_multiplier(step - 1, warmup_steps=warmup, max_steps=steps, min_lr_ratio=min_lr_ratio)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def train(vlm: VLM, task: Task, *, steps: int, every: int, seed: int = 0, batch_size: int = 16, lr: float = 1e-3,
          n_test: int = 48, oracle: WordOracle | None = None, attend: tuple[BoxAttention, float] | None = None,
          questions: int = 3, shown: int = 3, name_first: bool = False, min_lr_ratio: float = 1.0,
          measure_start: bool = False, stop: Callable[[], bool] | None = None,
          log_line: Callable[[str], object] = print) -> Measure:
    """`steps` AdamW steps on fresh examples (20 warm-up steps, then constant `lr`, or a cosine down to
    `min_lr_ratio * lr`); held-out measures every `every` steps and at the end (and before the
    first with `measure_start`). `stop`, called after each step, ends the run there when it says
    so (a deadline); the result is measured at that step."""
    encoder = Encoder(vlm.processor, max_length=1 << 16)
    model = vlm.model.train()
    params = [p for p in model.parameters() if p.requires_grad] + (attend[0].parameters() if attend else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    rng, test_rng = random.Random(f"looking/{task}/{seed}"), random.Random(f"looking/{task}/{seed}/test")
    test = [example(task, test_rng, questions, shown, name_first) for _ in range(n_test)]
    start = time.monotonic()
    if measure_start:
        result = measure(vlm, encoder, task, test, oracle=oracle)
        log_line(f"step 0: held-out own {result.own:.3f} swapped {result.swapped:.3f} gap {result.gap:+.3f} "
                 f"accuracy {result.accuracy:.3f}")
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, steps, min_lr_ratio)
        batch = [example(task, rng, questions, shown, name_first) for _ in range(batch_size)]
        if oracle:
            oracle.expect(batch)
        loss = answer_loss(model, encoder, [ex.messages() for ex in batch], attend=attend)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        stopping = step < steps and stop is not None and stop()
        if step % every == 0 or step == steps or stopping:
            result = measure(vlm, encoder, task, test, oracle=oracle, steps=step)
            log_line(f"step {step} ({time.monotonic() - start:.0f} s): loss {loss.item():.3f}, held-out own "
                     f"{result.own:.3f} swapped {result.swapped:.3f} gap {result.gap:+.3f} accuracy {result.accuracy:.3f}"
                     + (f", box attention {_mean(attend[0].masses[-every:]):.3f}" if attend else "")
                     + (f", place error {_mean(attend[0].place_errors[-every:]):.0f}/1000"
                        if attend and attend[0].place_errors else "")
                     + (f"; stopped before step {steps}" if stopping else ""))
        if stopping:
            break
    return result


def _heads(value: str) -> tuple[int, ...]:
    """`--attend-heads`: comma-separated head numbers."""
    try:
        return tuple(int(h) for h in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected head numbers separated by commas, e.g. 0,1,2,3") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.looking", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=TASKS)
    p.add_argument("--model", required=True, help="checkpoint directory (weights, config, processor)")
    p.add_argument("--encoder", default=None, help="reading-stage encoder weights to put into it first")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--measure-start", action="store_true", help="also measure before the first step (what carries over)")
    p.add_argument("--min-lr-ratio", type=float, default=1.0,
                   help="after 20 warm-up steps a cosine decays the lr (1e-3) to this fraction of it (1: constant)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--oracle-tokens", action="store_true", help="side only: clean image tokens, the control")
    p.add_argument("--oracle-words", choices=("embeddings", "random"), default=None,
                   help="locate, ground, third: image tokens as an ideal reader's word codes (the embeddings: aligned)")
    p.add_argument("--oracle-place", choices=("scalar", "digits"), default="scalar",
                   help="with --oracle-words: each token's place as x and y, or as one-hot coordinate digits")
    p.add_argument("--attend-weight", type=float, default=0.0,
                   help="locate and ground: weight of the box-attention label (train.box_attention; 0: off)")
    p.add_argument("--attend-layer", type=int, default=4, help="the layer whose head(s) the label trains")
    p.add_argument("--attend-heads", type=_heads, default=(0,),
                   metavar="H[,H...]", help="which heads of that layer the label trains, e.g. 0,1,2,3")
    p.add_argument("--place-weight", type=float, default=0.0,
                   help="with --attend-weight: weight of the place label (a readout of the box from the labelled "
                        "head's output, train.box_attention; 0: off)")
    p.add_argument("--questions", type=int, default=3, choices=range(1, 9), metavar="{1..8}",
                   help="ground, third, screen: how many of the picture's words (elements) are asked about, one turn each")
    p.add_argument("--shown", type=int, default=3, choices=(1, 2, 3),
                   help="ground, third: how many words the picture shows (1: no need to find which)")
    p.add_argument("--name-first", action="store_true",
                   help='ground, third: answers begin with the asked word (\'"Save" <|begin_of_box|>...\')')
    p.add_argument("--freeze-vision", action="store_true",
                   help="train the language model alone: the vision tower (e.g. --encoder's reader) stays as it is")
    p.add_argument("--save", default=None, help="write the trained checkpoint here (e.g. locate, then ground from it)")
    p.add_argument("--mimetic-lm", action="store_true",
                   help="first re-initialise the language model's attention to start by content (recipes.mimetic)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        p.error(f"--steps {args.steps} / --every {args.every}: expected at least 1")
    if not 0 <= args.min_lr_ratio <= 1:
        p.error(f"--min-lr-ratio {args.min_lr_ratio}: expected 0..1")
    if args.oracle_tokens and args.task != "side":
        p.error(f"--oracle-tokens is a control for the side task, not {args.task!r}")
    if args.attend_weight and args.task not in ("locate", "ground", "screen"):
        p.error(f"--attend-weight labels box answers: the locate, ground and screen tasks, not {args.task!r}")
    if args.place_weight and not args.attend_weight:
        p.error(f"--place-weight {args.place_weight} reads the box from the labelled head: give --attend-weight too")
    if args.name_first and args.task not in ("ground", "third"):
        p.error(f"--name-first names the asked word among several: the ground and third tasks, not {args.task!r}")
    if args.task in ("ground", "third") and args.questions > args.shown:
        p.error(f"--questions {args.questions} > --shown {args.shown}: only shown words can be asked about")
    if args.oracle_words and args.task not in ("locate", "ground", "third"):
        p.error(f"--oracle-words is a control for the locate, ground and third tasks, not {args.task!r}")
    torch.manual_seed(args.seed)
    vlm = VLM.from_pretrained(args.model)
    if args.encoder:
        load_module(vlm.model.visual, args.encoder)
    if args.mimetic_lm:
        mimetic.language(vlm.model.language_model, seed=args.seed)
    if args.freeze_vision:
        vlm.model.visual.requires_grad_(False)
    if args.oracle_tokens:
        oracle_tokens(vlm.model)
    oracle = WordOracle(vlm.model, vlm.processor.tokenizer, args.oracle_words, args.oracle_place) \
        if args.oracle_words else None
    attend = (BoxAttention(vlm.model, vlm.processor.tokenizer, layer=args.attend_layer, head=args.attend_heads,
                           place_weight=args.place_weight), args.attend_weight) \
        if args.attend_weight else None
    result = train(vlm, args.task, steps=args.steps, every=args.every, seed=args.seed, oracle=oracle, attend=attend,
                   questions=args.questions, shown=args.shown, name_first=args.name_first,
                   min_lr_ratio=args.min_lr_ratio, measure_start=args.measure_start)
    if args.save:
        vlm.save_pretrained(args.save)
    print(f"gap: {result.gap:.4f} accuracy: {result.accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
