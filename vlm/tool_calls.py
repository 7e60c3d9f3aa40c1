"""GLM-4.5 tool calls: the model's XML form, OpenAI's `tools` / `tool_calls`, and the way between.

The released GLM-4.5 / GLM-4.5V models call a tool as (the chat template renders `tools` into a
system turn that asks for exactly this)

    <tool_call>get_weather
    <arg_key>city</arg_key>
    <arg_value>Paris</arg_value>
    </tool_call>

What is unusual here:
- Argument values are raw text. One whose schema type is "string" stays exactly as written; any
  other value, and one whose tool declares no type, is read as JSON when it parses ("3" -> 3,
  "[1, 2]" -> [1, 2]) and kept as text otherwise (as vLLM's `glm45` parser does, except that
  nothing is ever `eval`-ed: vLLM falls back to `ast.literal_eval`). A value that does not fit its
  declared type is reported, and kept.
- `ToolCallParser` reads a stream: `feed(piece)` returns answer text and whole calls. Text that
  could still become `<tool_call>` is held back, and a call is held until its `</tool_call>`,
  so half a tag is never shown as text, however the text is cut into pieces.
- Malformed XML (a call never closed, no function name, text between the argument pairs, a key
  given twice) is not raised: it becomes a `ToolCallError`, and its raw text is given back as
  answer text, so nothing the model wrote is lost.
- Whitespace next to a call (the template's separators) is not content; text on both sides of a
  call is joined by one newline.

References: the GLM-4.5 chat template (assets/model/chat_template.jinja renders the same
strings), vLLM's `glm45` tool parser (OpenAI shapes, what is parsed as JSON).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_PAIR = re.compile(r"\s*<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)
_NAME = re.compile(r"[^\s<>]+")
_NOT_JSON = object()
_JSON_TYPES = {"integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict,
               "null": type(None)}


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: the function's name and its arguments, typed by the tool's schema."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self) -> dict[str, Any]:
        """The call as an OpenAI `tool_calls` entry (arguments as a JSON string)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


@dataclass(frozen=True)
class ToolCallError:
    """Model output that looks like a call but is not one (or a call whose arguments misfit)."""

    text: str  # the raw text of the call as the model wrote it
    reason: str


@dataclass(frozen=True)
class ParsedToolCalls:
    """A whole answer split into text and calls."""

    content: str  # the text outside the calls (malformed calls included, as written)
    calls: list[ToolCall]
    errors: list[ToolCallError]


ToolEvent = tuple[Literal["answer"], str] | tuple[Literal["tool_call"], ToolCall]


