"""Prompt builders that reproduce the released GLM-4.5V agent prompts, one per platform.

Every builder returns OpenAI-style chat messages: one user message whose content is a list of
`{"type": "text", "text": ...}` and image parts. As in the release, all history goes into that
one message (never multi-turn); the desktop prompt interleaves the last `history_images`
earlier screenshots at half size with their steps; the current screenshot comes last (pass
`screenshot_first=True` to the mobile and web builders for the release example's order, which
puts the single screenshot before the text).

Images are `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` by default
(what any OpenAI-compatible server takes), or with `images="pil"` the cheaper
`{"type": "image", "image": <PIL.Image>}` that a local `VLM` reads directly;
`agent.policy.to_data_urls` converts the second form into the first.
"""

from __future__ import annotations

import base64
import io
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from PIL import Image

from agent.environment import ElementInfo, Platform
from agent import prompt_text as released

ImageMode = Literal["data_url", "pil"]
Message = dict[str, Any]

ANDROID_WORLD_APPS = (
    "Google Chrome", "Settings", "Camera", "Audio Recorder", "Clock", "Contacts", "Files", "Markor",
    "Simple SMS Messenger", "Simple Calendar Pro", "Simple Gallery Pro", "Simple Draw Pro", "Pro Expense",
    "Broccoli", "OsmAnd", "Tasks", "Open Tracks Sports Tracker", "Joplin", "VLC", "Retro Music")
WEB_HISTORY_STEPS = 15  # the release shows only the last 15 web steps


@dataclass(frozen=True)
class PastStep:
    """One earlier step as the prompt shows it.

    `action` is the action text in the platform's format (`serialise_action`), `reason` the
    step's thought, `memory` the memory the model wrote at that step (mobile shows it per
    step), `screenshot` what the model saw when it chose the action.
    """

    action: str
    reason: str | None = None
    memory: str | None = None
    screenshot: Image.Image | None = None


def image_part(image: Image.Image, *, images: ImageMode = "data_url") -> Message:
    if images == "pil":
        return {"type": "image", "image": image}
    if images != "data_url":
        raise ValueError(f"images={images!r} is not 'data_url' or 'pil'")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", compress_level=1)  # fast; screenshots compress well anyway
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}}


_HALVED: OrderedDict[int, tuple[Image.Image, Image.Image]] = OrderedDict()
_HALVED_KEEP = 16  # more than any prompt shows; the loop shows the same history image up to 4 times


