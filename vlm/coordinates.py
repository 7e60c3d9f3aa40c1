"""Model-space coordinates: the integers 0-999 GLM-4.5V writes for points and boxes.

A `Point` or `Box` is relative to the width (x) and height (y) of the image the model saw,
never pixels; `to_pixels` converts once, where pixels are needed. The model's outputs
(`vlm.outputs`), the agent's actions and the data engine all use these two classes.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_SPACE = 1000  # coordinates are integers in [0, MODEL_SPACE)


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