# ---------------------------------------------------------------------------------------------
# Tools and messages in (what the chat template renders)


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """Validated tools in OpenAI's shape (`{"type": "function", "function": {"name", ...}}`); a bare
    function (`{"name", "parameters"}`) is wrapped. Raises ValueError naming what is wrong."""
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes)) or not tools:
        raise ValueError(f"tools={tools!r:.80}: expected a non-empty list of tools")
    checked = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise ValueError(f"tools[{i}]={tool!r:.80}: expected an object")
        if "function" not in tool and "name" in tool:
            tool = {"type": "function", "function": tool}
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, Mapping):
            raise ValueError(f"tools[{i}]: expected {{'type': 'function', 'function': {{...}}}}, got {tool!r:.80}")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"tools[{i}].function.name={name!r}: expected a name without spaces or '<', '>'")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise ValueError(f"tools[{i}].function.parameters={parameters!r:.80}: expected a JSON schema object")
        checked.append({"type": "function", "function": dict(function)})
    names = [t["function"]["name"] for t in checked]
    if len(set(names)) < len(names):
        raise ValueError(f"tools: function names repeat: {names}")
    return checked


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-style messages as the chat template wants them: an assistant's `tool_calls`
    arguments as a mapping (OpenAI sends a JSON string), its missing content as "". Raises
    ValueError for a call that is not `{"function": {"name", "arguments"}}`."""
    out = []
    for i, message in enumerate(messages):
        calls = message.get("tool_calls")
        if not calls:
            out.append(dict(message))
            continue
        if message.get("role") != "assistant" or not isinstance(calls, Sequence):
            raise ValueError(f"messages[{i}].tool_calls: expected a list on an assistant message")
        content = message.get("content")
        out.append({**message, "content": "" if content is None else content,
                    "tool_calls": [_template_call(call, f"messages[{i}].tool_calls[{j}]")
                                   for j, call in enumerate(calls)]})
    return out


def _template_call(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function", call) if isinstance(call, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: expected {{'function': {{'name': ..., 'arguments': ...}}}}, got {call!r:.80}")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}.function.arguments={arguments!r:.80} is not JSON: {err}") from None
    if not isinstance(arguments, Mapping):
        raise ValueError(f"{where}.function.arguments={arguments!r:.80}: expected a JSON object")
    return {"type": "function", "function": {"name": name, "arguments": dict(arguments)}}


def forced_prefix(tool_choice: Any, tools: Sequence[Mapping[str, Any]] | None) -> str:
    """The text the answer is made to start with for `tool_choice` ("auto" / "none": none;
    "required": `<tool_call>`; a named function: `<tool_call>name`). Raises ValueError."""
    if tool_choice in (None, "auto", "none"):
        return ""
    if not tools:
        raise ValueError(f"tool_choice={tool_choice!r} needs tools")
    if tool_choice == "required":
        return OPEN
    function = tool_choice.get("function") if isinstance(tool_choice, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    names = [t["function"]["name"] for t in tools]
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"tool_choice={tool_choice!r:.100}: expected 'auto', 'none', 'required' or "
                         f"{{'type': 'function', 'function': {{'name': one of {names}}}}}")
    return f"{OPEN}{name}"


# ---------------------------------------------------------------------------------------------
# Calls out (what the model wrote)


def parse_tool_calls(text: str, tools: Sequence[Mapping[str, Any]] | None = None) -> ParsedToolCalls:
    """Split a whole answer into text and calls (the streaming parser, fed at once)."""
    parser = ToolCallParser(tools)
    events = parser.feed(text) + parser.close()
    content = "".join(piece for kind, piece in events if kind == "answer")
    return ParsedToolCalls(content, [call for kind, call in events if kind == "tool_call"], parser.errors)


class ToolCallParser:
    """Incremental: `feed(piece)` and, at the end, `close()` return ("answer", text) and
    ("tool_call", ToolCall) events; `errors` collects the malformed calls met so far."""

    def __init__(self, tools: Sequence[Mapping[str, Any]] | None = None) -> None:
        self._types = {t["function"]["name"]: _declared_types(t["function"]) for t in tools or ()}
        self._buffer = ""
        self._shown = False  # some text was given out
        self._after_call = False  # a call came after the last text given out
        self.errors: list[ToolCallError] = []

    def feed(self, piece: str) -> list[ToolEvent]:
        self._buffer += piece
        return self._drain(final=False)

    def close(self) -> list[ToolEvent]:
        """The rest: held text, and an unclosed call reported and given back as text."""
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> list[ToolEvent]:
        events: list[ToolEvent] = []
        while True:
            start = self._buffer.find(OPEN)
            if start < 0:
                # Held back: a tail that may still become <tool_call>, and trailing whitespace
                # (it is dropped when a call follows).
                keep = 0 if final else _held_tail(self._buffer)
                text = self._buffer[: len(self._buffer) - keep]
                shown = text.rstrip()
                self._buffer = "" if final else self._buffer[len(shown) :]
                self._text(shown, events)
                return events
            before = self._buffer[:start].rstrip()
            self._text(before, events)
            stop = self._block_end(start, final=final)
            if stop is None:
                self._buffer = self._buffer[len(before) :]
                return events
            gap = self._buffer[len(before) : start]  # dropped before a call, kept before a malformed one
            block, self._buffer = self._buffer[start:stop], self._buffer[stop:]
            call = self._call(block)
            if call is not None:
                events.append(("tool_call", call))
                self._after_call = True
            else:
                self._text(gap + block, events)

    def _block_end(self, start: int, *, final: bool) -> int | None:
        """Where the call opened at `start` ends (None: not known yet)."""
        close = self._buffer.find(CLOSE, start)
        nested = self._buffer.find(OPEN, start + len(OPEN))
        if nested >= 0 and (close < 0 or nested < close):
            return nested  # a call opened inside an unclosed one: the first is malformed
        if close >= 0:
            return close + len(CLOSE)
        return len(self._buffer) if final else None

    def _text(self, text: str, events: list[ToolEvent]) -> None:
        """Give out `text`, which lies outside calls, without whitespace next to a call."""
        text = text.rstrip()
        if self._after_call or not self._shown:
            text = text.lstrip()
        if not text:
            return
        if self._after_call and self._shown:
            text = "\n" + text
        events.append(("answer", text))
        self._shown, self._after_call = True, False

    def _call(self, block: str) -> ToolCall | None:
        if not block.endswith(CLOSE):
            return self._error(block, f"{OPEN} is never closed by {CLOSE}")
        inner = block[len(OPEN) : -len(CLOSE)]
        head, sep, _ = inner.partition("<arg_key>")
        name = head.strip()
        if not _NAME.fullmatch(name):
            return self._error(block, f"expected a function name after {OPEN}, got {head!r:.40}")
        body = inner[len(head) :]
        pairs = list(_PAIR.finditer(body))
        if "".join(m.group(0) for m in pairs) != body.rstrip() or (not pairs and body.strip()):
            return self._error(block, "expected only <arg_key>k</arg_key><arg_value>v</arg_value> pairs after the name")
        keys = [m.group(1).strip() for m in pairs]
        if len(set(keys)) < len(keys):
            return self._error(block, f"an argument is given twice: {keys}")
        types = self._types.get(name, {})
        arguments = {k: self._value(block, name, k, m.group(2), types.get(k)) for k, m in zip(keys, pairs)}
        if self._types and name not in self._types:
            self._error(block, f"the model called {name!r}, which is not one of the tools {sorted(self._types)}")
        return ToolCall(name, arguments)

    def _value(self, block: str, name: str, key: str, raw: str, declared: tuple[str, ...] | None) -> Any:
        """`raw` read as JSON unless its schema says string (with ["string", "null"], "null" is None)."""
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = _NOT_JSON
        if declared is None or any(_fits(value, t) for t in declared if t != "string"):
            return raw if value is _NOT_JSON else value
        if "string" not in declared:
            self._error(block, f"argument {key!r} of {name!r} should be {'/'.join(declared)}, got {raw!r:.40}")
        return raw

    def _error(self, block: str, reason: str) -> None:
        self.errors.append(ToolCallError(block, reason))


def _held_tail(text: str) -> int:
    """Length of the longest tail of `text` that begins `<tool_call>` (it may still become one)."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if text.endswith(OPEN[:n]):
            return n
    return 0


def _declared_types(function: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Argument name -> JSON schema type(s) the tool declares for it (absent: undeclared)."""
    properties = (function.get("parameters") or {}).get("properties") or {}
    types = {}
    for key, schema in properties.items():
        kind = schema.get("type") if isinstance(schema, Mapping) else None
        if isinstance(kind, str):
            types[key] = (kind,)
        elif isinstance(kind, list) and all(isinstance(k, str) for k in kind):
            types[key] = tuple(kind)
    return types


def _fits(value: Any, kind: str) -> bool:
    if value is _NOT_JSON:
        return False
    expected = _JSON_TYPES.get(kind)
    if expected is None:
        return True  # a type this check does not know: accepted
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, expected)
