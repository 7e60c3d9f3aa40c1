"""Rendering generated pages in Chromium and reading element boxes back from the DOM.

One `Renderer` holds one browser for its whole life (a worker process renders hundreds of
pages through it); each viewport gets one browser context and one tab that is reused with
`set_content`, which is about ten times cheaper than a new tab per page.

After loading, cards that do not fit the viewport (with everything inside them, open menus
included) are removed in document order (later cards move up and get their chance), so the screenshot is the whole page and every card a
task mentions is fully on screen. An element then counts as visible only if the browser's
own hit test (`elementFromPoint`) finds it at its centre and at four inner points: hidden
menus, elements under a modal dialog or under an open dropdown are thereby left out.

Boxes go from CSS pixels to model space (0-999 of the screenshot) by covering every
1/1000 cell the element touches, so the centre of any cell of the box is on the element.
The phone viewport is rendered at device scale factor 1: the screenshot is in CSS pixels,
the unit touch and click coordinates use, and the processor resizes anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from agent import set_of_marks
from agent.actions import MODEL_SPACE, Box
from agent.chromium import launch_chromium
from agent.environment import ElementInfo
from agent.loop import MAX_DESCRIBED_MARKS
from agent.prompts import describe_marks
from synth.pages import Element, Page

Viewport = Literal["desktop", "phone"]
VIEWPORTS: dict[Viewport, dict[str, Any]] = {
    "desktop": {"viewport": {"width": 1280, "height": 720}, "device_scale_factor": 1},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 1,
              "is_mobile": True, "has_touch": True},
}


@dataclass(frozen=True)
class Placed:
    """A visible element and where it is: CSS pixels (x1, y1, x2, y2) and model space."""

    element: Element
    box_px: tuple[float, float, float, float]
    box: Box

    @property
    def center_px(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box_px
        return (x1 + x2) / 2, (y1 + y2) / 2


@dataclass(frozen=True)
class Rendered:
    """A page as the model sees it: the screenshot and its visible elements."""

    page: Page
    viewport: Viewport
    width: int  # screenshot size in CSS pixels
    height: int
    png: bytes
    placed: tuple[Placed, ...]  # visible elements in document order
    blocks: tuple[str, ...]  # ids of the blocks left on the page

    @property
    def meta(self) -> dict[str, Any]:
        """The ground truth every sample of this screenshot starts with (`synth.tasks`)."""
        return {"page_seed": self.page.seed, "viewport": self.viewport, "language": self.page.language,
                "width": self.width, "height": self.height}

    def find(self, element_id: str) -> Placed:
        for placed in self.placed:
            if placed.element.id == element_id:
                return placed
        raise KeyError(f"element {element_id!r} is not visible on page {self.page.seed} ({self.viewport})")


@dataclass(frozen=True)
class Marked:
    """A screenshot with set-of-marks labels; `marks[n]` is the element id label n sits on."""

    png: bytes
    marks: tuple[str | None, ...]  # None: a marked element no task refers to
    web_elements: str  # the element list the agent loop writes into the web prompt

    def mark_of(self, element_id: str) -> int | None:
        return self.marks.index(element_id) if element_id in self.marks else None


def _describe_marks(tab: Any, boxes: list[Box], rendered: Rendered) -> str:
    """The web prompt's element list, made as the agent loop makes it: `BrowserEnv.describe`'s
    script at each label's model-space centre (the first `MAX_DESCRIBED_MARKS` labels), then
    `describe_marks`. Our pages are never zoomed, so screen and layout pixels agree."""
    # the exact script BrowserEnv.describe runs (no public name yet); imported here because
    # agent.browser needs playwright, and machines without it still draw `synth.ui` data
    from agent.browser import _DESCRIBE_JS
    infos = {}
    for mark_id, box in enumerate(boxes[:MAX_DESCRIBED_MARKS]):
        info = tab.evaluate(_DESCRIBE_JS, list(box.center.to_pixels(rendered.width, rendered.height)))
        if info is not None:
            infos[mark_id] = ElementInfo(**info)
    return describe_marks(infos)


def _element_at(box: tuple[float, float, float, float], rendered: Rendered) -> str | None:
    """The visible element whose DOM box is this mark's box (within a pixel), if any."""
    for placed in rendered.placed:
        if all(abs(a - b) <= 1.0 for a, b in zip(box, placed.box_px)):
            return placed.element.id
    return None


def to_model_box(x1: float, y1: float, x2: float, y2: float, *, width: float, height: float) -> Box:
    """The model-space box covering the CSS-pixel box (x1, y1, x2, y2) on a width x height screen."""
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ValueError(f"pixel box {(x1, y1, x2, y2)} is empty or outside the {width}x{height} screen")

    def cells(a: float, b: float, size: float) -> tuple[int, int]:
        lo = math.floor(a * MODEL_SPACE / size)
        hi = math.ceil(b * MODEL_SPACE / size) - 1
        return min(lo, MODEL_SPACE - 1), min(max(hi, lo), MODEL_SPACE - 1)

    bx1, bx2 = cells(x1, x2, width)
    by1, by2 = cells(y1, y2, height)
    return Box(bx1, by1, bx2, by2)


