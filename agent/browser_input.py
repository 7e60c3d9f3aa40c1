"""`BrowserInput`: how `BrowserEnv` turns pointer and keyboard actions into input to a Chromium page.

Units. Screenshots are taken at the viewport's CSS size (`scale="css"`), whatever the device
pixel ratio, so the model sees the page the size the page lays itself out, and a 0-999
coordinate maps to CSS pixels once (`Point.to_pixels(css_width, css_height)`). Playwright's
mouse and touch APIs take CSS pixels and Chromium applies the device pixel ratio itself:
scaling by the ratio here as well would be the double conversion the protocol forbids. One
more step is needed on phones: a page without a `<meta name=viewport>` is laid out wider
than the screen and zoomed out, and input takes layout (client) coordinates, so a screenshot
point is divided by `visualViewport.scale` and offset by the visual viewport's position.

Touch devices (`device="Pixel 7"` or any descriptor with `has_touch`) tap instead of
clicking; long press and swipe are raw touch sequences sent over CDP, because Playwright's
touchscreen only taps. Without touch, a long press holds the mouse button and a swipe is a
wheel scroll in the direction the content would move.
"""

from __future__ import annotations

from typing import Any

from agent.actions import Box, Click, Drag, Hover, Key, LongPress, Mark, Point, Scroll, Swipe, Target, Type
from agent.environment import ActionHandlers, Observation

WHEEL_PX_PER_STEP = 100  # one wheel notch in Chromium on Linux
SWIPE_FRACTION = 0.4  # a swipe moves the finger this fraction of the viewport

# Desktop-format key names (lower case) -> Playwright key names.
KEY_NAMES = {
    "ctrl": "Control", "control": "Control", "alt": "Alt", "option": "Alt", "shift": "Shift",
    "cmd": "Meta", "command": "Meta", "meta": "Meta", "super": "Meta", "win": "Meta", "windows": "Meta",
    "enter": "Enter", "return": "Enter", "esc": "Escape", "escape": "Escape", "tab": "Tab",
    "backspace": "Backspace", "delete": "Delete", "del": "Delete", "insert": "Insert", "space": "Space",
    "up": "ArrowUp", "down": "ArrowDown", "left": "ArrowLeft", "right": "ArrowRight",
    "arrowup": "ArrowUp", "arrowdown": "ArrowDown", "arrowleft": "ArrowLeft", "arrowright": "ArrowRight",
    "pageup": "PageUp", "pagedown": "PageDown", "page_up": "PageUp", "page_down": "PageDown",
    "home": "Home", "end": "End", "capslock": "CapsLock", "plus": "+",
    **{f"f{i}": f"F{i}" for i in range(1, 13)},
}

_VISUAL_VIEWPORT_JS = """() => { const v = window.visualViewport;
  return v ? [v.scale, v.offsetLeft, v.offsetTop] : [1, 0, 0]; }"""


def key_name(key: str) -> str:
    """A desktop-format key name ('ctrl', 'pagedown', 'a') as a Playwright key name."""
    return KEY_NAMES.get(key.lower(), key if len(key) == 1 else key[:1].upper() + key[1:])


