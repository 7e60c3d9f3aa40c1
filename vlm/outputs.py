"""Reading the model's answers: thinking vs answer, boxes, and text fit for display.

What is unusual here:

- Boxes live between `<|begin_of_box|>` and `<|end_of_box|>` and come in every bracket style
  the model writes: `[x1,y1,x2,y2]`, `[[x1,y1,x2,y2]]`, `(x1,y1,x2,y2)`, points `[x,y]`,
  several boxes in one span, and GUI actions such as `left_click(start_box='[x,y]')`. The
  parser reads every innermost bracket group of 2 or 4 numbers, whatever the wrapping.
- Coordinates are model space, integers 0-999 of the image's width (x) and height (y), never
  pixels. They are `vlm.coordinates.Point` / `Box` (one vocabulary for the whole project); a box
  covers whole 1/1000 cells, so `[0,0,999,999]` is exactly the full image in pixels.
- Decode with special tokens kept (`Processor.decode` does): without them the thinking and
  the box spans cannot be found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .coordinates import MODEL_SPACE, Box, Point

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
BOX_OPEN, BOX_CLOSE = "<|begin_of_box|>", "<|end_of_box|>"
# Tokens that end a turn; a raw generation may still carry one at its end.
STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")

_BOX_SPAN = re.compile(re.escape(BOX_OPEN) + r"(.*?)(?:" + re.escape(BOX_CLOSE) + r"|$)", re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# An innermost bracket group: no bracket inside it. Its numbers are read by splitting at commas,
# not by one regex: `\s*,?\s*` and the like backtrack quadratically over a run of blanks.
_GROUP = re.compile(r"[\[(]([^\[\]()]*)[\])]")
_SPECIAL = re.compile(
    r"<\|[a-z_]+\|>|\[gMASK\]|\[sMASK\]|\[MASK\]|<sop>|<eop>|</?think>|</?tool_call>|</?arg_key>|</?arg_value>"
    r"|</?tool_response>"
)


@dataclass(frozen=True)
class Reply:
    """A generation split at `</think>`."""

    thinking: str  # the reasoning, without its tags; "" when thinking was off
    answer: str  # what the user sees; box tokens still in place for `parse_boxes`
    finished_thinking: bool = True  # False when the text stops inside <think> (max tokens hit)


def split_thinking(text: str) -> Reply:
    """Separate the reasoning from the answer of one decoded generation."""
    for stop in STOP_TOKENS:
        text = text.split(stop)[0]
    if THINK_CLOSE in text:
        thinking, _, answer = text.partition(THINK_CLOSE)
        thinking = thinking.split(THINK_OPEN)[-1]
        return Reply(thinking=thinking.strip(), answer=answer.strip())
    if THINK_OPEN in text:  # never closed: everything after <think> is unfinished reasoning
        before, _, thinking = text.partition(THINK_OPEN)
        return Reply(thinking=thinking.strip(), answer=before.strip(), finished_thinking=False)
    return Reply(thinking="", answer=text.strip())


def parse_boxes(text: str, *, anywhere: bool = False) -> list[Point | Box]:
    """Every point and box inside box spans, in order of appearance (model space, 0-999).

    Values are rounded to integers and clamped to 0..999 (the model sometimes writes 1000);
    box corners are reordered so that x1 <= x2 and y1 <= y2. Groups of other lengths are
    not coordinates and are skipped. With `anywhere=True` the whole text is searched, for
    answers that forgot the box tokens. An unclosed span (a cut-off generation) still counts.
    """
    spans = [text] if anywhere else [m.group(1) for m in _BOX_SPAN.finditer(text)]
    found: list[Point | Box] = []
    for span in spans:
        for group in _GROUP.finditer(span):
            values = [_coord(v) for v in _numbers(group.group(1))]
            if len(values) == 2:
                found.append(Point(values[0], values[1]))
            elif len(values) == 4:
                x1, y1, x2, y2 = values
                found.append(Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
    return found


def _numbers(group: str) -> list[str]:
    """`1, 2,3,` -> ["1", "2", "3"] (one trailing comma allowed); [] unless every part is a number."""
    parts = [part.strip() for part in group.split(",")]
    if len(parts) > 1 and not parts[-1]:
        parts.pop()
    return parts if all(_NUMBER.fullmatch(part) for part in parts) else []


def _coord(value: str) -> int:
    # Clamp before rounding: a 400-digit number is float("inf"), which round() refuses.
    return round(min(max(float(value), 0.0), MODEL_SPACE - 1.0))


def to_pixels(target: Point | Box, *, width: float, height: float) -> tuple[float, ...]:
    """Model-space target -> pixels of the original image (`width` x `height`).

    A point maps to the centre of its 1/1000 cell: (x, y). A box maps to the outer edges of
    the cells it covers: (left, top, right, bottom), so it never leaves the image.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} must be positive")
    sx, sy = width / MODEL_SPACE, height / MODEL_SPACE
    if isinstance(target, Point):
        return ((target.x + 0.5) * sx, (target.y + 0.5) * sy)
    if isinstance(target, Box):
        return (target.x1 * sx, target.y1 * sy, (target.x2 + 1) * sx, (target.y2 + 1) * sy)
    raise TypeError(f"to_pixels: expected a Point or a Box, got {type(target).__name__}")


def strip_special_tokens(text: str) -> str:
    """Text for display: every GLM special token removed, what the box tokens wrap kept."""
    return _SPECIAL.sub("", text)


def boxes_in_pixels(text: str, *, width: float, height: float) -> str:
    """`text` with each box span's 0-999 values written as pixels of a `width` x `height` image
    (rounded), the model's own values kept after them, labelled: `[40, 15, 322, 184] px (0-999:
    [100,80,805,920])`. Box tokens are removed with the rest of the special tokens."""
    def show(match: re.Match[str]) -> str:
        targets = parse_boxes(match.group(0))
        if not targets:
            return match.group(1)
        pixels = ", ".join("[" + ", ".join(str(round(v)) for v in to_pixels(t, width=width, height=height)) + "]"
                           for t in targets)
        return f"{pixels} px (0-999: {match.group(1).strip()})"
    return strip_special_tokens(_BOX_SPAN.sub(show, text))
