"""DesktopEnv on its own Xvfb against a real Tk program (`_tk_app.py`), which reports its
widgets' contents, a click and key log, a drag handle and a list's scroll position."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agent.actions import MODEL_SPACE, Back, Click, Drag, Home, Key, Navigate, OpenApp, Point, Scroll, Type, Wait
from agent.desktop import DesktopEnv, keysym, typing_commands
from agent.environment import UnsupportedAction

pytestmark = pytest.mark.desktop

APP = Path(__file__).with_name("_tk_app.py")
SIZE = (800, 600)


@pytest.fixture(scope="module")
def desktop():
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DISPLAY", raising=False)
        with DesktopEnv(size=SIZE, settle_s=0.05) as env:
            yield env


class TkApp:
    def __init__(self, env, state_path):
        self.env, self.path = env, state_path
        self.process = subprocess.Popen([sys.executable, str(APP), str(state_path)], env=env.env)
        deadline = time.monotonic() + 20
        while not state_path.exists():
            assert self.process.poll() is None, "the Tk app exited"
            assert time.monotonic() < deadline, "the Tk app did not start"
            time.sleep(0.05)

    @property
    def state(self):
        return json.loads(self.path.read_text())

    def wait_for(self, predicate, timeout_s=5.0):
        """Events reach Tk asynchronously: poll its state until `predicate(state)` holds."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.state
            if predicate(state) or time.monotonic() > deadline:
                return state
            time.sleep(0.05)

    def box(self, name):
        """Centre of a widget in model space (screen pixels / screen size)."""
        x, y, w, h = self.state["rects"][name]
        return Point(int((x + w / 2) * MODEL_SPACE / SIZE[0]), int((y + h / 2) * MODEL_SPACE / SIZE[1]))


@pytest.fixture(scope="module")
def app(desktop, tmp_path_factory):
    tk_app = TkApp(desktop, tmp_path_factory.mktemp("tk") / "state.json")
    yield tk_app
    tk_app.process.terminate()
    tk_app.process.wait(timeout=5)


def test_own_xvfb_and_screenshot_at_screen_size(desktop, app):
    assert desktop.display.startswith(":") and desktop.display != os.environ.get("DISPLAY")
    observation = desktop.observe()
    assert observation.screenshot.size == SIZE
    assert observation.title == "agent test app" or observation.title is None  # no WM: focus may be root


def red_in_model_space(screenshot):
    rgb = np.asarray(screenshot).astype(int)
    ys, xs = np.nonzero((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60))
    assert len(xs), "red button not visible"
    return Point(int((xs.mean() + 0.5) * MODEL_SPACE / SIZE[0]), int((ys.mean() + 0.5) * MODEL_SPACE / SIZE[1]))


def test_clicks_land_on_the_button_seen_in_the_screenshot(desktop, app):
    observation = desktop.observe()
    target = red_in_model_space(observation.screenshot)
    start = len(app.state["log"])
    desktop.execute(Click(target), observation)
    desktop.execute(Click(target, button="right"), observation)
    desktop.execute(Click(target, button="middle"), observation)
    desktop.execute(Click(target, count=2), observation)
    log = app.wait_for(lambda s: "double" in s["log"][start:])["log"][start:]
    assert log == ["click", "right", "middle", "click", "double"]


TRICKY = "Hello, Wörld! ÄÖÜ äöü ß € 你好 Δδ É <&>\"' ~`|\\{}[] $HOME 50%s ;rm"


def test_typing_tricky_text_into_a_tk_entry(desktop, app):
    observation = desktop.observe()
    desktop.execute(Type("old text", target=app.box("entry")), observation)
    app.wait_for(lambda s: s["entry"] == "old text")
    desktop.execute(Type(TRICKY, target=app.box("entry"), clear=True), observation)
    assert app.wait_for(lambda s: s["entry"] == TRICKY)["entry"] == TRICKY


def test_typing_newlines_and_tabs_into_a_text_widget(desktop, app):
    text = "first line\n\tÄ indented 你好\nlast"
    desktop.execute(Type(text, target=app.box("text")), desktop.observe())
    assert app.wait_for(lambda s: s["text"] == text)["text"] == text


