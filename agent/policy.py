"""Policies: whatever turns chat messages into the model's text.

A policy is any callable `messages -> str`, messages being OpenAI-style chat messages with text
and image parts. Three are provided:

- `OpenAIPolicy(base_url, model)` posts to any OpenAI-compatible `/chat/completions` endpoint
  (vLLM, SGLang, the project's own server) with plain `urllib`. It asks the server to keep
  special tokens (`skip_special_tokens: false`, as the official examples do) because the box
  tokens around actions are part of what the parsers read. Without `model` it asks the server
  (`GET /models`, the first id). `max_tokens` is sized for one action; when the server answers
  400 because the prompt plus `max_tokens` exceeds its context, the request is retried once with
  the limit the error names (the wording of this project's server, vLLM and SGLang).
- `VLMPolicy(vlm)` adapts a local `VLM` (`vlm.generate(messages, max_new_tokens=...,
  temperature=...)` returning an object with `.text`); `as_policy` wraps a `VLM` automatically.
- `ScriptedPolicy(answers)` answers from a list, for tests and demos.

Image parts come in two spellings (see `agent.prompts`): `image_url` with a data URL, or
`{"type": "image", "image": PIL.Image}`. `to_data_urls` and `to_pil` convert between them, so a
prompt is encoded to PNG only when it leaves the process.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from agent.prompts import Message, image_part

logger = logging.getLogger(__name__)


@runtime_checkable
class Policy(Protocol):
    def __call__(self, messages: list[Message]) -> str:
        ...


class PolicyError(RuntimeError):
    """The model could not be asked (HTTP error, malformed server reply, exhausted script)."""


def _map_parts(messages: list[Message], convert: Callable[[Message], Message]) -> list[Message]:
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            message = {**message, "content": [convert(part) for part in content]}
        out.append(message)
    return out


def to_data_urls(messages: list[Message]) -> list[Message]:
    """PIL image parts -> OpenAI `image_url` parts with PNG data URLs; other parts unchanged."""
    return _map_parts(messages, lambda p: image_part(p["image"]) if p.get("type") == "image" else p)


def to_pil(messages: list[Message]) -> list[Message]:
    """`image_url` data-URL parts -> `{"type": "image", "image": PIL.Image}`; other parts unchanged."""
    def convert(part: Message) -> Message:
        if part.get("type") != "image_url":
            return part
        url = part["image_url"]["url"]
        if not url.startswith("data:"):
            raise ValueError(f"only data: image URLs can be decoded locally, got {url[:60]!r}")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        image.load()
        return {"type": "image", "image": image}
    return _map_parts(messages, convert)


# One action with its reasoning: the released model's agent answers run to a few hundred tokens,
# and asking for the official examples' 8192 is the whole context of small models (a 400).
DEFAULT_MAX_TOKENS = 2048


class OpenAIPolicy:
    """A model behind an OpenAI-compatible chat endpoint.

    `base_url` is the API root (`http://127.0.0.1:8000/v1`); `model` the served name (None: the
    first id of `GET /models`, asked once); `api_key` goes into the `Authorization` header and
    nowhere else (never logged). `temperature` 0.001 follows the official agent examples;
    `max_tokens` is capped per request by what the server says fits (see the module docstring).
    """

    accepts_pil = True  # converts to data URLs itself, only when sending

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, *,
                 temperature: float = 0.001, max_tokens: int = DEFAULT_MAX_TOKENS, timeout_s: float = 300.0,
                 extra_body: dict[str, Any] | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens!r}: expected an integer >= 1")
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.root = self.url.removesuffix("/chat/completions")
        self.model = model
        self._api_key = api_key
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.extra_body = {"skip_special_tokens": False, **(extra_body or {})}

    def __repr__(self) -> str:
        return f"OpenAIPolicy({self.url!r}, model={self.model!r})"

    def __call__(self, messages: list[Message]) -> str:
        if self.model is None:
            self.model = self.served_model()
        body = {"model": self.model, "messages": to_data_urls(messages), "temperature": self.temperature,
                "max_tokens": self.max_tokens, **self.extra_body}
        try:
            reply = self._request(self.url, body)
        except _BadRequest as error:
            fits = fitting_max_tokens(error.detail)
            if fits is None or not 0 < fits < body["max_tokens"]:
                raise PolicyError(f"{self.url} answered HTTP 400: {error.detail}") from None
            logger.warning("%s: max_tokens=%d does not fit; retrying with %d", self.url, body["max_tokens"], fits)
            try:
                reply = self._request(self.url, {**body, "max_tokens": fits})
            except _BadRequest as again:
                raise PolicyError(f"{self.url} answered HTTP 400 (after retrying with max_tokens={fits}): "
                                  f"{again.detail}") from None
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise PolicyError(f"{self.url} answered without choices[0].message.content: {str(reply)[:300]}") from None
        if not isinstance(content, str):
            raise PolicyError(f"{self.url} answered content of type {type(content).__name__}, expected text")
        return content

    def served_model(self) -> str:
        """The first model id the server lists at `GET /models`."""
        url = self.root + "/models"
        reply = self._request(url, None)
        try:
            return str(reply["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise PolicyError(f"{url} listed no model (expected data[0].id): {str(reply)[:300]}; "
                              "pass the model name") from None

    def _request(self, url: str, body: dict[str, Any] | None) -> Any:
        """The JSON reply of a POST (`body`) or GET (None); `_BadRequest` on 400, `PolicyError` otherwise."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:1000].decode(errors="replace")
            if error.code == 400:
                raise _BadRequest(detail) from None
            raise PolicyError(f"{url} answered HTTP {error.code}: {detail[:500]}") from error
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise PolicyError(f"could not reach {url}: {error}") from error
        except ValueError as error:
            raise PolicyError(f"{url} did not answer JSON: {error}") from error


