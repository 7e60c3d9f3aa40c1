"""One GUI-agent step as a training conversation, in the desktop, mobile or web format.

The prompt comes from `agent.prompts` and the answer from `agent.parsing.serialise_response`,
the very code the live agent loop uses, so training text and inference text cannot drift
apart. The builders return PIL images; here each becomes a file path (`Media`): the current
screenshot keeps its own file, the half-size history screenshots the desktop prompt
interleaves get new ones.

Targets follow each format: the desktop format clicks a point (the element's box centre)
and types into the focused field, so typing into a field is two steps there; the mobile
format names the element's box; the web format a set-of-marks label, and its Type always
clears the field and presses Enter afterwards.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from PIL import Image

from agent import prompts
from agent.actions import Action, Answer, Click, Done, Mark, Type
from agent.formats.common import ParsedResponse
from agent.parsing import parse_response, serialise_action, serialise_response
from agent.prompts import PastStep
from synth import vocab
from synth.render import Marked, Placed, Rendered
from synth.tasks import Sample, unique_targets

Format = Literal["desktop", "mobile", "web"]
FORMATS: tuple[Format, ...] = ("desktop", "mobile", "web")


@dataclass
class Media:
    """The files one work unit writes, named `images/<prefix>_<n>.png` in creation order."""

    prefix: str
    files: dict[str, bytes] = field(default_factory=dict)

    def add_png(self, png: bytes) -> str:
        path = f"images/{self.prefix}_{len(self.files)}.png"
        self.files[path] = png
        return path

    def add_image(self, image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return self.add_png(buffer.getvalue())


@dataclass(frozen=True)
class Screen:
    """What the model is shown at one step: the screenshot (marked for the web format)."""

    image: Image.Image
    path: str  # where `image` is written, relative to the JSONL


def decode(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


def click(fmt: Format, placed: Placed, mark: int | None) -> Action:
    """Clicking `placed` as the format expresses it."""
    if fmt == "desktop":
        return Click(placed.box.center, element_info=placed.element.description.removeprefix("the "))
    if fmt == "mobile":
        return Click(placed.box)
    if mark is None:
        raise ValueError(f"element {placed.element.id} has no set-of-marks label; the web format cannot target it")
    return Click(Mark(mark))


def type_into(fmt: Format, placed: Placed, mark: int | None, text: str) -> Action:
    """Typing `text` into `placed`; on desktop the field must already have focus."""
    if fmt == "desktop":
        return Type(text)
    if fmt == "mobile":
        return Type(text, target=placed.box, clear=True)
    if mark is None:
        raise ValueError(f"element {placed.element.id} has no set-of-marks label; the web format cannot target it")
    return Type(text, target=Mark(mark), clear=True, press_enter=True)


def messages(fmt: Format, task: str, screen: Screen, history: list[PastStep], media: Media, *,
             url: str, now: datetime, web_elements: str = "") -> list[dict[str, Any]]:
    """The agent's prompt for this step, with image parts as file paths."""
    if fmt == "web":  # the builder's clock would make the text depend on when data was made
        built = prompts.web_messages(task, screen.image, history, url=url, now=now, web_elements=web_elements,
                                     images="pil")
    else:
        built = prompts.build_messages(fmt, task, screen.image, history, images="pil")
    for message in built:
        for part in message["content"]:
            if part["type"] == "image":
                part["image"] = screen.path if part["image"] is screen.image else media.add_image(part["image"])
    return built


def answer(fmt: Format, action: Action, reason: str) -> str:
    memory = {"desktop": "[]", "mobile": "", "web": "{}"}[fmt]
    return serialise_response(ParsedResponse(action, reason=reason, memory=memory), fmt)


def past_step(action: Action, text: str, fmt: Format, screenshot: Image.Image) -> PastStep:
    """How the agent loop records a step for the next prompt's history (`Agent._past`): the
    canonical action and the reason and memory parsed back from the answer."""
    parsed = parse_response(text, fmt)
    return PastStep(serialise_action(action, fmt), reason=parsed.reason or "", memory=parsed.memory,
                    screenshot=screenshot)


def clock(rng: random.Random) -> datetime:
    """A deterministic 'now' for the web prompt's date line."""
    return datetime(2025, 1, 1, 9) + timedelta(days=rng.randrange(700), hours=rng.randrange(10))


