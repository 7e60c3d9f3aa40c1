"""Synthetic videos: shapes that appear, move and change colour at known whole seconds.

The point of these clips is the per-frame time index. The processor samples videos at 2 fps
and writes each pair of frames with the integer second of its first frame, so an event at
second t is first visible in the group labelled t: every event here happens exactly on a
whole second and no two events share one, which makes "when" answerable by reading the
index and "in what order" unambiguous. Shapes have different kinds (circle, square, ...)
so a shape is named by its kind even after its colour changes.

Frames are drawn with PIL and piped to the installed `ffmpeg` (H.264, yuv420p, so decord and
browsers play them); the file appears atomically.
"""

from __future__ import annotations

import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from PIL import Image, ImageDraw

from synth.tasks import Sample, conversation

ShapeKind = Literal["circle", "square", "triangle", "diamond"]
EventKind = Literal["appear", "move", "colour"]
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 90, 230), "yellow": (240, 210, 40),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (245, 245, 245)}
BACKGROUNDS = ((30, 30, 36), (70, 70, 80), (20, 40, 60))
SHAPE_KINDS: tuple[ShapeKind, ...] = ("circle", "square", "triangle", "diamond")


@dataclass(frozen=True)
class Track:
    """One shape's life: appears at `appear_s`; optionally changes colour and moves once."""

    kind: ShapeKind
    size: int  # radius in pixels
    colour: str
    appear_s: int
    start: tuple[int, int]  # centre in pixels
    colour_s: int | None = None
    new_colour: str | None = None
    move_s: int | None = None  # starts moving at this second, arrives `move_duration_s` later
    move_duration_s: int = 1
    end: tuple[int, int] | None = None

    def state(self, t: float) -> tuple[tuple[int, int], str] | None:
        """(centre, colour) at time `t` seconds, or None before the shape appears."""
        if t < self.appear_s:
            return None
        colour = self.new_colour if self.colour_s is not None and t >= self.colour_s else self.colour
        centre = self.start
        if self.move_s is not None and self.end is not None and t >= self.move_s:
            f = min(1.0, (t - self.move_s) / self.move_duration_s)
            centre = (round(self.start[0] + f * (self.end[0] - self.start[0])),
                      round(self.start[1] + f * (self.end[1] - self.start[1])))
        return centre, colour

    @property
    def direction(self) -> str | None:
        if self.end is None:
            return None
        dx, dy = self.end[0] - self.start[0], self.end[1] - self.start[1]
        if abs(dx) >= abs(dy):
            return "right" if dx > 0 else "left"
        return "down" if dy > 0 else "up"


@dataclass(frozen=True)
class Event:
    second: int
    kind: EventKind
    track: int  # index into `VideoScript.tracks`


@dataclass(frozen=True)
class VideoScript:
    seed: int
    width: int
    height: int
    fps: int
    duration_s: int
    background: tuple[int, int, int]
    tracks: tuple[Track, ...]

    @property
    def events(self) -> list[Event]:
        found = []
        for i, t in enumerate(self.tracks):
            found.append(Event(t.appear_s, "appear", i))
            if t.colour_s is not None:
                found.append(Event(t.colour_s, "colour", i))
            if t.move_s is not None:
                found.append(Event(t.move_s, "move", i))
        return sorted(found, key=lambda e: e.second)


def make_script(seed: int, *, width: int = 320, height: int = 240, fps: int = 4) -> VideoScript:
    """A random clip for `seed`: 2-3 shapes, 6-10 s, every event on its own whole second."""
    if width % 2 or height % 2 or width < 64 or height < 64:
        raise ValueError(f"video size {width}x{height} must be even and at least 64x64 (yuv420p)")
    rng = random.Random(seed)
    duration = rng.randint(6, 10)
    seconds = rng.sample(range(0, duration - 1), duration - 1)  # distinct event seconds, in draw order
    kinds = rng.sample(SHAPE_KINDS, rng.randint(2, 3))
    tracks: list[Track] = []
    taken: list[tuple[int, int]] = []
    for kind in kinds:
        size = rng.randint(14, 26)
        colour, new_colour = rng.sample(sorted(COLOURS), 2)

        def spot() -> tuple[int, int]:
            # shapes must not cover each other where they rest (a hidden shape is unanswerable)
            for _ in range(100):
                xy = rng.randint(size + 2, width - size - 3), rng.randint(size + 2, height - size - 3)
                if all(abs(xy[0] - x) > 60 or abs(xy[1] - y) > 60 for x, y in taken):
                    break
            taken.append(xy)
            return xy

        appear = seconds.pop()
        later = [s for s in seconds if s > appear]
        colour_s = move_s = None
        # every shape still to come needs a second of its own to appear at
        reserved = len(kinds) - len(tracks) - 1
        if later and rng.random() < 0.7 and len(seconds) > reserved:
            colour_s = rng.choice(later)
            seconds.remove(colour_s)
            later.remove(colour_s)
        if later and rng.random() < 0.6 and len(seconds) > reserved:
            move_s = rng.choice(later)
            seconds.remove(move_s)
        tracks.append(Track(kind, size, colour, appear, spot(), colour_s, new_colour if colour_s is not None else None,
                            move_s, rng.randint(1, 2), spot() if move_s is not None else None))
    return VideoScript(seed, width, height, fps, duration, rng.choice(BACKGROUNDS), tuple(tracks))


