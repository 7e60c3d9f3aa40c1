"""`RowText`: one generated row's text as its tokens arrive (shared by `engine` and `running_batch`).

What is unusual here:
- Text is detokenised incrementally (only the ids since the last clean character boundary are
  decoded), and a piece is given out only once it can no longer change: a trailing partial UTF-8
  character, trailing whitespace (the final answer is stripped) and a tail that could still grow
  into a stop string are held back. So the joined pieces equal the final text exactly.
- Stop strings are matched in the answer, not in the reasoning.
- With tools, answer pieces pass through `vlm.tool_calls.ToolCallParser`: complete calls come out
  as ("tool_call", ToolCall) events and half a tag is never given out as text.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from .outputs import THINK_CLOSE, THINK_OPEN, split_thinking
from .tool_calls import ToolCall, ToolCallParser

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "tool_calls"]
Channel = Literal["thinking", "answer", "tool_call"]


class RowText:
    """One row's text as it grows: incremental detokenisation, thinking/answer split, stop strings,
    tool calls. `prefix`: text the answer was made to start with (in the prompt, not in `ids`)."""

    def __init__(self, decode, stop_strings: tuple[str, ...], *, prefix: str = "",
                 tools: list[dict[str, Any]] | None = None, call_finish: FinishReason = "tool_calls") -> None:
        self._decode = decode
        self._stops = stop_strings
        self.tools = tools  # calls are parsed out of the answer when not None
        self.call_finish = call_finish
        self._calls = ToolCallParser(tools) if tools is not None else None
        self.streamed_calls: list[ToolCall] = []  # calls given out so far (their ids are kept)
        self.ids: list[int] = []
        self._clean = prefix  # text of ids[:_pending]
        self._pending = 0  # ids from here on may end in a partial character
        self.emitted = {"thinking": "", "answer": ""}
        self.stopped_by_string = False

    def add(self, token: int, *, is_stop_token: bool) -> None:
        self.ids.append(token)
        if is_stop_token:
            return  # in token_ids, never in the text
        tail = self._decode(self.ids[self._pending :])
        if not tail.endswith("\ufffd"):
            self._clean += tail
            self._pending = len(self.ids)
        if self._stops and self._split(final=True)[2]:
            self.stopped_by_string = True

    def raw(self, *, final: bool) -> str:
        if final and self._pending < len(self.ids):
            ids = [i for i in self.ids[self._pending :]]
            return self._clean + self._decode(ids)
        return self._clean

    def _stop_index(self, answer: str) -> int | None:
        found = [answer.find(s) for s in self._stops]
        found = [i for i in found if i >= 0]
        return min(found) if found else None

    def split(self, *, final: bool) -> tuple[str, str | None]:
        """(answer, thinking) of the text so far; thinking None when there is no <think> block."""
        return self._split(final=final)[:2]

    def _split(self, *, final: bool) -> tuple[str, str | None, bool]:
        raw = self.raw(final=final)
        reply = split_thinking(raw)
        answer = reply.answer
        cut = self._stop_index(answer) if self._stops else None
        if cut is not None:
            answer = answer[:cut].rstrip()
        if not final and not reply.finished_thinking:
            answer = ""  # text before an unclosed <think> is not the answer yet
        thinking = reply.thinking if (THINK_OPEN in raw or THINK_CLOSE in raw) else None
        return answer, thinking, cut is not None

    def new_pieces(self, *, final: bool) -> list[tuple[Channel, Any]]:
        """What can be shown now that was not shown before, per channel (calls once complete)."""
        pieces = self._new_text(final=final)
        if self._calls is None:
            return pieces
        routed: list[tuple[Channel, Any]] = []
        for channel, piece in pieces:
            routed += self._calls.feed(piece) if channel == "answer" else [(channel, piece)]
        routed += self._calls.close() if final else []
        self.streamed_calls += [call for channel, call in routed if channel == "tool_call"]
        return routed

    def _new_text(self, *, final: bool) -> list[tuple[Channel, str]]:
        answer, thinking = self.split(final=final)
        current = {"thinking": thinking or "", "answer": answer}
        pieces: list[tuple[Channel, str]] = []
        for channel in ("thinking", "answer"):
            text = current[channel]
            if not final:
                text = text.rstrip()
                if channel == "answer":
                    text = text[: len(text) - self._stop_prefix_len(text)]
            shown = self.emitted[channel]
            if len(text) > len(shown) and text.startswith(shown):
                pieces.append((channel, text[len(shown) :]))
                self.emitted[channel] = text
            elif final and text != shown:
                logger.warning("streamed %s %r is not a prefix of the final %r", channel, shown, text)
        return pieces

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string (held back)."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