def half_size(image: Image.Image) -> Image.Image:
    """`image` at half its width and height (as the release's `resize((w // 2, h // 2))`).

    Cached by identity: a history screenshot appears in several consecutive prompts. Even sizes
    use `reduce(2)` (a 2x2 box filter, several times faster than a bicubic resize)."""
    hit = _HALVED.get(id(image))
    if hit is not None and hit[0] is image:
        _HALVED.move_to_end(id(image))
        return hit[1]
    size = (max(1, image.width // 2), max(1, image.height // 2))
    half = image.reduce(2) if image.width % 2 == 0 and image.height % 2 == 0 else image.resize(size)
    _HALVED[id(image)] = (image, half)  # holding `image` keeps its id from being reused
    while len(_HALVED) > _HALVED_KEEP:
        _HALVED.popitem(last=False)
    return half


def _text(text: str) -> Message:
    return {"type": "text", "text": text}


def _user(content: list[Message]) -> list[Message]:
    return [{"role": "user", "content": content}]


# --- desktop ------------------------------------------------------------------------------

def desktop_action_space() -> str:
    return "\n\n".join(
        f"### {title}\n\nCall rule: `{rule}`\n{released.render_schema(schema, quote=chr(39))}"
        for title, rule, schema in released.DESKTOP_ACTIONS)


def desktop_messages(task: str, screenshot: Image.Image, history: Sequence[PastStep] = (), *,
                     memory: str = "[]", history_images: int = 4, notes: str = released.DESKTOP_NOTES,
                     images: ImageMode = "data_url") -> list[Message]:
    """The Ubuntu (OSWorld) prompt: history as `step n: Screenshot: Thought: ... Action: ...`."""
    text = (f"{released.PREAMBLE}\n\n# Task:\n{task}\n\n# Task Platform\nUbuntu\n\n# Action Space\n\n"
            f"{desktop_action_space()}\n\n# Historical Actions and Current Memory\nHistory:")
    content: list[Message] = []
    first_with_image = len(history) - history_images
    for index, step in enumerate(history):
        entry = f" Thought: {step.reason or ''}\nAction: {step.action}"
        if index < first_with_image or step.screenshot is None:
            text += f"\nstep {index + 1}: Screenshot:(Omitted in context.){entry}"
        else:
            content += [_text(text + f"\nstep {index + 1}: Screenshot:"),
                        image_part(half_size(step.screenshot), images=images)]
            text = entry
    text += (f"\nMemory:\n{memory}\n# Output Format\n{released.DESKTOP_OUTPUT_FORMAT}\n\n"
             f"# Some Additional Notes\n{notes}\n\nCurrent Screenshot:\n")
    return _user([*content, _text(text), image_part(screenshot, images=images)])


# --- mobile -------------------------------------------------------------------------------

def mobile_action_space(apps: Sequence[str] = ANDROID_WORLD_APPS) -> str:
    return "\n\n".join(
        f"### {name}\n\nCalling rule: `{rule}`\n"
        f"{released.render_schema(schema, quote=chr(34), expand=frozenset({'required'}))}"
        for name, rule, schema in released.mobile_actions(",".join(apps)))


def mobile_messages(task: str, screenshot: Image.Image, history: Sequence[PastStep] = (), *,
                    apps: Sequence[str] = ANDROID_WORLD_APPS, notes: str = released.MOBILE_NOTES,
                    history_images: int = 0, screenshot_first: bool = False,
                    images: ImageMode = "data_url") -> list[Message]:
    """The Android (AndroidWorld) prompt: each earlier step as its Memory / Reason / Action."""
    if history:
        past = "".join(f"Step {i}:\nMemory: {s.memory or ''}\nReason: {s.reason or ''}\nAction: {s.action}\n\n"
                       for i, s in enumerate(history))
    else:
        past = "You just started, no action has been performed yet."
    text = (f"{released.PREAMBLE}\n\n# Task:\n{task}\n\n# Task Platform\nMobile\n\n# Action Space\n"
            f"{mobile_action_space(apps)}\n\n# Historical Actions and Current Memory\n{past}\n"
            f"# Output Format\n{released.MOBILE_OUTPUT_FORMAT}\n\n# Some Additional Notes\n{notes}\n")
    return _user(_with_screenshots(text, screenshot, history, history_images, screenshot_first, images))


def _with_screenshots(text: str, screenshot: Image.Image, history: Sequence[PastStep], history_images: int,
                      screenshot_first: bool, images: ImageMode) -> list[Message]:
    """Text, then the last `history_images` earlier screenshots at half size, then the current one."""
    content = [_text(text)]
    recent = [(i, s) for i, s in enumerate(history) if s.screenshot is not None][-history_images:] if history_images else []
    for index, step in recent:
        content += [_text(f"Step {index} screenshot:"), image_part(half_size(step.screenshot), images=images)]  # type: ignore[arg-type]
    current = image_part(screenshot, images=images)
    return [current, *content] if screenshot_first else [*content, current]


# --- web ----------------------------------------------------------------------------------

def describe_marks(elements: Mapping[int, ElementInfo]) -> str:
    """The set-of-marks element list the web prompt's note B refers to: `[3]: <button> "Search";`."""
    lines = []
    for mark_id in sorted(elements):
        info = elements[mark_id]
        text = " ".join((info.text or "").split())[:100]
        lines.append(f'[{mark_id}]: <{info.tag or "element"}> "{text}";' if text else f"[{mark_id}]: <{info.tag or 'element'}>;")
    return "\n".join(lines)


def web_messages(task: str, screenshot: Image.Image, history: Sequence[PastStep] = (), *, url: str,
                 web_elements: str = "", memory: str = "{}", now: datetime | None = None,
                 history_images: int = 0, screenshot_first: bool = False,
                 images: ImageMode = "data_url") -> list[Message]:
    """The WebVoyager set-of-marks prompt; `screenshot` must carry the drawn labels."""
    past = "".join(f"{i}.Thought: {s.reason or ''} Action: {s.action}\n"
                   for i, s in enumerate(history[-WEB_HISTORY_STEPS:]))
    time = (now or datetime.now()).strftime("%Y-%m-%d, %I:00 %p")
    text = released.WEB_TEMPLATE.format(preamble=released.PREAMBLE, task=task, web=url, time=time, history=past,
                                        memory=memory, web_text=web_elements)
    return _user(_with_screenshots(text, screenshot, history, history_images, screenshot_first, images))


# --- grounding and dispatch ---------------------------------------------------------------

def grounding_messages(description: str, screenshot: Image.Image, *, images: ImageMode = "data_url") -> list[Message]:
    """"Help me to locate <description> and give me its bounding boxes." with the screenshot first."""
    return _user([image_part(screenshot, images=images),
                  _text(released.GROUNDING_TEMPLATE.format(description=description))])


def build_messages(platform: Platform, task: str, screenshot: Image.Image, history: Sequence[PastStep] = (), *,
                   memory: str | None = None, url: str | None = None, web_elements: str = "",
                   images: ImageMode = "data_url") -> list[Message]:
    """The released prompt for `platform` with each builder's defaults (what the agent loop uses)."""
    if platform == "desktop":
        return desktop_messages(task, screenshot, history, memory=memory or "[]", images=images)
    if platform == "mobile":
        return mobile_messages(task, screenshot, history, images=images)
    if platform == "web":
        return web_messages(task, screenshot, history, url=url or "the current web page", web_elements=web_elements,
                            memory=memory or "{}", images=images)
    raise ValueError(f"platform {platform!r} is not 'desktop', 'mobile' or 'web'")