class BrowserInput(ActionHandlers):
    """The handlers of the actions that are input (Click, Hover, Drag, Scroll, LongPress, Swipe,
    Type, Key), and the conversion of a target to CSS pixels they share.

    `BrowserEnv` derives from it and provides what they act on: the current `page`, its
    `viewport` in CSS pixels, `has_touch`, `is_mobile` and the page's CDP session.
    """

    page: Any
    viewport: tuple[int, int]
    has_touch: bool
    is_mobile: bool

    def _cdp_session(self, page: Any = None) -> Any:
        """A CDP session on `page` (default: the current page), made once per page."""
        raise NotImplementedError

    def _pixels(self, target: Target, observation: Observation) -> tuple[float, float]:
        """Client (layout-viewport) CSS pixels of `target`'s centre: what Playwright's mouse,
        touchscreen and the page's `elementFromPoint` take."""
        x, y = self._screen_pixels(target, observation)
        # the screenshot shows the visual viewport; input takes layout-viewport coordinates,
        # which differ when a mobile page is zoomed (no <meta name=viewport>)
        if not self.is_mobile:  # only mobile emulation zooms a page; skip the round trip
            return x, y
        scale, left, top = self.page.evaluate(_VISUAL_VIEWPORT_JS)
        return left + x / scale, top + y / scale

    def _screen_pixels(self, target: Target, observation: Observation) -> tuple[float, float]:
        """Screen CSS pixels of `target`'s centre: what raw CDP touch events take."""
        width, height = observation.screenshot.size
        if isinstance(target, Mark):
            if target.id not in observation.marks:
                raise ValueError(f"mark [{target.id}] is not on the page; marks are {sorted(observation.marks)}")
            target = observation.marks[target.id]
        point = target.center if isinstance(target, Box) else target
        if not isinstance(point, Point):
            raise TypeError(f"target {target!r} is not a Point, Box or Mark")
        vw, vh = self.viewport  # equal to the screenshot's size unless the viewport changed since
        x, y = point.to_pixels(width, height)
        return x * vw / width, y * vh / height

    def _do_click(self, action: Click, observation: Observation) -> None:
        x, y = self._pixels(action.target, observation)
        if self.has_touch and action.button == "left" and action.count == 1:
            self.page.touchscreen.tap(x, y)
        else:
            self.page.mouse.click(x, y, button=action.button, click_count=action.count)

    def _do_hover(self, action: Hover, observation: Observation) -> None:
        self.page.mouse.move(*self._pixels(action.target, observation))

    def _do_drag(self, action: Drag, observation: Observation) -> None:
        if self.has_touch:
            path = [self._screen_pixels(action.start, observation), self._screen_pixels(action.end, observation)]
            self._touch_path(path, hold_ms=300)
            return
        (x1, y1), (x2, y2) = self._pixels(action.start, observation), self._pixels(action.end, observation)
        mouse = self.page.mouse
        mouse.move(x1, y1)
        mouse.down()
        mouse.move(x2, y2, steps=10)  # intermediate moves: drag handlers and HTML5 drag need them
        mouse.up()

    def _do_scroll(self, action: Scroll, observation: Observation) -> None:
        if action.target is not None:
            x, y = self._pixels(action.target, observation)
        else:
            width, height = self.viewport
            x, y = width / 2, height / 2
        distance = action.steps * WHEEL_PX_PER_STEP
        dx, dy = {"up": (0, -distance), "down": (0, distance),
                  "left": (-distance, 0), "right": (distance, 0)}[action.direction]
        self.page.mouse.move(x, y)
        self.page.mouse.wheel(dx, dy)

    def _do_longpress(self, action: LongPress, observation: Observation) -> None:
        if self.has_touch:
            self._touch_path([self._screen_pixels(action.target, observation)], hold_ms=action.duration_ms)
            return
        x, y = self._pixels(action.target, observation)
        self.page.mouse.move(x, y)
        self.page.mouse.down()
        self.page.wait_for_timeout(action.duration_ms)
        self.page.mouse.up()

    def _do_swipe(self, action: Swipe, observation: Observation) -> None:
        width, height = self.viewport
        if not self.has_touch:  # finger up == content moves up == wheel down
            steps = max(1, round(SWIPE_FRACTION * height / WHEEL_PX_PER_STEP))
            opposite = {"up": "down", "down": "up", "left": "right", "right": "left"}[action.direction]
            self._do_scroll(Scroll(opposite, action.target, steps), observation)
            return
        if action.target is not None:
            x, y = self._screen_pixels(action.target, observation)
        else:
            x, y = width / 2, height / 2
        dx, dy = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}[action.direction]
        end = (min(width - 1, max(0, x + dx * SWIPE_FRACTION * width)),
               min(height - 1, max(0, y + dy * SWIPE_FRACTION * height)))
        path = [(x + (end[0] - x) * i / 10, y + (end[1] - y) * i / 10) for i in range(11)]
        self._touch_path(path, hold_ms=0)

    def _touch_path(self, path: list[tuple[float, float]], *, hold_ms: int) -> None:
        """One finger down at path[0] (screen CSS pixels), held `hold_ms`, moved along the
        path, lifted. CDP touch events take screen coordinates, unlike Playwright's input."""
        cdp = self._cdp_session()
        point = lambda xy: [{"x": xy[0], "y": xy[1], "id": 0}]  # noqa: E731
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": point(path[0])})
        if hold_ms:
            self.page.wait_for_timeout(hold_ms)
        for xy in path[1:]:
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": point(xy)})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})

    def _do_type(self, action: Type, observation: Observation) -> None:
        if action.target is not None:
            self._do_click(Click(action.target), observation)
        keyboard = self.page.keyboard
        if action.clear:
            keyboard.press("ControlOrMeta+A")
            keyboard.press("Backspace")
        keyboard.type(action.text)
        if action.press_enter:
            keyboard.press("Enter")

    def _do_key(self, action: Key, observation: Observation) -> None:
        names = [key_name(k) for k in action.keys]
        if "Shift" in names[:-1] and len(names[-1]) == 1:
            names[-1] = names[-1].upper()  # a real keyboard reports 'K' for shift+k; Playwright would say 'k'
        self.page.keyboard.press("+".join(names))
