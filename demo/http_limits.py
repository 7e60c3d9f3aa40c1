"""How the server reads HTTP requests within limits: a deadline for the headers, one for the
body, a size limit for the body, and a client that leaves mid-body as a normal event.

uvicorn has no header read timeout (its keep-alive timer only runs between requests), so a
client that sends half a request line and then nothing holds a connection forever. The
`h11` protocol subclass here closes a connection whose headers are not complete within
`header_timeout_s` of its opening or of its previous response (with a 408 when part of a
request arrived). The body deadline and size limit live in `read_body`, in the app.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from demo.openai_schema import APIError

logger = logging.getLogger(__name__)


class ClientLeft(Exception):
    """The client closed the connection before its request body was complete."""


async def read_body(request: Request, *, limit_bytes: int, timeout_s: float) -> bytes:
    """The body, refusing one past `limit_bytes` with 413 without holding it in memory, and one
    not complete within `timeout_s` with 408; `ClientLeft` when the client disconnects."""
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit_bytes
    chunks: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            remaining = deadline - asyncio.get_running_loop().time()
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=max(remaining, 0.0))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise APIError(408, f"the request body was not complete within {timeout_s:g} s ({size} bytes arrived)",
                           code="request_timeout") from None
        except ClientDisconnect:
            raise ClientLeft(f"client left after {size} bytes of its request body") from None
        # Past the limit the rest is read and dropped: answering before the client has sent
        # everything makes many clients report a broken pipe instead of our 413.
        size += len(chunk)
        too_big = too_big or size > limit_bytes
        if not too_big:
            chunks.append(chunk)
    if too_big:
        raise APIError(413, f"request body of {max(size, int(declared or 0))} bytes exceeds this server's "
                            f"limit of {limit_bytes} bytes", code="request_too_large")
    return b"".join(chunks)


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers (`header_timeout_s`)."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request's headers

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _on_header_timeout(self) -> None:
        if self.transport.is_closing() or not self._awaiting_headers():
            return
        partial, _ = self.conn.trailing_data
        if partial:  # part of a request arrived: say why it is closed
            logger.info("%s sent no complete request headers within %g s; closing", self.client, self.header_timeout_s)
            self.transport.write(_response_408(f"request headers not complete within {self.header_timeout_s:g} s"))
        self.transport.close()


def protocol(*, header_timeout_s: float) -> type[HeaderTimeoutH11]:
    """The protocol class to give `uvicorn.Config(http=...)`."""
    return type("HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout_s": header_timeout_s})


def uvicorn_options(*, header_timeout_s: float) -> dict[str, Any]:
    """What `uvicorn.Config` / `uvicorn.run` take to read requests within the limits."""
    return {"http": protocol(header_timeout_s=header_timeout_s), "timeout_keep_alive": 5}


def _response_408(message: str) -> bytes:
    body = json.dumps(APIError(408, message, code="request_timeout").body()).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
