"""An OpenAI-compatible HTTP server for any model `VLM.from_pretrained` loads.

    python -m demo.serve [--model PATH] [--adapter DIR] [--host H] [--port P]

`POST /v1/chat/completions` (JSON or SSE streaming), `GET /v1/models`, `GET /health`.
Requests are validated in `demo.openai_schema`; anything wrong with a request is a 4xx with an
OpenAI-style JSON error, never a 5xx.

Continuous batching (`vlm.running_batch`): one engine thread decodes every running request
together, one token each per step. A request that arrives while others decode is prefilled
between two steps and joins the batch, with its own sampling parameters, stop strings and
`max_tokens`; each streams its own tokens, a request that ends or whose client leaves frees its
slot at the next step, and a request waits only while `ServerLimits.max_batch` rows are
decoding. Decode is memory-bound, so a step of 8 rows costs far less than 8 steps of one.
Memory is bounded: at most `max_batch` KV caches, `max_pending` requests queued plus running
(more get 429 at once instead of waiting without bound), and `max_queued_image_pixels` decoded
image pixels held by them: a request's pixels are counted from the image headers and reserved
before any is decoded (429 while others hold them, 413 when one request alone exceeds the
bound). JSON parsing and image decoding run off the event loop. Reading is bounded too
(`demo.http_limits`): headers within `header_timeout_s`, the body within `body_timeout_s`
(408), a client leaving mid-body is logged as the normal event it is.

The agent's `OpenAIPolicy` talks to this server, and equally to vLLM or SGLang serving the
released GLM-4.5V (4 x 80 GB GPUs in bf16; the commands of the official GLM-V repository):

    vllm serve zai-org/GLM-4.5V --tensor-parallel-size 4 --served-model-name glm-4.5v \\
        --reasoning-parser glm45 --tool-call-parser glm45 --enable-auto-tool-choice \\
        --allowed-local-media-path / --media-io-kwargs '{"video": {"num_frames": -1}}'
    python -m sglang.launch_server --model-path zai-org/GLM-4.5V --tp-size 4 --port 8000 \\
        --served-model-name glm-4.5v --reasoning-parser glm45 --tool-call-parser glm45

    policy = OpenAIPolicy("http://localhost:8000/v1", "glm-4.5v")
    policy = OpenAIPolicy("http://localhost:8000/v1", "glm-4.5v",  # thinking off
                          extra_body={"chat_template_kwargs": {"enable_thinking": False}})

With the `glm45` reasoning parser both return the reasoning in `reasoning_content` and the
answer in `content`, as this server does; `OpenAIPolicy` sends `skip_special_tokens: false`
so that the box tokens around actions survive (vLLM, SGLang and this server strip them by
default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from demo.cli import add_model_arguments, load_model
from demo.http_limits import ClientLeft, read_body, uvicorn_options
from demo.openai_schema import APIError, ChatRequest, ServerLimits, decode_images, parse_chat_request, request_pixels
from demo.openai_tools import call_delta, message_fields
from vlm.engine import Chat
from vlm.generation import GenerationOptions
from vlm.outputs import strip_special_tokens
from vlm.running_batch import RunningBatch, Update

if TYPE_CHECKING:
    from vlm import VLM

logger = logging.getLogger(__name__)

# What the engine thread sends to the request's event loop: ("event", channel, piece),
# ("done", Generation), ("error", exception) or ("cancelled",).
_Item = tuple[Any, ...]


@dataclass(eq=False)
class _Job:
    request: ChatRequest
    send: Callable[[_Item], None]  # thread-safe: hands an item to the request's event loop
    cancelled: threading.Event  # set by the request when its client left


class BatchEngine:
    """The engine thread and its queue: admits waiting requests into a `RunningBatch` between
    steps (up to `max_batch` rows), steps it, and sends each request its pieces.

    `pending` and `pixels` are only touched on the event loop's thread, so they need no lock.
    """

    def __init__(self, vlm: VLM, *, limits: ServerLimits) -> None:
        self.limits = limits
        self.pending = 0
        self.pixels = 0
        self._new_batch = lambda: RunningBatch(vlm.model, vlm.require_processor(), stop_token_ids=vlm.stop_token_ids())
        self.batch = self._new_batch()
        self._waiting: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="vlm-engine", daemon=True)
        self._thread.start()

    async def reserve(self, request: ChatRequest) -> Callable[[], None]:
        """Count the request in (its queue slot and its images' pixels, from their headers: 429 when
        the server holds too many, 413 when it alone exceeds the bound), then decode its images off
        the event loop. Returns the release, which `stream` hands to the engine."""
        pixels = request_pixels(request)
        bound = self.limits.max_queued_image_pixels
        if pixels > bound:
            raise APIError(413, f"the request's images have {pixels} pixels; this server holds at most {bound} "
                                "at a time: send fewer or smaller images", code="images_too_large")
        if self.pending >= self.limits.max_pending:
            raise APIError(429, f"the server is busy ({self.pending} requests queued or running); retry later",
                           type="rate_limit_error", code="server_busy")
        if self.pixels + pixels > bound:
            raise APIError(429, f"the server holds {self.pixels} image pixels of queued requests; {pixels} more "
                                f"exceed its limit of {bound}; retry later", type="rate_limit_error", code="server_busy")
        self.pending += 1
        self.pixels += pixels
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.pending -= 1
                self.pixels -= pixels

        try:
            await asyncio.to_thread(decode_images, request)
        except BaseException:
            release()
            raise
        return release

    async def stream(self, request: ChatRequest, release: Callable[[], None]) -> tuple[_Item, asyncio.Queue[_Item], threading.Event]:
        """Queue a generation `reserve`d with `release`; return its first item (so errors raised
        before any output can still become a 4xx), the queue of the rest, and a flag that stops it."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[_Item] = asyncio.Queue()

        def send(item: _Item) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)
            if item[0] != "event":
                loop.call_soon_threadsafe(release)

        job = _Job(request, send, threading.Event())
        self._waiting.put(job)
        try:
            first = await items.get()
        except asyncio.CancelledError:  # the client left while queued or during prefill
            job.cancelled.set()
            raise
        if first[0] == "error":
            raise _engine_error(first[1])
        return first, items, job.cancelled

    async def generate(self, request: ChatRequest, release: Callable[[], None]) -> Any:
        """The finished `Generation`; engine errors become `APIError`s."""
        item, items, cancelled = await self.stream(request, release)
        try:
            while item[0] == "event":
                item = await items.get()
        finally:
            cancelled.set()  # a no-op when finished; frees the row when the client left
        if item[0] == "error":
            raise _engine_error(item[1])
        return item[1]

    def close(self) -> None:
        self._waiting.put(None)

    # -- the engine thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            while len(self.batch.rows) < self.limits.max_batch:  # admit: wait only when idle
                try:
                    job = self._waiting.get(block=not self.batch.rows)
                except queue.Empty:
                    break
                if job is None:
                    return
                self._admit(job)
            for row in list(self.batch.rows):
                if row.key.cancelled.is_set():
                    logger.info("client went away; its row left the batch")
                    self.batch.drop(row)
                    row.key.send(("cancelled",))
            if not self.batch.rows:
                continue
            try:
                updates = self.batch.step()
            except Exception as err:  # noqa: BLE001 - every running request is answered with it
                logger.exception("decode step failed")
                for row in self.batch.rows:
                    row.key.send(("error", err))
                self.batch = self._new_batch()
                continue
            for update in updates:
                self._deliver(update)

    def _admit(self, job: _Job) -> None:
        if job.cancelled.is_set():
            job.send(("cancelled",))
            return
        request = job.request
        try:
            kwargs = request.sampling.as_kwargs()
            stop = kwargs.pop("stop")
            chat = Chat.of(request.messages, images=None, videos=None, system=None, thinking=request.thinking,
                           stop=stop, stream=True, tools=request.tools, tool_choice=request.tool_choice)
            update = self.batch.admit(chat, GenerationOptions(**kwargs), key=job, ignore_eos=request.ignore_eos)
        except Exception as err:  # noqa: BLE001 - handed to the request, which answers with it
            job.send(("error", err))
            return
        self._deliver(update)

    @staticmethod
    def _deliver(update: Update) -> None:
        job = update.row.key
        for channel, piece in update.pieces:
            if piece:
                job.send(("event", channel, piece))
        if update.generation is not None:
            job.send(("done", update.generation))


