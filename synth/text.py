"""Lines of UI text drawn with PIL, every character's place known: dense labels for learning to read.

A vision encoder trained from scratch with one label per picture does not learn to read text
at arbitrary pixel offsets (`python -m recipes.learnability word`); with a label per patch it
does (../shared/studies/reading.md). This module draws what such labels need, fast enough to
feed a trainer on any number of cores (no browser): a few lines of text, each in its own font
family, weight, size and colours, sometimes on a button, a pill or an underlined link, at any
pixel offset, drawn at page scale and then resized by a screenshot's budget factor with the
processor's own resampling, so glyphs reach the encoder as blurred and as small as in a
screenshot. Every character's centre is known, so `patch_labels` can say which characters each
14-px patch shows.

The text is mostly random (letters in three casings, digits, punctuation, strings that look like
words), so the encoder learns glyphs rather than our pages' vocabulary; UI words of every
language the data engine writes are mixed in, CJK included (their glyphs are labelled OTHER).
"""

from __future__ import annotations

import functools
import random
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from synth import vocab

CHARSET = string.ascii_letters + string.digits + ".,:;!?'\"-+/&@#%$()"
OTHER = len(CHARSET)  # a visible character outside CHARSET (accents, CJK, symbols)
NONE = OTHER + 1  # an empty slot
CLASSES = NONE + 1
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"))
CJK_FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
_VOWELS, _CONSONANTS = "aeiou", "bcdfghjklmnprstvwz"


@dataclass(frozen=True)
class Glyph:
    """One drawn character: its text and its centre in the returned image's pixels."""

    char: str
    x: float
    y: float


@dataclass(frozen=True)
class TextPicture:
    image: Image.Image
    glyphs: tuple[Glyph, ...]
    lines: tuple[str, ...]
    scale: float  # input pixels per page pixel


@functools.cache
def font_files() -> tuple[Path, ...]:
    """The Latin fonts on this machine (Debian: fonts-dejavu-core, fonts-liberation)."""
    files = tuple(sorted(f for d in FONT_DIRS if d.is_dir() for f in d.glob("*.ttf") if "Math" not in f.name))
    if not files:
        raise FileNotFoundError(f"no .ttf fonts in {[str(d) for d in FONT_DIRS]}: install fonts-dejavu-core")
    return files


@functools.cache
def _font(path: Path, px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), px)


def _pseudo_word(rng: random.Random) -> str:
    n = rng.randint(2, 5)
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(n))[: rng.randint(3, 10)]


@functools.cache
def _ui_words() -> tuple[str, ...]:
    """Every string in the data engine's vocabulary tables, in all its languages."""
    found: set[str] = set()

    def collect(value: object) -> None:
        if isinstance(value, str):
            found.update(w for w in value.split() if w)
        elif isinstance(value, (list, tuple, dict)):
            for item in value.values() if isinstance(value, dict) else value:
                collect(item)

    for name in dir(vocab):
        if name.isupper():
            collect(getattr(vocab, name))
    return tuple(sorted(found))


def random_text(rng: random.Random) -> str:
    """One line: 1-4 words of random letters, digits, pseudo-words or UI words, cased at random."""
    words = []
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
        kind = rng.random()
        if kind < 0.3:
            w = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(2, 9)))
        elif kind < 0.6:
            w = _pseudo_word(rng)
        elif kind < 0.85:
            w = rng.choice(_ui_words())
        else:
            w = str(rng.randint(0, 99999)) + rng.choice(("", "", ".", ",", "%", "$", ":"))
        casing = rng.random()
        w = w.upper() if casing < 0.15 else w.capitalize() if casing < 0.55 else w
        words.append(w)
    return " ".join(words)


