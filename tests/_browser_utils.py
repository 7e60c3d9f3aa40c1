"""Fixtures, helpers and pages shared by the BrowserEnv tests (test_browser_*.py).

`server` (a `LocalServer`), `env` (1024x768) and `phone` (Pixel 7) are module-scoped: import them
into a test module (`from _browser_utils import env, server  # noqa: F401`) and each module gets
its own. `box_of` aims at an element as a model would, in 0-999 model space.
"""

import pytest
from _web_utils import LocalServer

from agent.actions import Box
from agent.browser import BrowserEnv


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


def box_of(env, selector):
    """The element's bounding box in model space, from its CSS rect."""
    r = env.page.eval_on_selector(selector, "e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }")
    w, h = env.viewport
    return Box(int(r[0] * 1000 / w), int(r[1] * 1000 / h), int(r[2] * 1000 / w) - 1, int(r[3] * 1000 / h) - 1)


# a form with a text and a password field and a textarea that logs key events (typing, chords, describe)
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


# a link to a new tab, a popup, and a popup to blocked.test, the domain the URL-rules tests refuse
POPUPS = """<!doctype html><title>opener</title>
<a id=tab href="/child" target=_blank style="position:absolute;left:10px;top:10px;width:200px;height:30px">tab</a>
<button id=pop onclick="window.open('/child2')" style="position:absolute;left:10px;top:60px;width:200px;height:30px">pop</button>
<button id=bad onclick="window.open('http://blocked.test:' + location.port + '/child')"
 style="position:absolute;left:10px;top:110px;width:200px;height:30px">bad</button>"""
