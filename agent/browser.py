"""`BrowserEnv`: the agent's environment in a Chromium page (Playwright, sync API).

How pointer and keyboard actions become input, and in which pixels, is `BrowserInput`'s part
(`agent.browser_input`), a base of `BrowserEnv`. This module launches the browser, keeps its
tabs, observes, waits for what an action triggered, and performs the actions that are not input
(Navigate, Back, Home, Wait; OpenApp is refused).

URL rules (`DomainRules`) are enforced on every request by a `RequestFilter` (see
`agent.request_filter`: a context route, and a `RulesProxy` every connection of the browser
goes through, for redirect hops, WebSockets and workers), fixed when the browser starts. A
blocked main-frame navigation is raised as `BlockedURL` from `execute` / `goto`, or from the
next `observe` when it happened between actions. `execute` knows which navigations its action
started in the tab from CDP's `Page.frameRequestedNavigation` (after one round trip through the
renderer), and waits for them to reach the network however long that takes; a popup or a
navigation a timer starts later is not waited for.
"""

from __future__ import annotations

import logging
import threading
import time
from io import BytesIO
from typing import Any, Literal

from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from agent import set_of_marks
from agent.actions import TERMINAL_ACTIONS, Action, Back, Box, Home, Navigate, OpenApp, Target, Wait
from agent.browser_input import BrowserInput
from agent.chromium import launch_chromium
from agent.domains import BlockedURL, DomainRules
from agent.environment import ElementInfo, Observation, UnsupportedAction
from agent.proxy import RulesProxy
from agent.request_filter import RESOLVER_RULES_FLAG, RequestedNavigations, RequestFilter, with_resolver_rules

logger = logging.getLogger(__name__)

NAVIGATION_START_S = 5.0  # after an action asked for a navigation, wait at most this long for it to start

_DESCRIBE_JS = """([x, y]) => {
  let el = (x === null) ? document.activeElement : document.elementFromPoint(x, y);
  while (el && el.shadowRoot && x !== null) {
    const inner = el.shadowRoot.elementFromPoint(x, y);
    if (!inner || inner === el) break;
    el = inner;
  }
  if (!el || el === document.body || el === document.documentElement) return null;
  const control = el.closest('a, button, input, select, textarea, [role], [contenteditable]') || el;
  const form = control.form || control.closest('form');
  const text = (control.getAttribute('aria-label') || control.innerText || control.getAttribute('placeholder')
                || control.getAttribute('title') || (control.type === 'submit' ? control.value : '') || '').trim();
  return {tag: control.tagName.toLowerCase(), input_type: control.tagName === 'INPUT' ? (control.type || 'text') : null,
          text: text.slice(0, 200) || null, form_action: form ? form.action : null};
}"""


# Playwright's sync API allows one running instance per thread, so every BrowserEnv of a
# thread shares one; it stops when the last env closes.
_local = threading.local()


def _acquire_playwright() -> Any:
    if getattr(_local, "users", 0) == 0:
        _local.playwright = sync_playwright().start()
    _local.users = getattr(_local, "users", 0) + 1
    return _local.playwright


def _release_playwright() -> None:
    _local.users -= 1
    if _local.users == 0:
        _local.playwright.stop()
        _local.playwright = None


