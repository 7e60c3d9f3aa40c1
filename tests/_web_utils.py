"""Local pages for browser tests: an `http.server` thread on 127.0.0.1 with a request log.

    with LocalServer() as server:
        server.add("/", "<button>go</button>")
        server.add("/old", status=302, headers={"Location": "/"})
        env.goto(server.url("/"))
        assert "/" in server.paths

Tests of URL rules need other domains served by the same server: `resolve_to_local(...)`
gives Chromium flags that map test host names (`blocked.test`) to 127.0.0.1, and
`server.url(path, host="blocked.test")` addresses them. (Not `localhost`: Chromium resolves it
to ::1 first, where this server does not listen, and gives up.) `LocalServer("127.0.0.2")`
listens on another loopback address, a second host for tests of IP rules; `add_websocket`
serves a WebSocket that sends one message. `local_server` is a pytest fixture giving a fresh one per test; import it
into a test module (`from _web_utils import local_server  # noqa: F401`).
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Response:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    websocket: bool = False


def _websocket_frame(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 126, "one short text frame is all the tests need"
    return bytes([0x81, len(payload)]) + payload


def _websocket_accept(key: str) -> str:
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    return base64.b64encode(digest).decode()


class LocalServer:
    """Serves registered paths; records (host, path) of every request in `requests`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.routes: dict[str, Response] = {}
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                server.requests.append((self.headers.get("Host", ""), self.path))
                response = server.routes.get(self.path.split("?")[0])
                if response is None:
                    self.send_error(404)
                    return
                if response.websocket:
                    self._websocket(response)
                    return
                self.send_response(response.status)
                headers = {"Content-Type": "text/html; charset=utf-8", **response.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(response.body)

            def _websocket(self, response: Response) -> None:
                self.protocol_version = "HTTP/1.1"  # browsers refuse an HTTP/1.0 101
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", _websocket_accept(self.headers["Sec-WebSocket-Key"]))
                self.end_headers()
                self.wfile.write(_websocket_frame(response.body.decode()))
                self.wfile.flush()
                self.connection.settimeout(5)
                try:
                    while self.connection.recv(4096):  # until the browser closes
                        pass
                except OSError:
                    pass
                self.close_connection = True

            do_GET = do_POST = _serve

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def add(self, path: str, body: str | bytes = b"", *, status: int = 200,
            headers: dict[str, str] | None = None) -> str:
        """Serve `body` at `path`; returns the path's URL on 127.0.0.1."""
        data = body.encode() if isinstance(body, str) else body
        self.routes[path] = Response(data, status, dict(headers or {}))
        return self.url(path)

    def add_websocket(self, path: str, message: str) -> str:
        """Serve a WebSocket at `path` that sends `message` once; returns its ws: URL."""
        self.routes[path] = Response(message.encode(), websocket=True)
        return self.url(path, scheme="ws")

    def url(self, path: str = "/", *, host: str | None = None, scheme: str = "http") -> str:
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        return [path for _, path in self.requests]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_to_local(*hosts: str) -> tuple[str, ...]:
    """Chromium launch flags resolving `hosts` to 127.0.0.1 (pass as `launch_args`)."""
    return ("--host-resolver-rules=" + ", ".join(f"MAP {host} 127.0.0.1" for host in hosts),)


@pytest.fixture
def local_server():
    with LocalServer() as server:
        yield server
