"""`DesktopEnv`: the agent's environment on an X11 display, driven by `xdotool`.

With no display given and no `$DISPLAY`, it starts its own `Xvfb` (`-displayfd` lets the
server pick a free display number and tells us when it accepts connections) and stops it on
`close()`. Screenshots come from Pillow's `ImageGrab.grab(xdisplay=...)` (XCB), one X pixel
per screenshot pixel, so a 0-999 point converts with the screenshot's size, once; X has no
device pixel ratio of its own.

Typing. `xdotool type` gets three things wrong with characters missing from the keymap. It
binds each to one scratch keycode with a single keysym, and X reads a one-keysym letter as
a lower-case / upper-case pair, so "Ä" arrives as "ä". It rebinds that keycode for the next
character and unbinds it at the end, while the application refreshes its copy of the keymap
only when it gets round to the MappingNotify event, so a busy application decodes a key
with the next binding or none ("你好" arrives as "你"). And control characters become
whatever key it guesses. So ASCII runs go through `xdotool type`; newline and tab are the
Return and Tab keys; every other character is first bound with `xmodmap` to a free keycode
of its own (both levels, so no case folding), typed as its keysym (`U00C4`), and the
bindings are removed only after the application had time to read them. Without `xmodmap`
the characters still go as keysyms, upper-case letters with `shift+` (which picks the
upper-case level of xdotool's scratch binding), and a longer delay.

Nothing the model writes reaches a shell: every command is an argv list, and `OpenApp` only
starts programs from the `apps` map the user configured.
"""

from __future__ import annotations

import logging
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence

from PIL import ImageGrab

from agent.actions import (
    TERMINAL_ACTIONS, Action, Click, Drag, Hover, Key, LongPress, Navigate, OpenApp, Scroll, Swipe, Target, Type, Wait)
from agent.domains import DomainRules
from agent.environment import ActionHandlers, ElementInfo, Observation, UnsupportedAction, screen_pixels

logger = logging.getLogger(__name__)

XVFB_START_TIMEOUT_S = 10.0
BUTTONS = {"left": "1", "middle": "2", "right": "3"}
WHEEL_BUTTONS = {"up": "4", "down": "5", "left": "6", "right": "7"}
TYPE_DELAY_MS = 12  # xdotool's default; faster drops characters in some toolkits
SCRATCH_DELAY_MS = 60  # per key when xdotool must rebind its scratch keycode (no xmodmap)
UNBIND_AFTER_S = 0.3  # keep our keycode bindings this long after the last key

# Desktop-format key names -> X keysym names xdotool accepts.
KEYSYMS = {
    "ctrl": "ctrl", "control": "ctrl", "alt": "alt", "shift": "shift", "option": "alt",
    "cmd": "super", "command": "super", "win": "super", "windows": "super", "super": "super", "meta": "super",
    "enter": "Return", "return": "Return", "esc": "Escape", "escape": "Escape", "tab": "Tab",
    "backspace": "BackSpace", "delete": "Delete", "del": "Delete", "insert": "Insert", "space": "space",
    "up": "Up", "down": "Down", "left": "Left", "right": "Right",
    "arrowup": "Up", "arrowdown": "Down", "arrowleft": "Left", "arrowright": "Right",
    "pageup": "Prior", "pagedown": "Next", "page_up": "Prior", "page_down": "Next",
    "home": "Home", "end": "End", "capslock": "Caps_Lock", "print": "Print", "printscreen": "Print",
    "menu": "Menu", "plus": "plus", "minus": "minus",
    "-": "minus", "+": "plus", "=": "equal", ",": "comma", ".": "period", "/": "slash",
    "\\": "backslash", ";": "semicolon", "'": "apostrophe", "`": "grave", "[": "bracketleft",
    "]": "bracketright", " ": "space",
    **{f"f{i}": f"F{i}" for i in range(1, 13)},
}


def keysym(key: str) -> str:
    """A desktop-format key name ('ctrl', 'pagedown', 'a', ',') as an X keysym name."""
    if key in KEYSYMS:
        return KEYSYMS[key]
    if key.lower() in KEYSYMS:
        return KEYSYMS[key.lower()]
    if len(key) == 1:
        return key if key.isascii() and key.isalnum() else f"U{ord(key):04X}"
    return key  # an X keysym name already ("XF86AudioMute", "KP_Enter")