def _draw(draw: ImageDraw.ImageDraw, kind: ShapeKind, centre: tuple[int, int], r: int, fill: tuple[int, int, int]) -> None:
    x, y = centre
    if kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif kind == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    elif kind == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    else:
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)


def frames(script: VideoScript) -> Iterator[np.ndarray]:
    """Every frame (H, W, 3) uint8; frame i shows time i / fps."""
    for i in range(script.duration_s * script.fps):
        image = Image.new("RGB", (script.width, script.height), script.background)
        draw = ImageDraw.Draw(image)
        for track in script.tracks:
            state = track.state(i / script.fps)
            if state is not None:
                _draw(draw, track.kind, state[0], track.size, COLOURS[state[1]])
        yield np.asarray(image)


def write_video(script: VideoScript, path: str | os.PathLike[str]) -> None:
    """Encode the clip as H.264 mp4 at `path` (written to a temporary name, then renamed)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    command = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{script.width}x{script.height}", "-r", str(script.fps), "-i", "-",
               "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
               "-threads", "1", str(tmp)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None
    for frame in frames(script):
        process.stdin.write(frame.tobytes())
    _, stderr = process.communicate()
    if process.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg failed with code {process.returncode} writing {path}: {stderr.decode()[-500:]}")
    os.replace(tmp, path)


def _name(track: Track) -> str:
    return f"the {track.kind}"


def _questions(script: VideoScript, rng: random.Random) -> list[tuple[str, str, str, int | None]]:
    """(question type, question, answer, event second or None) for everything the clip shows."""
    found: list[tuple[str, str, str, int | None]] = []
    for track in script.tracks:
        name = _name(track)
        found.append(("when", rng.choice((f"At what second does {name} appear?", f"When does {name} first appear?")),
                      f"At {track.appear_s} seconds.", track.appear_s))
        found.append(("what", f"What colour is {name} when it appears?", f"{track.colour.capitalize()}.", None))
        if track.colour_s is not None:
            found.append(("when", f"When does {name} change colour?", f"At {track.colour_s} seconds.", track.colour_s))
            found.append(("what", f"What colour does {name} turn into?", f"{track.new_colour.capitalize()}.", None))
        if track.move_s is not None:
            found.append(("when", f"At what second does {name} start moving?", f"At {track.move_s} seconds.", track.move_s))
            found.append(("what", f"In which direction does {name} move?", f"{track.direction.capitalize()}.", None))
    appear = sorted(script.tracks, key=lambda t: t.appear_s)
    found.append(("order", "In what order do the shapes appear?",
                  ", then ".join(f"the {t.kind}" for t in appear).capitalize() + ".", None))
    found.append(("what", "Which shape appears first?", f"The {appear[0].kind}.", None))
    event = rng.choice(script.events)
    verb = {"appear": "appears", "colour": "changes colour", "move": "starts moving"}[event.kind]
    found.append(("what", f"Which shape {verb} at {event.second} seconds?",
                  f"The {script.tracks[event.track].kind}.", None))
    return found


def video_samples(script: VideoScript, video: str, rng: random.Random, *, n: int) -> list[Sample]:
    """Up to `n` questions about the clip at relative path `video`, at least one "when"."""
    questions = _questions(script, rng)
    when = [q for q in questions if q[0] == "when"]
    rest = [q for q in questions if q[0] != "when"]
    chosen = [rng.choice(when), *rng.sample(rest, min(n - 1, len(rest)))][:n]
    meta_base = {"kind": "video", "video_seed": script.seed, "duration_s": script.duration_s}
    return [Sample(conversation([{"type": "video", "video": video}], question, answer),
                   {**meta_base, "question_type": qtype, "answer": answer, "second": second})
            for qtype, question, answer, second in chosen]
