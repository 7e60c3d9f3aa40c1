"""`RulesProxy`: a local SOCKS5 proxy that connects only where `DomainRules` allow.

`BrowserEnv` starts Chromium with this proxy for every destination, loopback included
(`--proxy-bypass-list=<-loopback>`), so every TCP connection the browser opens passes here
first: documents and sub-resources, each hop of a redirect, fetch/XHR, WebSockets, workers,
preconnects. Playwright's routing cannot give that guarantee: it does not route redirect hops
nor WebSockets, and Chromium's resolver rules cannot stop IP addresses. The proxy sees host and
port only (that is all the rules judge); `RequestFilter` records the URLs.

For each connection: the destination host (a name or an address in any spelling) is checked
against the rules; a name is resolved here (Chromium sends SOCKS5 destinations unresolved),
following the `MAP` / `EXCLUDE` entries of Chromium's `--host-resolver-rules` syntax, so the
launch flags keep their meaning; each address it resolves to is checked against the block
rules, and the connection goes to that checked address, so a name cannot be re-pointed (DNS
rebinding) between the check and the connection.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import selectors
import socket
import struct
import threading
from collections.abc import Callable

from agent.domains import BlockedURL, DomainRules
from agent.hosts import IPAddress, canonical_host, host_text

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
_BUFFER = 65536
# SOCKS5 reply codes (RFC 1928)
_OK, _NOT_ALLOWED, _HOST_UNREACHABLE, _REFUSED, _BAD_COMMAND, _BAD_ADDRESS = 0, 2, 4, 5, 7, 8


class ResolverRules:
    """Chromium's `--host-resolver-rules` ("MAP pattern host[:port]", "MAP pattern ~NOTFOUND",
    "EXCLUDE pattern"; `*` and `?` wildcards; EXCLUDE first, then the first MAP that matches).
    Patterns match the host only; a port in the replacement is dropped (the proxy keeps the
    port the browser asked for)."""

    def __init__(self, text: str = "") -> None:
        self.maps: list[tuple[str, str]] = []
        self.excludes: list[str] = []
        for entry in filter(None, (e.strip() for e in text.split(","))):
            words = entry.split()
            if words[0].upper() == "MAP" and len(words) == 3:
                self.maps.append((words[1].lower(), words[2]))
            elif words[0].upper() == "EXCLUDE" and len(words) == 2:
                self.excludes.append(words[1].lower())
            else:
                raise ValueError(f"host resolver rule {entry!r}; expected 'MAP pattern host' or 'EXCLUDE pattern'")

    def map(self, host: str) -> str | None:
        """The host `host` resolves as (itself when no rule applies), or None for ~NOTFOUND."""
        if any(fnmatch.fnmatchcase(host, pattern) for pattern in self.excludes):
            return host
        for pattern, replacement in self.maps:
            if fnmatch.fnmatchcase(host, pattern):
                if replacement == "~NOTFOUND":
                    return None
                return replacement.rsplit(":", 1)[0] if replacement.count(":") == 1 else replacement
        return host


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class RulesProxy:
    """Serves SOCKS5 on 127.0.0.1 (`server` is the URL for Chromium's `--proxy-server`) until
    `close()`. Every refused connection is passed to `on_refused` as a `BlockedURL` whose URL
    is `host:port` (the proxy never sees more)."""

    def __init__(self, rules: DomainRules, *, resolver_rules: str = "",
                 on_refused: Callable[[BlockedURL], None] = lambda blocked: None) -> None:
        self.rules = rules
        self.resolver = ResolverRules(resolver_rules)
        self.on_refused = on_refused
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="rules-proxy", daemon=True).start()

    @property
    def server(self) -> str:
        return f"socks5://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop accepting and cut every open connection; safe to call twice."""
        with self._lock:
            self._closed = True
            sockets, self._open = self._open, set()
        for sock in [self._listener, *sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), name="rules-proxy-conn", daemon=True).start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if not self._closed:
                self._open.add(sock)
            return not self._closed

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            if not self._track(client):
                return
            client.settimeout(CONNECT_TIMEOUT_S)
            host, port = _read_request(client)
            upstream = self._connect(host, port)
            if not self._track(upstream):
                return
            client.sendall(bytes([5, _OK, 0, 1, 0, 0, 0, 0, 0, 0]))
            client.settimeout(None)
            _relay(client, upstream)
        except _Refused as refused:
            logger.info("proxy refused a connection: %s", refused)
            _reply_quietly(client, refused.code)
        except OSError as error:  # the browser or the server went away
            logger.debug("proxy connection ended: %s", error)
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with self._lock:
                        self._open.discard(sock)
                    sock.close()

    def _connect(self, host: str | IPAddress, port: int) -> socket.socket:
        """A socket connected to `host`:`port` if the rules allow it and what it resolves to."""
        try:
            host = canonical_host(host)
        except ValueError:
            pass  # host_refusal names the problem
        shown = f"{host_text(host)}:{port}"
        self._check(self.rules.host_refusal(host, port), shown)
        addresses = self._resolve(host, port, shown)
        for address in addresses:
            self._check(self.rules.address_refusal(address, port), shown)
        error: OSError | None = None
        for address in addresses:
            try:
                return socket.create_connection((str(address), port), timeout=CONNECT_TIMEOUT_S)
            except OSError as failure:
                error = failure
        raise _Refused(_REFUSED, f"could not connect to {shown}: {error}")

    def _check(self, refusal: str | None, shown: str) -> None:
        if refusal is not None:
            self.on_refused(BlockedURL(shown, refusal))
            raise _Refused(_NOT_ALLOWED, f"{shown}: {refusal}")

    def _resolve(self, host: str | IPAddress, port: int, shown: str) -> list[IPAddress]:
        if not isinstance(host, str):
            return [host]
        mapped = self.resolver.map(host)
        if mapped is None:
            raise _Refused(_HOST_UNREACHABLE, f"{shown}: the host resolver rules make {host} unresolvable")
        try:
            target = canonical_host(mapped)
            if not isinstance(target, str):
                return [target]
            infos = socket.getaddrinfo(target, port, type=socket.SOCK_STREAM)
        except (OSError, ValueError) as error:
            raise _Refused(_HOST_UNREACHABLE, f"{shown}: cannot resolve {mapped} ({error})") from None
        return list(dict.fromkeys(canonical_host(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos))


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("the client closed during the SOCKS handshake")
        data += chunk
    return data


def _read_request(client: socket.socket) -> tuple[str | IPAddress, int]:
    """The SOCKS5 greeting (no authentication) and CONNECT request: destination host and port."""
    version, count = _read_exactly(client, 2)
    methods = _read_exactly(client, count)
    if version != 5 or 0 not in methods:
        client.sendall(bytes([5, 0xFF]))
        raise ConnectionError(f"not a SOCKS5 client without authentication (version {version})")
    client.sendall(bytes([5, 0]))
    version, command, _, kind = _read_exactly(client, 4)
    if command != 1:
        raise _Refused(_BAD_COMMAND, f"SOCKS command {command} (only CONNECT is served)")
    if kind == 1:
        host: str | IPAddress = ipaddress.IPv4Address(_read_exactly(client, 4))
    elif kind == 4:
        host = ipaddress.IPv6Address(_read_exactly(client, 16))
    elif kind == 3:
        host = _read_exactly(client, _read_exactly(client, 1)[0]).decode("ascii", "replace")
    else:
        raise _Refused(_BAD_ADDRESS, f"SOCKS address type {kind}")
    (port,) = struct.unpack("!H", _read_exactly(client, 2))
    return host, port


def _reply_quietly(client: socket.socket, code: int) -> None:
    try:
        client.sendall(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))
    except OSError:
        pass


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both sides have finished sending (half-closes passed on)."""
    peer = {a: b, b: a}
    with selectors.DefaultSelector() as selector:
        for sock in peer:
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                data = key.fileobj.recv(_BUFFER)
                if data:
                    peer[key.fileobj].sendall(data)
                    continue
                selector.unregister(key.fileobj)
                try:
                    peer[key.fileobj].shutdown(socket.SHUT_WR)
                except OSError:
                    pass
