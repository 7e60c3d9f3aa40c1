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
0.073, 0.102 (12% at 1000), against 0.031. Three answers about one picture differ only by the
word asked, so every step says which word three times over; the real reader now beats the ideal
one, whose tokens know their place only to the 28-px square.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from PIL import Image, ImageDraw

from recipes import mimetic
from recipes.reading import PLACE_SCALE, WORD_CODE, load_encoder, token_positions
from synth import tasks, text, ui
from train.box_attention import BoxAttention
from train.collate import IGNORE, Encoder, pack
from train.optim import lr_multiplier
from vlm import VLM
from vlm.outputs import parse_boxes
from vlm.processor import Processor

Task = Literal["colour", "side", "read", "locate", "ground", "third", "screen"]
TASKS: tuple[Task, ...] = ("colour", "side", "read", "locate", "ground", "third", "screen")
THIRDS = ("left", "middle", "right")
SIZE = (224, 112)
# the screen task's drawn UIs (`synth.ui`): 160x210 task areas and 320x240 screens, ~50-100 image
# tokens at native size, the step between the word pictures' 32 tokens and whole screens' ~400
SCREEN_VIEWPORTS = ("task", "small")
WORDS = tuple(w for w in text._ui_words() if w.isascii() and w.isalpha() and 3 <= len(w) <= 10)
RED, GREY = (220, 40, 40), (240, 240, 240)


