"""The default model tried as a new user would (issue #16, acceptance 2): does it box what it is asked for?

    python -m recipes.first_use [--model DIR] [--out FILE]

Two checks, each the project's own first example, asked exactly as a user would copy it:

- buttons: the README's `vlm.generate("Where is the Sign in button? Answer with its bounding
  box.", images=[shot], thinking=False)` (its other settings left at their defaults: greedy, 512
  new tokens) for each of the buttons "Sign in", "Cancel" and "Help"
  on five fixed plain pages (a bare row of default buttons, a column, a centred form under a
  heading that says "Sign in" too, a dark toolbar, a dialog), rendered by real Chromium at
  1280x720. The truth is each button's DOM box (Playwright's `bounding_box()`).
- red square: the demo's first example, `assets/examples/shapes.png` with "Where is the red
  square? Answer with its bounding box.", called as `demo.app.respond` calls the model with its
  default settings (thinking on, 1024 new tokens). The truth is the box of the image's red pixels.

An answer is correct when the centre of its first box (or its point), read by
`vlm.outputs.parse_boxes` and mapped to pixels by `to_pixels` (the demo draws the same box), lies
inside the truth. The JSON (`--out`) has the shape of every held-out eval result (`accuracy`, `n`,
`groups` per page: the buttons), plus `red_square` and every question asked; `recipes.stages`
caches it as `work/eval/first_use.json` and the model card reports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from vlm import VLM
from vlm.files import atomic_write
from vlm.outputs import parse_boxes, strip_special_tokens, to_pixels

BUTTONS = ("Sign in", "Cancel", "Help")
QUESTION = "Where is the {} button? Answer with its bounding box."  # README.md, "Python:"
SHAPES = Path(__file__).resolve().parent.parent / "assets" / "examples" / "shapes.png"
RED_SQUARE = "Where is the red square? Answer with its bounding box."  # demo.app._examples, the first
DEMO_THINKING, DEMO_MAX_NEW_TOKENS = True, 1024  # demo.app.Settings' defaults
VIEWPORT = {"width": 1280, "height": 720}
Px = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels of the image asked about

_FORM_FIELD = "display:block;width:100%;margin:6px 0 16px;padding:10px;font-size:16px;box-sizing:border-box"
PAGES: dict[str, str] = {  # name -> HTML; fixed, so every model is asked about the same pictures
    "plain": "<body><button>Sign in</button> <button>Cancel</button> <button>Help</button></body>",
    "column": """<body style="margin:0;font-family:serif;background:#fffdf5">
<div style="position:absolute;left:120px;top:180px;display:flex;flex-direction:column;gap:18px">
<button style="font:22px serif;width:200px;padding:10px">Sign in</button>
<button style="font:22px serif;width:200px;padding:10px">Cancel</button>
<button style="font:22px serif;width:200px;padding:10px">Help</button></div></body>""",
    "form": f"""<body style="margin:0;font-family:sans-serif;background:#eef1f5">
<div style="width:420px;margin:90px auto;padding:32px;background:white;border-radius:8px">
<h1 style="margin:0 0 8px;font-size:26px">Welcome back</h1>
<p style="margin:0 0 20px;color:#555">Sign in to see your orders, or ask us for help.</p>
<label>Email<input type="email" style="{_FORM_FIELD}"></label>
<label>Password<input type="password" style="{_FORM_FIELD}"></label>
<div style="display:flex;gap:12px">
<button style="padding:10px 22px;font-size:16px;background:#2563eb;color:white;border:0;border-radius:6px">Sign in</button>
<button style="padding:10px 22px;font-size:16px;background:#e5e7eb;border:0;border-radius:6px">Cancel</button>
<button style="padding:10px 22px;font-size:16px;background:none;border:0;color:#2563eb">Help</button>
</div></div></body>""",
    "toolbar": """<body style="margin:0;font-family:monospace">
<div style="display:flex;align-items:center;gap:10px;padding:12px 24px;background:#222;color:#eee">
<b style="flex:1;font-size:20px">Acme Notes</b>
<button style="font:15px monospace;background:#444;color:#eee;border:1px solid #666;padding:6px 14px">Help</button>
<button style="font:15px monospace;background:#444;color:#eee;border:1px solid #666;padding:6px 14px">Cancel</button>
<button style="font:15px monospace;background:#f0b429;color:#222;border:0;padding:7px 15px">Sign in</button></div>
<p style="margin:40px 24px;font-size:18px">Nothing here yet.</p></body>""",
    "dialog": """<body style="margin:0;background:#777;font-family:Georgia,serif">
