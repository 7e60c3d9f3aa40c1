"""What an agent run did: `Step`s and a `Trajectory`, recorded to a directory and replayable.

A recording directory holds
    steps.jsonl        one JSON object per step, appended as the run goes (a crash loses at most
                       the line being written)
    step_000.png ...   the screenshot each step acted on
    trajectory.json    the whole run with its final status (written atomically at the end)
    report.html        a self-contained report: every screenshot inline, with the model's text
                       and the action (written atomically at the end)
Everything textual passes through the run's `Secrets.scrub` before it is written; actions are
recorded with their `{{secret:name}}` placeholders, never the values.

`replay(directory, env)` re-executes the recorded actions that were executed, in order, each
against a fresh observation (so set-of-marks labels and 0-999 points resolve on the live page).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import logging
import os
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from agent import actions as A
from agent.actions import Action
from agent.environment import Environment, Platform

logger = logging.getLogger(__name__)

RunStatus = Literal["done", "failed", "answered", "max_steps", "timeout", "loop", "blocked", "parse_error", "error"]
StepStatus = Literal["executed", "terminal", "refused", "blocked", "error", "parse_error", "loop"]

_ACTION_TYPES = {cls.__name__: cls for cls in typing.get_args(Action)}
_TARGET_TYPES = {cls.__name__: cls for cls in (A.Point, A.Box, A.Mark)}


def action_to_dict(action: Action) -> dict[str, Any]:
    """`Click(Point(1, 2))` -> `{"type": "Click", "target": {"type": "Point", "x": 1, "y": 2}, ...}`."""
    def value(v: Any) -> Any:
        if isinstance(v, (A.Point, A.Box, A.Mark)):
            return {"type": type(v).__name__, **dataclasses.asdict(v)}
        return list(v) if isinstance(v, tuple) else v
    return {"type": type(action).__name__, **{f.name: value(getattr(action, f.name)) for f in dataclasses.fields(action)}}


def action_from_dict(data: dict[str, Any]) -> Action:
    data = dict(data)
    kind = data.pop("type", None)
    if kind not in _ACTION_TYPES:
        raise ValueError(f"unknown action type {kind!r}; expected one of {sorted(_ACTION_TYPES)}")
    for name, v in data.items():
        if isinstance(v, dict) and v.get("type") in _TARGET_TYPES:
            fields = {k: x for k, x in v.items() if k != "type"}
            data[name] = _TARGET_TYPES[v["type"]](**fields)
        elif isinstance(v, list):
            data[name] = tuple(v)
    return _ACTION_TYPES[kind](**data)


@dataclass
class Step:
    """One turn of the loop. `action` is None when the model's text never parsed.

    `response` is the model's final text for the step, `parse_errors` the reasons of the
    answers before it that did not parse; `note` says what happened to the action (refused:
    why, error: the message); `timings_ms` splits the step's wall time by stage.
    """

    index: int
    status: StepStatus
    response: str
    action: Action | None = None
    thinking: str | None = None
    reason: str | None = None
    memory: str | None = None
    note: str | None = None
    url: str | None = None
    title: str | None = None
    parse_errors: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    screenshot: Image.Image | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "screenshot"}
        data["action"] = None if self.action is None else action_to_dict(self.action)
        data["screenshot"] = f"step_{self.index:03d}.png" if self.screenshot is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], directory: Path | None = None) -> Step:
        data = dict(data)
        shot = data.pop("screenshot", None)
        action = data.pop("action", None)
        step = cls(**data, action=None if action is None else action_from_dict(action))
        if shot and directory is not None and (directory / shot).exists():
            with Image.open(directory / shot) as image:
                step.screenshot = image.copy()
        return step


@dataclass
class Trajectory:
    task: str
    platform: Platform
    steps: list[Step] = field(default_factory=list)
    status: RunStatus | None = None  # None while running
    answer: str | None = None
    note: str | None = None  # why the run stopped, in words
    directory: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "platform": self.platform, "status": self.status, "answer": self.answer,
                "note": self.note, "steps": [s.to_dict() for s in self.steps]}


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Recorder:
    """Writes a run into `directory` (created; an existing recording there is refused)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        if (self.directory / "steps.jsonl").exists():
            raise FileExistsError(f"{self.directory} already holds a recording (steps.jsonl); choose a new directory")
        self.directory.mkdir(parents=True, exist_ok=True)

    def add(self, step: Step) -> None:
        if step.screenshot is not None:
            buffer = io.BytesIO()
            step.screenshot.save(buffer, format="PNG", compress_level=1)
            _atomic_write(self.directory / f"step_{step.index:03d}.png", buffer.getvalue())
        with open(self.directory / "steps.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(step.to_dict(), ensure_ascii=False) + "\n")

    def finish(self, trajectory: Trajectory) -> None:
        trajectory.directory = self.directory
        text = json.dumps(trajectory.to_dict(), ensure_ascii=False, indent=1)
        _atomic_write(self.directory / "trajectory.json", text.encode())
        _atomic_write(self.directory / "report.html", render_html(trajectory).encode())


def load(directory: str | os.PathLike) -> Trajectory:
    """A recorded run, from `trajectory.json` (or from `steps.jsonl` if the run never finished)."""
    directory = Path(directory)
    if (directory / "trajectory.json").exists():
        data = json.loads((directory / "trajectory.json").read_text(encoding="utf-8"))
        steps = [Step.from_dict(s, directory) for s in data.pop("steps")]
        return Trajectory(**data, steps=steps, directory=directory)
    if not (directory / "steps.jsonl").exists():
        raise FileNotFoundError(f"{directory} holds no recording (no trajectory.json or steps.jsonl)")
    lines = (directory / "steps.jsonl").read_text(encoding="utf-8").splitlines()
    steps = [Step.from_dict(json.loads(line), directory) for line in lines if line.strip()]
    return Trajectory(task="", platform="web", steps=steps, directory=directory)


def replay(recording: str | os.PathLike | Trajectory, env: Environment, *, secrets: Any = None) -> list[Step]:
    """Re-execute the executed steps of a recording in `env`; returns the replayed steps.

    `secrets` (an `agent.safety.Secrets`) fills the placeholders recorded in typed text.
    """
    trajectory = recording if isinstance(recording, Trajectory) else load(recording)
    replayed = []
    for step in trajectory.steps:
        if step.status != "executed" or step.action is None:
            continue
        observation = env.observe()
        action = secrets.reveal(step.action) if secrets is not None else step.action
        env.execute(action, observation)
        replayed.append(Step(index=step.index, status="executed", response=step.response, action=step.action,
                             url=observation.url, title=observation.title))
        logger.info("replayed step %d: %s", step.index, step.action)
    return replayed


def _inline_jpeg(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def render_html(trajectory: Trajectory) -> str:
    """One self-contained page: a header with the outcome, then each step's screenshot and text."""
    e = html.escape
    rows = []
    for step in trajectory.steps:
        image = f'<img src="{_inline_jpeg(step.screenshot)}">' if step.screenshot is not None else ""
        action = e(repr(step.action)) if step.action is not None else "(no action)"
        errors = "".join(f"<li>{e(r)}</li>" for r in step.parse_errors)
        rows.append(
            f'<section class="{e(step.status)}"><h2>Step {step.index} · {e(step.status)}</h2>'
            f"<p class=url>{e(step.url or '')} — {e(step.title or '')}</p>{image}"
            f"<p><b>Action</b> <code>{action}</code></p>"
            + (f"<p><b>Note</b> {e(step.note)}</p>" if step.note else "")
            + (f"<details><summary>Re-asked after parse errors</summary><ul>{errors}</ul></details>" if errors else "")
            + f"<details><summary>Model output</summary><pre>{e(step.response)}</pre></details>"
            + f"<p class=t>{e(', '.join(f'{k} {v:.0f} ms' for k, v in step.timings_ms.items()))}</p></section>")
    outcome = f"{e(trajectory.status or 'running')}" + (f": {e(trajectory.answer)}" if trajectory.answer else "")
    note = trajectory.note
    if trajectory.status == "error":  # the error gets its own section, in words, before the steps
        taken = len(trajectory.steps)
        rows.insert(0, '<section class="error"><h2>The run stopped with an error</h2>'
                       f"<p>{e(error_in_words(note or 'no message'))}</p>"
                       f"<p>{'No step was' if not taken else f'{taken} step' + ('s were' if taken > 1 else ' was')} "
                       "taken before it" + (" (below)." if taken else ".") + "</p>"
                       f"<details><summary>The error as raised</summary><pre>{e(note or '')}</pre></details></section>")
        note = None
    return ("<!doctype html><meta charset=utf-8><title>Agent run</title><style>"
            "body{font:14px sans-serif;max-width:1100px;margin:auto}img{max-width:100%;border:1px solid #ccc}"
            "section{border-top:2px solid #ddd;padding:8px 0}.refused,.blocked,.error,.loop{background:#fff3f0}"
            "pre{white-space:pre-wrap;background:#f6f6f6;padding:6px}.t,.url{color:#777}</style>"
            f"<h1>{e(trajectory.task)}</h1><p><b>Platform</b> {e(trajectory.platform)} · <b>Outcome</b> {outcome}"
            + (f" · {e(note)}" if note else "") + f" · {len(trajectory.steps)} steps</p>"
            + "".join(rows))


def error_in_words(note: str) -> str:
    """An error note with an embedded JSON error body (an HTTP error's reply) replaced by its
    message: `... answered HTTP 400: {"error": {"message": "prompt too long", ...}}` -> `... answered
    HTTP 400: prompt too long`."""
    start = note.find("{")
    if start < 0:
        return note
    try:
        body, end = json.JSONDecoder().raw_decode(note[start:])
    except ValueError:
        return note
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error if isinstance(error, str) else None
    if not isinstance(message, str):
        return note
    return (note[:start] + message + note[start + end :]).strip()