def _engine_error(err: Exception) -> APIError:
    # The engine validates its arguments before any work and raises ValueError for input it
    # cannot take (an unreadable image, a prompt past the context): the client's error.
    # Anything else is ours; it is logged and answered, and the server lives on.
    if isinstance(err, APIError):
        return err
    if isinstance(err, ValueError):
        return APIError(400, str(err), code="invalid_input")
    logger.exception("generation failed", exc_info=err)
    return APIError(500, f"generation failed: {type(err).__name__}: {err}", type="server_error")


def create_app(vlm: VLM, *, limits: ServerLimits = ServerLimits(), model_name: str = "glmv") -> FastAPI:
    """The ASGI app serving `vlm` under the name `model_name`."""
    engine = BatchEngine(vlm, limits=limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(title="glmv OpenAI-compatible server", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.engine = engine
    app.state.limits = limits
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(_: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(err.status_code, str(err.detail), type=kind).body(), status_code=err.status_code)

    @app.exception_handler(ClientLeft)
    async def _client_left(_: Request, err: ClientLeft) -> Response:
        logger.info("%s; nothing to answer", err)  # a normal event, not an error
        return Response(status_code=400)  # never sent: uvicorn drops writes to a closed connection

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=err)
        return JSONResponse(APIError(500, f"internal error: {type(err).__name__}", type="server_error").body(),
                            status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "pending": engine.pending, "running": len(engine.batch.rows),
                "image_pixels": engine.pixels}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list",
                "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "glmv",
                          "max_model_len": vlm.config.text.max_position_embeddings}]}  # vLLM's field

    @app.post("/v1/chat/completions")
    async def chat_completions(http_request: Request) -> Any:
        body = await read_body(http_request, limit_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)
        request = await asyncio.to_thread(parse_chat_request, body, limits)  # JSON, image headers: off the loop
        if request.model not in (None, model_name):
            raise APIError(404, f"model {request.model!r} does not exist; this server serves {model_name!r}",
                           type="not_found_error", param="model", code="model_not_found")
        release = await engine.reserve(request)  # 429/413 before any pixel is decoded
        reply = _Reply(model=model_name, skip_special_tokens=request.skip_special_tokens)
        if not request.stream:
            generation = await engine.generate(request, release)
            logger.info("%s: %d prompt + %d completion tokens, prefill %.2f s, %.1f tokens/s", reply.id,
                        generation.prompt_tokens, len(generation.token_ids), generation.prefill_s,
                        generation.decode_tokens_per_s)
            return reply.completion(generation)
        first, items, cancelled = await engine.stream(request, release)
        return StreamingResponse(reply.sse(first, items, cancelled, include_usage=request.include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


class _Reply:
    """The response bodies of one request, in OpenAI's shapes."""

    def __init__(self, *, model: str, skip_special_tokens: bool) -> None:
        self.model = model
        self.clean = strip_special_tokens if skip_special_tokens else str
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def completion(self, generation: Any) -> dict[str, Any]:
        content = self.clean(generation.text)
        message = {"role": "assistant", "content": None if generation.tool_calls and not content else content,
                   "reasoning_content": self.clean(generation.thinking or "") or None, **message_fields(generation)}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": generation.finish_reason,
                             "logprobs": None}],
                "usage": _usage(generation)}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
        return _sse(body)

    async def sse(self, first: _Item, items: asyncio.Queue[_Item], cancelled: threading.Event, *,
                  include_usage: bool) -> AsyncIterator[str]:
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            item, calls = first, 0
            while item[0] == "event":
                _, channel, piece = item
                if channel == "tool_call":
                    yield self._chunk(call_delta(calls, piece))
                    calls += 1
                # A special token is one token, so it never straddles two pieces.
                elif piece := self.clean(piece):
                    yield self._chunk({"reasoning_content" if channel == "thinking" else "content": piece})
                item = await items.get()
            if item[0] == "cancelled":
                return
            if item[0] == "error":  # after the first token the status is sent: report in-band
                yield _sse(_engine_error(item[1]).body())
            else:
                generation = item[1]
                yield self._chunk({}, finish_reason=generation.finish_reason)
                if include_usage:
                    yield _sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model, "choices": [], "usage": _usage(generation)})
            yield "data: [DONE]\n\n"
        finally:
            cancelled.set()  # a no-op when finished; stops the engine when the client left


