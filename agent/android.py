"""`AndroidEnv`: the agent's environment on an Android phone or emulator, through `adb`.

Using it. Install the Android platform tools (`apt install adb` or Google's
platform-tools zip), then either
  * a phone: enable Developer options > USB debugging, plug it in, accept the prompt, or
  * an emulator: `sdkmanager "system-images;android-34;google_apis;x86_64"`,
    `avdmanager create avd -n agent -k "system-images;android-34;google_apis;x86_64"`,
    `emulator -avd agent -no-window &`, `adb wait-for-device`.
`adb devices` must list it; pass `serial=` when several are attached. Typing non-ASCII text
needs an IME that accepts broadcasts: install ADBKeyboard (github.com/senzhk/ADBKeyBoard),
`adb shell ime set com.android.adbkeyboard/.AdbIME`, and pass `text_input="adbkeyboard"`.

What is unusual. Every device command is one string for the device's shell (`adb shell`
joins its arguments with spaces and the phone's `sh` parses them again), so each argument is
quoted with `shlex.quote`. `input text` has its own escape: a space must be sent as `%s`, so
spaces become `%s`, a literal "%s" is typed in two calls, newlines and tabs become key events.
Coordinates: `screencap` pixels are the pixels `input tap` takes (both follow the current
rotation), so a 0-999 point converts with the screenshot's own size, once. A long press is a
swipe that does not move, held for its duration. `Scroll("down")` shows what is further down,
so the finger swipes up.
"""

from __future__ import annotations

import base64
import logging
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping
from io import BytesIO
from typing import Literal

from PIL import Image

from agent.actions import (
    TERMINAL_ACTIONS, Action, Back, Click, Drag, Home, Hover, Key, LongPress, Navigate, OpenApp, Scroll, Swipe,
    Target, Type, Wait)
from agent.domains import DomainRules
from agent.environment import ActionHandlers, ElementInfo, Observation, UnsupportedAction, screen_pixels

logger = logging.getLogger(__name__)

SWIPE_FRACTION = 0.4  # a swipe moves the finger this fraction of the screen
SWIPE_MS = 300
DRAG_MS = 1200  # slow enough that the launcher / list treats it as a drag, not a fling

# App names the released model uses -> packages (stock Google apps). Extend per device:
# AndroidEnv(apps={"My Bank": "com.example.bank"}).
DEFAULT_APPS = {
    "settings": "com.android.settings", "chrome": "com.android.chrome",
    "clock": "com.google.android.deskclock", "camera": "com.android.camera2",
    "contacts": "com.google.android.contacts", "phone": "com.google.android.dialer",
    "messages": "com.google.android.apps.messaging", "gmail": "com.google.android.gm",
    "maps": "com.google.android.apps.maps", "youtube": "com.google.android.youtube",
    "calendar": "com.google.android.calendar", "files": "com.google.android.documentsui",
    "play store": "com.android.vending", "photos": "com.google.android.apps.photos",
    "calculator": "com.google.android.calculator", "drive": "com.google.android.apps.docs",
}

# Desktop-style key names -> Android key codes (names `input keyevent` understands).
KEYCODES = {
    "enter": "KEYCODE_ENTER", "return": "KEYCODE_ENTER", "back": "KEYCODE_BACK",
    "home": "KEYCODE_HOME", "tab": "KEYCODE_TAB", "space": "KEYCODE_SPACE",
    "backspace": "KEYCODE_DEL", "delete": "KEYCODE_FORWARD_DEL", "del": "KEYCODE_FORWARD_DEL",
    "esc": "KEYCODE_ESCAPE", "escape": "KEYCODE_ESCAPE", "menu": "KEYCODE_MENU",
    "up": "KEYCODE_DPAD_UP", "down": "KEYCODE_DPAD_DOWN", "left": "KEYCODE_DPAD_LEFT",
    "right": "KEYCODE_DPAD_RIGHT", "pageup": "KEYCODE_PAGE_UP", "pagedown": "KEYCODE_PAGE_DOWN",
    "end": "KEYCODE_MOVE_END", "power": "KEYCODE_POWER", "volume_up": "KEYCODE_VOLUME_UP",
    "volume_down": "KEYCODE_VOLUME_DOWN", "recent": "KEYCODE_APP_SWITCH",
    "app_switch": "KEYCODE_APP_SWITCH", "search": "KEYCODE_SEARCH",
    "ctrl": "KEYCODE_CTRL_LEFT", "control": "KEYCODE_CTRL_LEFT", "shift": "KEYCODE_SHIFT_LEFT",
    "alt": "KEYCODE_ALT_LEFT", "meta": "KEYCODE_META_LEFT", "super": "KEYCODE_META_LEFT",
}


