"""UI widgets and blocks drawn with PIL, each element with its exact box: the drawing half of `synth.ui`.

A `Painter` draws one block of a screen (a card, an app bar, a dialog) onto its own image in
one `Style`, and records every element it draws as an `Item`: its role, visible text, English
description and box in the block's pixels. A text's box is PIL's `textbbox` of the string as
drawn (so it holds the glyphs' ink), a shape's box is the rectangle drawn (PIL includes the
end pixel: the box is exclusive, `x2 = right + 1`). Anything drawn past the block's size
marks it `overflow`, and `synth.ui` drops such a block rather than clip it.

Blocks (`BLOCKS`: a form, a button row, links, checkboxes, tabs, a list, a table, a menu,
text) fill one card from its top-left corner, their text from `Words`.

Fonts are this machine's DejaVu and Liberation families (regular and bold, `synth.text.font_files`);
where none are installed (a bare GPU machine) Pillow's own scalable default font stands in.
"""

from __future__ import annotations

import colorsys
import functools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from PIL import Image, ImageDraw, ImageFont

from synth import vocab
from synth.pages import Role
from synth.text import font_files, random_text

Colour = tuple[int, int, int]
Px = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2 and y2 exclusive


@functools.cache
def font_families() -> tuple[tuple[Path | None, Path | None], ...]:
    """(regular, bold) files per installed family; ((None, None),) means Pillow's default font."""
    try:
        files = font_files()
    except FileNotFoundError:
        return ((None, None),)
    found: dict[str, dict[str, Path]] = {}
    for f in files:
        family, _, style = f.stem.partition("-")
        if style in ("", "Regular", "Bold"):
            found.setdefault(family, {})["bold" if style == "Bold" else "regular"] = f
    return tuple((d["regular"], d.get("bold", d["regular"])) for _, d in sorted(found.items()) if "regular" in d)


@functools.cache
def load_font(path: Path | None, px: int) -> ImageFont.FreeTypeFont:
    if path is None:
        return ImageFont.load_default(px)  # type: ignore[return-value]  (FreeType in Pillow >= 10.1)
    return ImageFont.truetype(str(path), px)


@dataclass(frozen=True)
class Style:
    """One screen's look: colours, font family, base size (px), corner radius and spacing."""

    background: Colour
    surface: Colour  # cards and fields
    text: Colour
    muted: Colour
    accent: Colour
    accent_text: Colour
    border: Colour
    link: Colour
    regular: Path | None
    bold: Path | None
    px: int
    radius: int
    pad: int
    dark: bool


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _hls(h: float, lum: float, sat: float) -> Colour:
    return tuple(round(c * 255) for c in colorsys.hls_to_rgb(h, lum, sat))  # type: ignore[return-value]


def random_style(rng: random.Random, *, px: tuple[int, int]) -> Style:
    """A light (two thirds) or dark theme with a random accent hue, font family and size."""
    dark = rng.random() < 1 / 3
    hue, tint = rng.random(), rng.uniform(0, 0.25)
    if dark:
        background = _hls(hue, rng.uniform(0.04, 0.16), tint)
        surface = _hls(hue, rng.uniform(0.12, 0.22), tint) if rng.random() < 0.7 else background
        text, muted = _hls(hue, rng.uniform(0.86, 0.98), tint), _hls(hue, rng.uniform(0.62, 0.72), tint)
        accent = _hls(rng.random(), rng.uniform(0.55, 0.7), rng.uniform(0.5, 0.9))
    else:
        background = _hls(hue, rng.uniform(0.9, 1.0), tint)
        surface = (255, 255, 255) if rng.random() < 0.7 else background
        text, muted = _hls(hue, rng.uniform(0.0, 0.18), tint), _hls(hue, rng.uniform(0.35, 0.45), tint)
        accent = _hls(rng.random(), rng.uniform(0.3, 0.45), rng.uniform(0.5, 0.9))
    luminance = 0.299 * accent[0] + 0.587 * accent[1] + 0.114 * accent[2]
    regular, bold = rng.choice(font_families())
    return Style(background, surface, text, muted, accent, (0, 0, 0) if luminance > 150 else (255, 255, 255),
                 _mix(surface, text, rng.uniform(0.2, 0.4)), accent if rng.random() < 0.6 else _mix(accent, text, 0.3),
                 regular, bold, rng.randint(*px), rng.choice((0, 2, 4, 6, 10, 99)), rng.randint(4, 14), dark)


