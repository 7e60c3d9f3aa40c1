"""BrowserEnv in a real headless Chromium against local pages.

Clicks are aimed the way a model aims them: find the target in the *screenshot*, convert to
0-999 model space from the screenshot's size, execute, and check which element the page says
was hit. A slip in the CSS / device-pixel conversion lands on a neighbouring decoy.
"""

import time

import numpy as np
import pytest
from _web_utils import LocalServer, local_server, resolve_to_local  # noqa: F401

from agent.actions import (
    MODEL_SPACE, Answer, Back, Box, Click, Done, Drag, Hover, Key, LongPress, Mark, Navigate,
    OpenApp, Point, Scroll, Swipe, Type, Wait)
from agent.browser import BrowserEnv
from agent.browser_input import key_name
from agent.domains import BlockedURL, DomainRules
from agent.environment import UnsupportedAction
from agent.set_of_marks import LAYER_ID

pytestmark = pytest.mark.browser

OTHER = "blocked.test"  # a second domain served by the same local server
RESOLVE = resolve_to_local(OTHER)

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


@pytest.fixture(scope="module")
def server():
    with LocalServer() as s:
        yield s


@pytest.fixture(scope="module")
def env():
    with BrowserEnv((1024, 768)) as e:
        yield e


@pytest.fixture(scope="module")
def phone():
    with BrowserEnv(device="Pixel 7") as e:
        yield e


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


def test_phone_emulation_has_touch_and_its_own_viewport(phone):
    assert phone.has_touch and phone.viewport == (412, 839)
    assert phone.page.evaluate("navigator.maxTouchPoints") > 0


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


def box_of(env, selector):
    """The element's bounding box in model space, from its CSS rect."""
    r = env.page.eval_on_selector(selector, "e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }")
    w, h = env.viewport
    return Box(int(r[0] * 1000 / w), int(r[1] * 1000 / h), int(r[2] * 1000 / w) - 1, int(r[3] * 1000 / h) - 1)


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


FORM = """<!doctype html><title>form</title>
<form id=f action="/submitted" onsubmit="event.preventDefault(); window.submitted = document.getElementById('q').value;">
<input id=q value="old text" style="position:absolute;left:20px;top:20px;width:300px;height:30px">
<input id=pw type=password style="position:absolute;left:20px;top:80px;width:300px;height:30px">
<button style="position:absolute;left:340px;top:20px">Sign in</button>
</form>
<textarea id=t style="position:absolute;left:20px;top:140px;width:300px;height:80px"></textarea>
<script>
window.keys = [];
document.addEventListener('keydown', e => keys.push([e.key, e.ctrlKey, e.shiftKey, e.altKey].join('|')));
</script>"""


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


POPUPS = """<!doctype html><title>opener</title>
<a id=tab href="/child" target=_blank style="position:absolute;left:10px;top:10px;width:200px;height:30px">tab</a>
<button id=pop onclick="window.open('/child2')" style="position:absolute;left:10px;top:60px;width:200px;height:30px">pop</button>
<button id=bad onclick="window.open('http://blocked.test:' + location.port + '/child')"
 style="position:absolute;left:10px;top:110px;width:200px;height:30px">bad</button>"""


def test_new_tabs_and_popups_become_the_current_page(server):
    server.add("/child", "<title>child</title>child")
    server.add("/child2", "<title>child2</title>child2")
    with BrowserEnv((800, 600)) as env:
        env.goto(server.add("/popups", POPUPS))
        opener = env.page
        env.execute(Click(box_of(env, "#tab")), env.observe())
        assert env.page is not opener and env.observe().title == "child"
        env.page.close()
        assert env.page is opener
        env.execute(Click(box_of(env, "#pop")), env.observe())
        assert env.observe().url == server.url("/child2")


def execute_until_blocked(env, action, timeout_s=10.0):
    """The env raises a refused navigation from `execute`, or from the next `observe` when it
    started after the action settled (a popup on a loaded machine): allow for both."""
    env.execute(action, env.observe())
    deadline = time.monotonic() + timeout_s
    while not env.blocked and time.monotonic() < deadline:
        env.page.wait_for_timeout(50)
    env.observe()


def test_popup_to_a_blocked_domain_is_not_requested(server):
    with BrowserEnv((800, 600), rules=DomainRules(blocked_domains=[OTHER]), launch_args=RESOLVE) as env:
        env.goto(server.add("/popups", POPUPS))
        before = len(server.requests)
        with pytest.raises(BlockedURL, match=OTHER):
            execute_until_blocked(env, Click(box_of(env, "#bad")))
        assert not any(host.startswith(OTHER) for host, _ in server.requests[before:])
        assert any(OTHER in b.url for b in env.blocked)


