"""Is UI text legible at the model's input? A pretrained OCR model reads the data engines' text
after the processor's resize (issue #16, "Legible input").

    python -m recipes.legibility [--out FILE.json] [--budgets 160000,320000,640000,9633792]
                                 [--screens 4] [--pages 8] [--upscale] [--threads 1]

The reader is RapidOCR (`rapidocr`, Apache-2.0; PP-OCRv6 small detector and recogniser run by
onnxruntime, the models inside the wheel: it works offline). A dev dependency, not a runtime one.

Three kinds of screen, each with the text it shows and where (in screen pixels):

- lines: rows of the data engine's English UI words drawn by `synth.widgets` (its fonts, its
  `Painter.text`, its themes) at every font size the engines use, 9-22 px, on each screen size
  of `synth.ui.SCREENS`; every word's box and font size known. This gives legibility by size.
- ui: screens drawn by `synth.ui.draw_screen` (11-22 px text), the elements whose box holds
  their text (not text fields, whose text is the label beside them, nor checkboxes).
- page: `synth.pages` pages rendered by Chromium (`synth.render`, 13-18 px; English),
  desktop and phone, the same elements, each element's font size read from the page's CSS.

Each screen is resized exactly as the processor resizes it (`vlm.images.resize_to_budget`) at
each budget and the OCR runs on that picture, not upscaled back: the detector scales its input
so its short side is at least 736 px anyway, and the recogniser scales each line to 48 px high
(`--upscale` measures the other choice; on the desktop lines it reads the same within 0.01 at
every budget). A word counts as read when the OCR returns it exactly, compared
case-insensitively, as one of the words whose centres fall in the word's (element's) box. A
text's height at the model's input is its font size (px, the em) times the vertical resize
factor; capitals are about 0.73 of it. Measured numbers: README.md, "Is UI text legible".
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from recipes.recipe import IMAGE_MAX_PIXELS
from synth import vocab
from synth.ui import SCREENS, draw_screen
from synth.widgets import Painter, font_families, load_font, random_style
from vlm.files import atomic_write
from vlm.images import ImageConfig, resize_to_budget

Source = Literal["lines", "ui", "page"]
Px = tuple[float, float, float, float]  # x1, y1, x2, y2 in screen pixels
# a x0.27 desktop budget, v1's, the recipe's and the released model's (a screenshot stays ~native)
BUDGETS = (160_000, 320_000, IMAGE_MAX_PIXELS, ImageConfig().max_pixels)
FONT_PX = (9, 11, 13, 15, 18, 22)  # synth.widgets: 9 (its floor) to 22; synth.pages: 13-18
UNREADABLE_ROLES = ("textbox", "checkbox")  # their text is beside their box, not in it
HEIGHT_BINS = (0, 4, 5, 6, 7, 8, 10, 13)  # text height at the model's input, px


@dataclass(frozen=True)
class Label:
    """Text a renderer drew and the box it lies in; `font_px` its font size where known."""

    text: str
    box: Px
    font_px: float | None = None


@dataclass(frozen=True)
class Screen:
    source: Source
    name: str  # the viewport (synth.ui.SCREENS or synth.render.VIEWPORTS)
    image: Image.Image
    labels: tuple[Label, ...]


@dataclass(frozen=True)
class Word:
    """A word the OCR read, its centre in screen pixels."""

    text: str
    x: float
    y: float


@dataclass(frozen=True)
class Outcome:
    """One label at one budget: how many of its words were read."""

    source: Source
    screen: str
    budget: int
    scale: float  # model-input pixels per screen pixel, vertically
    words: int
    read: int
    font_px: float | None

    @property
    def height(self) -> float | None:
        return None if self.font_px is None else self.font_px * self.scale


# ---------------------------------------------------------------------------------------------
# Screens


@functools.cache
def english_words() -> tuple[str, ...]:
    """Every English word of the data engine's vocabulary tables, names and cities included."""
    found: set[str] = set()
    for name in dir(vocab):
        table = getattr(vocab, name)
        if not name.isupper() or not isinstance(table, (list, dict)):
            continue
        for row in table.values() if isinstance(table, dict) else table:
            texts = [row] if isinstance(row, str) else [row[0]] if isinstance(row, tuple) else row
            found.update(w for t in texts for w in t.split() if all(ord(c) < 0x2E80 for c in w))  # no CJK
    return tuple(sorted(found))


