"""The agent loop on the other environments: the desktop format on Xvfb against the real Tk test
program, and the mobile format against the fake `adb` of the AndroidEnv tests."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_android_env import device  # noqa: F401 - the fake adb on PATH (a fixture)

from agent.loop import Agent
from agent.policy import ScriptedPolicy

TK_APP = Path(__file__).with_name("_tk_app.py")


def _desktop(call):
    return f"I act.\n<|begin_of_box|>{call}<|end_of_box|>\nMemory:\n[]"


@pytest.mark.desktop
@pytest.mark.slow
def test_desktop_format_types_into_a_tk_entry_on_xvfb(tmp_path, monkeypatch):
    from agent.desktop import DesktopEnv

    monkeypatch.delenv("DISPLAY", raising=False)
    state = tmp_path / "state.json"
    with DesktopEnv(size=(800, 600), settle_s=0.05) as env:
        app = subprocess.Popen([sys.executable, str(TK_APP), str(state)], env=env.env)
        try:
            deadline = time.monotonic() + 20
            while not state.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            x, y, w, h = json.loads(state.read_text())["rects"]["entry"]
            entry = f"[{int((x + w / 2) * 1000 / 800)}, {int((y + h / 2) * 1000 / 600)}]"

            def done_when_typed(messages):
                deadline = time.monotonic() + 5  # Tk receives X events asynchronously
                while json.loads(state.read_text())["entry"] != "hello tk" and time.monotonic() < deadline:
                    time.sleep(0.05)
                return _desktop("DONE()")

            policy = ScriptedPolicy([_desktop(f"left_click(start_box='{entry}', element_info='entry')"),
                                     _desktop("type(content='hello tk')"), done_when_typed])
            trajectory = Agent(policy=policy, env=env).run("Type hello tk into the field")
            assert trajectory.status == "done"
            assert [s.status for s in trajectory.steps] == ["executed", "executed", "terminal"]
            assert json.loads(state.read_text())["entry"] == "hello tk"
        finally:
            app.terminate()
            app.wait(timeout=5)


def test_mobile_format_drives_adb(device, tmp_path):  # noqa: F811
    from agent.android import AndroidEnv

    policy = ScriptedPolicy([
        'Memory: none\nReason: open the app\nAction: {"action_type": "open_app", "app_name": "Clock"}',
        'Memory: none\nReason: tap\nAction: {"action_type": "click", "box_2d": [[400, 200, 600, 300]]}',
        'Memory: none\nReason: type\nAction: {"action_type": "input_text", "text": "7:30", '
        '"box_2d": [[100, 100, 300, 200]], "override": false}',
        'Memory: none\nReason: back\nAction: {"action_type": "navigate_back"}',
        'Memory: none\nReason: done\nAction: {"action_type": "status", "goal_status": "complete"}'])
    trajectory = Agent(policy=policy, env=AndroidEnv(settle_s=0)).run("Set an alarm for 7:30")
    assert trajectory.status == "done", trajectory.note
    assert [s.status for s in trajectory.steps] == ["executed"] * 4 + ["terminal"]
    commands = [c for c in device.commands if c[0] != "wm"]
    # 1080x2400 screen: box (400..600, 200..300) has centre (500, 250) -> (540, 601) px
    assert ["input", "tap", "540", "601"] in commands
    assert ["input", "text", "7:30"] in commands
    assert ["input", "keyevent", "KEYCODE_BACK"] in commands
    assert commands.index(["input", "tap", "540", "601"]) < commands.index(["input", "text", "7:30"])
