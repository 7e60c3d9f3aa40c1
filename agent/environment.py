"""What every environment offers the agent loop: observe, execute, describe, goto, rules, close.

`BrowserEnv`, `DesktopEnv` and `AndroidEnv` implement this protocol; the loop, the safety
checks and the recorder only ever see these names. An `Observation` is what the model is
shown; `execute` converts the action's model-space coordinates (0-999 of *that*
observation's screenshot) to device pixels exactly once. The environments share one
dispatch, `ActionHandlers.perform`: a `match` on the action type that calls the handler the
environment overrides (`Click` -> `_do_click`), or raises `UnsupportedAction`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from PIL import Image

from agent.actions import (
    Action, Answer, Back, Box, Click, Done, Drag, Fail, Home, Hover, Key, LongPress, Mark, Navigate, OpenApp, Point,
    Scroll, Swipe, Target, Type, Wait)
from agent.domains import DomainRules

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


class UnsupportedAction(ValueError):
    """`action` cannot be performed in `environment` (e.g. OpenApp in a browser); the message
    names both, and `reason` says why or what to do instead."""

    def __init__(self, action: Action, environment: object, reason: str | None = None) -> None:
        self.action = action
        self.environment = type(environment).__name__
        super().__init__(f"{type(action).__name__} cannot be executed in {self.environment}"
                         + (f": {reason}" if reason else ""))


@runtime_checkable
class Environment(Protocol):
    platform: Platform

    @property
    def rules(self) -> DomainRules | None:
        """The URL rules the environment enforces on what it opens (None: it opens no URLs).
        The agent checks `Navigate` targets against them unless it was given its own."""
        ...

    def goto(self, url: str) -> None:
        """Open `url` (a run's `start_url`); raises `BlockedURL` if the rules refuse it and
        `UnsupportedAction` where the environment cannot open URLs."""
        ...

    def observe(self) -> Observation:
        """Take a screenshot (and URL, title, marks where the environment has them)."""
        ...

    def execute(self, action: Action, observation: Observation) -> None:
        """Perform `action`, whose coordinates are relative to `observation.screenshot`.

        Terminal actions (Answer, Done, Fail) are not executed. Raises `UnsupportedAction` (a
        `ValueError`) for an action this environment cannot perform (e.g. OpenApp in a browser).
        """
        ...

    def describe(self, target: Target, observation: Observation) -> ElementInfo | None:
        """The element under `target`, or None when the environment cannot tell."""
        ...

    def close(self) -> None:
        ...


class ActionHandlers:
    """The one dispatch from an action to its environment's handler, shared by the environments.

    `perform` matches on the action's type and calls the handler for it (`Click` ->
    `_do_click`); an environment overrides the handlers for the actions it can perform, and
    the rest raise `UnsupportedAction` naming the action and the environment. One match here
    rather than one per environment: the three would repeat the same arms, and a new action
    type is one arm here and one name in the defaults below.
    """

    def perform(self, action: Action, observation: Observation) -> None:
        """Run the handler for `action` (terminal actions have none and do nothing)."""
        match action:
            case Answer() | Done() | Fail():
                return
            case Click():
                self._do_click(action, observation)
            case Hover():
                self._do_hover(action, observation)
            case Drag():
                self._do_drag(action, observation)
            case Scroll():
                self._do_scroll(action, observation)
            case LongPress():
                self._do_longpress(action, observation)
            case Swipe():
                self._do_swipe(action, observation)
            case Type():
                self._do_type(action, observation)
            case Key():
                self._do_key(action, observation)
            case Navigate():
                self._do_navigate(action, observation)
            case Back():
                self._do_back(action, observation)
            case Home():
                self._do_home(action, observation)
            case OpenApp():
                self._do_openapp(action, observation)
            case Wait():
                self._do_wait(action, observation)
            case _:
                raise UnsupportedAction(action, self)

    def _refuse(self, action: Any, observation: Observation) -> None:
        raise UnsupportedAction(action, self)

    # Every handler refuses until an environment overrides it (`action: Any` lets each
    # override take its own action type).
    _do_click = _do_hover = _do_drag = _do_scroll = _do_longpress = _do_swipe = _do_type = _do_key = _refuse
    _do_navigate = _do_back = _do_home = _do_openapp = _do_wait = _refuse


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