def _colours(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(background, text) with enough contrast to read; a fifth are dark themes."""
    light = tuple(rng.randint(205, 255) for _ in range(3))
    dark = tuple(rng.randint(0, 80) for _ in range(3))
    return (dark, light) if rng.random() < 0.2 else (light, dark)  # type: ignore[return-value]


def draw(rng: random.Random, *, size: tuple[int, int] = (224, 112),
         scale: tuple[float, float] = (0.45, 1.0), font_px: tuple[int, int] = (11, 22)) -> TextPicture:
    """A `size` (width, height) picture in input pixels: lines drawn at page scale, then resized.

    `scale` is the range of input pixels per page pixel (a 1280x720 screenshot at the recipe's
    728x420 is 0.57, at v1's 532x280 0.42; a phone screen or a small task area is ~1.0),
    `font_px` the page font sizes.
    """
    s = rng.uniform(*scale)
    width, height = size
    page_w, page_h = round(width / s), round(height / s)
    background, ink = _colours(rng)
    image = Image.new("RGB", (page_w, page_h), background)
    canvas = ImageDraw.Draw(image)
    glyphs: list[Glyph] = []
    lines: list[str] = []
    y = rng.randint(-4, 12)
    while True:
        text = random_text(rng)
        px = rng.randint(*font_px)
        cjk = any(ord(c) > 0x2E80 for c in text)
        font = _font(CJK_FONT if cjk else rng.choice(font_files()), px)
        left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
        if y + bottom + 4 > page_h:
            break
        x = rng.randint(-left, max(-left, page_w - right - 2))
        fg = ink if rng.random() < 0.7 else tuple(rng.randint(0, 255) if background[0] > 128 else rng.randint(150, 255)
                                                    for _ in range(3))
        fg = ink if _too_close(fg, background) else fg
        _decorate(canvas, rng, (x + left, y + top, x + right, y + bottom), background, fg)
        canvas.text((x, y), text, fill=fg, font=font)
        cy = y + (top + bottom) / 2
        edges = [0.0] + [canvas.textlength(text[:i + 1], font=font) for i in range(len(text))]  # kerning included
        for i, ch in enumerate(text):
            if not ch.isspace():
                cx = x + (edges[i] + edges[i + 1]) / 2
                glyphs.append(Glyph(ch, cx * width / page_w, cy * height / page_h))
        lines.append(text)
        y += bottom + rng.randint(3, 24)
    image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
    return TextPicture(image, tuple(glyphs), tuple(lines), s)


def _too_close(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return abs(sum(a) - sum(b)) < 200


def _decorate(canvas: ImageDraw.ImageDraw, rng: random.Random, box: tuple[float, float, float, float],
              background: tuple[int, ...], ink: tuple[int, ...]) -> None:
    """Sometimes a button outline, a tinted pill or a link's underline around the text's box."""
    x1, y1, x2, y2 = box
    pad = rng.randint(3, 10)
    kind = rng.random()
    if kind < 0.2:
        canvas.rounded_rectangle((x1 - pad, y1 - pad, x2 + pad, y2 + pad), radius=rng.choice((0, 3, 8)),
                                 outline=ink, width=1)
    elif kind < 0.3:
        tint = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in background)
        canvas.rounded_rectangle((x1 - pad, y1 - pad, x2 + pad, y2 + pad), radius=rng.choice((0, 6, 99)), fill=tint)
    elif kind < 0.4:
        canvas.line((x1, y2 + 2, x2, y2 + 2), fill=ink, width=1)


def char_class(ch: str) -> int:
    i = CHARSET.find(ch)
    return OTHER if i < 0 else i


def patch_labels(picture: TextPicture, *, patch: int = 14, slots: int = 3) -> np.ndarray:
    """(rows, cols, slots) int64: per patch, the classes of the characters centred in it, left to right.

    Characters past `slots` in one patch are dropped (rare above ~6 px per character); empty
    slots are NONE.
    """
    width, height = picture.image.size
    rows, cols = height // patch, width // patch
    inside: dict[tuple[int, int], list[Glyph]] = {}
    for g in picture.glyphs:
        r, c = int(g.y // patch), int(g.x // patch)
        if 0 <= r < rows and 0 <= c < cols:
            inside.setdefault((r, c), []).append(g)
    labels = np.full((rows, cols, slots), NONE, dtype=np.int64)
    for (r, c), gs in inside.items():
        for k, g in enumerate(sorted(gs, key=lambda g: g.x)[:slots]):
            labels[r, c, k] = char_class(g.char)
    return labels
