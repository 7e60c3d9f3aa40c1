"""A wall-clock deadline for the default model's recipe (`--deadline MINUTES`), and the record of
what it cut.

A GPU run is one command killed after a fixed wall time, and only what it packed by then comes
back. The deadline counts from the process start. The stages that run for a chosen number of
steps stop early, at a step boundary: copying and training when one more step (as long as the
last) would end later than `reserve_s` seconds before the deadline, reading (on its own clock in
`recipes.reading`) after the step that reaches that time. The reserve is what the rest of the run
(eval, image-reliance check, ship, pack) is given. Nothing else is bounded: data generation, the
step calibration and the rest of the run take what they take.

Each such stage records a `stage_budget`: what it planned, the steps it did and whether the
deadline cut it (`recipes.stages.budgets`: the record's `budgets`, and the card). A cut stage is
finished like any other: a rerun in the same work directory reuses it rather than continuing it
(the start, eval and reliance results built on it would otherwise be stale), and
`work/plan.json` keeps the planned steps, so the trainer's schedule is the planned one either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil  # accelerate's own dependency

# for the GPU run's browserless eval of 50 drawn screens, reliance check, ship and pack: an estimate
# (its generations run ~1 s each at most on a CPU), not yet measured there
RESERVE_S = 120.0


@dataclass(frozen=True, kw_only=True)
class Deadline:
    """The run's end and the seconds kept free before it; times on the `time.monotonic()` clock."""

    end: float
    reserve_s: float = RESERVE_S

    @classmethod
    def from_process_start(cls, minutes: float, *, reserve_s: float = RESERVE_S) -> Deadline:
        """`minutes` after this process started (its imports included, as an outside kill counts them;
        the OS gives the start to about a second)."""
        started = time.monotonic() - (time.time() - psutil.Process().create_time())
        return cls(end=started + 60 * minutes, reserve_s=reserve_s)

    @property
    def stop_at(self) -> float:
        """The latest time a step-bounded stage may end."""
        return self.end - self.reserve_s

    def seconds_left(self) -> float:
        """Seconds until `stop_at` (negative once past it)."""
        return self.stop_at - time.monotonic()

    def stopper(self) -> Callable[[], bool]:
        """A check for a loop to call after each step: True when one more step, as long as the time
        since the previous call, would end past `stop_at` (the first call has no such time)."""
        previous: float | None = None

        def stop() -> bool:
            nonlocal previous
            now = time.monotonic()
            step_s = 0.0 if previous is None else now - previous
            previous = now
            return now + step_s > self.stop_at

        return stop


def stage_budget(*, done_steps: int, cut: bool, planned_steps: int | None = None,
                 planned_minutes: float | None = None) -> dict[str, Any]:
    """A step-bounded stage's record: its plan (steps, or minutes for a reading stage on a time
    budget), the steps it did, and whether the deadline cut it short."""
    planned = {"planned_steps": planned_steps} if planned_minutes is None else {"planned_minutes": planned_minutes}
    return {**planned, "done_steps": done_steps, "cut_by_deadline": cut}


def reading_budget(*, steps: int | None, minutes: float, deadline: Deadline | None) -> dict[str, float]:
    """`recipes.reading.train`'s budget: the recipe's steps or minutes and, under a deadline, no more
    minutes than are left before it stops (that stage ends on its own clock, after a step)."""
    planned: dict[str, float] = {"steps": steps} if steps else {"minutes": minutes}
    if deadline is None:
        return planned
    left = max(0.0, deadline.seconds_left()) / 60
    return {**planned, "minutes": min(planned.get("minutes", left), left)}
