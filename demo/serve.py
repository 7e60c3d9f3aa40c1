"""An OpenAI-compatible HTTP server for any model `VLM.from_pretrained` loads.

    python -m demo.serve [--model PATH] [--adapter DIR] [--host H] [--port P]

`POST /v1/chat/completions` (JSON or SSE streaming), `GET /v1/models`, `GET /health`.
Requests are validated in `demo.openai_schema`; anything wrong with a request is a 4xx with an
OpenAI-style JSON error, never a 5xx.

One engine thread runs one generation at a time, in arrival order: the model holds one KV
cache and torch already uses every core for a single sequence, so a second thread would only
contend. Requests beyond `ServerLimits.max_pending` (queued plus running) get 429 at once
instead of waiting without bound. A streaming client that disconnects stops its generation
at the next token, freeing the engine for the queue.

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
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from demo.cli import add_model_arguments, load_model
from demo.openai_schema import APIError, ChatRequest, ServerLimits, parse_chat_request
from vlm.outputs import strip_special_tokens

if TYPE_CHECKING:
    from vlm import VLM

logger = logging.getLogger(__name__)

# What the engine thread sends to the request's event loop: ("event", channel, piece),
# ("done", Generation) or ("error", exception).
_Item = tuple[Any, ...]


class EngineQueue:
    """Runs generations one at a time on a dedicated thread, with a bounded backlog.

    `pending` is only touched on the event loop's thread, so it needs no lock.
    """

    def __init__(self, vlm: VLM, *, max_pending: int) -> None:
        self.vlm = vlm
        self.max_pending = max_pending
        self.pending = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlm-engine")

    def _submit(self, fn: Any) -> Future:
        if self.pending >= self.max_pending:
            raise APIError(429, f"the server is busy ({self.pending} requests queued or running); retry later",
                           type="rate_limit_error", code="server_busy")
        self.pending += 1
        loop = asyncio.get_running_loop()
        future = self._executor.submit(fn)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return future

    def _release(self) -> None:
        self.pending -= 1

    async def generate(self, request: ChatRequest) -> Any:
        """The finished `Generation`; engine errors become `APIError`s."""
        future = self._submit(lambda: self.vlm.generate(
            request.messages, thinking=request.thinking, **request.sampling.as_kwargs()))
        try:
            return await asyncio.wrap_future(future)
        except Exception as err:
            raise _engine_error(err) from err

    async def stream(self, request: ChatRequest) -> tuple[_Item, asyncio.Queue[_Item], threading.Event]:
        """Start a streamed generation; return its first item (so errors raised before any
        output can still become a 4xx), the queue of the rest, and a flag that stops it."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[_Item] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: _Item) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        def run() -> None:
            try:
                stream = self.vlm.generate(request.messages, thinking=request.thinking, stream=True,
                                           **request.sampling.as_kwargs())
                for channel, piece in stream.events():
                    if cancelled.is_set():
                        logger.info("client went away; generation stopped")
                        return
                    if piece:
                        put(("event", channel, piece))
                put(("done", stream.result))
            except Exception as err:  # noqa: BLE001 - handed to the request, which answers with it
                put(("error", err))

        self._submit(run)
        try:
            first = await items.get()
        except asyncio.CancelledError:  # the client left while queued or during prefill
            cancelled.set()
            raise
        if first[0] == "error":
            raise _engine_error(first[1])
        return first, items, cancelled

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


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
    engine = EngineQueue(vlm, max_pending=limits.max_pending)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(title="glmv OpenAI-compatible server", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.engine = engine
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(_: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(err.status_code, str(err.detail), type=kind).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=err)
        return JSONResponse(APIError(500, f"internal error: {type(err).__name__}", type="server_error").body(),
                            status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "pending": engine.pending}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list",
                "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "glmv",
                          "max_model_len": vlm.config.text.max_position_embeddings}]}  # vLLM's field

    @app.post("/v1/chat/completions")
    async def chat_completions(http_request: Request) -> Any:
        request = parse_chat_request(await _read_body(http_request, limits.max_body_bytes), limits)
        if request.model not in (None, model_name):
            raise APIError(404, f"model {request.model!r} does not exist; this server serves {model_name!r}",
                           type="not_found_error", param="model", code="model_not_found")
        reply = _Reply(model=model_name, skip_special_tokens=request.skip_special_tokens)
        if not request.stream:
            generation = await engine.generate(request)
            logger.info("%s: %d prompt + %d completion tokens, prefill %.2f s, %.1f tokens/s", reply.id,
                        generation.prompt_tokens, len(generation.token_ids), generation.prefill_s,
                        generation.decode_tokens_per_s)
            return reply.completion(generation)
        first, items, cancelled = await engine.stream(request)
        return StreamingResponse(reply.sse(first, items, cancelled, include_usage=request.include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing one past `limit` bytes with 413 without holding it in memory."""
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        # Past the limit the rest is read and dropped: answering before the client has sent
        # everything makes many clients report a broken pipe instead of our 413.
        size += len(chunk)
        too_big = too_big or size > limit
        if not too_big:
            chunks.append(chunk)
    if too_big:
        raise APIError(413, f"request body of {max(size, int(declared or 0))} bytes exceeds this server's "
                            f"limit of {limit} bytes", code="request_too_large")
    return b"".join(chunks)


class _Reply:
    """The response bodies of one request, in OpenAI's shapes."""

    def __init__(self, *, model: str, skip_special_tokens: bool) -> None:
        self.model = model
        self.clean = strip_special_tokens if skip_special_tokens else str
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def completion(self, generation: Any) -> dict[str, Any]:
        message = {"role": "assistant", "content": self.clean(generation.text),
                   "reasoning_content": self.clean(generation.thinking or "") or None}
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
            item = first
            while item[0] == "event":
                _, channel, piece = item
                # A special token is one token, so it never straddles two pieces.
                if piece := self.clean(piece):
                    yield self._chunk({"reasoning_content" if channel == "thinking" else "content": piece})
                item = await items.get()
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
    args = parser.parse_args(argv)

    import uvicorn

    vlm = load_model(parser, args)
    limits = ServerLimits(max_tokens=args.max_tokens, max_images=args.max_images,
                          max_image_pixels=args.max_image_pixels, max_body_bytes=int(args.max_body_mb * 2**20),
                          max_pending=args.max_pending, allowed_local_media_path=args.allowed_local_media_path,
                          default_max_tokens=min(ServerLimits.default_max_tokens, args.max_tokens))
    name = args.served_model_name or (args.model.name if args.model else "glmv-default")
    uvicorn.run(create_app(vlm, limits=limits, model_name=name), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