def specimen(name: str, *, seed: int = 0, per_size: int = 24) -> list[Screen]:
    """Screens of `name`'s size with rows of words at each of FONT_PX, `per_size` words at least each.

    A row holds labels of one to three words, three ems apart, as UI labels are: an OCR line
    across a whole 1280-px row of words is ~45 times as wide as it is high, and the recogniser
    then misreads even 22-px text.
    """
    width, height, _ = SCREENS[name]
    rng, counts, screens = random.Random(seed), Counter[int](), []
    while min(counts[px] for px in FONT_PX) < per_size and len(screens) < 60:
        style = random_style(rng, px=(12, 12))
        p = Painter(Image.new("RGB", (width, height), style.background), style)
        labels, y, row = [], style.pad, rng.randrange(len(FONT_PX))
        while y + 2 * FONT_PX[row % len(FONT_PX)] <= height:
            px = FONT_PX[row % len(FONT_PX)]
            regular, bold = rng.choice(font_families())
            font = load_font(bold if rng.random() < 0.3 else regular, px)
            space = p.size("a a", font)[0] - 2 * p.size("a", font)[0]
            x = style.pad + rng.randint(0, px)
            while True:
                words = [_word(rng) for _ in range(rng.choice((1, 1, 2, 3)))]
                if x + sum(p.size(w, font)[0] + space for w in words) > width - style.pad:
                    break
                for word in words:
                    box = p.text(x, y, word, font=font)
                    labels.append(Label(word, box, px))
                    x = box[2] + space
                x += 3 * px
                counts[px] += len(words)
            y, row = y + round(1.7 * px), row + 1
        screens.append(Screen("lines", name, p.image, tuple(labels)))
    return screens


def _word(rng: random.Random) -> str:
    return rng.choice(english_words()) if rng.random() < 0.85 else f"{rng.randint(5, 990)}.{rng.randint(0, 99):02d}"


def drawn_screens(names: Iterable[str], *, n: int, seed: int = 0) -> list[Screen]:
    """`n` English `synth.ui` screens per viewport name, their readable elements as labels."""
    screens = []
    for name in names:
        for i in range(n):
            drawn = draw_screen(seed + i, language="en", viewport=name)
            labels = tuple(Label(p.element.text, p.box_px) for p in drawn.placed
                           if p.element.role not in UNREADABLE_ROLES)
            screens.append(Screen("ui", name, drawn.image, labels))
    return screens


_FONT_SIZES_JS = """() => Object.fromEntries([...document.querySelectorAll('[data-el]')]
    .map(e => [e.dataset.el, parseFloat(getComputedStyle(e).fontSize)]))"""


def chromium_pages(*, n: int, seed: int = 0) -> list[Screen]:
    """`n` English `synth.pages` pages rendered by Chromium at each viewport, font sizes from the DOM."""
    from synth.pages import generate_page
    from synth.render import VIEWPORTS, Renderer

    screens = []
    with Renderer() as renderer:
        for viewport in VIEWPORTS:
            for i in range(n):
                page = generate_page(seed + i, language="en")
                tab = renderer.load(page, viewport)
                rendered = renderer.snapshot(tab, page, viewport)
                sizes = tab.evaluate(_FONT_SIZES_JS)
                labels = tuple(Label(p.element.text, p.box_px, sizes[p.element.id]) for p in rendered.placed
                               if p.element.role not in UNREADABLE_ROLES)
                image = Image.open(io.BytesIO(rendered.png)).convert("RGB")
                screens.append(Screen("page", viewport, image, labels))
    return screens


