"""What every environment offers the agent loop: observe, execute, describe, close.

`BrowserEnv`, `DesktopEnv` and `AndroidEnv` implement this protocol; the loop, the safety
checks and the recorder only ever see these names. An `Observation` is what the model is
shown; `execute` converts the action's model-space coordinates (0-999 of *that*
observation's screenshot) to device pixels exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from PIL import Image

from agent.actions import Action, Box, Mark, Point, Target

Platform = Literal["web", "desktop", "mobile"]


@dataclass(frozen=True)
class Observation:
    """One look at the environment.

    `screenshot` is in the environment's logical pixels (CSS pixels for a browser), the size
    coordinates are relative to. `marks` maps set-of-marks labels to their boxes in model
    space, when the overlay is on.
    """

    screenshot: Image.Image
    url: str | None = None
    title: str | None = None
    marks: dict[int, Box] = field(default_factory=dict)


@dataclass(frozen=True)
class ElementInfo:
    """What sits under a target, for the safety checks (None fields: unknown)."""

    tag: str | None = None  # "input", "button", "a", ... (lower case)
    input_type: str | None = None  # "password", "text", ... for inputs
    text: str | None = None  # visible text or accessible name
    form_action: str | None = None  # URL the enclosing form submits to


@runtime_checkable
class Environment(Protocol):
    platform: Platform

    def observe(self) -> Observation:
        """Take a screenshot (and URL, title, marks where the environment has them)."""
        ...

    def execute(self, action: Action, observation: Observation) -> None:
        """Perform `action`, whose coordinates are relative to `observation.screenshot`.

        Terminal actions (Answer, Done, Fail) are not executed. Raises `ValueError` for an
        action this environment cannot perform (e.g. OpenApp in a browser).
        """
        ...

    def describe(self, target: Target, observation: Observation) -> ElementInfo | None:
        """The element under `target`, or None when the environment cannot tell."""
        ...

    def close(self) -> None:
        ...


def screen_pixels(target: Target, observation: Observation) -> tuple[int, int]:
    """A Point (or a Box's centre) in whole pixels of `observation.screenshot`, for environments
    whose screenshots are in device pixels (X11, adb). Marks exist only in a browser."""
    if isinstance(target, Mark):
        raise ValueError(f"mark [{target.id}]: set-of-marks labels exist only in a browser")
    point = target.center if isinstance(target, Box) else target
    if not isinstance(point, Point):
        raise TypeError(f"target {target!r} is not a Point or Box")
    x, y = point.to_pixels(*observation.screenshot.size)
    return int(x), int(y)