@dataclass(frozen=True)
class Item:
    """A drawn element: what `synth.tasks` needs of it, its box in the painter's pixels."""

    role: Role
    text: str
    description: str
    effect: str
    box: Px
    checked: bool | None = None


@dataclass
class Painter:
    """Draws onto `image` in `style`; `items` are the elements drawn, in reading order."""

    image: Image.Image
    style: Style
    items: list[Item] = field(default_factory=list)
    bottom: int = 0  # lowest pixel row drawn (exclusive)
    overflow: bool = False

    def __post_init__(self) -> None:
        self.draw = ImageDraw.Draw(self.image)

    def font(self, *, bold: bool = False, scale: float = 1.0) -> ImageFont.FreeTypeFont:
        return load_font(self.style.bold if bold else self.style.regular, max(9, round(self.style.px * scale)))

    def size(self, text: str, font: ImageFont.FreeTypeFont) -> tuple[int, int]:
        """(width, height) of the text's box as `text` draws it."""
        x1, y1, x2, y2 = self.draw.textbbox((0, 0), text, font=font)
        return x2 - x1, y2 - y1

    def _used(self, box: Px) -> Px:
        width, height = self.image.size
        if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
            self.overflow = True
        self.bottom = max(self.bottom, box[3])
        return box

    def text(self, x: int, y: int, text: str, *, font: ImageFont.FreeTypeFont, fill: Colour | None = None) -> Px:
        """Draw `text` with its box's top-left corner at (x, y); returns that box."""
        left, top, _, _ = self.draw.textbbox((0, 0), text, font=font)
        self.draw.text((x - left, y - top), text, font=font, fill=fill or self.style.text)
        x1, y1, x2, y2 = self.draw.textbbox((x - left, y - top), text, font=font)
        return self._used((int(x1), int(y1), int(x2), int(y2)))

    def rect(self, box: Px, *, fill: Colour | None = None, outline: Colour | None = None, radius: int | None = None) -> Px:
        """A (rounded) rectangle covering exactly `box` (exclusive corners)."""
        x1, y1, x2, y2 = box
        r = min(self.style.radius if radius is None else radius, (y2 - y1) // 2, (x2 - x1) // 2)
        self.draw.rounded_rectangle((x1, y1, x2 - 1, y2 - 1), radius=r, fill=fill, outline=outline, width=1)
        return self._used(box)

    def add(self, role: Role, text: str, description: str, effect: str, box: Px, *, checked: bool | None = None) -> Px:
        self.items.append(Item(role, text, description, effect, box, checked))
        return box

    # widgets: each draws at (x, y) and returns its element's box

    def button(self, x: int, y: int, label: str, *, kind: Literal["primary", "plain", "ghost"] = "plain",
               role: Role = "button", text: str | None = None, description: str | None = None,
               effect: str | None = None) -> Px:
        """`text` is the element's text where the label shows more (a menu button's arrow)."""
        s, font = self.style, self.font(bold=kind == "primary")
        w, h = self.size(label, font)
        px, py = max(6, round(s.px * 0.9)), max(4, round(s.px * 0.45))
        box = (x, y, x + w + 2 * px, y + h + 2 * py)
        fill = {"primary": s.accent, "plain": s.surface, "ghost": None}[kind]
        outline = None if kind == "primary" else (s.border if kind == "plain" else s.accent)
        self.rect(box, fill=fill, outline=outline)
        self.text(x + px, y + py, label, font=font, fill=s.accent_text if kind == "primary" else s.text)
        return self.add(role, text or label, description or f'the "{label}" button',
                        effect or f'It runs the "{label}" action.', box)

    def link(self, x: int, y: int, label: str, *, underline: bool, description: str | None = None) -> Px:
        box = self.text(x, y, label, font=self.font(), fill=self.style.link)
        if underline:
            self.draw.line((box[0], box[3] + 1, box[2] - 1, box[3] + 1), fill=self.style.link)
            box = self._used((box[0], box[1], box[2], box[3] + 2))
        return self.add("link", label, description or f'the "{label}" link', f'It opens the "{label}" page.', box)

    def field(self, x: int, y: int, width: int, label: str, *, placeholder: str = "", beside: bool = False,
              description: str | None = None) -> Px:
        """A label and its text field (the element is the field, its text the label, as on web pages)."""
        s, font = self.style, self.font()
        label_box = self.text(x, y, label, font=self.font(scale=0.9), fill=s.text)
        lx, ly = (label_box[2] + s.pad, y) if beside else (x, label_box[3] + max(3, s.pad // 2))
        _, h = self.size("Ag", font)
        box = (lx, ly, max(lx + 3 * s.px, x + width), ly + h + 2 * max(4, round(s.px * 0.5)))
        self.rect(box, fill=s.surface if not s.dark else s.background, outline=s.border)
        if placeholder:
            self.text(lx + max(5, s.px // 2), ly + max(4, round(s.px * 0.5)), placeholder, font=font, fill=s.muted)
        return self.add("textbox", label, description or f'the "{label}" input field',
                        f'It focuses the "{label}" field so you can type in it.', box)

    def checkbox(self, x: int, y: int, label: str, *, checked: bool) -> Px:
        s, font = self.style, self.font()
        _, h = self.size("Ag", font)
        side = max(10, round(s.px * 0.9))
        top = y + max(0, (h - side) // 2)
        box = (x, top, x + side, top + side)
        self.rect(box, fill=s.accent if checked else s.surface, outline=s.accent if checked else s.border,
                  radius=min(3, s.radius))
        if checked:
            self.draw.line((x + side * 0.22, top + side * 0.5, x + side * 0.42, top + side * 0.72, x + side * 0.78,
                            top + side * 0.28), fill=s.accent_text, width=max(1, side // 7))
        self.text(x + side + max(5, s.px // 2), y, label, font=font)
        verb = "unchecks" if checked else "checks"
        return self.add("checkbox", label, f'the "{label}" checkbox', f'It {verb} the "{label}" checkbox.', box,
                        checked=checked)


class Words:
    """UI text for one screen: vocabulary rows not yet used (so descriptions rarely repeat) in
    the screen's language, and random Latin words (`synth.text.random_text`)."""

    def __init__(self, rng: random.Random, language: str) -> None:
        self.rng, self.language, self.used = rng, language, set[tuple[int, int]]()

    def rows(self, table: list[vocab.Row], n: int) -> list[str]:
        free = [i for i in range(len(table)) if (id(table), i) not in self.used]
        chosen = self.rng.sample(free, min(n, len(free)))
        self.used.update((id(table), i) for i in chosen)
        return [vocab.word(table[i], self.language) for i in chosen]

    def common(self, key: str) -> str:
        return vocab.word(vocab.COMMON[key], self.language)

    def random(self, *, words: int = 2) -> str:
        while True:
            text = " ".join(random_text(self.rng).split()[:words])
            if text and all(ord(c) < 0x2E80 for c in text):
                return text

    def labels(self, table: list[vocab.Row], n: int) -> list[str]:
        """`n` labels, mostly from `table`, a quarter random words."""
        out = self.rows(table, n)
        return [self.random() if self.rng.random() < 0.25 else t for t in out] + [self.random() for _ in range(n - len(out))]


Block = Callable[[Painter, Words, random.Random, int], None]  # draws from (pad, pad) within width


def heading(p: Painter, x: int, y: int, text: str, *, scale: float = 1.25) -> Px:
    box = p.text(x, y, text, font=p.font(bold=True, scale=scale))
    return p.add("heading", text, f'the heading "{text}"', "Nothing happens: it is a heading.", box)


def static(p: Painter, x: int, y: int, text: str) -> Px:
    box = p.text(x, y, text, font=p.font(scale=0.95), fill=p.style.muted)
    return p.add("text", text, f'the text "{text}"', "Nothing happens: it is plain text.", box)


def _form(p: Painter, w: Words, rng: random.Random, width: int) -> None:
    s = p.style
    login = rng.random() < 0.4
    title = w.common("sign_in") if login else w.labels(vocab.TITLES, 1)[0]
    y = heading(p, s.pad, s.pad, title)[3] + s.pad
    labels = [w.common("username"), w.common("password")] if login else w.labels(vocab.FIELDS, rng.randint(1, 4))
    beside = rng.random() < 0.3
    for label in labels:
        holder = w.random(words=1) if rng.random() < 0.3 else ""
        y = p.field(s.pad, y, width - 2 * s.pad, label, placeholder=holder, beside=beside)[3] + s.pad
    if rng.random() < 0.4:
        y = p.checkbox(s.pad, y, w.labels(vocab.CHECKBOXES, 1)[0], checked=rng.random() < 0.5)[3] + s.pad
    submit = title if login else w.common("submit")
    box = p.button(s.pad, y, submit, kind="primary")
    if rng.random() < 0.5:
        p.button(box[2] + s.pad, y, w.common("cancel"), kind=rng.choice(("plain", "ghost")))


def _buttons(p: Painter, w: Words, rng: random.Random, width: int) -> None:
    s, x, y = p.style, p.style.pad, p.style.pad
    if rng.random() < 0.4:
        y = heading(p, x, y, w.random(), scale=1.1)[3] + s.pad
    kind = rng.choice(("plain", "ghost", "primary"))
    for label in w.labels(vocab.BUTTONS, rng.randint(2, 5)):
        box = p.button(x, y, label, kind=kind if rng.random() < 0.8 else "primary")
        x = box[2] + s.pad + rng.randint(0, s.pad)
        if x > width:
            return


def _links(p: Painter, w: Words, rng: random.Random, width: int) -> None:
    s, vertical, underline = p.style, rng.random() < 0.4, rng.random() < 0.5
    x, y = s.pad, s.pad
    for label in w.labels(vocab.NAV, rng.randint(2, 6)):
        box = p.link(x, y, label, underline=underline)
        x, y = (x, box[3] + s.pad) if vertical else (box[2] + 2 * s.pad, y)


def _checkboxes(p: Painter, w: Words, rng: random.Random, width: int) -> None:
    s, y = p.style, p.style.pad
    if rng.random() < 0.6:
        y = heading(p, s.pad, y, w.random(), scale=1.1)[3] + s.pad
    for label in w.labels(vocab.CHECKBOXES, rng.randint(2, 4)):
        y = p.checkbox(s.pad, y, label, checked=rng.random() < 0.5)[3] + s.pad


def _tabs(p: Painter, w: Words, rng: random.Random, width: int) -> None:
    s, x = p.style, p.style.pad
    labels = w.labels(vocab.TABS, rng.randint(2, 5))
    active, font = rng.randrange(len(labels)), p.font()
    bottom = s.pad
    for i, label in enumerate(labels):
        tw, th = p.size(label, font)
        box = (x, s.pad, x + tw + 2 * s.pad, s.pad + th + 2 * s.pad)
        if i == active:
            p.rect(box, fill=s.surface, outline=s.border, radius=min(4, s.radius))
            p.draw.line((box[0], box[3] - 2, box[2] - 1, box[3] - 2), fill=s.accent, width=2)
        p.text(x + s.pad, s.pad + s.pad, label, font=p.font(bold=i == active), fill=s.text if i == active else s.muted)
        p.add("tab", label, f'the "{label}" tab', f'It switches to the "{label}" tab.', box)
        x, bottom = box[2] + 2, box[3]
    static(p, s.pad, bottom + s.pad, f"{rng.choice(vocab.PEOPLE)} · {rng.choice(vocab.CITIES)}")


def _list(p: Painter, w: Words, rng: random.Random, width: int) -> None:
    s = p.style
    y = heading(p, s.pad, s.pad, w.labels(vocab.LIST_TITLES, 1)[0] if rng.random() < 0.7 else w.random())[3] + s.pad
    font, stripes = p.font(), rng.random() < 0.5
    for i, label in enumerate(w.labels(vocab.LIST_ITEMS, rng.randint(2, 6))):
        _, th = p.size("Ag", font)
        box = (s.pad, y, width - s.pad, y + th + s.pad)
        if stripes and i % 2 == 0:
            p.rect(box, fill=s.background, radius=0)
        if rng.random() < 0.5:
            p.draw.ellipse((box[0] + 2, y + th // 2 + s.pad // 2 - 2, box[0] + 5, y + th // 2 + s.pad // 2 + 1), fill=s.text)
        p.text(box[0] + 10, y + s.pad // 2, label, font=font)
        p.add("listitem", label, f'the list item "{label}"', f'It opens the item "{label}".', box)
        y = box[3] + 1


def _table(p: Painter, w: Words, rng: random.Random, width: int) -> None:
    s, font = p.style, p.font()
    headers = [vocab.word(r, w.language) for r in vocab.TABLE_HEADERS]
    inner = width - 2 * s.pad
    xs = [s.pad, s.pad + inner * 2 // 5, s.pad + inner * 7 // 10, s.pad + inner]
    _, th = p.size("Ag", font)
    y = s.pad
    for i, h in enumerate(headers):
        p.text(xs[i] + 4, y, h, font=p.font(bold=True))
    y += th + s.pad
    p.draw.line((s.pad, y - s.pad // 2, width - s.pad - 1, y - s.pad // 2), fill=s.border)
    for person in rng.sample(vocab.PEOPLE, rng.randint(2, 5)):
        box = (xs[0], y, xs[1], y + th + s.pad)
        p.text(xs[0] + 4, y + s.pad // 2, person, font=font)
        p.add("cell", person, f'the table cell "{person}"', f'It selects the row of "{person}".', box)
        p.text(xs[1] + 4, y + s.pad // 2, vocab.word(rng.choice(vocab.STATUSES), w.language), font=font, fill=s.muted)
        p.text(xs[2] + 4, y + s.pad // 2, f"{rng.randint(5, 990)}.{rng.randint(0, 99):02d}", font=font)
        p.draw.line((s.pad, box[3], width - s.pad - 1, box[3]), fill=s.border)
        y = box[3] + 1
        if box[2] > xs[1] or p.size(person, font)[0] + 4 > xs[1] - xs[0]:
            p.overflow = True  # the name would run into the next column


def _menu(p: Painter, w: Words, rng: random.Random, width: int) -> None:
    s = p.style
    label = w.labels(vocab.MENU_BUTTONS, 1)[0]
    opened = rng.random() < 0.6
    box = p.button(s.pad, s.pad, label, role="menu", description=f'the "{label}" menu button',
                   effect=f'It {"closes" if opened else "opens"} the "{label}" menu.')
    if not opened:
        return
    font, labels = p.font(), w.labels(vocab.MENU_ITEMS, rng.randint(2, 5))
    item_w = max(p.size(t, font)[0] for t in labels) + 3 * s.pad
    _, th = p.size("Ag", font)
    top = box[3] + 2
    p.rect((box[0], top, box[0] + item_w, top + len(labels) * (th + s.pad) + 2), fill=s.surface, outline=s.border,
           radius=min(4, s.radius))
    for i, text in enumerate(labels):
        item = (box[0] + 1, top + 1 + i * (th + s.pad), box[0] + item_w - 1, top + 1 + (i + 1) * (th + s.pad))
        p.text(item[0] + s.pad, item[1] + s.pad // 2, text, font=font)
        p.add("menuitem", text, f'the "{text}" menu item', f'It chooses "{text}" from the "{label}" menu.', item)


def _text(p: Painter, w: Words, rng: random.Random, width: int) -> None:
    s, y = p.style, p.style.pad
    y = heading(p, s.pad, y, w.labels(vocab.TITLES, 1)[0] if rng.random() < 0.5 else w.random())[3] + s.pad
    for _ in range(rng.randint(1, 3)):
        y = static(p, s.pad, y, w.random(words=rng.randint(1, 4)))[3] + s.pad // 2
    if rng.random() < 0.5:
        p.link(s.pad, y + s.pad // 2, w.random(), underline=True)


BLOCKS: dict[str, Block] = {"form": _form, "buttons": _buttons, "links": _links, "checkboxes": _checkboxes,
                            "tabs": _tabs, "list": _list, "table": _table, "menu": _menu, "text": _text}
