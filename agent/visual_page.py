"""Grounding inside ordinary Playwright scripts: find elements by description, not selector.

    page = browser.new_page()
    page.goto("https://example.com/login")
    visual = VisualPage(page, OpenAIPolicy("http://127.0.0.1:8000/v1", "glm-4.5v"))
    visual.fill("the email field", "a@b.c")
    visual.click("the blue Sign in button")
    where = visual.locate("the logo")     # Located(box=Box(...) in 0-999, css=(x1, y1, x2, y2))

Each call takes a screenshot of the viewport at CSS size, asks the model the released grounding
question ("Help me to locate ... and give me its bounding boxes."), parses the 0-999 box it
answers and acts at the box centre in CSS pixels (Playwright's unit; Chromium applies the
device pixel ratio). No selectors, no DOM access: what the model sees is what is clicked.
On a zoomed-out phone page (no meta viewport) the screenshot and the input coordinates differ;
use `BrowserEnv`, which handles the visual viewport, for those.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image

from agent.actions import MODEL_SPACE, Box
from agent.parsing import parse_box
from agent.policy import as_policy
from agent.prompts import grounding_messages

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Located:
    """Where the model put an element: `box` in model space (0-999 of the screenshot) and
    `css` = (x1, y1, x2, y2) in the page's CSS pixels."""

    box: Box
    css: tuple[float, float, float, float]

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.css
        return (x1 + x2) / 2, (y1 + y2) / 2


class VisualPage:
    """A Playwright `Page` plus a grounding policy (any messages -> text callable, or a `VLM`)."""

    def __init__(self, page: Any, policy: Any) -> None:
        self.page = page
        self.policy = as_policy(policy)
        self._images = "pil" if getattr(self.policy, "accepts_pil", False) else "data_url"

    def screenshot(self) -> Image.Image:
        image = Image.open(io.BytesIO(self.page.screenshot(scale="css")))
        image.load()
        return image

    def locate(self, description: str) -> Located:
        """Ask the model where `description` is; raises `ParseError` if it answers no box."""
        shot = self.screenshot()
        text = self.policy(grounding_messages(description, shot, images=self._images))
        box = parse_box(text)
        sx, sy = shot.width / MODEL_SPACE, shot.height / MODEL_SPACE
        # a box covers cells x1..x2 inclusive: its right edge is the start of cell x2 + 1
        located = Located(box, (box.x1 * sx, box.y1 * sy, (box.x2 + 1) * sx, (box.y2 + 1) * sy))
        logger.info("located %r at %s (css %s)", description, box.as_list(), located.css)
        return located

    def click(self, description: str, *, button: Literal["left", "right", "middle"] = "left",
              click_count: int = 1) -> Located:
        located = self.locate(description)
        self.page.mouse.click(*located.center, button=button, click_count=click_count)
        return located

    def hover(self, description: str) -> Located:
        located = self.locate(description)
        self.page.mouse.move(*located.center)
        return located

    def fill(self, description: str, text: str) -> Located:
        """Click the field, replace its content with `text` (typed, so page scripts see keys)."""
        located = self.click(description)
        self.page.keyboard.press("ControlOrMeta+A")
        self.page.keyboard.press("Backspace")
        self.page.keyboard.type(text)
        return located
