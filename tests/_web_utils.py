"""Local pages for browser tests: an `http.server` thread on 127.0.0.1 with a request log.

    with LocalServer() as server:
        server.add("/", "<button>go</button>")
        server.add("/old", status=302, headers={"Location": "/"})
        env.goto(server.url("/"))
        assert "/" in server.paths

Tests of URL rules need other domains served by the same server: `resolve_to_local(...)`
gives Chromium flags that map test host names (`blocked.test`) to 127.0.0.1, and
`server.url(path, host="blocked.test")` addresses them. (Not `localhost`: Chromium resolves it
to ::1 first, where this server does not listen, and gives up.) `local_server` is a pytest fixture giving a fresh one per test; import it
into a test module (`from _web_utils import local_server  # noqa: F401`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Response:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


class LocalServer:
    """Serves registered paths; records (host, path) of every request in `requests`."""

    def __init__(self) -> None:
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
                self.send_response(response.status)
                headers = {"Content-Type": "text/html; charset=utf-8", **response.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(response.body)

            do_GET = do_POST = _serve

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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

    def url(self, path: str = "/", *, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

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