# ---------------------------------------------------------------------------------------------
# Reading


class Reader:
    """RapidOCR on `threads` onnxruntime threads; `read` returns words with their centres."""

    def __init__(self, *, threads: int = 1) -> None:
        from rapidocr import RapidOCR  # imports onnxruntime and OpenCV: only when a reader is made

        self._ocr = RapidOCR(params={"Global.log_level": "error",
                                     "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                                     "EngineConfig.onnxruntime.inter_op_num_threads": 1})

    def read(self, image: Image.Image) -> list[Word]:
        """The words in `image`, centres in its pixels."""
        result = self._ocr(np.asarray(image.convert("RGB")), return_word_box=True)
        if result.txts is None:  # nothing detected (word_results then holds one empty placeholder)
            return []
        words = []
        for line in result.word_results:
            for text, _score, quad in line:
                xs, ys = [q[0] for q in quad], [q[1] for q in quad]
                if text.strip():
                    words.append(Word(text.strip(), (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2))
        return words


def words_read(labels: Sequence[Label], found: Iterable[Word]) -> list[int]:
    """Per label, how many of its words the OCR read: each OCR word goes to the smallest label box
    (grown by a quarter of its height) holding its centre, and counts once, compared casefolded."""
    grown = [(x1 - (y2 - y1) / 4, y1 - (y2 - y1) / 4, x2 + (y2 - y1) / 4, y2 + (y2 - y1) / 4)
             for x1, y1, x2, y2 in (label.box for label in labels)]
    heard: list[Counter[str]] = [Counter() for _ in labels]
    for word in found:
        holding = [i for i, (x1, y1, x2, y2) in enumerate(grown) if x1 <= word.x <= x2 and y1 <= word.y <= y2]
        if holding:
            smallest = min(holding, key=lambda i: (grown[i][2] - grown[i][0]) * (grown[i][3] - grown[i][1]))
            heard[smallest][word.text.casefold()] += 1
    truth = [Counter(w.casefold() for w in label.text.split()) for label in labels]
    return [sum((want & got).values()) for want, got in zip(truth, heard)]


def measure(screens: Iterable[Screen], budgets: Sequence[int], reader: Reader, *,
            upscale: bool = False) -> list[Outcome]:
    """Every label of every screen at every budget (a budget that gives the same size is read once)."""
    outcomes = []
    for screen in screens:
        width, height = screen.image.size
        done: dict[tuple[int, int], list[int]] = {}
        for budget in budgets:
            picture = resize_to_budget(screen.image, ImageConfig(max_pixels=budget))
            if picture.size not in done:
                shown = picture.resize((width, height), Image.Resampling.BICUBIC) if upscale else picture
                sx, sy = width / shown.width, height / shown.height
                found = [dataclasses.replace(w, x=w.x * sx, y=w.y * sy) for w in reader.read(shown)]
                done[picture.size] = words_read(screen.labels, found)
            scale = picture.height / height
            outcomes += [Outcome(screen.source, screen.name, budget, scale, len(label.text.split()), read,
                                 label.font_px) for label, read in zip(screen.labels, done[picture.size])]
    return outcomes


# ---------------------------------------------------------------------------------------------
# Report


def share(outcomes: Iterable[Outcome]) -> float:
    """The share of words read."""
    outcomes = list(outcomes)
    words = sum(o.words for o in outcomes)
    return sum(o.read for o in outcomes) / words if words else float("nan")


def _rows(outcomes: Iterable[Outcome], key: Callable[[Outcome], tuple]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[key(o)].append(o)
    return [{"key": list(k), "words": sum(o.words for o in g), "read": round(share(g), 3),
             "scale": round(sum(o.scale for o in g) / len(g), 3)} for k, g in sorted(groups.items())]


def _height_bin(height: float) -> tuple[int, str]:
    """(its place, its name) of the HEIGHT_BINS interval holding `height`."""
    i = max(i for i, b in enumerate(HEIGHT_BINS) if b <= height)
    return i, f"{HEIGHT_BINS[i]}-{HEIGHT_BINS[i + 1]}" if i + 1 < len(HEIGHT_BINS) else f">={HEIGHT_BINS[i]}"


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Words read by screen and budget, by text height at the model's input, and by font size."""
    sized = [o for o in outcomes if o.height is not None]
    by_height = _rows(sized, lambda o: _height_bin(o.height))
    for row in by_height:
        row["key"] = row["key"][1:]  # the name; the place only sorted it
    return {
        "by_screen": _rows(outcomes, lambda o: (o.source, o.screen, o.budget)),
        "by_height": by_height,
        "by_font": _rows(sized, lambda o: (o.source, o.screen, o.budget, o.font_px)),
    }


def report(summary: dict[str, Any], budgets: Sequence[int]) -> str:
    """The printed tables: screens x budgets (share read, vertical resize factor), then heights."""
    cells = {tuple(r["key"]): r for r in summary["by_screen"]}
    lines = ["words read exactly (case-insensitive) at the model's input; in brackets the resize factor",
             f"{'source':7} {'screen':8} {'words':>6} " + " ".join(f"{b:>14,}" for b in budgets)]
    for source, screen in dict.fromkeys((k[0], k[1]) for k in cells):
        row = [cells.get((source, screen, b)) for b in budgets]
        words = next(r["words"] for r in row if r)
        lines.append(f"{source:7} {screen:8} {words:>6} " + " ".join(
            f"{r['read']:>6.2f} (x{r['scale']:.2f})" if r else " " * 14 for r in row))
    lines += ["", "by text height at the model's input (font size x factor; lines and pages, every budget)",
              f"{'height px':>10} {'words':>6} {'read':>6}"]
    lines += [f"{r['key'][0]:>10} {r['words']:>6} {r['read']:>6.2f}" for r in summary["by_height"]]
    return "\n".join(lines)


def _budgets(text: str) -> tuple[int, ...]:
    floor = ImageConfig().min_pixels
    try:
        budgets = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated pixel counts, e.g. 320000,640000")
    if any(b < floor for b in budgets):
        raise argparse.ArgumentTypeError(f"{text!r}: each budget must be at least {floor} (the processor's floor)")
    return budgets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recipes.legibility", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="write the summary as JSON here")
    parser.add_argument("--budgets", type=_budgets, default=BUDGETS,
                        help="pixel budgets, comma-separated (the processor's max_pixels; default: %(default)s)")
    parser.add_argument("--screens", type=int, default=4, help="synth.ui screens per viewport")
    parser.add_argument("--pages", type=int, default=8, help="Chromium pages per viewport (0: none, no browser needed)")
    parser.add_argument("--per-size", type=int, default=24, help="words per font size and screen in the lines")
    parser.add_argument("--upscale", action="store_true",
                        help="OCR the model's picture resized back to the screen's size")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    budgets = args.budgets
    screens = [s for name in SCREENS for s in specimen(name, seed=args.seed, per_size=args.per_size)]
    screens += drawn_screens(SCREENS, n=args.screens, seed=args.seed)
    if args.pages:
        screens += chromium_pages(n=args.pages, seed=args.seed)
    outcomes = measure(screens, budgets, Reader(threads=args.threads), upscale=args.upscale)
    summary = {"ocr": f"rapidocr {version('rapidocr')} (its default models, onnxruntime)", "upscale": args.upscale,
               "budgets": list(budgets), "seed": args.seed, "words": "exact, case-insensitive", **summarize(outcomes)}
    if args.out:
        out, text = Path(args.out), json.dumps(summary, indent=1) + "\n"
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    print(report(summary, budgets))


if __name__ == "__main__":
    main()