<div style="position:absolute;right:90px;bottom:70px;width:560px;padding:28px;background:white">
<p style="margin:0 0 24px;font-size:24px">Your session has ended. Sign in again?</p>
<div style="display:flex;justify-content:flex-end;gap:14px">
<button style="font:20px Georgia,serif;padding:10px 20px">Cancel</button>
<button style="font:20px Georgia,serif;padding:10px 20px">Help</button>
<button style="font:20px Georgia,serif;padding:10px 20px;background:#15803d;color:white;border:0">Sign in</button>
</div></div></body>""",
}


@dataclass(frozen=True)
class Shot:
    """A rendered page: its screenshot and where each button is."""

    page: str
    png: bytes
    buttons: dict[str, Px]  # button text -> its DOM box, CSS pixels (= screenshot pixels)


@dataclass(frozen=True)
class Asked:
    """One question and how its answer scored."""

    image: str  # the page's name or the example file's
    target: str  # what was asked for: a button's text, "red square"
    question: str
    answer: str  # the answer text, box tokens kept
    answered: tuple[float, ...] | None  # its first box (l, t, r, b) or point (x, y), pixels; None: no box
    truth: Px  # where the target is, pixels
    correct: bool  # the answered box's centre (or point) lies inside `truth`


@dataclass(frozen=True)
class FirstUse:
    buttons: tuple[Asked, ...]
    red_square: Asked

    def counts(self) -> dict[str, tuple[int, int]]:
        """page -> (buttons boxed, buttons asked)."""
        out: dict[str, tuple[int, int]] = {}
        for a in self.buttons:
            correct, total = out.get(a.image, (0, 0))
            out[a.image] = (correct + a.correct, total + 1)
        return out

    def as_dict(self) -> dict[str, Any]:
        """`accuracy`, `n` and `groups` (per page) count the buttons, as every eval result does."""
        correct = sum(a.correct for a in self.buttons)
        return {"accuracy": correct / len(self.buttons), "n": len(self.buttons),
                "groups": {page: {"correct": c, "total": t} for page, (c, t) in self.counts().items()},
                "red_square": dataclasses.asdict(self.red_square),
                "asked": [dataclasses.asdict(a) for a in self.buttons]}

    def report(self) -> str:
        lines = [f'buttons (README: "{QUESTION.format("...")}", thinking off):']
        for page, (correct, total) in self.counts().items():
            answers = "; ".join(_show(a) for a in self.buttons if a.image == page)
            lines.append(f"  {page}: {correct}/{total}; {answers}")
        r = self.red_square
        lines.append(f"the demo's example: {_show(r)}; the square is {_px(r.truth)}")
        boxed, square = sum(a.correct for a in self.buttons), "hit" if r.correct else "missed"
        lines.append(f"first use: {boxed}/{len(self.buttons)} buttons boxed, red square {square}")
        return "\n".join(lines)


def _show(a: Asked) -> str:
    if a.answered is None:  # what it said instead, for the reader to judge
        return f'{a.target} no box in "{strip_special_tokens(a.answer)[:40]}"'
    return f"{a.target} {'hit' if a.correct else 'miss'} {_px(a.answered)}"


def _px(box: tuple[float, ...]) -> str:
    return "[" + ",".join(str(round(v)) for v in box) + "] px"


def render_pages(pages: Mapping[str, str] = PAGES) -> list[Shot]:
    """Each page in real Chromium at 1280x720 (the project's launcher), with its buttons' DOM boxes."""
    from playwright.sync_api import sync_playwright

    from agent.chromium import launch_chromium

    shots = []
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            tab = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
            for name, html in pages.items():
                tab.set_content(html, wait_until="load")
                png = tab.screenshot(type="png", animations="disabled", caret="hide")
                buttons = {}
                for text in BUTTONS:
                    box = tab.get_by_role("button", name=text, exact=True).bounding_box()
                    if box is None:
                        raise ValueError(f"page {name!r}: the {text!r} button is not displayed")
                    buttons[text] = (box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"])
                shots.append(Shot(name, png, buttons))
        finally:
            browser.close()
    return shots


def red_box(image: Image.Image) -> Px:
    """The box around the image's red pixels (R > 150, G and B < 90; the example's red is (214, 39, 40))."""
    rgb = np.asarray(image.convert("RGB")).astype(int)
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
    if not red.any():
        raise ValueError(f"image {image.width}x{image.height} has no red pixels; expected a red square in it")
    ys, xs = np.nonzero(red)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def score(answer: str, truth: Px, *, width: int, height: int) -> tuple[tuple[float, ...] | None, bool]:
    """(the first box or point answered, in pixels of a `width` x `height` image; its centre in `truth`)."""
    targets = parse_boxes(answer)
    if not targets:
        return None, False
    answered = to_pixels(targets[0], width=width, height=height)
    x, y = answered if len(answered) == 2 else ((answered[0] + answered[2]) / 2, (answered[1] + answered[3]) / 2)
    return answered, truth[0] <= x <= truth[2] and truth[1] <= y <= truth[3]


def ask_buttons(vlm: VLM, shots: Sequence[Shot]) -> list[Asked]:
    asked = []
    for shot in shots:
        image = Image.open(io.BytesIO(shot.png)).convert("RGB")
        for text, truth in shot.buttons.items():
            question = QUESTION.format(text)
            answer = vlm.generate(question, images=[image], thinking=False).text
            answered, correct = score(answer, truth, width=image.width, height=image.height)
            asked.append(Asked(shot.page, text, question, answer, answered, truth, correct))
    return asked


def ask_red_square(vlm: VLM, path: Path = SHAPES) -> Asked:
    with Image.open(path) as image:
        truth, width, height = red_box(image), image.width, image.height
    messages = [{"role": "user", "content": [{"type": "image", "image": str(path)},  # as demo.app.to_messages
                                             {"type": "text", "text": RED_SQUARE}]}]
    answer = vlm.generate(messages, thinking=DEMO_THINKING, max_new_tokens=DEMO_MAX_NEW_TOKENS).text
    answered, correct = score(answer, truth, width=width, height=height)
    return Asked(path.name, "red square", RED_SQUARE, answer, answered, truth, correct)


def measure(vlm: VLM, *, pages: Mapping[str, str] = PAGES, shapes: Path = SHAPES) -> FirstUse:
    return FirstUse(tuple(ask_buttons(vlm, render_pages(pages))), ask_red_square(vlm, shapes))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recipes.first_use", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model, assets/model)")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.model is not None and not Path(args.model).is_dir():
        parser.error(f"--model {args.model}: no such directory; expected a checkpoint directory "
                     "(config.json, model.safetensors and the tokenizer files)")
    vlm = VLM.from_pretrained(args.model)
    result = measure(vlm)
    if args.out:
        out, text = Path(args.out), json.dumps({**result.as_dict(), "model": str(vlm.path)}, indent=2) + "\n"
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    print(result.report())


if __name__ == "__main__":
    main()