# The viewport size comes from Python, not from innerWidth: on a phone a too-wide card makes
# Chromium widen the layout viewport (and zoom out), so innerWidth would say it fits.
_PRUNE_JS = """
([W, H]) => {
  const outside = el => { const r = el.getBoundingClientRect(); return r.bottom > H || r.right > W; };
  for (const card of [...document.querySelectorAll('main > [data-block]')]) {
    // descendants too: a row of tabs or a menu can stick out of a card that fits; closed
    // menus are opened for the check, since an episode may open them
    const closed = [...card.querySelectorAll('[hidden]')];
    closed.forEach(m => { m.hidden = false; });
    const out = outside(card) || [...card.querySelectorAll('*')].some(outside);
    closed.forEach(m => { m.hidden = true; });
    if (out) card.remove();
  }
}
"""

_MEASURE_JS = """
() => {
  const W = innerWidth, H = innerHeight, out = [];
  const hits = (el, x, y) => { const h = document.elementFromPoint(x, y); return !!h && (h === el || el.contains(h)); };
  for (const el of document.querySelectorAll('[data-el]')) {
    const r = el.getBoundingClientRect();
    if (r.width < 3 || r.height < 3 || r.left < 0 || r.top < 0 || r.right > W || r.bottom > H) continue;
    const cx = r.left + r.width / 2, cy = r.top + r.height / 2, dx = r.width / 4, dy = r.height / 4;
    if (![[cx, cy], [cx - dx, cy - dy], [cx + dx, cy - dy], [cx - dx, cy + dy], [cx + dx, cy + dy]]
        .every(([x, y]) => hits(el, x, y))) continue;
    out.push([el.dataset.el, r.left, r.top, r.right, r.bottom]);
  }
  const blocks = [...document.querySelectorAll('[data-block]')].map(b => b.dataset.block);
  return {elements: out, blocks: blocks, width: W, height: H};
}
"""


def prune(tab: Any, viewport: Viewport) -> None:
    """Remove the cards of the page loaded in `tab` that do not fit the viewport."""
    size = VIEWPORTS[viewport]["viewport"]
    tab.evaluate(_PRUNE_JS, [size["width"], size["height"]])


class Renderer:
    """One Chromium, reused for every page: `with Renderer() as r: r.render(page, "phone")`."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright  # heavy; only when a renderer is made

        self._playwright = sync_playwright().start()
        self._browser = launch_chromium(self._playwright)
        self._tabs: dict[Viewport, Any] = {}

    def tab(self, viewport: Viewport) -> Any:
        """The reused Playwright page for `viewport`."""
        if viewport not in VIEWPORTS:
            raise ValueError(f"viewport {viewport!r} is not one of {sorted(VIEWPORTS)}")
        if viewport not in self._tabs:
            self._tabs[viewport] = self._browser.new_context(**VIEWPORTS[viewport]).new_page()
        return self._tabs[viewport]

    def load(self, page: Page, viewport: Viewport) -> Any:
        """Load `page` into the viewport's tab, drop the cards that do not fit; returns the tab."""
        tab = self.tab(viewport)
        tab.set_content(page.html, wait_until="load")
        prune(tab, viewport)
        return tab

    def render(self, page: Page, viewport: Viewport) -> Rendered:
        return self.snapshot(self.load(page, viewport), page, viewport)

    def snapshot(self, tab: Any, page: Page, viewport: Viewport) -> Rendered:
        """Screenshot and measure the current state of a loaded tab."""
        png = tab.screenshot(type="png", animations="disabled", caret="hide")
        return measure(tab, page, viewport, png)

    def snapshot_marks(self, tab: Any, rendered: Rendered) -> Marked:
        """The same state with the agent's set-of-marks labels drawn (`agent.set_of_marks`)."""
        boxes = set_of_marks.draw(tab)
        try:
            png = tab.screenshot(type="png", animations="disabled", caret="hide")
        finally:
            set_of_marks.erase(tab)
        model_boxes = [set_of_marks.to_model_space(b, rendered.width, rendered.height) for b in boxes]
        return Marked(png, tuple(_element_at(box, rendered) for box in boxes),
                      _describe_marks(tab, model_boxes, rendered))

    def close(self) -> None:
        """Close the browser; safe to call twice (a worker's exit finalizer may call it again)."""
        if self._browser is None:
            return
        browser, self._browser, self._tabs = self._browser, None, {}
        browser.close()
        self._playwright.stop()

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measure(tab: Any, page: Page, viewport: Viewport, png: bytes) -> Rendered:
    """Read the visible elements' boxes from the DOM of `tab` (which shows `page`)."""
    found = tab.evaluate(_MEASURE_JS)
    width, height = found["width"], found["height"]
    expected = VIEWPORTS[viewport]["viewport"]
    if (width, height) != (expected["width"], expected["height"]):
        raise RuntimeError(f"page {page.seed} lays out at {width}x{height} CSS px in the {viewport} viewport "
                           f"({expected['width']}x{expected['height']}): something is wider than the screen")
    placed = tuple(
        Placed(page.element(eid), (x1, y1, x2, y2), to_model_box(x1, y1, x2, y2, width=width, height=height))
        for eid, x1, y1, x2, y2 in found["elements"])
    return Rendered(page, viewport, width, height, png, placed, tuple(found["blocks"]))
