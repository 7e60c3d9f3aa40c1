"""Painting grounding results on the image they refer to.

Boxes arrive in pixels of the original image (`Generation.boxes`, converted from the model's
0-999 space by `vlm.outputs`), so drawing needs no scaling. The line width and the label size
follow the image size, so a box stays visible on a 4K screenshot and does not swallow a
200-pixel thumbnail. A point (two numbers) is drawn as a ring with a cross.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

# Distinct, colour-blind-safe colours (Okabe-Ito), cycled over boxes.
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#D55E00", "#CC79A7", "#0072B2", "#F0E442")


def draw_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], *,
               labels: Sequence[str] | None = None) -> Image.Image:
    """A copy of `image` (RGB) with each box `(x1, y1, x2, y2)` or point `(x, y)` drawn on it.

    Coordinates are pixels of `image`; a box reaching outside it is clipped by the drawing.
    """
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"{len(labels)} labels for {len(boxes)} boxes")
    canvas = image.convert("RGB")  # convert() copies, also for RGB input
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(min(canvas.size) / 150))
    font = ImageFont.load_default(size=max(12, line * 6))
    for i, box in enumerate(boxes):
        color = PALETTE[i % len(PALETTE)]
        coords = [float(v) for v in box]
        if len(coords) == 4:
            x1, y1, x2, y2 = coords
            if x2 < x1 or y2 < y1:
                raise ValueError(f"box {coords} has x2 < x1 or y2 < y1")
            draw.rectangle((x1, y1, x2, y2), outline=color, width=line)
            anchor = (x1, y1)
        elif len(coords) == 2:
            x, y = coords
            r = line * 4
            draw.ellipse((x - r, y - r, x + r, y + r), outline=color, width=line)
            draw.line((x - r, y, x + r, y), fill=color, width=max(1, line // 2))
            draw.line((x, y - r, x, y + r), fill=color, width=max(1, line // 2))
            anchor = (x + r, y - r)
        else:
            raise ValueError(f"box {list(box)!r} has {len(coords)} numbers; expected 4 (x1, y1, x2, y2) or 2 (x, y)")
        if labels is not None and labels[i]:
            _label(draw, anchor, labels[i], color, font)
    return canvas


def _label(draw: ImageDraw.ImageDraw, anchor: tuple[float, float], text: str, color: str, font: ImageFont.ImageFont) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = anchor
    y = max(0.0, y - (bottom - top) - 4)  # above the box, or inside it at the top edge
    draw.rectangle((x, y, x + right - left + 4, y + bottom - top + 4), fill=color)
    draw.text((x + 2 - left, y + 2 - top), text, fill="black", font=font)
