"""Random UIs drawn with PIL, every element's box exact: training data without a browser.

`python -m synth.ui --out DIR --n N --seed S --workers W` writes the same dataset layout and
conversations as `python -m synth` (grounding and reading, `synth.tasks`), from screens no
Chromium page looks like: an app bar over cards laid out in one to three columns at random
offsets (forms, toolbars, button rows, links, lists, tables, tabs, menus, checkboxes, text),
sometimes a dialog over the dimmed screen, in light and dark themes, DejaVu and Liberation
fonts at 11-22 px, on viewports from 160x210 task areas over phones to 1440x900 desktops.
It needs only Pillow, so a GPU machine's cores make its data (hundreds of screens a second
where Chromium renders one to ten).

Boxes come from the drawing itself (`synth.widgets`); a block that does not fit is dropped,
never clipped, and under a dialog nothing but the dialog counts as visible, as a browser's hit
test would say. Descriptions are English and quote the visible text; as on the web pages a text
field's text is its label. Unit j is made from its own seed, so the output is the same for any
number of workers (`synth.dataset.write_dataset`).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageDraw

from synth import tasks, vocab
from synth.dataset import Split, switch_thinking, unit_seed, write_dataset
from synth.pages import Element
from synth.render import Placed, to_model_box
from synth.widgets import BLOCKS, Painter, Style, Words, heading, random_style, static

log = logging.getLogger(__name__)

UIKind = Literal["grounding", "read"]
UI_KINDS: tuple[UIKind, ...] = ("grounding", "read")
UILanguage = Literal["en", "de", "fr", "es"]  # Latin scripts: the DejaVu/Liberation fonts draw them
UI_LANGUAGES: tuple[UILanguage, ...] = ("en", "de", "fr", "es")
# name -> (width, height, weight of the draw); the name is the sample's meta["viewport"]
SCREENS: dict[str, tuple[int, int, float]] = {
    "task": (160, 210, 0.15), "small": (320, 240, 0.15), "phone": (390, 844, 0.25),
    "desktop": (1280, 720, 0.3), "large": (1440, 900, 0.15)}
GROUNDING_PER_SCREEN = 6


@dataclass(frozen=True)
class Drawn:
    """A drawn screen: its image and visible elements (a `synth.tasks.Screen`)."""

    seed: int
    viewport: str
    language: str
    image: Image.Image
    placed: tuple[Placed, ...]  # reading order

    @property
    def meta(self) -> dict[str, Any]:
        width, height = self.image.size
        return {"page_seed": self.seed, "viewport": self.viewport, "language": self.language,
                "width": width, "height": height, "renderer": "ui"}

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


def _card(style: Style, rng: random.Random, words: Words, kind: str, width: int, height: int) -> Painter | None:
    """Block `kind` drawn on its own card `width` wide; None if it needs more than `height`."""
    if width < 40 or height < 20:
        return None
    framed = rng.random() < 0.7
    p = Painter(Image.new("RGB", (width, height), style.surface if framed else style.background), style)
    BLOCKS[kind](p, words, rng, width)
    if p.overflow or not p.items:
        return None
    p.image = p.image.crop((0, 0, width, min(height, p.bottom + style.pad)))
    if framed and rng.random() < 0.8:
        p.draw = ImageDraw.Draw(p.image)
        p.rect((0, 0, *p.image.size), outline=style.border)
    return p


def _app_bar(style: Style, rng: random.Random, words: Words, width: int) -> Painter:
    accent = rng.random() < 0.5
    bar = dataclasses.replace(style, text=style.accent_text, link=style.accent_text, surface=style.accent) \
        if accent else style
    p = Painter(Image.new("RGB", (width, 400), bar.accent if accent else style.surface), bar)
    title = words.labels(vocab.TITLES, 1)[0]
    box = p.text(style.pad + 4, style.pad + 4, title, font=p.font(bold=True, scale=1.15))
    p.add("heading", title, "the page title", "Nothing happens: it is the page title.", box)
    x = box[2] + 3 * style.pad
    for label in words.labels(vocab.NAV, rng.randint(0, 5)):
        link = p.link(x, style.pad + 6, label, underline=False, description=f'the "{label}" link in the navigation bar')
        if p.overflow:
            p.items.pop()
            break
        x = link[2] + 2 * style.pad
    p.overflow = False
    p.image = p.image.crop((0, 0, width, p.bottom + style.pad + 4))
    return p


def _dialog(image: Image.Image, style: Style, rng: random.Random, words: Words) -> Painter | None:
    """Dim the screen and draw a dialog at its centre; None if it does not fit."""
    width, height = image.size
    w = min(width - 16, rng.randint(260, 480))
    p = Painter(Image.new("RGB", (w, height - 16), style.surface), style)
    y = heading(p, style.pad * 2, style.pad * 2, vocab.word(rng.choice(vocab.DIALOGS), words.language))[3] + style.pad
    y = static(p, style.pad * 2, y, words.random(words=rng.randint(1, 4)))[3] + 2 * style.pad
    ok = p.button(style.pad * 2, y, words.common("confirm"), kind="primary",
                  description=f'the "{words.common("confirm")}" button in the dialog')
    p.button(ok[2] + style.pad, y, words.common("cancel"), description=f'the "{words.common("cancel")}" button in the dialog')
    if p.overflow:
        return None
    p.image = p.image.crop((0, 0, w, p.bottom + 2 * style.pad))
    p.draw = ImageDraw.Draw(p.image)
    p.rect((0, 0, *p.image.size), outline=style.border)
    return p


def draw_screen(seed: int, *, language: UILanguage = "en", viewport: str | None = None) -> Drawn:
    """The screen of `seed` (`viewport`, a name in SCREENS, pins its size class)."""
    rng = random.Random(seed)
    names = list(SCREENS)
    name = viewport or rng.choices(names, weights=[SCREENS[n][2] for n in names])[0]
    if name not in SCREENS:
        raise ValueError(f"viewport {name!r} is not one of {names}")
    width, height, _ = SCREENS[name]
    if rng.random() < 0.3:  # sizes between the named ones too
        width, height = round(width * rng.uniform(0.85, 1.15)), round(height * rng.uniform(0.85, 1.15))
    style = random_style(rng, px=(11, 15) if width < 360 else (12, 22))
    words, image = Words(rng, language), Image.new("RGB", (width, height), style.background)
    pasted: list[tuple[int, int, Painter]] = []
    top = 0
    if width >= 300 and rng.random() < 0.7:
        bar = _app_bar(style, rng, words, width)
        pasted.append((0, 0, bar))
        top = bar.image.size[1]
    columns = 1 if width < 600 else rng.choice((1, 2, 2, 3))
    margin = rng.randint(0, 3 * style.pad) if width > 200 else rng.randint(0, style.pad)
    col_w = (width - margin * (columns + 1)) // columns
    for c in range(columns):
        x0, y = margin + c * (col_w + margin), top + margin + rng.randint(0, 2 * style.pad)
        misses = 0
        while misses < 3 and y < height - 20:
            w = col_w if rng.random() < 0.7 else rng.randint(col_w * 2 // 3, col_w)
            x = x0 + rng.randint(0, col_w - w)
            card = _card(style, rng, words, rng.choice(list(BLOCKS)), w, height - y - margin)
            if card is None:
                misses += 1
                continue
            pasted.append((x, y, card))
            y += card.image.size[1] + margin + rng.randint(0, 2 * style.pad)
    for x, y, p in pasted:
        image.paste(p.image, (x, y))
    if rng.random() < 0.15 and (dialog := _dialog(image, style, rng, words)) is not None:
        image = Image.blend(image, Image.new("RGB", image.size, (0, 0, 0)), rng.uniform(0.35, 0.6))
        w, h = dialog.image.size
        x, y = (width - w) // 2, max(8, (height - h) // 2 - rng.randint(0, height // 8))
        image.paste(dialog.image, (x, y))
        pasted = [(x, y, dialog)]  # under the backdrop nothing is hit-testable
    placed = []
    for x, y, p in pasted:
        for item in p.items:
            box_px = (item.box[0] + x, item.box[1] + y, item.box[2] + x, item.box[3] + y)
            if not (0 <= box_px[0] < box_px[2] <= width and 0 <= box_px[1] < box_px[3] <= height):
                continue  # cut off at the screen's edge: not fully visible, so never asked about
            element = Element(f"e{len(placed)}", item.role, item.text, item.description, "", item.effect, item.checked)
            placed.append(Placed(element, box_px, to_model_box(*box_px, width=width, height=height)))
    return Drawn(seed, name, language, image, tuple(placed))


@dataclass(frozen=True)
class UIConfig:
    """What `python -m synth.ui` generates; `kinds` are cycled unit by unit (one screen a unit)."""

    n: int
    seed: int = 0
    kinds: tuple[UIKind, ...] = UI_KINDS
    split: Split = "train"
    grounding_turns: int = 1
    languages: tuple[UILanguage, ...] = ("en",)
    nothink: float = 0.0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n={self.n} must be at least 1")
        if self.grounding_turns < 1:
            raise ValueError(f"grounding_turns={self.grounding_turns} must be at least 1")
        if not self.kinds or any(k not in UI_KINDS for k in self.kinds):
            raise ValueError(f"kinds {list(self.kinds)} must be a non-empty subset of {list(UI_KINDS)}")
        if not self.languages or any(lang not in UI_LANGUAGES for lang in self.languages):
            raise ValueError(f"languages {list(self.languages)} must be a non-empty subset of {list(UI_LANGUAGES)}")
        if self.split not in ("train", "heldout"):
            raise ValueError(f"split {self.split!r} is not 'train' or 'heldout'")
        if not 0.0 <= self.nothink <= 1.0:
            raise ValueError(f"nothink={self.nothink} is a share of conversations: expected 0 to 1")


def make_unit(config: UIConfig, index: int, out: Path) -> list[dict[str, Any]]:
    """The samples of unit `index` (one screen), its image written under `out`."""
    seed = unit_seed(config.split, config.seed, index)  # the same stream as synth's pages, drawn otherwise
    rng = random.Random(seed)
    kind = config.kinds[index % len(config.kinds)]
    drawn = draw_screen(seed, language=config.languages[seed % len(config.languages)])
    image = f"images/ui{index:07d}.png"
    if kind == "grounding":
        n = max(GROUNDING_PER_SCREEN, config.grounding_turns)
        samples = tasks.grounding_samples(drawn, image, rng, n=n, turns=config.grounding_turns)
    else:
        samples = tasks.reading_samples(drawn, image, rng)
    if samples:
        (out / image).write_bytes(drawn.png())
    return switch_thinking([s.to_json() for s in samples], seed=seed, share=config.nothink)


def generate(config: UIConfig, out: str | os.PathLike[str], *, workers: int = 1, progress: bool = True,
             overwrite: bool = False) -> Path:
    """Write `config.n` samples into directory `out` (the layout of `synth.dataset`), atomically."""
    return write_dataset(make_unit, config, config.n, out, workers=workers, progress=progress, overwrite=overwrite)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m synth.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory (data.jsonl, images/)")
    parser.add_argument("--n", type=int, required=True, help="number of samples (conversations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--kinds", default=",".join(UI_KINDS), help=f"comma-separated subset of {','.join(UI_KINDS)}")
    parser.add_argument("--split", default="train", choices=("train", "heldout"))
    parser.add_argument("--grounding-turns", type=int, default=1, help="grounding questions per conversation")
    parser.add_argument("--languages", default="en", help=f"comma-separated, from {','.join(UI_LANGUAGES)}")
    parser.add_argument("--nothink", type=float, default=0.0, help="share of conversations with /nothink")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: expected at least 1")
    try:
        config = UIConfig(n=args.n, seed=args.seed, kinds=_csv(args.kinds), split=args.split,  # type: ignore[arg-type]
                          grounding_turns=args.grounding_turns, languages=_csv(args.languages),  # type: ignore[arg-type]
                          nothink=args.nothink)
    except ValueError as e:
        parser.error(str(e))
    generate(config, args.out, workers=args.workers, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
