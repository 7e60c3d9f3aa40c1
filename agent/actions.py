"""The agent's action vocabulary: one frozen dataclass per GUI action.

Actions are data. Parsers (`agent.parsing`) turn model text into these; environments
execute them; serialisers write them back in the released model's formats.

Coordinates are never pixels here. A `Point` or `Box` is in *model space*: integers 0-999
relative to the width (x) and height (y) of the screenshot the model saw, exactly what
GLM-4.5V emits. A `Mark` is a set-of-marks label drawn on the page. Environments convert a
target to device pixels once, at execution (`Point.to_pixels`), including the device pixel
ratio; confusing 0-999 coordinates with pixels is the most common user error with this model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

MODEL_SPACE = 1000  # coordinates are integers in [0, MODEL_SPACE)

Direction = Literal["up", "down", "left", "right"]
MouseButton = Literal["left", "right", "middle"]


def _check_coord(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MODEL_SPACE:
        raise ValueError(f"{name}={value!r} is not an integer in 0..{MODEL_SPACE - 1} (model space, not pixels)")


@dataclass(frozen=True)
class Point:
    """A point in model space (0-999 of the screenshot's width and height)."""

    x: int
    y: int

    def __post_init__(self) -> None:
        _check_coord("x", self.x)
        _check_coord("y", self.y)

    def to_pixels(self, width: float, height: float) -> tuple[float, float]:
        """Centre of this 1/1000 cell in a surface of `width` x `height` pixels."""
        return (self.x + 0.5) * width / MODEL_SPACE, (self.y + 0.5) * height / MODEL_SPACE


@dataclass(frozen=True)
class Box:
    """A box in model space; (x1, y1) top-left, (x2, y2) bottom-right, inclusive."""

    x1: int
    y1: int
    x2: int
    y2: int

    def __post_init__(self) -> None:
        for name in ("x1", "y1", "x2", "y2"):
            _check_coord(name, getattr(self, name))
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError(f"box {self.as_list()} has x2 < x1 or y2 < y1")

    @property
    def center(self) -> Point:
        return Point((self.x1 + self.x2) // 2, (self.y1 + self.y2) // 2)

    def contains(self, point: Point) -> bool:
        return self.x1 <= point.x <= self.x2 and self.y1 <= point.y <= self.y2

    def as_list(self) -> list[int]:
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass(frozen=True)
class Mark:
    """A numbered set-of-marks label drawn on the page (web format: `Click [N]`)."""

    id: int

    def __post_init__(self) -> None:
        if not isinstance(self.id, int) or self.id < 0:
            raise ValueError(f"mark id {self.id!r} is not a non-negative integer")


Target = Union[Point, Box, Mark]


# --- pointer ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Click:
    target: Target
    button: MouseButton = "left"
    count: int = 1  # 2 = double click
    element_info: str | None = None  # the model's description of what it clicks


@dataclass(frozen=True)
class Hover:
    target: Target
    element_info: str | None = None


@dataclass(frozen=True)
class Drag:
    start: Target
    end: Target
    element_info: str | None = None


@dataclass(frozen=True)
class Scroll:
    direction: Direction
    target: Target | None = None  # None: the whole window
    steps: int = 5  # wheel notches (desktop `step`), one notch ~ 100 CSS px in a browser
    element_info: str | None = None


# --- touch ------------------------------------------------------------------------------

@dataclass(frozen=True)
class LongPress:
    target: Target
    duration_ms: int = 1000


@dataclass(frozen=True)
class Swipe:
    """`direction` is where the finger moves (swipe up scrolls the content down)."""

    direction: Direction
    target: Target | None = None  # None: the middle of the screen


# --- keyboard ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Type:
    text: str
    target: Target | None = None  # focus this first; None types into the focused element
    clear: bool = False  # replace the field's content (mobile `override`)
    press_enter: bool = False  # web format: the system hits Enter after typing


@dataclass(frozen=True)
class Key:
    """A key or chord, lower-case names joined by '+' in the desktop format: ('ctrl', 'c')."""

    keys: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.keys or any(not k for k in self.keys):
            raise ValueError(f"key chord {self.keys!r} is empty or has an empty key")


# --- navigation and apps ------------------------------------------------------------------

@dataclass(frozen=True)
class Navigate:
    url: str


@dataclass(frozen=True)
class Back:
    pass


@dataclass(frozen=True)
class Home:
    pass


@dataclass(frozen=True)
class OpenApp:
    name: str


# --- control ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Wait:
    seconds: float = 1.0


@dataclass(frozen=True)
class Answer:
    text: str


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Fail:
    reason: str | None = None


Action = Union[Click, Hover, Drag, Scroll, LongPress, Swipe, Type, Key, Navigate, Back, Home,
               OpenApp, Wait, Answer, Done, Fail]

TERMINAL_ACTIONS = (Answer, Done, Fail)