def test_redirect_to_a_blocked_domain_is_stopped(local_server):
    s = local_server
    s.add("/final", "<title>final</title>")
    s.add("/redirect", status=302, headers={"Location": s.url("/final", host=OTHER)})
    s.add("/twice", status=302, headers={"Location": "/redirect"})
    s.add("/start", '<a id=go href="/twice" style="display:block;width:200px;height:40px">go</a>')
    with BrowserEnv((800, 600), rules=DomainRules(blocked_domains=[OTHER]), launch_args=RESOLVE) as env:
        env.goto(s.url("/start"))
        with pytest.raises(BlockedURL, match=OTHER) as info:  # blocked at the second hop
            execute_until_blocked(env, Click(box_of(env, "#go")))
        assert info.value.url == s.url("/final", host=OTHER)
        assert "/final" not in env.page.url
        with pytest.raises(BlockedURL):
            env.goto(s.url("/redirect"))
    assert (f"{OTHER}:{s.port}", "/final") not in s.requests  # never sent
    with BrowserEnv((800, 600), launch_args=RESOLVE) as env:  # control: followed without the rule
        env.goto(s.url("/twice"))
        assert env.observe().title == "final"
    assert (f"{OTHER}:{s.port}", "/final") in s.requests


def test_execute_waits_for_the_navigation_its_click_started_with_no_settle_time(local_server):
    # a followed link reaches the network milliseconds after the click returns (seconds on a
    # busy machine): with settle_ms=0 only the env's wait for the requested navigation sees it
    s = local_server
    s.add("/next", "<title>next</title>next")
    s.add("/away", status=302, headers={"Location": s.url("/final", host=OTHER)})
    links = "".join(f'<a id={name} href="{href}" style="display:block;width:200px;height:40px">{name}</a>'
                    for name, href in [("next", "/next"), ("away", "/away"), ("hash", "#part")])
    s.add("/links", f"<title>links</title>{links}")
    with BrowserEnv((800, 600), rules=DomainRules(blocked_domains=[OTHER]), launch_args=RESOLVE, settle_ms=0) as env:
        for _ in range(5):
            env.goto(s.url("/links"))
            env.execute(Click(box_of(env, "#next")), env.observe())
            assert env.observe().title == "next"
            env.goto(s.url("/links"))
            with pytest.raises(BlockedURL, match=OTHER):  # from execute itself, not a later call
                env.execute(Click(box_of(env, "#away")), env.observe())
            env.goto(s.url("/links"))
            env.execute(Click(box_of(env, "#hash")), env.observe())  # same document: nothing to wait for
            assert env.observe().url == s.url("/links#part")
    assert (f"{OTHER}:{s.port}", "/final") not in s.requests


def test_allowed_domains_refuse_navigation_elsewhere_before_any_request(local_server):
    s = local_server
    s.add("/page", "<title>ok</title>")
    with BrowserEnv((800, 600), rules=DomainRules(allowed_domains=["127.0.0.1"]), launch_args=RESOLVE) as env:
        env.goto(s.url("/page"))
        for url in [s.url("/page", host=OTHER), "file:///etc/passwd", "data:text/html,hi", "chrome://version"]:
            with pytest.raises(BlockedURL):
                env.execute(Navigate(url), env.observe())
        assert env.observe().title == "ok"
    assert (f"{OTHER}:{s.port}", "/page") not in s.requests


def test_sub_resources_from_a_blocked_domain_are_not_requested(local_server):
    s = local_server
    s.add("/pixel.png", b"\x89PNG\r\n\x1a\n", headers={"Content-Type": "image/png"})
    s.add("/script.js", "window.loaded = true", headers={"Content-Type": "text/javascript"})
    s.add("/hop.js", status=302, headers={"Location": s.url("/script.js?hop", host=OTHER)})
    s.add("/page", "<title>frame</title>")
    s.add("/with-resources", f'<img src="{s.url("/pixel.png", host=OTHER)}">'
                             f'<script src="{s.url("/script.js", host=OTHER)}"></script>'
                             f'<script src="/hop.js"></script>'
                             f'<iframe src="{s.url("/page", host=OTHER)}"></iframe>')
    with BrowserEnv((800, 600), rules=DomainRules(blocked_domains=[OTHER]), launch_args=RESOLVE) as env:
        env.goto(s.url("/with-resources"))
        env.page.wait_for_load_state("load")
        assert env.page.evaluate("window.loaded === undefined")
        assert {b.url.split(str(s.port))[1] for b in env.blocked} == {"/pixel.png", "/script.js", "/script.js?hop", "/page"}
    assert [p for h, p in s.requests if h.startswith(OTHER)] == []
    with BrowserEnv((800, 600), launch_args=RESOLVE) as env:  # control: loaded when allowed
        env.goto(s.url("/with-resources"))
        env.page.wait_for_load_state("load")
        assert env.page.evaluate("window.loaded === true")
    assert {p for h, p in s.requests if h.startswith(OTHER)} == {"/pixel.png", "/script.js", "/script.js?hop", "/page"}


