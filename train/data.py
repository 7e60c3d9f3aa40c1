"""Reading conversation datasets from JSONL.

Two layouts are accepted, one conversation per line, and both become the same
`Conversation` (OpenAI-style messages whose content is a list of typed parts):

* ours / OpenAI-style::

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "shot.png"},
                                               {"type": "text", "text": "..."}]},
                  {"role": "assistant", "content": "..."}]}

  Tool calling, OpenAI-style: a top-level `tools` list (OpenAI's function tools), assistant
  messages with `tool_calls` (arguments a JSON string or an object; content may be null) and
  `tool` messages with the results. The chat template renders them in GLM-4.5's form (`<tool_call>`
  XML in the assistant turn, the results in an `<|observation|>` turn), so the call tokens are
  learned with the rest of the assistant turn and the results are not.

* ShareGPT / LLaMA-Factory: `messages` (role/content) or `conversations` (from/value) with
  plain-string contents holding `<image>` / `<video>` markers, plus top-level `images` /
  `videos` lists consumed in marker order, and an optional top-level `system`.

Relative media paths resolve against the JSONL file's directory. A bad record (not JSON, wrong
shape, no assistant turn, a missing file, and later, during encoding, an unreadable image or a
sample over the length limit) is skipped and counted in `BadRecords` with its line number;
with `strict=True` the first one raises `BadRecordError`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm.tool_calls import check_tools, template_messages

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool", "observation")  # "observation": a tool result
# ShareGPT speaker names -> our roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "observation": "tool", "function_call": "assistant"}
MARKER = re.compile(r"(<image>|<video>)")


@dataclass(frozen=True)
class Conversation:
    """One training conversation. `line` is 1-based in its JSONL file."""

    line: int
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None  # OpenAI function tools the template renders

    @property
    def media(self) -> list[tuple[str, str]]:
        """(kind, path) for every image/video part, in order."""
        return [(part["type"], part[part["type"]]) for m in self.messages
                if isinstance(m["content"], list) for part in m["content"]
                if part["type"] in ("image", "video")]


class BadRecordError(ValueError):
    """A record that cannot be trained on; raised only in strict mode."""


@dataclass
class BadRecords:
    """Skipped records: (file, line, reason) in the order met, plus counts per reason kind."""

    items: list[tuple[str, int, str]] = field(default_factory=list)
    strict: bool = False

    def add(self, source: str, line: int, reason: str) -> None:
        if self.strict:
            raise BadRecordError(f"{source}:{line}: {reason}")
        self.items.append((source, line, reason))
        log.warning("skipping %s:%d: %s", source, line, reason)

    def __len__(self) -> int:
        return len(self.items)

    def lines(self) -> list[int]:
        return [line for _, line, _ in self.items]

    def summary(self) -> str:
        """One line per reason kind with the line numbers, for the end-of-run report."""
        if not self.items:
            return "no bad records"
        kinds = Counter(reason.split(":")[0] for _, _, reason in self.items)
        parts = [f"{len(self.items)} bad record(s) skipped"]
        for kind, n in kinds.most_common():
            lines = [str(line) for _, line, r in self.items if r.split(":")[0] == kind]
            parts.append(f"  {kind}: {n} (lines {', '.join(lines[:20])}{' ...' if n > 20 else ''})")
        return "\n".join(parts)


def read_conversations(path: str | Path, *, bad: BadRecords) -> list[Conversation]:
    """Read and validate every line of `path`; bad lines go to `bad` (or raise when strict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {str(path)!r} does not exist")
    root = path.resolve().parent
    conversations = []
    with path.open(encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                conversations.append(Conversation(line_no, parse_record(record, root=root), record_tools(record)))
            except json.JSONDecodeError as e:
                bad.add(str(path), line_no, f"invalid JSON: {e.msg} at column {e.colno}")
            except (KeyError, TypeError, ValueError) as e:
                bad.add(str(path), line_no, str(e).strip("'\""))
    if not conversations:
        raise ValueError(f"dataset {str(path)!r} has no usable record ({len(bad)} bad)")
    return conversations


def parse_record(record: Any, *, root: Path) -> list[dict[str, Any]]:
    """One JSON record in either layout -> validated OpenAI-style messages with absolute paths."""
    if not isinstance(record, dict):
        raise ValueError(f"bad shape: expected a JSON object, got {type(record).__name__}")
    if "conversations" in record or "images" in record or "videos" in record or _has_markers(record):
        messages = _from_sharegpt(record)
    elif "messages" in record:
        messages = [_normalise_message(m) for m in record["messages"]]
    else:
        raise ValueError(f"bad shape: expected a 'messages' or 'conversations' list, got keys {sorted(record)}")
    if not any(m["role"] == "assistant" and (_text_of(m) or m.get("tool_calls")) for m in messages):
        raise ValueError("no assistant turn: nothing to learn from")
    for m in messages:
        if isinstance(m["content"], list):
            for part in m["content"]:
                if part["type"] in ("image", "video"):
                    part[part["type"]] = _resolve(part[part["type"]], root)
    return messages


def record_tools(record: Any) -> list[dict[str, Any]] | None:
    """The record's checked `tools` (None without); ValueError naming what is wrong."""
    if not isinstance(record, dict) or record.get("tools") is None:
        return None
    try:
        return check_tools(record["tools"])
    except ValueError as e:
        raise ValueError(f"bad tools: {e}") from None


def _has_markers(record: dict[str, Any]) -> bool:
    messages = record.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and isinstance(m.get("content"), str) and MARKER.search(m["content"])
        for m in messages)


def _normalise_message(m: Any) -> dict[str, Any]:
    calls = m.get("tool_calls") if isinstance(m, dict) else None
    if not isinstance(m, dict) or "role" not in m or ("content" not in m and not calls):
        raise ValueError(f"bad shape: a message needs 'role' and 'content', got {m!r:.80}")
    if m["role"] not in ROLES:
        raise ValueError(f"bad role: {m['role']!r}, expected one of {ROLES}")
    content = m.get("content")
    if calls:
        m = template_messages([m])[0]  # raises ValueError for a call it cannot render
        content = content or ""
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = [_normalise_part(p) for p in content]
    else:
        raise ValueError(f"bad shape: content must be a string or a list of parts, got {type(content).__name__}")
    out = {"role": "tool" if m["role"] == "observation" else m["role"], "content": parts}
    if calls:
        out["tool_calls"] = m["tool_calls"]
    if m.get("reasoning_content"):
        out["reasoning_content"] = str(m["reasoning_content"])
    return out


def _normalise_part(p: Any) -> dict[str, Any]:
    if isinstance(p, str):
        return {"type": "text", "text": p}
    kind = p.get("type") if isinstance(p, dict) else None
    if kind == "text" and isinstance(p.get("text"), str):
        return {"type": "text", "text": p["text"]}
    if kind in ("image", "video"):
        source = p.get(kind)
        if source is None and isinstance(p.get(f"{kind}_url"), dict):
            source = p[f"{kind}_url"].get("url")
        if not isinstance(source, str) or not source:
            raise ValueError(f"bad shape: {kind} part without a path: {p!r:.80}")
        return {"type": kind, kind: source}
    raise ValueError(f"bad part: expected type text/image/video, got {p!r:.80}")


def _from_sharegpt(record: dict[str, Any]) -> list[dict[str, Any]]:
    turns = record.get("conversations", record.get("messages"))
    if not isinstance(turns, list):
        raise ValueError("bad shape: ShareGPT record needs a 'conversations' or 'messages' list")
    media = {"image": list(record.get("images") or []), "video": list(record.get("videos") or [])}
    used = {"image": 0, "video": 0}
    messages = []
    if record.get("system"):
        messages.append({"role": "system", "content": [{"type": "text", "text": str(record["system"])}]})
    for turn in turns:
        if not isinstance(turn, dict):
            raise ValueError(f"bad shape: a turn must be an object, got {turn!r:.80}")
        speaker = turn.get("role", turn.get("from"))
        text = turn.get("content", turn.get("value"))
        if speaker not in SHAREGPT_ROLES or not isinstance(text, str):
            raise ValueError(f"bad turn: role {speaker!r} with content {text!r:.40}")
        parts = []
        for piece in MARKER.split(text):
            if piece in ("<image>", "<video>"):
                kind = piece[1:-1]
                if used[kind] >= len(media[kind]):
                    raise ValueError(f"marker mismatch: more {piece} markers than {kind}s ({len(media[kind])})")
                parts.append({"type": kind, kind: media[kind][used[kind]]})
                used[kind] += 1
            elif piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": parts})
    for kind in media:
        if used[kind] != len(media[kind]):
            raise ValueError(f"marker mismatch: {len(media[kind])} {kind}s but {used[kind]} <{kind}> markers")
    return messages


def _text_of(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["content"] if p["type"] == "text").strip()


def _resolve(source: str, root: Path) -> str:
    if source.startswith(("data:", "http://", "https://")):
        return source
    path = Path(source).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise ValueError(f"missing file: {source!r} (looked for {path})")
    return str(path)