def test_key_chords_arrive_with_modifiers(desktop, app):
    observation = desktop.observe()
    desktop.execute(Click(app.box("entry")), observation)
    start = len(app.state["log"])
    for keys in [("ctrl", "a"), ("enter",), ("pagedown",), ("shift", "tab"), ("f5",), ("ctrl", "shift", "k")]:
        desktop.execute(Key(keys), observation)
    log = app.wait_for(lambda s: any(e.startswith(("key:K:5", "key:k:5")) for e in s["log"][start:]))["log"][start:]
    keys = [e for e in log if e.startswith("key:") and "Control" not in e and "Shift" not in e]
    # state bits: 1 = Shift, 4 = Control
    assert keys[:5] == ["key:a:4", "key:Return:0", "key:Next:0", "key:ISO_Left_Tab:1", "key:F5:0"]
    assert keys[5] in ("key:K:5", "key:k:5")


def test_drag_moves_the_canvas_handle(desktop, app):
    start = app.state["handle_centre"]
    end = (start[0] + 150, start[1] + 110)
    observation = desktop.observe()
    to_model = lambda x, y: Point(int(x * MODEL_SPACE / SIZE[0]), int(y * MODEL_SPACE / SIZE[1]))  # noqa: E731
    desktop.execute(Drag(to_model(*start), to_model(*end)), observation)
    centre = app.wait_for(lambda s: s["handle_centre"] != start)["handle_centre"]
    assert abs(centre[0] - end[0]) <= 2 and abs(centre[1] - end[1]) <= 2


def test_scroll_wheel_over_the_list(desktop, app):
    observation = desktop.observe()
    start = len(app.state["log"])
    desktop.execute(Scroll("down", target=app.box("listbox"), steps=5), observation)
    top = app.wait_for(lambda s: s["list_top"] > 0)["list_top"]
    assert top > 0
    desktop.execute(Scroll("up", target=app.box("listbox"), steps=2), observation)
    assert 0 < app.wait_for(lambda s: s["list_top"] < top)["list_top"] < top
    desktop.execute(Scroll("right", target=app.box("listbox"), steps=2), observation)
    desktop.execute(Scroll("left", target=app.box("listbox"), steps=1), observation)
    # Tk 8.6 reports the horizontal wheel (X buttons 6, 7) as shift + buttons 4, 5
    log = app.wait_for(lambda s: "button4:1" in s["log"][start:])["log"][start:]
    assert log == ["button5:0"] * 5 + ["button4:0"] * 2 + ["button5:1"] * 2 + ["button4:1"]


def test_open_app_runs_only_configured_programs(tmp_path):
    marker = tmp_path / "started"
    program = [sys.executable, "-c", f"import os; open({str(marker)!r}, 'w').write(os.environ['DISPLAY'])"]
    with DesktopEnv(display=":99999", apps={"Probe": program}, settle_s=0) as env:
        observation = type("O", (), {"screenshot": None})()
        env.execute(OpenApp("probe"), observation)
        env._children[0].wait(timeout=20)
        assert marker.read_text() == ":99999"
        with pytest.raises(ValueError, match="'rm -rf /'"):
            env.execute(OpenApp("rm -rf /"), observation)
        env.execute(Wait(0), observation)


def test_unsupported_actions_name_the_action_and_the_environment():
    with DesktopEnv(display=":99999", settle_s=0) as env:  # refused before anything reaches the display
        observation = type("O", (), {"screenshot": None})()
        for action in [Navigate("https://example.com"), Back(), Home()]:
            with pytest.raises(UnsupportedAction, match=f"^{type(action).__name__} cannot be executed in DesktopEnv"):
                env.execute(action, observation)
        with pytest.raises(UnsupportedAction, match="^Navigate cannot be executed in DesktopEnv: .*OpenApp"):
            env.goto("https://example.com")
        assert env.rules is None


def test_close_stops_the_xvfb_it_started():
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DISPLAY", raising=False)
        env = DesktopEnv(size=(320, 240))
    process = env._xvfb
    assert env.observe().screenshot.size == (320, 240)
    env.close()
    assert process.poll() is not None and env._xvfb is None


def test_typing_commands_split_ascii_runs_from_keysyms():
    assert typing_commands("ab Ä\nc€", delay_ms=5) == [
        ["type", "--delay", "5", "--", "ab "], ["key", "--delay", "5", "shift+U00C4", "Return"],
        ["type", "--delay", "5", "--", "c"], ["key", "--delay", "5", "U20AC"]]
    with pytest.raises(ValueError, match="U\\+0007"):
        typing_commands("bell\x07")
    assert [keysym(k) for k in ["ctrl", "pagedown", "A", ",", "f12", "é", "KP_Enter"]] == [
        "ctrl", "Next", "A", "comma", "F12", "U00E9", "KP_Enter"]
