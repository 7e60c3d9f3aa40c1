"""What the three format parsers share: the error type, the result type, and the clean-up of
real model output (thinking, `<answer>` wrappers, box tokens, section headers).

Real GLM-4.5V output is untidy in a few known ways, all tolerated here:
- thinking comes first, as `<think>...</think>`, or only `...</think>` when the chat template
  pre-filled the opening tag;
- GLM-4.1V wraps the final answer in `<answer>...</answer>` (4.5V no longer does, and the
  official web parser that waits for these tags therefore never fires);
- actions and boxes sit inside `<|begin_of_box|>...<|end_of_box|>`, or not; the docs also name a
  `<|start_of_box|>` token that does not exist, which some callers send anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.actions import MODEL_SPACE, Action, Box, Point

BOX_BEGIN = "<|begin_of_box|>"
BOX_END = "<|end_of_box|>"
_BOX_TOKENS = re.compile(r"<\|(?:begin|start)_of_box\|>|<\|end_of_box\|>")
_SQUARE_GROUP = re.compile(r"\[([^\[\]]*)\]")  # innermost: no bracket inside
_LOOSE_NUMBER = re.compile(r"-?[\d.]+")
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)


class ParseError(ValueError):
    """Model output that is not a valid action; `text` is the output, `reason` what was wrong."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"{reason}; model output was {text[:300]!r}{'...' if len(text) > 300 else ''}")
        self.text = text
        self.reason = reason


@dataclass(frozen=True)
class ParsedResponse:
    """One model answer: the action plus the free text the format carries around it.

    `reason` is the format's explanation (desktop: the plain text before the action, mobile:
    `Reason:`, web: `Thought:`); `memory` is the `Memory:` / `Memory_Updated:` section verbatim.
    """

    action: Action
    thinking: str | None = None
    reason: str | None = None
    memory: str | None = None


# Model markup that must not appear verbatim inside an action's text: a serialiser writes its `<`
# as `\u003c`, so that a typed "</think>" or "<|end_of_box|>" reads back as text, not as markup.
MARKUP_LT = re.compile(r"<(?=/?think>|\|)")


def escape_markup(text: str) -> str:
    return MARKUP_LT.sub(r"\\u003c", text)


def split_thinking(text: str) -> tuple[str | None, str]:
    """(thinking, rest) with `<think>` removed and a GLM-4.1V `<answer>` wrapper unwrapped.

    Thinking comes first and ends at the first `</think>`; the opening tag may be missing when
    the chat template pre-filled it. A `<think>` later in the text belongs to the answer.
    """
    thinking = None
    opened = text.lstrip().startswith("<think>")
    if "</think>" in text:
        head, _, text = text.partition("</think>")
        thinking = head.lstrip().removeprefix("<think>").strip()  # "" (not None): thinking switched off
    elif opened:
        raise ParseError(text, "thinking was opened with <think> but never closed (output truncated?)")
    answer = _ANSWER.search(text)
    if answer:
        text = answer.group(1)
    return thinking, text


def strip_box_tokens(text: str) -> str:
    return _BOX_TOKENS.sub("", text)


def boxed(text: str) -> str | None:
    """The content of the last `<|begin_of_box|>...<|end_of_box|>` pair, or None."""
    matches = re.findall(r"<\|(?:begin|start)_of_box\|>(.*?)(?:<\|end_of_box\|>|$)", text, re.DOTALL)
    return matches[-1].strip() if matches else None


def to_coord(value: object, text: str) -> int:
    """A 0-999 model-space coordinate from an int, an integral float or a numeric string."""
    if isinstance(value, bool):
        raise ParseError(text, f"coordinate {value!r} is a boolean, expected an integer 0-{MODEL_SPACE - 1}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ParseError(text, f"coordinate {value!r} is not a number") from None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ParseError(text, f"coordinate {value!r} is not finite")
        value = round(value)
    if not isinstance(value, int) or not 0 <= value < MODEL_SPACE:
        raise ParseError(text, f"coordinate {value!r} is not an integer in 0..{MODEL_SPACE - 1} (model space)")
    return value


def to_target(numbers: list[object], text: str) -> Point | Box:
    """Two numbers make a `Point`, four a `Box`."""
    coords = [to_coord(n, text) for n in numbers]
    if len(coords) == 2:
        return Point(*coords)
    if len(coords) == 4:
        x1, y1, x2, y2 = coords
        if x2 < x1 or y2 < y1:
            raise ParseError(text, f"box {coords} has x2 < x1 or y2 < y1")
        return Box(x1, y1, x2, y2)
    raise ParseError(text, f"expected 2 (point) or 4 (box) coordinates, got {len(coords)}: {numbers!r}")


def numbers_in(fragment: str) -> list[str]:
    return re.findall(r"-?\d+(?:\.\d+)?", fragment)


def parse_box(text: str) -> Box:
    """The first box of a grounding answer (`<|begin_of_box|>[[x1,y1,x2,y2]]<|end_of_box|>`).

    A point answer (`[x,y]`) becomes a one-cell box, so callers always get a `Box`.
    """
    _, body = split_thinking(text)
    inner = boxed(body)
    search_in = inner if inner is not None else body
    # The first innermost [..] holding 2 or 4 numbers; split at commas rather than matched by one
    # regex, whose `\s*\[?\s*` backtracks quadratically over a run of blanks.
    numbers = next((parts for group in _SQUARE_GROUP.finditer(search_in)
                    if len(parts := [p.strip() for p in group.group(1).split(",")]) in (2, 4)
                    and all(_LOOSE_NUMBER.fullmatch(p) for p in parts)), None)
    if numbers is None:
        raise ParseError(text, "no [x1,y1,x2,y2] box or [x,y] point found in the grounding answer")
    target = to_target(numbers_in(",".join(numbers)), text)
    return target if isinstance(target, Box) else Box(target.x, target.y, target.x, target.y)


def format_point_or_box(target: Point | Box) -> str:
    if isinstance(target, Point):
        return f"[{target.x}, {target.y}]"
    return f"[{target.x1}, {target.y1}, {target.x2}, {target.y2}]"
