"""Which URLs the agent may load: scheme rules plus allowed / blocked domain lists.

By default any http(s) (and ws(s)) URL is allowed and everything that reaches the local
machine or the browser itself is refused: `file:`, `data:`, `javascript:`, `chrome:`,
`about:` (except `about:blank`), `view-source:`, extension and devtools schemes. A `blob:`
URL is judged by the origin it embeds.

A domain rule matches the host and all its subdomains ("example.com" covers
"www.example.com", not "badexample.com"); a leading "*." or "." is accepted and means the
same. A rule may carry a port ("127.0.0.1:8000"), then only that port matches. Blocked rules
win over allowed ones. Hosts and rules are compared in one spelling (`agent.hosts`): names in
their IDNA (punycode) form, so a Unicode rule also matches its encoded host; IP addresses as
addresses, so every spelling of a blocked address (decimal, octal, hex, short forms, IPv4-mapped
IPv6, any IPv6 compression) is blocked, and so are the addresses that reach it
(`address_aliases`: 0.0.0.0 reaches 127.0.0.1). An IP rule matches that address only, never
as a "subdomain". The rules judge the host a URL names, not the address a name resolves to;
`agent.proxy` checks resolved addresses for `BrowserEnv`.

The same object is used by every environment and the agent loop; `BlockedURL` is the one
error they raise for a refused URL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.hosts import IPAddress, address_aliases, canonical_host, host_text

NETWORK_SCHEMES = frozenset({"http", "https", "ws", "wss"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class BlockedURL(Exception):
    """A URL refused by `DomainRules`; `url` is the URL, `rule` says which rule refused it."""

    def __init__(self, url: str, rule: str) -> None:
        super().__init__(f"blocked URL {url!r}: {rule}")
        self.url = url
        self.rule = rule


@dataclass(frozen=True)
class _Rule:
    host: str | IPAddress  # canonical (`agent.hosts.canonical_host`)
    port: int | None  # None: any port

    @property
    def is_ip(self) -> bool:
        return not isinstance(self.host, str)

    def matches(self, host: str | IPAddress, port: int | None, *, aliases: bool = False) -> bool:
        """Does the canonical `host` match? With `aliases` (block rules), an address also
        matches through the addresses a connection to it reaches."""
        if self.port is not None and port != self.port:
            return False
        if self.is_ip or not isinstance(host, str):  # addresses have no subdomains
            return self.host in address_aliases(host) if aliases and not isinstance(host, str) else host == self.host
        return host == self.host or host.endswith("." + self.host)

    def __str__(self) -> str:
        return host_text(self.host) if self.port is None else f"{host_text(self.host)}:{self.port}"


def _parse_rule(rule: str) -> _Rule:
    if not isinstance(rule, str) or not rule.strip():
        raise ValueError(f"domain rule {rule!r} is not a non-empty string like 'example.com'")
    text = rule.strip()
    if "/" in text or "@" in text or "?" in text or "#" in text:
        raise ValueError(
            f"domain rule {rule!r} looks like a URL; expected a domain such as 'example.com' "
            "or 'example.com:8080'")
    if text.startswith("*."):
        text = text[2:]
    elif text.startswith("."):
        text = text[1:]
    host, port = text, None
    if text.startswith("["):  # [v6]:port
        close = text.find("]")
        host, rest = text[:close + 1], text[close + 1:]
        if rest:
            port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"domain rule {rule!r} has port {port!r}; expected 1..65535")
        port = int(port)
    if "*" in host:
        raise ValueError(f"domain rule {rule!r} has no usable host; expected 'example.com' or '*.example.com'")
    try:
        return _Rule(canonical_host(host), port)
    except ValueError as error:
        raise ValueError(f"domain rule {rule!r}: {error}; expected 'example.com', an IP address "
                         "or either with ':port'") from None


class DomainRules:
    """URL policy: `check(url)` raises `BlockedURL`, `allows(url)` answers with a bool.

    `allowed_domains=None` allows every domain; an empty list allows none. `blocked_domains`
    always wins.
    """

    def __init__(self, allowed_domains: Iterable[str] | None = None,
                 blocked_domains: Iterable[str] = ()) -> None:
        if isinstance(allowed_domains, str) or isinstance(blocked_domains, str):
            raise TypeError("allowed_domains / blocked_domains take a list of domains, not one string")
        self.allowed = None if allowed_domains is None else tuple(_parse_rule(r) for r in allowed_domains)
        self.blocked = tuple(_parse_rule(r) for r in blocked_domains)

    def __repr__(self) -> str:
        allowed = None if self.allowed is None else [str(r) for r in self.allowed]
        return f"DomainRules(allowed_domains={allowed!r}, blocked_domains={[str(r) for r in self.blocked]!r})"

    def check(self, url: str) -> None:
        """Raise `BlockedURL` naming the URL and the rule when `url` may not be loaded."""
        reason = self._refusal(url)
        if reason is not None:
            raise BlockedURL(url, reason)

    def allows(self, url: str) -> bool:
        return self._refusal(url) is None

    def refusal(self, url: str) -> BlockedURL | None:
        """The `BlockedURL` error `check(url)` would raise, or None when `url` is allowed."""
        reason = self._refusal(url)
        return None if reason is None else BlockedURL(url, reason)

    def _refusal(self, url: str) -> str | None:
        if not isinstance(url, str):
            return f"not a URL string ({type(url).__name__})"
        text = url.strip()
        if text.lower() == "about:blank":
            return None
        try:
            parts = urlsplit(text)
        except ValueError as error:
            return f"unparsable URL ({error})"
        scheme = parts.scheme.lower()
        if scheme == "blob":  # blob:https://origin/uuid belongs to that origin
            return self._refusal(text[len("blob:"):])
        if scheme not in NETWORK_SCHEMES:
            return f"scheme {scheme + ':' if scheme else '(none)'} is not allowed; only http(s) and ws(s) are"
        try:
            host, port = parts.hostname, parts.port
        except ValueError as error:  # e.g. a port out of range
            return f"unparsable URL ({error})"
        if not host:
            return "URL has no host"
        return self.host_refusal(host, port if port is not None else DEFAULT_PORTS[scheme])

    def host_refusal(self, host: str | IPAddress, port: int) -> str | None:
        """Why a connection to `host` (any spelling, or an address) on `port` is refused, or None."""
        try:
            host = canonical_host(host)
        except ValueError as error:
            return f"unparsable host ({error})"
        shown = host_text(host)
        for rule in self.blocked:
            if rule.matches(host, port, aliases=True):
                return f"host {shown} matches blocked domain {rule}"
        if self.allowed is not None and not any(rule.matches(host, port) for rule in self.allowed):
            listed = ", ".join(str(r) for r in self.allowed) or "(none)"
            return f"host {shown} is not in allowed domains [{listed}]"
        return None

    def address_refusal(self, address: IPAddress, port: int) -> str | None:
        """Why a connection to the resolved `address` on `port` is refused by a block rule, or None
        (allow rules judge the name that was resolved, not its addresses)."""
        address = canonical_host(address)
        for rule in self.blocked:
            if rule.matches(address, port, aliases=True):
                return f"it resolves to {host_text(address)}, which matches blocked domain {rule}"
        return None