def keycode(key: str) -> str:
    """'enter' -> 'KEYCODE_ENTER', 'a' -> 'KEYCODE_A', '7' -> 'KEYCODE_7'."""
    name = key.lower()
    if name in KEYCODES:
        return KEYCODES[name]
    if re.fullmatch(r"[a-z0-9]", name):
        return "KEYCODE_" + name.upper()
    if re.fullmatch(r"f([1-9]|1[0-2])", name):
        return "KEYCODE_" + name.upper()
    if re.fullmatch(r"keycode_[a-z0-9_]+", name):
        return name.upper()
    raise ValueError(f"key {key!r} has no Android key code; expected one of {sorted(KEYCODES)}, "
                     "a letter, a digit or KEYCODE_*")


def input_text_chunks(text: str) -> list[str]:
    """`text` as arguments for successive `input text` calls ('%s' is that command's space).

    A literal "%s" would be typed as a space, so the text is cut between '%' and 's'.
    """
    if not text:
        return []
    if not text.isascii() or any(not c.isprintable() for c in text):
        raise ValueError(f"text {text!r} has characters `input text` cannot type (non-ASCII or control); "
                         "use text_input='adbkeyboard' with the ADBKeyboard IME")
    parts = text.split("%s")
    chunks = [parts[0] + ("%" if len(parts) > 1 else "")]
    for i, part in enumerate(parts[1:], start=1):
        chunks.append("s" + part + ("%" if i < len(parts) - 1 else ""))
    return [chunk.replace(" ", "%s") for chunk in chunks if chunk]