def _usage(generation: Any) -> dict[str, int]:
    completion = len(generation.token_ids)
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": completion,
            "total_tokens": generation.prompt_tokens + completion}


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


@contextmanager
def running(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on a free local port in a thread; yield its base URL (tests, benchmarks)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    limits = getattr(app.state, "limits", ServerLimits())
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **uvicorn_options(header_timeout_s=limits.header_timeout_s)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start within 20 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.serve", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--served-model-name", default=None, help="the name clients pass as `model`")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--allowed-local-media-path", type=Path, default=None,
                        help="allow image/video parts that name local files under this directory")
    defaults = ServerLimits()
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    parser.add_argument("--max-images", type=int, default=defaults.max_images)
    parser.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels)
    parser.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / 2**20)
    parser.add_argument("--max-pending", type=int, default=defaults.max_pending)
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch,
                        help="requests decoded together (continuous batching); 1 serves one at a time")
    parser.add_argument("--max-queued-image-pixels", type=int, default=defaults.max_queued_image_pixels)
    parser.add_argument("--header-timeout-s", type=float, default=defaults.header_timeout_s)
    parser.add_argument("--body-timeout-s", type=float, default=defaults.body_timeout_s)
    args = parser.parse_args(argv)

    import uvicorn

    vlm = load_model(parser, args)
    limits = ServerLimits(max_tokens=args.max_tokens, max_images=args.max_images,
                          max_image_pixels=args.max_image_pixels, max_body_bytes=int(args.max_body_mb * 2**20),
                          max_pending=args.max_pending, max_batch=args.max_batch,
                          max_queued_image_pixels=args.max_queued_image_pixels, allowed_local_media_path=args.allowed_local_media_path,
                          default_max_tokens=min(ServerLimits.default_max_tokens, args.max_tokens),
                          header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s)
    name = args.served_model_name or (args.model.name if args.model else "glmv-default")
    uvicorn.run(create_app(vlm, limits=limits, model_name=name), host=args.host, port=args.port,
                **uvicorn_options(header_timeout_s=limits.header_timeout_s))


if __name__ == "__main__":
    main()
