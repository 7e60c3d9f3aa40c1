"""BrowserEnv in a real headless Chromium against local pages: phone emulation, tabs and popups,
set-of-marks observations, `describe`, the actions that are not input, and bad options."""

import time

import numpy as np
import pytest
from _browser_utils import FORM, POPUPS, box_of, env, phone, server  # noqa: F401

from agent.actions import Answer, Back, Click, Done, Mark, Navigate, OpenApp, Wait
from agent.browser import BrowserEnv
from agent.environment import UnsupportedAction
from agent.set_of_marks import LAYER_ID

pytestmark = pytest.mark.browser


def test_phone_emulation_has_touch_and_its_own_viewport(phone):
    assert phone.has_touch and phone.viewport == (412, 839)
    assert phone.page.evaluate("navigator.maxTouchPoints") > 0


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
