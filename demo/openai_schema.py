"""Parsing and validating OpenAI chat-completion requests into what `VLM.generate` takes.

Everything a client can get wrong is caught here, before the engine sees the request, and
becomes an `APIError` carrying the HTTP status and the OpenAI error body
(`{"error": {"message", "type", "param", "code"}}`). Unusual points:

- Images arrive as `data:` URLs. Their pixel count is read from the header and checked
  against the limit *before* the pixels are decoded, so a small compressed "bomb" cannot
  exhaust memory: `parse_chat_request` only opens them, and the server decodes them
  (`decode_images`) once it has reserved room for their pixels. Local paths (`file://...` or a plain path) are refused unless the server
  names a directory they must lie in (vLLM's `--allowed-local-media-path`). Remote
  `http(s)` URLs are refused: the server never fetches on a client's behalf.
- `chat_template_kwargs: {"enable_thinking": false}` switches reasoning off as vLLM does with
  the GLM template; the answer and the reasoning come back separately
  (`content` / `reasoning_content`, vLLM's names with a reasoning parser).
- vLLM's extra fields (`top_k`, `repetition_penalty`, `skip_special_tokens`, `ignore_eos`) are accepted; fields whose
  semantics this server does not implement (`n > 1`, `logprobs`, penalties other than 0) are
  refused rather than silently ignored. Tool calling (`tools`, `tool_choice`, `tool_calls` and
  `tool` messages in the history) is checked in `demo.openai_tools`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

ErrorType = Literal["invalid_request_error", "not_found_error", "rate_limit_error", "server_error"]
Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant", "tool")


class APIError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, type: ErrorType = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        # A message quoting client input may hold lone surrogates ("\udcff" in a JSON string), which
        # UTF-8 cannot encode: escape them, or the error response itself fails with a 500.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask of the server. Defaults suit a single CPU/GPU worker."""

    max_body_bytes: int = 32 * 2**20  # the whole JSON body, images included (base64)
    max_images: int = 8  # image parts per request, over all messages
    max_videos: int = 1  # video parts per request
    max_image_pixels: int = 4096 * 4096  # width * height of one image, read from its header
    max_tokens: int = 8192  # the largest `max_tokens` a request may ask for (the agent examples ask 8192)
    default_max_tokens: int = 512  # used when the request does not say
    max_stop: int = 4  # stop strings, as OpenAI allows
    max_pending: int = 64  # requests queued or running; more get 429
    max_batch: int = 16  # requests decoded together, a KV cache each (decode is memory-bound: 8 rows ~ 3x 1 row's cost)
    max_queued_image_pixels: int = 32 * 2**20  # decoded pixels held by queued/running requests (~16 full-HD shots)
    allowed_local_media_path: Path | None = None  # local image/video paths only under this directory
    header_timeout_s: float = 10.0  # a request's headers must arrive within this (else 408 and close)
    body_timeout_s: float = 60.0  # and its whole body within this after them (32 MB at ~0.5 MB/s)

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"ServerLimits.{name}={getattr(self, name)!r} must be a positive number of seconds")
        for name in ("max_body_bytes", "max_images", "max_image_pixels", "max_tokens",
                     "default_max_tokens", "max_stop", "max_pending", "max_batch", "max_queued_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerLimits.{name}={getattr(self, name)!r} must be >= 1")
        if self.max_videos < 0:
            raise ValueError(f"ServerLimits.max_videos={self.max_videos!r} must be >= 0")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"ServerLimits.default_max_tokens={self.default_max_tokens} exceeds "
                             f"max_tokens={self.max_tokens}")


@dataclass(frozen=True)
class Sampling:
    """The generation settings of one request, in `VLM.generate`'s names."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "repetition_penalty": self.repetition_penalty,
                "stop": list(self.stop) or None, "seed": self.seed}


@dataclass(frozen=True)
class ChatRequest:
    """A validated request. `messages` are `VLM.generate` messages: images decoded to PIL,
    videos as local paths."""

    model: str | None
    messages: list[dict[str, Any]]
    sampling: Sampling
    thinking: bool | None
    stream: bool
    include_usage: bool
    skip_special_tokens: bool  # vLLM's default True strips box tokens; agents send False to keep them
    ignore_eos: bool = False  # vLLM's: decode max_tokens whatever the stop tokens (benchmarks); stop strings still apply
    tools: list[dict[str, Any]] | None = None  # checked, OpenAI's shape
    tool_choice: Any = "auto"  # "auto", "none", "required" or {"type": "function", "function": {"name"}}


# OpenAI sampling options that change results and that this server does not implement:
# refusing them is better than answering something the client did not ask for.
_UNSUPPORTED_UNLESS_DEFAULT = {"n": 1, "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0,
                               "top_logprobs": None, "best_of": 1, "use_beam_search": False}


def parse_chat_request(body: bytes, limits: ServerLimits) -> ChatRequest:
    """Validate a `/v1/chat/completions` body; raise `APIError` (400) naming what is wrong.
    Images are opened (size known), not decoded: see `decode_images`."""
    try:
        return _parse_chat_request(body, limits)
    except RecursionError:  # json and repr() recurse per nesting level
        raise APIError(400, "request body is nested too deeply") from None


def request_pixels(request: ChatRequest) -> int:
    """Pixels the request's images hold once decoded (from their headers)."""
    return sum(image.width * image.height for image in _images(request))