class BrowserEnv(BrowserInput):
    """A Chromium page the agent observes and acts on.

    `viewport` is (width, height) in CSS pixels (default 1280x720, or the device's);
    `device` is a Playwright device name ("Pixel 7", "iPhone 13") or a descriptor dict, which
    brings its own viewport, pixel ratio, user agent and touch; `device_scale_factor`
    overrides the pixel ratio (default: the device's, else 1). `rules` restricts URLs (default:
    `DomainRules()`: http(s) only). `set_of_marks` draws numbered labels for the web format.
    `settle_ms` is how long after an action to wait for what it triggers to start (a
    navigation, a popup) before waiting for the page to load; `timeout_ms` bounds that wait.
    `launch_args` are extra Chromium flags (e.g. `--host-resolver-rules=...`; not a proxy:
    the URL rules need the browser's own). `blocked` lists refused requests by URL,
    `refused_connections` the connections the rules' proxy refused.
    """

    platform = "web"

    def __init__(self, viewport: tuple[int, int] | None = None, *, device: str | dict | None = None,
                 headless: bool = True, device_scale_factor: float | None = None,
                 rules: DomainRules | None = None, set_of_marks: bool = False,
                 screenshot_format: Literal["png", "jpeg"] = "png", settle_ms: int = 30,
                 timeout_ms: int = 15_000, launch_args: tuple[str, ...] = ()) -> None:
        if viewport is not None and (len(viewport) != 2 or min(viewport) < 1):
            raise ValueError(f"viewport={viewport!r}; expected (width, height) in CSS pixels, both >= 1")
        self._rules = rules if rules is not None else DomainRules()
        self.set_of_marks = set_of_marks
        self.screenshot_format = screenshot_format
        self.settle_ms = settle_ms
        self.timeout_ms = timeout_ms
        self._requests = RequestFilter(self._rules)
        self.blocked: list[BlockedURL] = self._requests.blocked  # every refused request, in order
        self.home_url: str | None = None  # `Home` returns here; the first URL `goto` loaded
        self._cdp: dict[Any, Any] = {}
        self._navigations: dict[Any, RequestedNavigations] = {}

        if any(a.startswith(("--proxy-server", "--proxy-pac-url", "--no-proxy-server", "--proxy-bypass-list"))
               for a in launch_args):
            raise ValueError(f"launch_args={launch_args!r} set a proxy; BrowserEnv sends every connection "
                             "through its own (the URL rules' proxy), so it takes none")
        self._playwright = _acquire_playwright()
        self._browser = self._proxy = None
        try:
            self._browser = self._launch(tuple(launch_args), headless)
            options = self._context_options(viewport, device, device_scale_factor)
            self.has_touch = bool(options.get("has_touch"))
            self.is_mobile = bool(options.get("is_mobile"))
            self._context = self._browser.new_context(service_workers="block", **options)
            self._context.set_default_timeout(timeout_ms)
            self._requests.attach(self._context)
            self._context.on("page", self._adopt)
            self._pages: list[Any] = []
            self._adopt(self._context.new_page())
        except BaseException:
            self.close()
            raise

    def _launch(self, launch_args: tuple[str, ...], headless: bool) -> Any:
        """Chromium with our resolver rules and every connection (loopback too) through the proxy."""
        args = with_resolver_rules(launch_args, self._rules)
        resolver = next((a[len(RESOLVER_RULES_FLAG):] for a in args if a.startswith(RESOLVER_RULES_FLAG)), "")
        self._proxy = RulesProxy(self._rules, resolver_rules=resolver, on_refused=self._requests.refuse_connection)
        args += (f"--proxy-server={self._proxy.server}", "--proxy-bypass-list=<-loopback>")
        return launch_chromium(self._playwright, headless=headless, args=args)

    def _context_options(self, viewport, device, device_scale_factor) -> dict[str, Any]:
        if isinstance(device, str):
            if device not in self._playwright.devices:
                raise ValueError(f"device={device!r} is not a Playwright device name (e.g. 'Pixel 7', 'iPhone 13')")
            options = dict(self._playwright.devices[device])
        elif isinstance(device, dict):
            options = dict(device)
        elif device is None:
            options = {"viewport": {"width": 1280, "height": 720}}
        else:
            raise TypeError(f"device={device!r}; expected a Playwright device name or a descriptor dict")
        options.pop("default_browser_type", None)
        if viewport is not None:
            options["viewport"] = {"width": int(viewport[0]), "height": int(viewport[1])}
        if device_scale_factor is not None:
            options["device_scale_factor"] = device_scale_factor
        return options

    # --- pages ------------------------------------------------------------------------------

    @property
    def page(self) -> Any:
        """The current Playwright `Page`: the newest open tab or popup."""
        open_pages = [p for p in self._pages if not p.is_closed()]
        if not open_pages:
            raise RuntimeError("every page of this BrowserEnv is closed")
        return open_pages[-1]

    def _adopt(self, page: Any) -> None:
        if page not in self._pages:
            self._pages.append(page)
            self._requests.watch(page)

    @property
    def refused_connections(self) -> list[BlockedURL]:
        """Every connection the URL rules' proxy refused (host:port), in order."""
        return self._requests.refused_connections

    @property
    def rules(self) -> DomainRules:
        """The URL rules, fixed at launch (they are also compiled into Chromium's resolver)."""
        return self._rules

    @property
    def viewport(self) -> tuple[int, int]:
        size = self.page.viewport_size
        return size["width"], size["height"]

    def goto(self, url: str) -> None:
        """Load `url` in the current page (raises `BlockedURL` if it or a redirect is refused)."""
        self._rules.check(url)
        try:
            self.page.goto(url, wait_until="domcontentloaded")
        except PlaywrightError:
            self._raise_pending()
            raise
        if self.home_url is None:
            self.home_url = self.page.url
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self._requests.pending is not None:
            self._requests.raise_pending(self.page, timeout_ms=self.timeout_ms)

    # --- observe --------------------------------------------------------------------------

    def observe(self) -> Observation:
        """Screenshot at CSS size, URL, title, and set-of-marks boxes when the overlay is on."""
        self._raise_pending()
        page = self.page
        width, height = self.viewport
        marks: dict[int, Box] = {}
        if self.set_of_marks:
            boxes = set_of_marks.draw(page)
            marks = {i: set_of_marks.to_model_space(b, width, height) for i, b in enumerate(boxes)}
        try:
            data = page.screenshot(scale="css", type=self.screenshot_format, caret="hide")
        finally:
            if self.set_of_marks:
                set_of_marks.erase(page)
        screenshot = Image.open(BytesIO(data))
        screenshot.load()
        title = page.title()
        return Observation(screenshot=screenshot, url=page.url, title=title, marks=marks)

    # --- execute --------------------------------------------------------------------------

    def execute(self, action: Action, observation: Observation) -> None:
        """Perform `action` (coordinates relative to `observation.screenshot`), then wait for
        what it triggered to load. Raises `BlockedURL` for a refused navigation and
        `UnsupportedAction` for OpenApp, which a browser cannot perform."""
        if isinstance(action, TERMINAL_ACTIONS):
            return
        navigations = self._navigation_watch(self.page)
        requested, started = (navigations.requested if navigations else 0), self._requests.started
        try:
            self.perform(action, observation)
        except PlaywrightError:
            self._raise_pending()  # a navigation error caused by the rules says so
            raise
        # a link or form the action followed reaches the network some milliseconds after the click
        # returns (more on a busy machine): wait until the navigation it asked for has started
        if navigations is not None and navigations.requested_after(requested):
            deadline = time.monotonic() + min(NAVIGATION_START_S, self.timeout_ms / 1000)
            while (self._requests.started == started and self._requests.pending is None
                   and time.monotonic() < deadline):
                self.page.wait_for_timeout(10)
        self._settle()
        self._raise_pending()

    def _settle(self) -> None:
        page = self.page
        page.wait_for_timeout(self.settle_ms)  # also lets Playwright deliver pending events
        deadline = time.monotonic() + self.timeout_ms / 1000
        while self._requests.navigations and time.monotonic() < deadline:
            page.wait_for_timeout(10)
        page = self.page  # a popup may have opened
        try:
            page.wait_for_load_state("domcontentloaded", timeout=max(1, (deadline - time.monotonic()) * 1000))
        except PlaywrightError as error:
            logger.warning("page did not finish loading after the action: %s", error)

    def _cdp_session(self, page: Any = None) -> Any:
        page = page if page is not None else self.page
        if page not in self._cdp:
            self._cdp[page] = self._context.new_cdp_session(page)
        return self._cdp[page]

    def _navigation_watch(self, page: Any) -> RequestedNavigations | None:
        """The page's `RequestedNavigations` (made on first use), or None once the page is closed."""
        if page.is_closed():
            return None
        if page not in self._navigations:
            try:
                self._navigations[page] = RequestedNavigations(self._cdp_session(page))
            except PlaywrightError as error:  # closed or navigating away while we asked
                logger.debug("cannot watch the navigations of %s: %s", page.url, error)
                return None
        return self._navigations[page]

    # --- actions that are not input (BrowserInput handles the rest) -----------------------

    def _do_navigate(self, action: Navigate, observation: Observation) -> None:
        url = action.url.strip()
        if "://" not in url and not url.startswith("about:"):
            url = "https://" + url  # models often write bare domains
        self.goto(url)

    def _do_back(self, action: Back, observation: Observation) -> None:
        self.page.go_back(wait_until="domcontentloaded")

    def _do_home(self, action: Home, observation: Observation) -> None:
        if self.home_url is None:
            raise ValueError("Home in a browser returns to the first URL loaded, and none was loaded yet")
        self.goto(self.home_url)

    def _do_wait(self, action: Wait, observation: Observation) -> None:
        self.page.wait_for_timeout(action.seconds * 1000)

    def _do_openapp(self, action: OpenApp, observation: Observation) -> None:
        raise UnsupportedAction(action, self, f"a browser opens pages, not apps ({action.name!r}); use Navigate")

    # --- describe / close -----------------------------------------------------------------

    def describe(self, target: Target | None, observation: Observation) -> ElementInfo | None:
        """The element under `target` (None: the focused element), for the safety checks."""
        point = [None, None] if target is None else list(self._pixels(target, observation))
        info = self.page.evaluate(_DESCRIBE_JS, point)
        return None if info is None else ElementInfo(**info)

    def close(self) -> None:
        """Close the browser and stop Playwright; safe to call twice."""
        if self._playwright is None:
            return
        try:
            if self._browser is not None:
                self._browser.close()
        finally:
            if self._proxy is not None:
                self._proxy.close()
            self._playwright = None
            _release_playwright()

    def __enter__(self) -> BrowserEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
