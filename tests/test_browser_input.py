"""BrowserInput in a real headless Chromium against local pages: every pointer and keyboard
action's effect at several viewports and pixel ratios, with a mouse and with touch.

Clicks are aimed the way a model aims them: find the target in the *screenshot*, convert to
0-999 model space from the screenshot's size, execute, and check which element the page says
was hit. A slip in the CSS / device-pixel conversion lands on a neighbouring decoy.
"""

import time

import numpy as np
import pytest
from _browser_utils import FORM, box_of, env, phone, server  # noqa: F401

from agent.actions import MODEL_SPACE, Click, Drag, Hover, Key, LongPress, Point, Scroll, Swipe, Type
from agent.browser import BrowserEnv
from agent.browser_input import key_name

pytestmark = pytest.mark.browser

TARGET_PAGE = """<!doctype html><title>targets</title>
<style>body{margin:0} div{position:absolute;width:%(s)dpx;height:%(s)dpx}</style>
<body>%(divs)s<script>
window.hits = [];
for (const d of document.querySelectorAll('div')) d.addEventListener('click', () => hits.push(d.id));
document.addEventListener('touchstart', () => window.touched = true);
</script>"""


def target_page(width, height, size=16):
    """A red square at an awkward spot, ringed by blue decoys touching it."""
    x, y = int(width * 0.731), int(height * 0.417)
    divs = [f'<div id=target style="left:{x}px;top:{y}px;background:#f00"></div>']
    for i, (dx, dy) in enumerate([(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1), (1, -1), (-1, 1)]):
        divs.append(f'<div id=decoy{i} style="left:{x + dx * size}px;top:{y + dy * size}px;background:#00f"></div>')
    return TARGET_PAGE % {"s": size, "divs": "".join(divs)}


def red_centre_in_model_space(screenshot):
    rgb = np.asarray(screenshot.convert("RGB")).astype(int)
    ys, xs = np.nonzero((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60))
    assert len(xs), "red target not visible in the screenshot"
    h, w = rgb.shape[:2]
    return Point(int((xs.mean() + 0.5) * MODEL_SPACE / w), int((ys.mean() + 0.5) * MODEL_SPACE / h))


@pytest.mark.parametrize("viewport, options", [
    ((1280, 720), {}),
    ((800, 600), {"device_scale_factor": 2}),
    ((1023, 577), {"device_scale_factor": 1.5}),
    (None, {"device": "iPhone 13"}),  # touch, pixel ratio 3
    ((915, 412), {"device": "Pixel 7"}),  # touch, ratio 2.625, landscape viewport override
])
def test_click_lands_on_the_target_seen_in_the_screenshot(server, viewport, options):
    with BrowserEnv(viewport, **options) as env:
        width, height = env.viewport
        env.goto(server.add(f"/targets-{width}x{height}", target_page(width, height)))
        observation = env.observe()
        assert observation.screenshot.size == (width, height)  # CSS size, whatever the pixel ratio
        env.execute(Click(red_centre_in_model_space(observation.screenshot)), observation)
        assert env.page.evaluate("hits") == ["target"]
        assert bool(env.page.evaluate("window.touched === true")) == ("device" in options)


BUTTONS = """<!doctype html><title>buttons</title><body style="margin:0">
<button id=a style="position:absolute;left:40px;top:40px;width:120px;height:40px">A</button>
<button id=b style="position:absolute;left:400px;top:300px;width:120px;height:40px">B</button>
<script>
window.log = [];
for (const b of document.querySelectorAll('button')) {
  b.addEventListener('click', e => log.push(b.id + ':click:' + e.detail));
  b.addEventListener('dblclick', () => log.push(b.id + ':dblclick'));
  b.addEventListener('contextmenu', e => { e.preventDefault(); log.push(b.id + ':contextmenu'); });
  b.addEventListener('auxclick', e => log.push(b.id + ':auxclick:' + e.button));
  b.addEventListener('mouseenter', () => log.push(b.id + ':enter'));
}
</script>"""


def test_buttons_and_click_counts(env, server):
    env.goto(server.add("/buttons", BUTTONS))
    observation = env.observe()
    a, b = box_of(env, "#a"), box_of(env, "#b")
    env.execute(Hover(b), observation)
    env.execute(Click(a, count=2), observation)
    env.execute(Click(b, button="right"), observation)
    env.execute(Click(a, button="middle"), observation)
    log = env.page.evaluate("log")
    assert log == ["b:enter", "a:enter", "a:click:1", "a:click:2", "a:dblclick", "b:enter", "b:contextmenu",
                   "b:auxclick:2", "a:enter", "a:auxclick:1"]


def test_typing_replaces_text_handles_unicode_and_presses_enter(env, server):
    env.goto(server.add("/form", FORM))
    observation = env.observe()
    tricky = "héllo wörld 你好 <&>'\" $HOME `x` \\n ~!"
    env.execute(Type(tricky, target=box_of(env, "#q"), clear=True, press_enter=True), observation)
    assert env.page.input_value("#q") == tricky
    assert env.page.evaluate("submitted") == tricky
    env.execute(Type("line 1\nline 2", target=box_of(env, "#t")), observation)
    assert env.page.input_value("#t") == "line 1\nline 2"


