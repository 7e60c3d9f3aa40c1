"""AndroidEnv against a fake `adb` first on PATH.

The fake logs its argv, serves a real PNG for `exec-out screencap -p`, and runs each
`adb shell` command string through a real `sh` whose PATH holds fake `input`, `am`, `monkey`
and `wm`. So the tests see both what adb received and the argv the device's commands would
receive after the device shell parsed it: quoting mistakes show up as split, expanded or
executed arguments.
"""

import json
import os
import sys
import textwrap

import pytest
from PIL import Image

from agent.actions import (
    Back, Box, Click, Done, Drag, Home, Hover, Key, LongPress, Mark, Navigate, OpenApp, Point,
    Scroll, Swipe, Type)
from agent.android import AndroidEnv, input_text_chunks, keycode
from agent.domains import BlockedURL, DomainRules
from agent.environment import UnsupportedAction

WIDTH, HEIGHT = 1080, 2400

FAKE_ADB = """\
#!{python} -S
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:1] == ["-s"]:
    args = args[2:]
if args == ["exec-out", "screencap", "-p"]:
    with open(os.environ["FAKE_ADB_SCREEN"], "rb") as f:
        sys.stdout.buffer.write(f.read())
elif args[:1] == ["shell"]:
    env = dict(os.environ, PATH=os.environ["FAKE_DEVICE_BIN"])
    sys.exit(subprocess.run(["/bin/sh", "-c", " ".join(args[1:])], env=env).returncode)
else:
    sys.exit("fake adb: unsupported " + repr(args))
"""

FAKE_DEVICE_COMMAND = """\
#!{python} -S
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_DEVICE_LOG"], "a") as log:
    log.write(json.dumps([name, *sys.argv[1:]]) + "\\n")
if name == "wm":
    print("Physical size: {width}x{height}")
    print("Override size: 720x1600")
"""


class FakeDevice:
    def __init__(self, root):
        self.adb_log, self.device_log = root / "adb.log", root / "device.log"

    def _read(self, path):
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    @property
    def adb_calls(self):
        return self._read(self.adb_log)

    @property
    def commands(self):
        """What the device's programs received, after the device shell parsed the command."""
        return self._read(self.device_log)

    def clear(self):
        for path in (self.adb_log, self.device_log):
            path.unlink(missing_ok=True)