@dataclass(frozen=True)
class Example:
    image: Image.Image
    turns: tuple[tuple[str, str], ...]  # (question, answer), the first asked with the image
    boxes: tuple[tuple[int, int, int, int], ...]  # per turn, the pixels the answer is about
    words: tuple[tuple[str, tuple[int, int, int, int]], ...] = ()  # the UI words shown, asked or not

    def messages(self, image: Image.Image | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, (question, answer) in enumerate(self.turns):
            content = [{"type": "text", "text": question + "/nothink"}]
            if i == 0:
                content.insert(0, {"type": "image", "image": image or self.image})
            out += [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        return out


def _words(rng: random.Random, image: Image.Image, k: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Up to `k` different UI words at random places, 3 px apart, each in its own font and size."""
    draw = ImageDraw.Draw(image)
    background = image.getpixel((0, 0))
    ink = (20, 20, 20) if sum(background) > 384 else (235, 235, 235)
    placed: list[tuple[str, tuple[int, int, int, int]]] = []
    for _ in range(50):
        if len(placed) == k:
            break
        word = rng.choice(WORDS)
        font = text._font(rng.choice(text.font_files()), rng.randint(11, 20))
        left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
        if right - left > SIZE[0] - 4 or any(word == w for w, _ in placed):
            continue
        x, y = rng.randint(1 - left, SIZE[0] - right - 2), rng.randint(1 - top, SIZE[1] - bottom - 2)
        box = (x + left, y + top, x + right, y + bottom)
        if any(box[2] + 3 >= b[0] and b[2] + 3 >= box[0] and box[3] + 3 >= b[1] and b[3] + 3 >= box[1] for _, b in placed):
            continue
        draw.text((x, y), word, fill=ink, font=font)
        placed.append((word, box))
    return placed


def box_answer(box: tuple[int, int, int, int]) -> str:
    """The released grounding answer: corners on a 0-999 grid."""
    scaled = [min(999, round(v / SIZE[i % 2] * 1000)) for i, v in enumerate(box)]
    return f"<|begin_of_box|>[{','.join(map(str, scaled))}]<|end_of_box|>"


def example(task: Task, rng: random.Random, questions: int = 3, shown: int = 3, name_first: bool = False) -> Example:
    """One picture and its turns; ground and third show `shown` words and ask about the first
    `questions` of them; with `name_first` their answers begin with the asked word."""
    whole = (0, 0, *SIZE)
    if task == "colour":
        dark = rng.random() < 0.5
        shade = tuple(rng.randint(0, 70) if dark else rng.randint(185, 255) for _ in range(3))
        return Example(Image.new("RGB", SIZE, shade), (("Is the picture dark or light?", "dark" if dark else "light"),),
                       (whole,))
    if task == "side":
        image, side = Image.new("RGB", SIZE, GREY), rng.randint(20, 40)
        x, y = rng.randint(0, SIZE[0] - side), rng.randint(0, SIZE[1] - side)
        ImageDraw.Draw(image).rectangle([x, y, x + side, y + side], fill=RED)
        answer = "left" if x + side / 2 < SIZE[0] / 2 else "right"
        return Example(image, (("Is the square on the left or the right?", answer),), ((x, y, x + side, y + side),))
    if task == "screen":
        return _screen(rng, questions)
    image = Image.new("RGB", SIZE, text._colours(rng)[0])
    placed = _words(rng, image, shown if task in ("ground", "third") else 1)
    if task == "read":
        (word, box), = placed
        return Example(image, (("What does the text say?", word),), (box,), tuple(placed))
    asked = placed[:questions]  # placed in random order: the first is any of the three

    def named(word: str) -> str:  # the word first: what the answer is about, next to what it says
        return f'"{word}" ' if name_first else ""

    if task == "third":  # which word, then only a coarse where: the matching without coordinates
        turns = tuple((f'Which third of the picture is the text "{w}" in?',
                       named(w) + THIRDS[min(2, int((b[0] + b[2]) / 2 / SIZE[0] * 3))]) for w, b in asked)
        return Example(image, turns, tuple(b for _, b in asked), tuple(placed))
    turns = tuple((f'Where is the text "{w}"? Answer with its bounding box.', named(w) + box_answer(b))
                  for w, b in asked)
    return Example(image, turns, tuple(b for _, b in asked), tuple(placed))


def _screen(rng: random.Random, questions: int) -> Example:
    """A drawn UI and `questions` of the data engine's grounding turns about different elements
    (its prompts, its element descriptions, its answers)."""
    while True:
        drawn = ui.draw_screen(rng.randrange(1 << 31), viewport=rng.choice(SCREEN_VIEWPORTS))
        targets = tasks.unique_targets(drawn)
        if len(targets) >= questions:
            break
    asked = rng.sample(targets, questions)
    turns = tuple((rng.choice(tasks.GROUNDING_PROMPTS).format(description=p.element.description), tasks.format_box(p.box))
                  for p in asked)
    return Example(drawn.image, turns, tuple(_pixels(p.box_px) for p in asked),
                   tuple((p.element.text, _pixels(p.box_px)) for p in drawn.placed))


def _pixels(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    return (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))


def oracle_tokens(model: torch.nn.Module) -> None:
    """Replace the image tokens by clean features: which tokens show red, their x, a constant."""
    width = model.cfg.text.hidden_size

    merge = model.cfg.vision.spatial_merge_size ** 2
    dtype = model.language_model.embed_tokens.weight.dtype

    def features(pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        plane = pixels.shape[1] // 3  # channel-major patches: R values, then G, then B
        red = ((pixels[:, :plane].mean(1) - pixels[:, plane:2 * plane].mean(1)) > 0.5).float()
        red = red.view(-1, merge).amax(1)  # a token is red if one of its patches is
        x = token_positions(grid)[:, 0].to(pixels.device)
        out = torch.zeros(red.shape[0], width, dtype=dtype, device=pixels.device)
        out[:, 0], out[:, 1], out[:, 2] = 3 * red, 3 * (x - 0.5), 1.0
        return out

    model.visual.forward = features  # the encoder does not run: its tokens would be replaced


class WordOracle:
    """The locate and ground tasks' control: image tokens replaced by what an ideally aligned reader gives.

    A token whose 28-px square overlaps a word's box becomes a code for the word's first
    language-model token: with `codes="embeddings"` that token's input embedding as it is now
    (the alignment `recipes.reading --align-to` trains toward), with `codes="random"` a fixed
    random vector per token (a perfect reader whose codes the language model must learn word by
    word); every token also carries its place: with `place="scalar"` its x and y, with
    `place="digits"` the hundreds and tens digits of its centre's x and y in the answers' 0-999
    space as four one-hot codes (a place the answer's digit tokens can copy), and a constant.
    The pictures' order is told before each forward (`expect`), as the hook sees only pixels.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, codes: Literal["embeddings", "random"],
                 place: Literal["scalar", "digits"] = "scalar") -> None:
        self.embeddings, self.tokenizer, self.codes = model.language_model.embed_tokens.weight, tokenizer, codes
        self.place = place
        generator = torch.Generator().manual_seed(0)
        self.random = torch.nn.functional.normalize(torch.randn(self.embeddings.shape, generator=generator), dim=-1)
        self.pending: list[Example] = []
        model.visual.forward = self._features  # the encoder does not run: its tokens would be replaced

    def expect(self, examples: list[Example]) -> None:
        self.pending = list(examples)

    def _code(self, word: str) -> torch.Tensor:
        token = self.tokenizer(word, add_special_tokens=False)["input_ids"][0]
        if self.codes == "random":
            return self.random[token]
        return torch.nn.functional.normalize(self.embeddings[token].detach().float(), dim=0)

    def _features(self, pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        examples, self.pending = self.pending[:len(grid)], self.pending[len(grid):]
        if len(examples) != len(grid):
            raise RuntimeError(f"{len(grid)} pictures in this forward, {len(examples)} expected")
        device = pixels.device
        positions = token_positions(grid).to(device)
        features = torch.zeros(len(positions), self.embeddings.shape[1], dtype=torch.float32, device=device)
        per_image = len(positions) // len(grid)
        x, y = positions[:, 0] * SIZE[0], positions[:, 1] * SIZE[1]  # token centres; squares of 28 px
        for i, ex in enumerate(examples):
            rows = slice(i * per_image, (i + 1) * per_image)
            for word, (x1, y1, x2, y2) in ex.words:
                overlaps = (x1 < x[rows] + 14) & (x[rows] - 14 < x2) & (y1 < y[rows] + 14) & (y[rows] - 14 < y2)
                code = self._code(word).to(device)
                features[rows] += WORD_CODE * overlaps[:, None].float() * code
        if self.place == "digits":
            model_space = (positions.clamp(0, 0.999) * 1000).long()  # (tokens, 2): x, y in 0..999
            every = torch.arange(len(positions), device=device)
            for slot, digits in enumerate((model_space[:, 0] // 100, model_space[:, 0] // 10 % 10,
                                           model_space[:, 1] // 100, model_space[:, 1] // 10 % 10)):
                features[every, 3 + 10 * slot + digits] += 3.0
        else:
            features[:, 0] += PLACE_SCALE * (positions[:, 0] - 0.5)
            features[:, 1] += PLACE_SCALE * (positions[:, 1] - 0.5)
        features[:, 2] += 1.0
        return features.to(self.embeddings.dtype)


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


def correct(task: Task, ex: Example, reply: str) -> bool:
    if task not in ("locate", "ground", "screen"):
        return reply.strip() == ex.turns[0][1]
    found = parse_boxes(reply, anywhere=True)
    if not found or not hasattr(found[0], "x2"):
        return False
    b, (x1, y1, x2, y2), (width, height) = found[0], ex.boxes[0], ex.image.size
    cx, cy = (b.x1 + b.x2) / 2000 * width, (b.y1 + b.y2) / 2000 * height
    return x1 <= cx <= x2 and y1 <= cy <= y2


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
        load_encoder(vlm.model.visual, args.encoder)
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