def test_key_chords_reach_the_page_with_modifiers(env, server):
    env.goto(server.add("/form", FORM))
    observation = env.observe()
    env.execute(Type("abc def", target=box_of(env, "#t")), observation)
    env.page.evaluate("keys.length = 0")
    env.execute(Key(("ctrl", "shift", "k")), observation)
    env.execute(Key(("ctrl", "a")), observation)
    env.execute(Key(("backspace",)), observation)
    env.execute(Key(("esc",)), observation)
    assert env.page.input_value("#t") == ""
    assert env.page.evaluate("keys") == [
        "Control|true|false|false", "Shift|true|true|false", "K|true|true|false",
        "Control|true|false|false", "a|true|false|false", "Backspace|false|false|false",
        "Escape|false|false|false"]


def test_key_names_map_to_playwright_names():
    assert [key_name(k) for k in ["ctrl", "Return", "pagedown", "f5", "a", "up", "cmd", "space"]] == [
        "Control", "Enter", "PageDown", "F5", "a", "ArrowUp", "Meta", "Space"]


LONG = """<!doctype html><title>long</title><body style="margin:0;height:5000px;width:4000px">
<div id=inner style="position:absolute;left:50px;top:50px;width:300px;height:200px;overflow:auto">
<div style="height:3000px">inner</div></div>
<script>
window.touches = [];
for (const t of ['touchstart', 'touchend']) document.addEventListener(t, e => touches.push([t, performance.now()]));
</script>"""


def wait_for(page, expression, timeout_s=2.0):
    """Scrolling is asynchronous in Chromium: poll until `expression` holds."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression) and time.monotonic() < deadline:
        page.wait_for_timeout(20)
    return page.evaluate(expression)


def test_scroll_window_and_a_scrollable_element(env, server):
    env.goto(server.add("/long", LONG))
    observation = env.observe()
    env.execute(Scroll("down", steps=3), observation)
    assert wait_for(env.page, "scrollY >= 300")
    assert env.page.evaluate("scrollY") == 300
    env.execute(Scroll("right", steps=2), observation)
    assert wait_for(env.page, "scrollX >= 200")
    env.execute(Scroll("up", steps=1), observation)
    assert wait_for(env.page, "scrollY === 200")
    env.page.evaluate("scrollTo(0, 0)")
    observation = env.observe()
    env.execute(Scroll("down", target=box_of(env, "#inner"), steps=2), observation)
    assert wait_for(env.page, "document.getElementById('inner').scrollTop >= 200")
    assert env.page.evaluate("scrollY") == 0


DRAG = """<!doctype html><title>drag</title><body style="margin:0">
<div id=handle style="position:absolute;left:100px;top:100px;width:40px;height:40px;background:#0a0"></div>
<script>
const h = document.getElementById('handle'); let grab = null; window.moves = 0;
const pos = e => e.touches ? [e.touches[0].clientX, e.touches[0].clientY] : [e.clientX, e.clientY];
const start = e => { const [x, y] = pos(e); grab = [x - h.offsetLeft, y - h.offsetTop]; };
const move = e => { if (!grab) return; const [x, y] = pos(e); moves++; h.style.left = (x - grab[0]) + 'px'; h.style.top = (y - grab[1]) + 'px'; };
h.addEventListener('mousedown', start); h.addEventListener('touchstart', start);
document.addEventListener('mousemove', move); document.addEventListener('touchmove', move);
document.addEventListener('mouseup', () => grab = null); document.addEventListener('touchend', () => grab = null);
</script>"""


@pytest.mark.parametrize("which", ["env", "phone"])
def test_drag_moves_the_handle_to_the_end_point(which, request, server):
    env = request.getfixturevalue(which)
    env.goto(server.add("/drag", DRAG))
    observation = env.observe()
    w, h = env.viewport
    start = box_of(env, "#handle").center
    end = Point(int(300 * 1000 / w), int(400 * 1000 / h))
    env.execute(Drag(start, end), observation)
    left, top = env.page.evaluate("[h.offsetLeft + 20, h.offsetTop + 20]")
    end_x, end_y = end.to_pixels(w, h)
    assert abs(left - end_x) <= 2 and abs(top - end_y) <= 2
    assert env.page.evaluate("moves") >= 1


def test_long_press_holds_the_touch(phone, server):
    phone.goto(server.add("/long", LONG))
    observation = phone.observe()
    phone.execute(LongPress(Point(500, 700), duration_ms=800), observation)
    (start, t0), (end, t1) = phone.page.evaluate("touches")
    assert (start, end) == ("touchstart", "touchend") and t1 - t0 >= 750


@pytest.mark.parametrize("which", ["env", "phone"])
def test_swipe_up_scrolls_the_content_down(which, request, server):
    env = request.getfixturevalue(which)
    env.goto(server.add("/long", LONG))
    env.page.evaluate("scrollTo(0, 1000)")
    observation = env.observe()
    env.execute(Swipe("up"), observation)
    assert wait_for(env.page, "scrollY > 1100")
    after_up = env.page.evaluate("scrollY")
    env.execute(Swipe("down"), env.observe())
    assert wait_for(env.page, f"scrollY < {after_up}")