def action_meta(fmt: Format, action: Action, placed: Placed | None, mark: int | None) -> dict[str, Any]:
    """What `synth.scoring.score_action` needs to grade an answer to this step."""
    kind = {Click: "click", Type: "type", Done: "done", Answer: "answer"}[type(action)]
    return {"format": fmt, "action_type": kind, "expected": serialise_action(action, fmt),
            "element": placed.element.id if placed else None, "box": placed.box.as_list() if placed else None,
            "mark": mark, "text": action.text if isinstance(action, (Type, Answer)) else None}


def field_value(label_en: str, rng: random.Random) -> str:
    """A plausible value for a form field named (in English) `label_en`."""
    person = rng.choice(vocab.PEOPLE)
    values = {"Email": person.split()[0].lower() + "@example.com", "Phone": f"+49 30 {rng.randint(1000000, 9999999)}",
              "City": rng.choice(vocab.CITIES), "Zip code": str(rng.randint(10000, 99999)),
              "Username": rng.choice(vocab.USERNAMES), "Password": f"pw{rng.randint(1000, 9999)}!",
              "Company": rng.choice(vocab.SITE_NAMES) + " Ltd", "Address": f"{rng.randint(1, 99)} Main Street",
              "Subject": "Question about my order"}
    return values.get(label_en, person)


def instruction(placed: Placed, rng: random.Random, *, verb: str) -> str:
    """An English task for acting on `placed` (without typing)."""
    el = placed.element
    options = {
        "link": [f'Go to the "{el.text}" page.', f"Open {el.description}."],
        "tab": [f'Switch to the "{el.text}" tab.', f'Show the "{el.text}" tab.'],
        "menu": [f'Open the "{el.text}" menu.', f"{verb.capitalize()} {el.description}."],
        "menuitem": [f'Choose "{el.text}" from the menu.', f"{verb.capitalize()} {el.description}."],
        "option": [f'Select "{el.text}" in the dropdown.', f"{verb.capitalize()} {el.description}."],
        "checkbox": [f"{'Uncheck' if el.checked else 'Check'} {el.description}."],
        "listitem": [f'Open the list item "{el.text}".', f"{verb.capitalize()} {el.description}."],
        "cell": [f"Select the row of {el.text} in the table."],
    }.get(el.role, [f"{verb.capitalize()} {el.description}."])
    return rng.choice(options)


def english_label(text: str) -> str:
    """The English name of a field from its visible label ("E-Mail" -> "Email")."""
    for row in (*vocab.FIELDS, vocab.COMMON["username"], vocab.COMMON["password"]):
        if text in row:
            return row[0]
    return text


def action_samples(rendered: Rendered, screen: Screen, rng: random.Random, media: Media, *, fmt: Format,
                   marked: Marked | None = None, n: int) -> list[Sample]:
    """Up to `n` single-step tasks on `rendered` in format `fmt` (web: `screen` is `marked`'s)."""
    if fmt == "web" and marked is None:
        raise ValueError("the web format needs the set-of-marks screenshot (marked=...)")
    marks = marked.marks if marked else ()
    verb = "tap" if rendered.viewport == "phone" else "click"
    candidates = [p for p in unique_targets(rendered) if p.element.role != "heading"]
    if fmt == "web":
        candidates = [p for p in candidates if p.element.id in marks]
    samples = []
    for placed in rng.sample(candidates, min(n, len(candidates))):
        mark = marks.index(placed.element.id) if placed.element.id in marks else None
        if placed.element.role == "textbox":
            value = field_value(english_label(placed.element.text), rng)
            task = f'Type "{value}" into {placed.element.description}.'
            # desktop: the field has no focus yet, so the first step is the click
            action = click(fmt, placed, mark) if fmt == "desktop" else type_into(fmt, placed, mark, value)
            reason = f"I need to {verb} {placed.element.description} first." if fmt == "desktop" else \
                f'I type "{value}" into {placed.element.description}.'
        else:
            task = instruction(placed, rng, verb=verb)
            action = click(fmt, placed, mark)
            reason = f"To do this I {verb} {placed.element.description}."
        prompt = messages(fmt, task, screen, [], media, url=rendered.page.url, now=clock(rng),
                          web_elements=marked.web_elements if marked and fmt == "web" else "")
        meta = {"kind": "action", "page_seed": rendered.page.seed, "viewport": rendered.viewport,
                "task": task, **action_meta(fmt, action, placed, mark)}
        samples.append(Sample([*prompt, {"role": "assistant", "content": answer(fmt, action, reason)}], meta))
    return samples