def decode_images(request: ChatRequest) -> None:
    """Decode every image of the request in place; a truncated or corrupt one is a 400."""
    for where, image in _images(request, named=True):
        try:
            image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise APIError(400, f"{where}: cannot decode the image ({err})", param=where, code="invalid_image") from None


def _images(request: ChatRequest, *, named: bool = False) -> list:
    found = [(f"messages[{i}].content[{j}]", part["image"]) for i, message in enumerate(request.messages)
             for j, part in enumerate(message["content"]) if part.get("type") == "image"]
    return found if named else [image for _, image in found]


def _parse_chat_request(body: bytes, limits: ServerLimits) -> ChatRequest:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(data).__name__}")
    for name, default in _UNSUPPORTED_UNLESS_DEFAULT.items():
        if data.get(name, default) not in (default, None):
            raise APIError(400, f"{name}={data[name]!r} is not supported by this server "
                                f"(only {default!r})", param=name, code="unsupported_parameter")
    from demo.openai_tools import parse_tools  # it imports APIError from here

    tools, tool_choice = parse_tools(data)
    response_format = data.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise APIError(400, f"response_format={response_format!r} is not supported (only text)",
                       param="response_format", code="unsupported_parameter")

    model = _optional(data, "model", str)
    stream = _optional(data, "stream", bool) or False
    stream_options = _optional(data, "stream_options", dict) or {}
    include_usage = stream_options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise APIError(400, f"stream_options.include_usage={include_usage!r} must be a boolean",
                       param="stream_options.include_usage")
    template_kwargs = _optional(data, "chat_template_kwargs", dict) or {}
    thinking = template_kwargs.get("enable_thinking")
    if thinking is not None and not isinstance(thinking, bool):
        raise APIError(400, f"chat_template_kwargs.enable_thinking={thinking!r} must be a boolean",
                       param="chat_template_kwargs.enable_thinking")
    skip_special = _optional(data, "skip_special_tokens", bool)
    messages = _parse_messages(data.get("messages"), limits)
    return ChatRequest(model=model, messages=messages, sampling=_parse_sampling(data, limits),
                       thinking=thinking, stream=stream, include_usage=include_usage,
                       skip_special_tokens=True if skip_special is None else skip_special,
                       ignore_eos=_optional(data, "ignore_eos", bool) or False, tools=tools, tool_choice=tool_choice)