class _BadRequest(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# How servers say a request's max_tokens is too large. Context and prompt length (this
# project's server, vLLM's two wordings, SGLang's):
_CONTEXT = re.compile(r"exceeds the model's (\d+) positions|maximum context length (?:is|of) (\d+)")
_PROMPT = re.compile(r"prompt of (\d+) tokens|(\d+) in the messages|(\d+) input tokens|(\d+) tokens from the input")
# ... or a server-wide cap on max_tokens (this project's server).
_CAP = re.compile(r"max_(?:completion_)?tokens=\d+ is outside \[1, (\d+)\]")


def fitting_max_tokens(error_message: str) -> int | None:
    """The largest `max_tokens` a 400 error message says would fit, or None if it names none."""
    if cap := _CAP.search(error_message):
        return int(cap.group(1))
    context, prompt = _CONTEXT.search(error_message), _PROMPT.search(error_message)
    if context is None or prompt is None:
        return None
    return int(next(g for g in context.groups() if g)) - int(next(g for g in prompt.groups() if g))


class VLMPolicy:
    """A local `VLM` as a policy: `vlm.generate(messages, max_new_tokens=..., temperature=...,
    thinking=...).text`; `thinking=None` follows the checkpoint's default."""

    accepts_pil = True

    def __init__(self, vlm: Any, *, max_new_tokens: int = 2048, temperature: float = 0.0,
                 thinking: bool | None = None) -> None:
        if not callable(getattr(vlm, "generate", None)):
            raise TypeError(f"{type(vlm).__name__} has no generate(messages, ...) method")
        self.vlm = vlm
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.thinking = thinking

    def __call__(self, messages: list[Message]) -> str:
        result = self.vlm.generate(to_pil(messages), max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                   thinking=self.thinking)
        return result.text


class ScriptedPolicy:
    """Answers from `answers` in order; an answer may be a function of the messages.

    `calls` keeps every prompt received, so tests can check what the model was shown.
    """

    accepts_pil = True

    def __init__(self, answers: Sequence[str | Callable[[list[Message]], str]]) -> None:
        self.answers = list(answers)
        self.calls: list[list[Message]] = []

    def __call__(self, messages: list[Message]) -> str:
        if len(self.calls) >= len(self.answers):
            raise PolicyError(f"ScriptedPolicy ran out of answers after {len(self.answers)}")
        answer = self.answers[len(self.calls)]
        self.calls.append(messages)
        return answer(messages) if callable(answer) else answer


def as_policy(model: Any) -> Callable[[list[Message]], str]:
    """A policy from a policy, or from a `VLM` (anything with `generate`)."""
    if isinstance(model, (OpenAIPolicy, VLMPolicy, ScriptedPolicy)):
        return model
    if callable(getattr(model, "generate", None)):  # checked first: an nn.Module is callable too
        return VLMPolicy(model)
    if callable(model):
        return model
    raise TypeError(f"{type(model).__name__} is not a policy: pass a callable messages -> str or a VLM")
