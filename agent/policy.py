"""Policies: whatever turns chat messages into the model's text.

A policy is any callable `messages -> str`, messages being OpenAI-style chat messages with text
and image parts. Three are provided:

- `OpenAIPolicy(base_url, model)` posts to any OpenAI-compatible `/chat/completions` endpoint
  (vLLM, SGLang, the project's own server) with plain `urllib`. It asks the server to keep
  special tokens (`skip_special_tokens: false`, as the official examples do) because the box
  tokens around actions are part of what the parsers read.
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


class OpenAIPolicy:
    """A model behind an OpenAI-compatible chat endpoint.

    `base_url` is the API root (`http://127.0.0.1:8000/v1`); `api_key` goes into the
    `Authorization` header and nowhere else (never logged). `temperature` 0.001 and
    `max_tokens` 8192 follow the official agent examples.
    """

    accepts_pil = True  # converts to data URLs itself, only when sending

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, temperature: float = 0.001,
                 max_tokens: int = 8192, timeout_s: float = 300.0, extra_body: dict[str, Any] | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self._api_key = api_key
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.extra_body = {"skip_special_tokens": False, **(extra_body or {})}

    def __repr__(self) -> str:
        return f"OpenAIPolicy({self.url!r}, model={self.model!r})"

    def __call__(self, messages: list[Message]) -> str:
        body = {"model": self.model, "messages": to_data_urls(messages), "temperature": self.temperature,
                "max_tokens": self.max_tokens, **self.extra_body}
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:500].decode(errors="replace")
            raise PolicyError(f"{self.url} answered HTTP {error.code}: {detail}") from error
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise PolicyError(f"could not reach {self.url}: {error}") from error
        except ValueError as error:
            raise PolicyError(f"{self.url} did not answer JSON: {error}") from error
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise PolicyError(f"{self.url} answered without choices[0].message.content: {str(reply)[:300]}") from None
        if not isinstance(content, str):
            raise PolicyError(f"{self.url} answered content of type {type(content).__name__}, expected text")
        return content


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