def _optional(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    # bool is an int in Python; a JSON `true` is never a valid number here.
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise APIError(400, f"{name}={value!r} must be {_KIND_NAMES.get(kind, kind.__name__)}", param=name)
    return value


_KIND_NAMES = {str: "a string", bool: "a boolean", dict: "an object", list: "an array", int: "an integer"}


def _number(data: dict[str, Any], name: str, default: float, low: float, high: float, *,
            low_open: bool = False) -> float:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise APIError(400, f"{name}={value!r} must be a number", param=name)
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise APIError(400, f"{name}={value!r} is outside {bracket}{low}, {high}]", param=name)
    return float(value)


def _parse_sampling(data: dict[str, Any], limits: ServerLimits) -> Sampling:
    name = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _optional(data, name, int)
    if max_tokens is None:
        max_tokens = limits.default_max_tokens
    elif not 1 <= max_tokens <= limits.max_tokens:
        raise APIError(400, f"{name}={max_tokens} is outside [1, {limits.max_tokens}] "
                            f"(this server's limit)", param=name, code="max_tokens_exceeded")
    top_k = _optional(data, "top_k", int)
    if top_k is not None and top_k < -1:
        raise APIError(400, f"top_k={top_k} must be -1 or 0 (off) or a positive integer", param="top_k")
    seed = _optional(data, "seed", int)
    return Sampling(
        max_new_tokens=max_tokens,
        temperature=_number(data, "temperature", 0.0, 0.0, 2.0),
        top_p=_number(data, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=max(top_k or 0, 0),  # vLLM's -1 and OpenAI's absence both mean "off"
        repetition_penalty=_number(data, "repetition_penalty", 1.0, 0.0, 10.0, low_open=True),
        stop=_parse_stop(data.get("stop"), limits),
        seed=seed)


def _parse_stop(stop: Any, limits: ServerLimits) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise APIError(400, f"stop={stop!r} must be a non-empty string or a list of them", param="stop")
    if len(stops) > limits.max_stop:
        raise APIError(400, f"stop has {len(stops)} strings; at most {limits.max_stop} are allowed", param="stop")
    return tuple(stops)


def _parse_messages(messages: Any, limits: ServerLimits) -> list[dict[str, Any]]:
    from demo.openai_tools import history_fields  # it imports APIError from here

    if not isinstance(messages, list) or not messages:
        raise APIError(400, f"messages must be a non-empty array, got {messages!r:.80}", param="messages")
    counts = {"image": 0, "video": 0}
    parsed = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise APIError(400, f"{where}.role={role!r} is not one of {list(ROLES)}", param=f"{where}.role")
        content = message.get("content")
        tool_fields = history_fields(message, role, where)
        if content is None and "tool_calls" in tool_fields:
            content = ""
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = [_parse_part(part, f"{where}.content[{j}]", limits, counts) for j, part in enumerate(content)]
        else:
            raise APIError(400, f"{where}.content must be a string or an array of parts", param=f"{where}.content")
        parsed.append({"role": role, "content": parts, **tool_fields})
    return parsed


def _parse_part(part: Any, where: str, limits: ServerLimits, counts: dict[str, int]) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise APIError(400, f"{where} must be an object", param=where)
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise APIError(400, f"{where}.text must be a string", param=f"{where}.text")
        return {"type": "text", "text": text}
    if kind in ("image_url", "video_url"):
        media = kind.removesuffix("_url")
        counts[media] += 1
        limit = limits.max_images if media == "image" else limits.max_videos
        if counts[media] > limit:
            raise APIError(400, f"too many {media}s: this server accepts at most {limit} per request",
                           param=where, code=f"too_many_{media}s")
        url = part.get(kind)
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise APIError(400, f"{where}.{kind}.url must be a string", param=f"{where}.{kind}.url")
        if media == "image":
            return {"type": "image", "image": _load_image(url, where, limits)}
        return {"type": "video", "video": _local_path(url, where, limits)}
    raise APIError(400, f"{where}.type={kind!r} is not one of ['text', 'image_url', 'video_url']",
                   param=f"{where}.type")


def _load_image(url: str, where: str, limits: ServerLimits) -> Image.Image:
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise APIError(400, f"{where}: a data URL must look like data:image/png;base64,<data>", param=where)
        try:
            source: Any = io.BytesIO(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError):
            raise APIError(400, f"{where}: the data URL's payload is not valid base64", param=where) from None
    else:
        source = _local_path(url, where, limits)
    try:
        image = Image.open(source)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as err:
        raise APIError(400, f"{where}: cannot read the image ({err})", param=where,
                       code="invalid_image") from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise APIError(400, f"{where}: image {width}x{height} has {width * height} pixels; this server accepts "
                            f"at most {limits.max_image_pixels}", param=where, code="image_too_large")
    return image  # opened, not decoded: `decode_images`


def _local_path(url: str, where: str, limits: ServerLimits) -> str:
    if url.startswith(("http://", "https://")):
        raise APIError(400, f"{where}: remote URLs are not fetched by this server; send the media "
                            f"as a data: URL", param=where, code="remote_url")
    if url.startswith("data:"):
        raise APIError(400, f"{where}: videos must be local paths (data: URLs are accepted for images)",
                       param=where)
    root = limits.allowed_local_media_path
    if root is None:
        raise APIError(400, f"{where}: local paths are disabled; start the server with "
                            f"--allowed-local-media-path DIR to allow them", param=where, code="local_path_disabled")
    if "\x00" in url:
        raise APIError(400, f"{where}: the path {url[:200]!r} contains a NUL byte", param=where)
    try:
        path = Path(url.removeprefix("file://")).resolve()
        inside = path.is_relative_to(Path(root).resolve())
        exists = inside and path.is_file()
    except (OSError, ValueError, RuntimeError) as err:  # too long, a symlink loop, ...
        raise APIError(400, f"{where}: cannot use the path {url[:200]!r} ({err})", param=where) from None
    if not inside:
        raise APIError(400, f"{where}: {path} is outside the allowed media directory {root}", param=where,
                       code="local_path_disabled")
    if not exists:
        raise APIError(400, f"{where}: {path} does not exist", param=where)
    return str(path)
