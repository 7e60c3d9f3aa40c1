"""VisualPage in a real Chromium: a stand-in grounding model finds coloured elements in the
screenshot it is sent and answers a 0-999 box; the click must land on that element at several
viewports and device pixel ratios."""

import numpy as np
import pytest

from agent.chromium import launch_chromium
from agent.parsing import ParseError
from agent.policy import to_pil
from agent.visual_page import VisualPage

pytestmark = pytest.mark.browser

PAGE = """<!doctype html><style>body{margin:0} *{position:absolute}</style>
<input id=email style="left:%(ex)dpx;top:%(ey)dpx;width:180px;height:30px;background:rgb(0,200,0);border:0">
<button id=signin style="left:%(bx)dpx;top:%(by)dpx;width:90px;height:32px;background:rgb(0,0,255);border:0"
  onclick="document.title='signed in as '+email.value">Sign in</button>
<button id=cancel style="left:%(cx)dpx;top:%(by)dpx;width:90px;height:32px;background:rgb(128,128,128);border:0"
  onclick="document.title='cancelled'">Cancel</button>"""

COLOURS = {"the blue Sign in button": (0, 0, 255), "the email field": (0, 200, 0)}


def colour_grounding(messages):
    """A grounding 'model': the box around pixels of the colour the question names."""
    content = to_pil(messages)[0]["content"]  # a plain callable receives OpenAI data-URL parts
    image = next(p["image"] for p in content if p["type"] == "image")
    question = next(p["text"] for p in content if p["type"] == "text")
    description = question.removeprefix("Help me to locate ").removesuffix(" and give me its bounding boxes.")
    if description not in COLOURS:
        return "I cannot find it."
    rgb = np.asarray(image.convert("RGB")).astype(int)
    ys, xs = np.nonzero((np.abs(rgb - COLOURS[description]).sum(-1) < 30))
    h, w = rgb.shape[:2]
    box = [int(xs.min() * 1000 / w), int(ys.min() * 1000 / h), int(xs.max() * 1000 / w), int(ys.max() * 1000 / h)]
    return f"<think>colour search</think><|begin_of_box|>[{box}]<|end_of_box|>"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.mark.parametrize("viewport, dpr", [((1280, 720), 1), ((800, 600), 2), ((375, 667), 3), ((1000, 700), 1.5)])
def test_fill_and_click_land_on_the_described_elements(browser, viewport, dpr):
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, device_scale_factor=dpr)
    try:
        page = context.new_page()
        w, h = viewport
        page.set_content(PAGE % {"ex": w * 0.21, "ey": h * 0.33, "bx": w * 0.41, "by": h * 0.57, "cx": w * 0.41 + 91})
        visual = VisualPage(page, colour_grounding)
        located = visual.fill("the email field", "a@b.c")
        assert page.evaluate("document.activeElement.id") == "email"
        visual.click("the blue Sign in button")
        assert page.title() == "signed in as a@b.c"  # not 'cancelled': the neighbour was not hit
        x1, y1, x2, y2 = located.css
        real = page.locator("#email").bounding_box()
        assert abs(x1 - real["x"]) <= 2 and abs(y2 - (real["y"] + real["height"])) <= 2
        with pytest.raises(ParseError, match="no \\[x1,y1,x2,y2\\] box"):
            visual.click("the red button")
    finally:
        context.close()
