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

from vlm.coordinates import MODEL_SPACE, Box, Point  # noqa: F401  (re-exported: actions speak model space)

Direction = Literal["up", "down", "left", "right"]
MouseButton = Literal["left", "right", "middle"]


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
