"""`RequestFilter`: how `BrowserEnv` enforces its `DomainRules` on every request it makes.

Two layers. A context-level route refuses every request whose URL is refused (navigations,
popups, iframes, sub-resources) before it is sent; service workers are blocked (by the
context, see `BrowserEnv`) because their requests bypass routing. Playwright does not route
redirect hops, and fetching documents ourselves to inspect their `Location` would change the
document's security context (Chromium then treats it as public and refuses its requests to
local addresses), so hops are handled a layer lower: Chromium's `--host-resolver-rules`
(`resolver_rules`) make blocked host names (and, with an allow-list, every other name) fail
to resolve, so no request reaches them at any redirect depth. The route still sees each hop
as a `request` event and records it; only a hop to an IP address outside the rules can be
sent before it is refused. The rules are fixed when the browser starts.

A blocked main-frame navigation is kept as pending and raised as `BlockedURL` by
`raise_pending`, which `BrowserEnv` calls after each action, in `goto`, and in the next
`observe` when it happened between actions (a timer, a meta refresh).
"""

from __future__ import annotations

import logging
from typing import Any

from playwright.sync_api import Error as PlaywrightError

from agent.domains import BlockedURL, DomainRules

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

    `blocked` lists every refused request in order; `pending` is a refused main-frame
    navigation not yet raised (an aborted one commits an error page); `navigations` holds the
    main-frame document requests in flight (`BrowserEnv` waits for them after an action).
    """

    def __init__(self, rules: DomainRules) -> None:
        self.rules = rules
        self.blocked: list[BlockedURL] = []
        self.pending: BlockedURL | None = None
        self.navigations: set[Any] = set()

    def attach(self, context: Any) -> None:
        """Route every request of the Playwright `context` through the rules."""
        context.route("**/*", self._route)
        context.on("request", self._on_request)
        context.on("requestfinished", self._on_request_done)
        context.on("requestfailed", self._on_request_done)

    def watch(self, page: Any) -> None:
        """Also check the documents that commit in `page` (the last line of defence)."""
        page.on("framenavigated", self._on_framenavigated)

    def _route(self, route: Any, request: Any) -> None:
        blocked = self.rules.refusal(request.url)
        if blocked is None:
            route.continue_()
            return
        self._record(blocked, main_navigation=self._is_main_navigation(request))
        route.abort("blockedbyclient")

    def _record(self, blocked: BlockedURL, *, main_navigation: bool) -> None:
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
        if request.redirected_from is not None:  # hops are not routed; the resolver stopped it
            blocked = self.rules.refusal(request.url)
            if blocked is not None:
                self._record(blocked, main_navigation=main_navigation)

    def _on_request_done(self, request: Any) -> None:
        self.navigations.discard(request)

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
        # let the error page (or the refused page, for a hop the resolver could not stop)
        # commit now, not in the middle of the next navigation
        landed = lambda url: url.startswith("chrome-error:") or not self.rules.allows(url)  # noqa: E731
        try:
            page.wait_for_url(landed, timeout=min(timeout_ms, 10_000))
            if not page.url.startswith("chrome-error:"):
                page.goto("about:blank")
        except PlaywrightError as error:
            logger.debug("after refusing %s: %s", blocked.url, error)
        raise blocked