def typing_commands(text: str, *, delay_ms: int = TYPE_DELAY_MS,
                    key_delay_ms: int | None = None) -> list[list[str]]:
    """xdotool argument lists that type `text` exactly (see the module docstring)."""
    commands: list[list[str]] = []
    run: list[str] = []  # printable ASCII waiting for `xdotool type`
    keys: list[str] = []  # keysyms waiting for `xdotool key`

    def flush_run() -> None:
        if run:
            commands.append(["type", "--delay", str(delay_ms), "--", "".join(run)])
            run.clear()

    def flush_keys() -> None:
        if keys:
            commands.append(["key", "--delay", str(delay_ms if key_delay_ms is None else key_delay_ms), *keys])
            keys.clear()

    for char in text:
        if char.isascii() and char.isprintable():
            flush_keys()
            run.append(char)
            continue
        flush_run()
        if char == "\n":
            keys.append("Return")
        elif char == "\t":
            keys.append("Tab")
        elif char == "\r":
            continue  # "\r\n" is one line break
        elif not char.isprintable():
            raise ValueError(f"text has the control character {char!r} (U+{ord(char):04X}), which cannot be typed")
        else:
            upper = char != char.lower() and char == char.upper()
            keys.append(("shift+" if upper else "") + f"U{ord(char):04X}")
    flush_run()
    flush_keys()
    return commands


def start_xvfb(size: tuple[int, int]) -> tuple[subprocess.Popen, str]:
    """Start `Xvfb` on a free display; return the process and ':N' once it accepts clients."""
    if shutil.which("Xvfb") is None:
        raise FileNotFoundError("no $DISPLAY and no Xvfb on PATH; install xvfb or pass display=")
    read_fd, write_fd = os.pipe()
    width, height = size
    process = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write_fd)
    number = b""
    deadline = time.monotonic() + XVFB_START_TIMEOUT_S
    try:
        while not number.endswith(b"\n"):
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(read_fd, 16) if ready else b""
            if not chunk:
                process.kill()
                _, err = process.communicate()
                raise RuntimeError(f"Xvfb did not start within {XVFB_START_TIMEOUT_S} s: {err.decode(errors='replace')[-500:]}")
            number += chunk
    finally:
        os.close(read_fd)
    return process, f":{number.decode().strip()}"


