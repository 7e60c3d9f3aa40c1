"""`RequestFilter`: how `BrowserEnv` enforces its `DomainRules` on every request it makes.

Three layers. A context-level route refuses every request whose URL is refused (navigations,
popups, iframes, sub-resources, workers' requests) before it is sent; service workers are
blocked (by the context, see `BrowserEnv`) because their requests bypass routing. Playwright
does not route redirect hops nor WebSockets, so below it every connection Chromium opens goes
through a `RulesProxy` (`agent.proxy`), which refuses blocked hosts and addresses, in any
spelling and after name resolution, before anything is sent: a redirect hop or a WebSocket to
a blocked host fails with a network error, and its response never reaches the page.
Chromium's `--host-resolver-rules` (`resolver_rules`) make blocked host names (and, with an
allow-list, every other name) unresolvable as well; the proxy follows the same rules.

The URL of every refused request, hop and WebSocket is recorded in `blocked` (the route,
`request` events for hops, `websocket` events); connections the proxy refused (by host and
port, including the browser's own background traffic) are in `refused_connections`. A blocked
main-frame navigation (its first request or a redirect hop) is kept as pending and raised as
`BlockedURL` by `raise_pending`, which `BrowserEnv` calls after each action, in `goto`, and in
the next `observe` when it happened between actions (a timer, a meta refresh). So that an
action's own navigation is raised by `execute`, `RequestedNavigations` counts the navigations a
page asked for (over CDP) and `RequestFilter.started` those that reached the network.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Error as PlaywrightError

from agent.domains import DEFAULT_PORTS, BlockedURL, DomainRules
from agent.hosts import canonical_host, host_text

logger = logging.getLogger(__name__)

RESOLVER_RULES_FLAG = "--host-resolver-rules="


def resolver_rules(rules: DomainRules) -> str:
    """Chromium `--host-resolver-rules` that make refused host names unresolvable.

    Ports are not part of host rules; IP addresses are never resolved, so an allow-list
    excludes its IPs from the catch-all and blocked IPs rely on the route alone.
    Chromium checks EXCLUDE before MAP, so a blocked subdomain of an allowed domain also
    relies on the route.
    """
    entries = []
    for rule in rules.blocked:
        if not rule.is_ip:
            entries += [f"MAP {rule.host} ~NOTFOUND", f"MAP *.{rule.host} ~NOTFOUND"]
    if rules.allowed is not None:
        for rule in rules.allowed:
            entries += [f"EXCLUDE {rule.host}"] + ([] if rule.is_ip else [f"EXCLUDE *.{rule.host}"])
        entries.append("MAP * ~NOTFOUND")
    return ", ".join(entries)


def with_resolver_rules(args: tuple[str, ...], rules: DomainRules) -> tuple[str, ...]:
    """Chromium `args` with our resolver rules placed before any the caller passed (first match wins)."""
    ours = resolver_rules(rules)
    theirs = [a[len(RESOLVER_RULES_FLAG):] for a in args if a.startswith(RESOLVER_RULES_FLAG)]
    others = tuple(a for a in args if not a.startswith(RESOLVER_RULES_FLAG))
    merged = ", ".join(r for r in [ours, *theirs] if r)
    return others + ((RESOLVER_RULES_FLAG + merged,) if merged else ())


class RequestFilter:
    """Refuses and records the requests of one browser context that `rules` refuse.

    `blocked` lists every refused request in order (by URL); `refused_connections` every
    connection the proxy refused (by host:port, from the proxy's threads); `pending` is a refused main-frame
    navigation not yet raised (an aborted one commits an error page); `navigations` holds the
    main-frame document requests in flight and `started` counts them (`BrowserEnv` waits for them after an action).
    """

    def __init__(self, rules: DomainRules) -> None:
        self.rules = rules
        self.blocked: list[BlockedURL] = []
        self._refusals: list[tuple[float, BlockedURL]] = []  # (epoch s, connection the proxy refused)
        self._recorded: set[Any] = set()  # requests already in `blocked`
        self.pending: BlockedURL | None = None
        self.navigations: set[Any] = set()
        self.started = 0  # main-frame navigations that reached the network (their first request)

    def attach(self, context: Any) -> None:
        """Route every request of the Playwright `context` through the rules."""
        context.route("**/*", self._route)
        context.on("request", self._on_request)
        context.on("requestfinished", self._on_request_done)
        context.on("requestfailed", self._on_request_failed)

    def watch(self, page: Any) -> None:
        """Also check the documents that commit in `page` (the last line of defence)."""
        page.on("framenavigated", self._on_framenavigated)
        page.on("websocket", self._on_websocket)

    def refuse_connection(self, blocked: BlockedURL) -> None:
        """Record a connection the proxy refused (called from its threads)."""
        self._refusals.append((time.time(), blocked))

    @property
    def refused_connections(self) -> list[BlockedURL]:
        return [blocked for _, blocked in self._refusals]

    def _route(self, route: Any, request: Any) -> None:
        blocked = self.rules.refusal(request.url)
        if blocked is None:
            route.continue_()
            return
        self._record(blocked, main_navigation=self._is_main_navigation(request), request=request)
        route.abort("blockedbyclient")

    def _record(self, blocked: BlockedURL, *, main_navigation: bool, request: Any = None) -> None:
        while request is not None:  # Playwright may fail the chain's first request instead
            self._recorded.add(request)
            request = request.redirected_from
        self.blocked.append(blocked)
        logger.info("%s", blocked)
        if main_navigation:
            self.pending = blocked

    def _is_main_navigation(self, request: Any) -> bool:
        try:
            return request.is_navigation_request() and request.frame.parent_frame is None
        except PlaywrightError:  # a popup's frame may not exist yet
            return request.is_navigation_request()

    def _on_request(self, request: Any) -> None:
        main_navigation = self._is_main_navigation(request)
        if main_navigation:
            self.navigations.add(request)
            self.started += request.redirected_from is None
        if request.redirected_from is not None:  # hops are not routed; the proxy refuses them
            blocked = self.rules.refusal(request.url)
            if blocked is not None:
                self._record(blocked, main_navigation=main_navigation, request=request)

    def _on_websocket(self, websocket: Any) -> None:
        # not routed: the proxy refuses the connection; the URL is recorded here
        blocked = self.rules.refusal(websocket.url)
        if blocked is not None:
            self._record(blocked, main_navigation=False)

    def _on_request_done(self, request: Any) -> None:
        self.navigations.discard(request)

    def _on_request_failed(self, request: Any) -> None:
        self._on_request_done(request)
        if "SOCKS" in (request.failure or "") and request not in self._recorded:
            blocked = self._proxy_refusal(request)
            if blocked is not None:
                self._record(blocked, main_navigation=self._is_main_navigation(request), request=request)

    def _proxy_refusal(self, request: Any) -> BlockedURL | None:
        """Why the proxy refused a connection `request` needed: its host resolved to a blocked
        address, or a redirect hop Playwright did not report went to a blocked host."""
        url = request.url
        parts = urlsplit(url)
        try:
            where = f"{host_text(canonical_host(parts.hostname or ''))}:{parts.port or DEFAULT_PORTS[parts.scheme]}"
        except (ValueError, KeyError):
            return None
        own = next((b for _, b in reversed(self._refusals) if b.url == where), None)
        if own is not None:
            return BlockedURL(url, own.rule)
        started = request.timing.get("startTime", 0) / 1000
        during = [b for when, b in self._refusals if when >= started - 0.01]
        if not during:
            return None  # a connection failure of its own, not the rules
        return BlockedURL(url, f"a redirect from it was refused: {during[-1].url}: {during[-1].rule}")

    def _on_framenavigated(self, frame: Any) -> None:
        # a refused document committed in a tab (e.g. an IP hop)
        if frame.parent_frame is None and not frame.url.startswith("chrome-error:"):
            blocked = self.rules.refusal(frame.url)
            if blocked is not None and self.pending is None:
                self._record(blocked, main_navigation=True)

    def raise_pending(self, page: Any, *, timeout_ms: int) -> None:
        """Raise `pending`, if set, once `page` (the current page) has left the refused document
        (waiting at most `timeout_ms`, and 10 s)."""
        if self.pending is None:
            return
        blocked, self.pending = self.pending, None
        # let the error page (or a refused page that got through regardless) commit now, not in the middle of the next navigation
        landed = lambda url: url.startswith("chrome-error:") or not self.rules.allows(url)  # noqa: E731
        try:
            page.wait_for_url(landed, timeout=min(timeout_ms, 10_000))
            if not page.url.startswith("chrome-error:"):
                page.goto("about:blank")
        except PlaywrightError as error:
            logger.debug("after refusing %s: %s", blocked.url, error)
        raise blocked


class RequestedNavigations:
    """Counts the main-frame navigations a page's renderer asked the browser for (CDP
    `Page.frameRequestedNavigation`: a followed link, a submitted form, a script setting
    `location`), in this tab and over http(s). `requested_after(n)` first makes one round trip
    through the renderer, after the action's input was handled, so that a navigation the
    action started has been counted by the time it answers."""

    def __init__(self, cdp: Any) -> None:
        self._cdp = cdp
        cdp.send("Page.enable")
        self._main_frame = cdp.send("Page.getFrameTree")["frameTree"]["frame"]["id"]
        self.requested = 0
        cdp.on("Page.frameRequestedNavigation", self._on_requested)

    def _on_requested(self, params: dict[str, Any]) -> None:
        if (params.get("frameId") == self._main_frame and params.get("disposition") == "currentTab"
                and params.get("url", "").startswith(("http:", "https:"))):
            self.requested += 1

    def requested_after(self, count: int) -> bool:
        try:
            self._cdp.send("Runtime.evaluate", {"expression": "0"})
        except PlaywrightError:  # the document went away: its navigation has started
            pass
        return self.requested > count