class AndroidEnv(ActionHandlers):
    """An Android device driven through `adb`; see the module docstring for set-up.

    `serial` picks a device (`adb -s`); `adb` is the executable (looked up on PATH);
    `apps` extends the app-name -> package map for `OpenApp`; `rules` restricts the URLs
    `Navigate` opens; `settle_s` is how long to let the UI react after an action.
    """

    platform = "mobile"

    def __init__(self, *, serial: str | None = None, adb: str = "adb",
                 apps: Mapping[str, str] | None = None, rules: DomainRules | None = None,
                 text_input: Literal["input", "adbkeyboard"] = "input", settle_s: float = 0.5,
                 timeout_s: float = 30.0) -> None:
        path = shutil.which(adb)
        if path is None:
            raise FileNotFoundError(f"adb={adb!r} is not an executable on PATH; install the Android platform tools")
        if text_input not in ("input", "adbkeyboard"):
            raise ValueError(f"text_input={text_input!r}; expected 'input' or 'adbkeyboard'")
        self.adb = [path] + (["-s", serial] if serial else [])
        self.apps = {**DEFAULT_APPS, **{name.lower(): package for name, package in (apps or {}).items()}}
        self.rules = rules if rules is not None else DomainRules()
        self.text_input = text_input
        self.settle_s = settle_s
        self.timeout_s = timeout_s

    # --- adb ------------------------------------------------------------------------------

    def _adb(self, *args: str) -> bytes:
        command = [*self.adb, *args]
        logger.debug("adb: %s", shlex.join(command))
        result = subprocess.run(command, capture_output=True, timeout=self.timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"`{shlex.join(command)}` failed ({result.returncode}): "
                               f"{result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    def shell(self, *argv: str) -> str:
        """Run one command on the device; each argument is quoted for the device's shell."""
        return self._adb("shell", shlex.join(argv)).decode(errors="replace")

    def screen_size(self) -> tuple[int, int]:
        """(width, height) in pixels from `wm size` (the override when one is set)."""
        out = self.shell("wm", "size")
        sizes = re.findall(r"(Physical|Override) size: (\d+)x(\d+)", out)
        if not sizes:
            raise RuntimeError(f"`wm size` printed {out!r}; expected 'Physical size: WxH'")
        _, width, height = sizes[-1]
        return int(width), int(height)

    # --- observe --------------------------------------------------------------------------

    def observe(self) -> Observation:
        data = self._adb("exec-out", "screencap", "-p")
        try:
            screenshot = Image.open(BytesIO(data))
            screenshot.load()
        except OSError as error:
            raise RuntimeError(f"`screencap -p` returned {len(data)} bytes that are not a PNG "
                               f"(starting {data[:16]!r}); is the screen locked or the device offline?") from error
        return Observation(screenshot=screenshot.convert("RGB"))

    # --- execute --------------------------------------------------------------------------

    def execute(self, action: Action, observation: Observation) -> None:
        """Perform `action` (coordinates relative to `observation.screenshot`); raises
        `UnsupportedAction` for Hover and for right or middle clicks, which touch has not."""
        if isinstance(action, TERMINAL_ACTIONS):
            return
        self.perform(action, observation)
        if self.settle_s:
            time.sleep(self.settle_s)

    def goto(self, url: str) -> None:
        """Open `url` as `Navigate` does (raises `BlockedURL` if the rules refuse it)."""
        self._open_url(url)
        if self.settle_s:
            time.sleep(self.settle_s)

    def _open_url(self, url: str) -> None:
        self.rules.check(url)
        self.shell("am", "start", "-a", "android.intent.action.VIEW", "-d", url)

    def _swipe_path(self, direction: str, target: Target | None, observation: Observation) -> list[int]:
        width, height = observation.screenshot.size
        x, y = screen_pixels(target, observation) if target is not None else (width // 2, height // 2)
        dx, dy = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}[direction]
        end_x = min(width - 1, max(0, int(x + dx * SWIPE_FRACTION * width)))
        end_y = min(height - 1, max(0, int(y + dy * SWIPE_FRACTION * height)))
        return [x, y, end_x, end_y]

    def _input(self, *argv: object) -> None:
        self.shell("input", *(str(a) for a in argv))

    def _do_click(self, action: Click, observation: Observation) -> None:
        if action.button != "left":
            raise UnsupportedAction(action, self, f"a {action.button} click has no touch equivalent")
        x, y = screen_pixels(action.target, observation)
        for _ in range(action.count):
            self._input("tap", x, y)

    def _do_longpress(self, action: LongPress, observation: Observation) -> None:
        x, y = screen_pixels(action.target, observation)
        self._input("swipe", x, y, x, y, action.duration_ms)

    def _do_swipe(self, action: Swipe, observation: Observation) -> None:
        self._input("swipe", *self._swipe_path(action.direction, action.target, observation), SWIPE_MS)

    def _do_scroll(self, action: Scroll, observation: Observation) -> None:
        finger = {"up": "down", "down": "up", "left": "right", "right": "left"}[action.direction]
        self._input("swipe", *self._swipe_path(finger, action.target, observation), SWIPE_MS)

    def _do_drag(self, action: Drag, observation: Observation) -> None:
        (x1, y1), (x2, y2) = screen_pixels(action.start, observation), screen_pixels(action.end, observation)
        self._input("swipe", x1, y1, x2, y2, DRAG_MS)

    def _do_hover(self, action: Hover, observation: Observation) -> None:
        raise UnsupportedAction(action, self, "it has no touch equivalent")

    def _do_type(self, action: Type, observation: Observation) -> None:
        if action.target is not None:
            self._do_click(Click(action.target), observation)
        if action.clear:  # select all + delete (keycombination needs Android 13+)
            self._input("keycombination", "KEYCODE_CTRL_LEFT", "KEYCODE_A")
            self._input("keyevent", "KEYCODE_DEL")
        if self.text_input == "adbkeyboard":
            if action.text:
                message = base64.b64encode(action.text.encode()).decode()
                self.shell("am", "broadcast", "-a", "ADB_INPUT_B64", "--es", "msg", message)
        else:
            for i, line in enumerate(action.text.split("\n")):
                if i:
                    self._input("keyevent", "KEYCODE_ENTER")
                for j, piece in enumerate(line.split("\t")):
                    if j:
                        self._input("keyevent", "KEYCODE_TAB")
                    for chunk in input_text_chunks(piece):
                        self._input("text", chunk)
        if action.press_enter:
            self._input("keyevent", "KEYCODE_ENTER")

    def _do_key(self, action: Key, observation: Observation) -> None:
        codes = [keycode(k) for k in action.keys]
        if len(codes) == 1:
            self._input("keyevent", codes[0])
        else:
            self._input("keycombination", *codes)

    def _do_back(self, action: Back, observation: Observation) -> None:
        self._input("keyevent", "KEYCODE_BACK")

    def _do_home(self, action: Home, observation: Observation) -> None:
        self._input("keyevent", "KEYCODE_HOME")

    def _do_openapp(self, action: OpenApp, observation: Observation) -> None:
        self.shell("monkey", "-p", self.package(action.name), "-c", "android.intent.category.LAUNCHER", "1")

    def package(self, app: str) -> str:
        """The package for an app name (case-insensitive), or `app` itself if it is a package."""
        name = app.strip().lower()
        if name in self.apps:
            return self.apps[name]
        if re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+", name):
            return app.strip()
        raise ValueError(f"app {app!r} is not in the app map {sorted(self.apps)}; "
                         "pass AndroidEnv(apps={name: package}) or use the package name")

    def _do_navigate(self, action: Navigate, observation: Observation) -> None:
        self._open_url(action.url)

    def _do_wait(self, action: Wait, observation: Observation) -> None:
        time.sleep(action.seconds)

    # --- describe / close -----------------------------------------------------------------

    def describe(self, target: Target | None, observation: Observation) -> ElementInfo | None:
        """None: reading the view tree (`uiautomator dump`) takes seconds, so it is not done."""
        return None

    def close(self) -> None:
        """Nothing to release: adb holds no state for this object."""

    def __enter__(self) -> AndroidEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