class DesktopEnv(ActionHandlers):
    """An X11 desktop. `display` is ':N' (default `$DISPLAY`, else a new Xvfb of `size`).

    `apps` maps app names to argv lists for `OpenApp` (e.g. {"terminal": ["xterm"]});
    `settle_s` is how long to let applications react after each action.
    """

    platform = "desktop"
    rules: DomainRules | None = None  # a desktop opens no URLs itself

    def __init__(self, *, display: str | None = None, size: tuple[int, int] = (1280, 800),
                 apps: Mapping[str, Sequence[str]] | None = None, settle_s: float = 0.15) -> None:
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size={size!r}; expected (width, height) in pixels")
        if shutil.which("xdotool") is None:
            raise FileNotFoundError("xdotool is not on PATH; install it (apt install xdotool)")
        self.apps = {name.lower(): list(argv) for name, argv in (apps or {}).items()}
        self.settle_s = settle_s
        self._xvfb: subprocess.Popen | None = None
        self._children: list[subprocess.Popen] = []
        display = display or os.environ.get("DISPLAY")
        if not display:
            self._xvfb, display = start_xvfb(size)
            logger.info("started Xvfb on %s (%dx%d)", display, *size)
        self.display = display

    @property
    def env(self) -> dict[str, str]:
        """Environment for programs on this display (e.g. `subprocess.Popen(..., env=env.env)`)."""
        return {**os.environ, "DISPLAY": self.display}

    def xdotool(self, *args: str) -> str:
        result = subprocess.run(["xdotool", *args], env=self.env, capture_output=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"xdotool {' '.join(args)!r} failed: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout.decode(errors="replace")

    # --- observe --------------------------------------------------------------------------

    def observe(self) -> Observation:
        screenshot = ImageGrab.grab(xdisplay=self.display).convert("RGB")
        return Observation(screenshot=screenshot, title=self._focused_window_name())

    def _focused_window_name(self) -> str | None:
        result = subprocess.run(["xdotool", "getwindowfocus", "getwindowname"], env=self.env,
                                capture_output=True, timeout=10)
        name = result.stdout.decode(errors="replace").strip()
        return name if result.returncode == 0 and name else None  # fails with no window focused

    # --- execute --------------------------------------------------------------------------

    def execute(self, action: Action, observation: Observation) -> None:
        """Perform `action` (coordinates relative to `observation.screenshot`); raises
        `UnsupportedAction` for Navigate, Back and Home: a desktop has no one address bar or history."""
        if isinstance(action, TERMINAL_ACTIONS):
            return
        self.perform(action, observation)
        if self.settle_s:
            time.sleep(self.settle_s)

    def goto(self, url: str) -> None:
        """Refused: a desktop has no address bar of its own; open a browser with `OpenApp`."""
        raise UnsupportedAction(Navigate(url), self, "open a browser with OpenApp and type the URL")

    @staticmethod
    def _pixels(target: Target, observation: Observation) -> tuple[str, str]:
        """xdotool arguments for a target."""
        return tuple(map(str, screen_pixels(target, observation)))  # type: ignore[return-value]

    # No `mousemove --sync`: it waits for the pointer to move, forever when it is already
    # there. The X server handles the XTest events of one xdotool call in order anyway.

    def _do_click(self, action: Click, observation: Observation) -> None:
        self.xdotool("mousemove", *self._pixels(action.target, observation),
                     "click", "--repeat", str(action.count), "--delay", "60", BUTTONS[action.button])

    def _do_hover(self, action: Hover, observation: Observation) -> None:
        self.xdotool("mousemove", *self._pixels(action.target, observation))

    def _do_drag(self, action: Drag, observation: Observation) -> None:
        (x1, y1), (x2, y2) = self._pixels(action.start, observation), self._pixels(action.end, observation)
        # intermediate motion and short pauses: toolkits start a drag only after seeing motion
        path = [(int(x1) + (int(x2) - int(x1)) * i // 4, int(y1) + (int(y2) - int(y1)) * i // 4) for i in (1, 2, 3)]
        moves = [arg for x, y in path for arg in ("mousemove", str(x), str(y), "sleep", "0.03")]
        self.xdotool("mousemove", x1, y1, "mousedown", "1", "sleep", "0.05", *moves,
                     "mousemove", x2, y2, "sleep", "0.05", "mouseup", "1")

    def _do_scroll(self, action: Scroll, observation: Observation) -> None:
        if action.target is not None:
            self.xdotool("mousemove", *self._pixels(action.target, observation))
        self.xdotool("click", "--repeat", str(action.steps), "--delay", "30", WHEEL_BUTTONS[action.direction])

    def _do_swipe(self, action: Swipe, observation: Observation) -> None:
        opposite = {"up": "down", "down": "up", "left": "right", "right": "left"}[action.direction]
        self._do_scroll(Scroll(opposite, action.target), observation)  # finger up == content up

    def _do_longpress(self, action: LongPress, observation: Observation) -> None:
        self.xdotool("mousemove", *self._pixels(action.target, observation), "mousedown", "1",
                     "sleep", str(action.duration_ms / 1000), "mouseup", "1")

    def _do_type(self, action: Type, observation: Observation) -> None:
        extra = sorted({c for c in action.text if not c.isascii() and c.isprintable()})
        use_xmodmap = bool(extra) and shutil.which("xmodmap") is not None
        commands = typing_commands(  # validates before anything is sent
            action.text, key_delay_ms=None if use_xmodmap or not extra else SCRATCH_DELAY_MS)
        if action.target is not None:
            self._do_click(Click(action.target), observation)
        if action.clear:
            self.xdotool("key", "ctrl+a", "BackSpace")
        bound = self._bind_keysyms(extra) if use_xmodmap else []
        try:
            for command in commands:
                self.xdotool(*command)
        finally:
            if bound:
                time.sleep(UNBIND_AFTER_S)
                self._xmodmap(*[f"keycode {code} =" for code in bound])
        if action.press_enter:
            self.xdotool("key", "Return")

    def _xmodmap(self, *expressions: str) -> str:
        args = [arg for e in expressions for arg in ("-e", e)] if expressions else ["-pke"]
        result = subprocess.run(["xmodmap", *args], env=self.env, capture_output=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"xmodmap failed: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout.decode(errors="replace")

    def _bind_keysyms(self, chars: list[str]) -> list[int]:
        """Bind each character's keysym to a free keycode of its own; return the keycodes."""
        free = [int(m) for m in re.findall(r"^keycode\s+(\d+)\s*=\s*$", self._xmodmap(), flags=re.M)]
        if len(free) < len(chars):  # a huge alphabet: let xdotool's scratch keycode cope
            logger.warning("only %d free keycodes for %d characters; typing may drop some", len(free), len(chars))
            chars = chars[:len(free)]
        codes = free[-len(chars):] if chars else []
        self._xmodmap(*[f"keycode {code} = U{ord(c):04X} U{ord(c):04X}" for code, c in zip(codes, chars)])
        return codes

    def _do_key(self, action: Key, observation: Observation) -> None:
        self.xdotool("key", "+".join(keysym(k) for k in action.keys))

    def _do_openapp(self, action: OpenApp, observation: Observation) -> None:
        argv = self.apps.get(action.name.strip().lower())
        if argv is None:
            raise ValueError(f"app {action.name!r} is not configured; DesktopEnv(apps=...) has {sorted(self.apps)}")
        self._children.append(subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))

    def _do_wait(self, action: Wait, observation: Observation) -> None:
        time.sleep(action.seconds)

    # --- describe / close -----------------------------------------------------------------

    def describe(self, target: Target | None, observation: Observation) -> ElementInfo | None:
        """None: X11 has no portable way to name the widget under a point."""
        return None

    def close(self) -> None:
        """Stop the apps this env started and its own Xvfb (never a display it was given)."""
        for child in self._children:
            if child.poll() is None:
                child.terminate()
        for child in self._children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
        self._children.clear()
        if self._xvfb is not None:
            self._xvfb.terminate()
            try:
                self._xvfb.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._xvfb.kill()
                self._xvfb.wait()
            self._xvfb = None

    def __enter__(self) -> DesktopEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
