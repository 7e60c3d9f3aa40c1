"""The pictures, questions and answers of `recipes.looking`'s tasks, how a reply is scored, and
the controls that replace the image tokens (`oracle_tokens`, `WordOracle`).

Word pictures are 224x112 (32 image tokens): UI words in random fonts, sizes and places on a
plain background, boxed in the released grounding format; `screen` is a small drawn UI
(`synth.ui`) with the data engine's grounding turns about its elements.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image, ImageDraw

from recipes.reading import PLACE_SCALE, WORD_CODE, token_positions
from synth import tasks, text, ui
from vlm.outputs import parse_boxes


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


def correct(task: Task, ex: Example, reply: str) -> bool:
    if task not in ("locate", "ground", "screen"):
        return reply.strip() == ex.turns[0][1]
    found = parse_boxes(reply, anywhere=True)
    if not found or not hasattr(found[0], "x2"):
        return False
    b, (x1, y1, x2, y2), (width, height) = found[0], ex.boxes[0], ex.image.size
    cx, cy = (b.x1 + b.x2) / 2000 * width, (b.y1 + b.y2) / 2000 * height
    return x1 <= cx <= x2 and y1 <= cy <= y2