def test_resolver_rules_put_ours_first():
    from agent.request_filter import with_resolver_rules
    args = with_resolver_rules(("--foo", "--host-resolver-rules=MAP a.test 127.0.0.1"),
                               DomainRules(allowed_domains=["ok.com", "10.0.0.1"], blocked_domains=["bad.ok.com"]))
    assert args == ("--foo", "--host-resolver-rules=MAP bad.ok.com ~NOTFOUND, MAP *.bad.ok.com ~NOTFOUND, "
                    "EXCLUDE ok.com, EXCLUDE *.ok.com, EXCLUDE 10.0.0.1, MAP * ~NOTFOUND, MAP a.test 127.0.0.1")


MARKS = """<!doctype html><title>marks</title><body style="margin:0">
<button id=b0 style="position:absolute;left:20px;top:20px;width:100px;height:30px">zero</button>
<a id=b1 href="#x" style="position:absolute;left:300px;top:200px">link</a>
<input id=b2 style="position:absolute;left:20px;top:400px;width:200px">
<div id=b3 role=button style="position:absolute;left:600px;top:50px;width:80px;height:80px">div</div>
<button id=hidden style="position:absolute;left:20px;top:100px;visibility:hidden">hidden</button>
<button id=covered style="position:absolute;left:700px;top:500px;width:50px;height:30px">covered</button>
<div style="position:absolute;left:690px;top:490px;width:100px;height:60px;background:#ccc"></div>
<button id=offscreen style="position:absolute;left:20px;top:2000px">below</button>
<script>window.hits = []; for (const e of document.querySelectorAll('[id]'))
  e.addEventListener('click', ev => { ev.preventDefault(); hits.push(e.id); });</script>"""


def test_set_of_marks_label_the_visible_interactive_elements(server):
    with BrowserEnv((1000, 700), set_of_marks=True) as env:
        env.goto(server.add("/marks", MARKS))
        observation = env.observe()
        assert env.page.query_selector("#" + LAYER_ID) is None  # overlay gone before any action
        assert sorted(observation.marks) == [0, 1, 2, 3]
        for mark in range(4):
            env.execute(Click(Mark(mark)), observation)
        assert env.page.evaluate("hits") == ["b0", "b1", "b2", "b3"]
        # the labels are drawn: the screenshot differs from an unmarked one around mark 0
        env.set_of_marks = False
        plain = np.asarray(env.observe().screenshot.convert("RGB")).astype(int)
        marked = np.asarray(observation.screenshot.convert("RGB")).astype(int)
        assert np.abs(plain[5:60, 15:130] - marked[5:60, 15:130]).sum() > 1000
        with pytest.raises(ValueError, match=r"mark \[9\]"):
            env.execute(Click(Mark(9)), observation)


def test_describe_reports_password_fields_and_forms(env, server):
    env.goto(server.add("/form", FORM))
    observation = env.observe()
    info = env.describe(box_of(env, "#pw"), observation)
    assert (info.tag, info.input_type, info.form_action) == ("input", "password", server.url("/submitted"))
    env.execute(Click(box_of(env, "#q")), observation)
    focused = env.describe(None, observation)
    assert (focused.tag, focused.input_type) == ("input", "text")


def test_back_wait_terminal_and_unsupported_actions(env, server):
    first = server.add("/one", "<title>one</title>")
    env.goto(first)
    env.execute(Navigate(server.url("/two")), env.observe())
    observation = env.observe()
    env.execute(Back(), observation)
    assert env.page.url == first
    started = time.monotonic()
    env.execute(Wait(0.3), observation)
    assert time.monotonic() - started >= 0.3
    env.execute(Answer("42"), observation)
    env.execute(Done(), observation)
    assert env.page.url == first
    with pytest.raises(ValueError, match="OpenApp"):
        env.execute(OpenApp("Settings"), observation)


def test_unsupported_actions_name_the_action_and_the_environment(env, server):
    env.goto(server.add("/still", "<title>still</title>"))
    observation = env.observe()
    with pytest.raises(UnsupportedAction, match="^OpenApp cannot be executed in BrowserEnv: .*use Navigate") as error:
        env.execute(OpenApp("Settings"), observation)
    assert error.value.action == OpenApp("Settings") and error.value.environment == "BrowserEnv"
    with pytest.raises(UnsupportedAction, match="^str cannot be executed in BrowserEnv$"):
        env.execute("click the button", observation)  # not an action at all
    assert env.page.url.endswith("/still")


def test_bad_options_are_refused_by_name():
    with pytest.raises(ValueError, match="Nokia 3310"):
        BrowserEnv(device="Nokia 3310")
    with pytest.raises(ValueError, match="viewport"):
        BrowserEnv((0, 600))