@pytest.fixture
def device(tmp_path, monkeypatch):
    host_bin, device_bin = tmp_path / "host", tmp_path / "device"
    host_bin.mkdir()
    device_bin.mkdir()
    (host_bin / "adb").write_text(FAKE_ADB.format(python=sys.executable))
    (host_bin / "adb").chmod(0o755)
    program = FAKE_DEVICE_COMMAND.format(python=sys.executable, width=WIDTH, height=HEIGHT)
    for name in ("input", "am", "monkey", "wm"):
        (device_bin / name).write_text(program)
        (device_bin / name).chmod(0o755)
    screen = tmp_path / "screen.png"
    Image.new("RGB", (WIDTH, HEIGHT), (30, 120, 200)).save(screen)
    monkeypatch.setenv("PATH", f"{host_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    monkeypatch.setenv("FAKE_DEVICE_LOG", str(tmp_path / "device.log"))
    monkeypatch.setenv("FAKE_ADB_SCREEN", str(screen))
    monkeypatch.setenv("FAKE_DEVICE_BIN", str(device_bin))
    return FakeDevice(tmp_path)


@pytest.fixture
def env(device):
    return AndroidEnv(settle_s=0)


def test_observe_is_the_screencap_png(env, device):
    observation = env.observe()
    assert observation.screenshot.size == (WIDTH, HEIGHT)
    assert observation.screenshot.getpixel((5, 5)) == (30, 120, 200)
    assert device.adb_calls == [["exec-out", "screencap", "-p"]]


def test_serial_goes_before_every_command(device):
    env = AndroidEnv(serial="emulator-5554", settle_s=0)
    observation = env.observe()
    env.execute(Back(), observation)
    assert [call[:2] for call in device.adb_calls] == [["-s", "emulator-5554"]] * 2
    assert device.commands == [["input", "keyevent", "KEYCODE_BACK"]]


def test_taps_long_presses_and_swipes_in_screen_pixels(env, device):
    observation = env.observe()
    env.execute(Click(Point(500, 250)), observation)
    env.execute(Click(Box(100, 100, 300, 200), count=2), observation)
    env.execute(LongPress(Point(0, 999), duration_ms=1500), observation)
    env.execute(Swipe("up"), observation)
    env.execute(Swipe("left", target=Point(900, 500)), observation)
    env.execute(Scroll("down", target=Point(500, 500)), observation)
    env.execute(Drag(Point(100, 100), Point(800, 900)), observation)
    # (500.5 / 1000) * 1080 = 540.5 -> 540, (250.5 / 1000) * 2400 = 601.2 -> 601
    assert device.commands == [
        ["input", "tap", "540", "601"],
        ["input", "tap", "216", "361"], ["input", "tap", "216", "361"],  # box centre (200, 150)
        ["input", "swipe", "0", "2398", "0", "2398", "1500"],  # a held, unmoving swipe
        ["input", "swipe", "540", "1200", "540", "240", "300"],  # finger up by 40% of the height
        ["input", "swipe", "972", "1201", "540", "1201", "300"],
        ["input", "swipe", "540", "1201", "540", "241", "300"],  # scroll down = finger up
        ["input", "swipe", "108", "241", "864", "2161", "1200"],
    ]


def test_coordinates_follow_the_screenshot_not_a_fixed_size(env, device):
    small = env.observe().screenshot.resize((540, 1200))  # e.g. a rotated or scaled screen
    env.execute(Click(Point(500, 500)), type(env.observe())(screenshot=small))
    assert device.commands == [["input", "tap", "270", "600"]]


@pytest.mark.parametrize("text, expected", [
    ("hello world", [["hello%sworld"]]),
    ("it's \"quoted\" $HOME `id` ; rm -rf / && echo | cat > x",
     [["it's%s\"quoted\"%s$HOME%s`id`%s;%srm%s-rf%s/%s&&%secho%s|%scat%s>%sx"]]),
    ("50%s off", [["50%"], ["s%soff"]]),  # a literal %s is typed in two calls
    ("%s", [["%"], ["s"]]),
    ("back\\slash * ? [x] ~ # ! (a)", [["back\\slash%s*%s?%s[x]%s~%s#%s!%s(a)"]]),
])
def test_typed_text_reaches_input_text_exactly(env, device, text, expected):
    env.execute(Type(text), env.observe())
    assert device.commands == [["input", "text", *chunk] for chunk in expected]


def test_newlines_tabs_clear_target_and_enter(env, device):
    observation = env.observe()
    env.execute(Type("a b\nc\td", target=Point(500, 100), clear=True, press_enter=True), observation)
    assert device.commands == [
        ["input", "tap", "540", "241"],
        ["input", "keycombination", "KEYCODE_CTRL_LEFT", "KEYCODE_A"], ["input", "keyevent", "KEYCODE_DEL"],
        ["input", "text", "a%sb"], ["input", "keyevent", "KEYCODE_ENTER"], ["input", "text", "c"],
        ["input", "keyevent", "KEYCODE_TAB"], ["input", "text", "d"], ["input", "keyevent", "KEYCODE_ENTER"],
    ]


def test_non_ascii_needs_the_adbkeyboard_ime(env, device):
    with pytest.raises(ValueError, match="adbkeyboard"):
        env.execute(Type("héllo 你好"), env.observe())
    ime = AndroidEnv(text_input="adbkeyboard", settle_s=0)
    device.clear()
    ime.execute(Type("héllo 你好"), ime.observe())
    assert device.commands == [["am", "broadcast", "-a", "ADB_INPUT_B64", "--es", "msg", "aMOpbGxvIOS9oOWlvQ=="]]


def test_keys_home_back_and_chords(env, device):
    observation = env.observe()
    env.execute(Key(("enter",)), observation)
    env.execute(Key(("ctrl", "a")), observation)
    env.execute(Home(), observation)
    env.execute(Back(), observation)
    assert device.commands == [
        ["input", "keyevent", "KEYCODE_ENTER"], ["input", "keycombination", "KEYCODE_CTRL_LEFT", "KEYCODE_A"],
        ["input", "keyevent", "KEYCODE_HOME"], ["input", "keyevent", "KEYCODE_BACK"]]
    assert keycode("F5") == "KEYCODE_F5" and keycode("keycode_camera") == "KEYCODE_CAMERA"
    with pytest.raises(ValueError, match="'hyper'"):
        keycode("hyper")


def test_open_app_by_name_package_or_user_map(device):
    env = AndroidEnv(apps={"My Bank": "com.example.bank"}, settle_s=0)
    observation = env.observe()
    env.execute(OpenApp("Settings"), observation)
    env.execute(OpenApp("my bank"), observation)
    env.execute(OpenApp("org.fdroid.fdroid"), observation)
    launcher = ["-c", "android.intent.category.LAUNCHER", "1"]
    assert device.commands == [["monkey", "-p", "com.android.settings", *launcher],
                               ["monkey", "-p", "com.example.bank", *launcher],
                               ["monkey", "-p", "org.fdroid.fdroid", *launcher]]
    with pytest.raises(ValueError, match="Nonexistent App"):
        env.execute(OpenApp("Nonexistent App"), observation)


def test_navigate_opens_a_view_intent_and_obeys_rules(device):
    env = AndroidEnv(rules=DomainRules(blocked_domains=["evil.example"]), settle_s=0)
    observation = env.observe()
    url = "https://example.com/search?q=a b&x=1;reboot"
    env.execute(Navigate(url), observation)
    assert device.commands == [["am", "start", "-a", "android.intent.action.VIEW", "-d", url]]
    for refused in ["https://evil.example/", "file:///sdcard/secret.txt"]:
        with pytest.raises(BlockedURL):
            env.execute(Navigate(refused), observation)
    assert len(device.commands) == 1


def test_goto_opens_the_url_as_navigate_does(device):
    env = AndroidEnv(rules=DomainRules(blocked_domains=["evil.example"]), settle_s=0)
    env.goto("https://example.com/a b")
    assert device.commands == [["am", "start", "-a", "android.intent.action.VIEW", "-d", "https://example.com/a b"]]
    with pytest.raises(BlockedURL):
        env.goto("https://evil.example/")
    assert len(device.commands) == 1 and env.rules.blocked


def test_screen_size_prefers_the_override(env, device):
    assert env.screen_size() == (720, 1600)


def test_unsupported_actions_and_terminal_ones(env, device):
    observation = env.observe()
    env.execute(Done(), observation)
    for action, message in [(Hover(Point(1, 1)), "Hover"), (Click(Point(1, 1), button="right"), "right"),
                            (Click(Mark(3)), "mark")]:
        with pytest.raises(ValueError, match=message):
            env.execute(action, observation)
    assert device.commands == []


def test_unsupported_actions_name_the_action_and_the_environment(env, device):
    observation = env.observe()
    for action, message in [(Hover(Point(1, 1)), "^Hover cannot be executed in AndroidEnv: it has no touch "),
                            (Click(Point(1, 1), button="middle"), "^Click cannot be executed in AndroidEnv: a middle"),
                            ("tap", "^str cannot be executed in AndroidEnv$")]:
        with pytest.raises(UnsupportedAction, match=message):
            env.execute(action, observation)
    assert device.commands == []


def test_failures_name_the_command(env, device, tmp_path):
    (tmp_path / "screen.png").write_bytes(b"error: device unauthorized")
    with pytest.raises(RuntimeError, match="not a PNG"):
        env.observe()
    with pytest.raises(FileNotFoundError, match="no-such-adb"):
        AndroidEnv(adb="no-such-adb")


def test_input_text_chunks_round_trip_through_androids_unescaping():
    def android_unescape(chunk):  # InputShellCommand.sendText: "%s" -> " "
        out, i = [], 0
        while i < len(chunk):
            if chunk.startswith("%s", i):
                out.append(" ")
                i += 2
            else:
                out.append(chunk[i])
                i += 1
        return "".join(out)

    for text in ["a%s b", "%%ss", "% s", "x%", "100 % sure %s", "  ", "s%s%s%ss"]:
        chunks = input_text_chunks(text)
        assert all(" " not in c for c in chunks)
        assert "".join(android_unescape(c) for c in chunks) == text, textwrap.shorten(repr(chunks), 80)
