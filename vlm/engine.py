"""Text in, text out: the engine behind `VLM.generate`.

    gen = vlm.generate("Where is the cat? Give its box.", images=["cat.jpg"])
    gen.text, gen.thinking, gen.boxes          # answer (box tokens kept), reasoning, boxes in pixels
    for piece in vlm.generate(messages, stream=True): ...

Three stages, and the engine takes the network and the processor it needs, never the `VLM`:
validate (`GenerationOptions`, `Chat.of`: what `VLM.generate` does with its keywords), `prepare`
(chat template, processor, length check) and `run` (the decode loop as a `GenerationStream`).

What is unusual here:
- Every argument is checked, and every image opened, before the model does any work: a bad
  `top_p` or an unreadable file fails in microseconds with the value named.
- Streamed and non-streamed calls are one code path: a non-streamed call drains the stream.
  `vlm.row_text.RowText` turns a row's tokens into pieces that never change once given out, so
  the joined pieces equal `Generation.text` exactly; stop strings are matched in the answer.
- Stop tokens are the checkpoint's: `generation_config.json`, the config's eos ids and the
  tokenizer's GLM turn-ending tokens (`<|endoftext|>`, `<|user|>`, `<|observation|>`).
- With `tools`, the answer goes through `vlm.tool_calls`: calls come out parsed (a stream yields
  ("tool_call", ToolCall) events as each completes) and leave the text; `tool_choice` "required"
  or a named function pre-fills the answer with the start of a call (`<tool_call>` or
  `<tool_call>name`), after an empty think block: a forced call skips the reasoning.
- Boxes are converted to pixels of the last image of the prompt (the model grounds on the image
  it was asked about, which the chat formats put last); without an image `boxes` is empty and
  `vlm.outputs.parse_boxes(text)` gives the 0-999 model-space values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import TextConfig
from .generation import GenerationOptions, TokenStream
from .images import load_image
from .model import VisionLanguageModel
from .outputs import THINK_CLOSE, THINK_OPEN, parse_boxes, to_pixels
from .row_text import Channel, FinishReason, RowText
from .tool_calls import ToolCall, ToolCallError, check_tools, forced_prefix, parse_tool_calls, template_messages



@dataclass
class Generation:
    text: str  # the answer, box tokens kept, reasoning and stop tokens/strings removed
    thinking: str | None  # the reasoning; None when the model did not reason (thinking off)
    boxes: list[tuple[float, ...]]  # (x1, y1, x2, y2) boxes and (x, y) points, pixels of the last image
    token_ids: list[int]  # generated ids, the final stop token included
    finish_reason: FinishReason  # "stop": stop token or string; "length": max_new_tokens; "tool_calls": it called
    prompt_tokens: int  # real (unpadded) prompt length, vision placeholders included
    prefill_s: float  # seconds for the prompt forward (vision encoder included) and the first token
    decode_tokens_per_s: float  # tokens after the first, per second of decoding (whole batch's clock)
    tool_calls: list[ToolCall] = field(default_factory=list)  # parsed calls (only when tools were given)
    tool_call_errors: list[ToolCallError] = field(default_factory=list)  # malformed calls, kept in `text`


# ---------------------------------------------------------------------------------------------
# Streaming


class GenerationStream:
    """`for piece in stream` yields answer pieces; `stream.events()` yields (channel, piece) for
    reasoning and answer, and ("tool_call", ToolCall) with tools. Either may be consumed once;
    `stream.result` is the `Generation` after."""

    def __init__(self, events: Iterator[tuple[Channel, Any]], results: list[Generation]) -> None:
        self._events = events
        self._results = results
        self._started = False

    def events(self) -> Iterator[tuple[Channel, Any]]:
        if self._started:
            raise RuntimeError("this GenerationStream was already consumed")
        self._started = True
        yield from self._events

    def __iter__(self) -> Iterator[str]:
        for channel, piece in self.events():
            if channel == "answer":
                yield piece

    @property
    def result(self) -> Generation:
        if not self._results:
            raise RuntimeError("the stream has not finished: iterate it to the end before reading .result")
        return self._results[0]

    def close(self) -> None:
        """Stop generating (e.g. the client went away); `result` stays unset."""
        self._events.close()




# ---------------------------------------------------------------------------------------------
# Validate: the prompts of one call, checked, images opened


@dataclass(frozen=True)
class _Request:
    messages: list[dict[str, Any]]
    images: list[Any]  # opened PIL images, prompt order
    videos: list[Any]


@dataclass(frozen=True)
class Chat:
    """What one `VLM.generate` call asks, apart from the decoding options: the prompts (system
    message added, images opened), the thinking switch, stop strings, streaming and tools."""

    requests: list[_Request]
    batched: bool  # a list of prompts was given: the answer is a list
    thinking: bool | None
    stop: tuple[str, ...]
    stream: bool
    tools: list[dict[str, Any]] | None = None  # checked, OpenAI's shape; rendered by the chat template
    tool_choice: Any = "auto"  # "auto", "none" (rendered, not parsed), "required", {"function": {"name"}}

    @classmethod
    def of(
        cls, prompt_or_messages: str | Sequence[Any], *, images: Any, videos: Any, system: str | None,
        thinking: bool | None, stop: str | Sequence[str] | None, stream: bool, tools: Any = None,
        tool_choice: Any = "auto",
    ) -> Chat:
        """Check every argument and open every image, before the model does any work."""
        stops = _stop_strings(stop)
        tools = check_tools(tools) if tools is not None else None
        forced_prefix(tool_choice, tools)  # checks it
        if thinking is not None and not isinstance(thinking, bool):
            raise ValueError(f"thinking={thinking!r}: expected True, False or None (the checkpoint's default)")
        if system is not None and not isinstance(system, str):
            raise ValueError(f"system={system!r:.80}: expected a string or None")
        if not isinstance(stream, bool):
            raise ValueError(f"stream={stream!r}: expected True or False")
        requests, batched = _requests(prompt_or_messages, images=images, videos=videos, system=system)
        if stream and batched:
            raise ValueError(f"stream=True takes one prompt, got a batch of {len(requests)}; stream them one by one")
        return cls(requests=requests, batched=batched, thinking=thinking, stop=stops, stream=stream, tools=tools,
                   tool_choice=tool_choice)

    @property
    def prefix(self) -> str:
        """Text the answer is made to start with (a forced call), after the generation prompt."""
        forced = forced_prefix(self.tool_choice, self.tools)
        return forced if not forced or self.thinking is False else f"{THINK_OPEN}{THINK_CLOSE}\n{forced}"

    def row_text(self, decode) -> RowText:
        """The text state of one row of this chat."""
        parsed = self.tools if self.tools and self.tool_choice != "none" else None
        return RowText(decode, self.stop, prefix=self.prefix, tools=parsed,
                        call_finish="stop" if isinstance(self.tool_choice, Mapping) else "tool_calls")


def generate(
    model: VisionLanguageModel, processor: Any, chat: Chat, options: GenerationOptions, *,
    stop_token_ids: tuple[int, ...],
) -> Generation | list[Generation] | GenerationStream:
    """Prepare the model inputs, then run the decode loop (see `VLM.generate`): a stream when
    `chat.stream`, else the finished generation (a list for a batch)."""
    batch = prepare(model, processor, chat, max_new_tokens=options.max_new_tokens)
    stream = run(model, processor, chat, batch, options, stop_token_ids=stop_token_ids)
    if chat.stream:
        return stream
    for _ in stream.events():
        pass
    return stream._results if chat.batched else stream.result


# ---------------------------------------------------------------------------------------------
# Prepare: chat template, processor, length check, device


@dataclass(frozen=True)
class _Batch:
    inputs: dict[str, torch.Tensor]  # model inputs on the model's device
    prompt_tokens: list[int]  # real (unpadded) prompt length per row
    sizes: list[tuple[int, int] | None]  # (width, height) of each row's last image, for boxes in pixels


def prepare(model: VisionLanguageModel, processor: Any, chat: Chat, *, max_new_tokens: int) -> _Batch:
    requests = chat.requests
    prompts = [_render(processor, r.messages, chat.thinking, chat.tools) + chat.prefix for r in requests]
    inputs = processor(
        text=prompts, images=[i for r in requests for i in r.images] or None,
        videos=[v for r in requests for v in r.videos] or None,
    )
    prompt_tokens = inputs["attention_mask"].sum(-1).tolist()
    limit = model.cfg.text.max_position_embeddings
    if max(prompt_tokens) + max_new_tokens > limit:
        raise ValueError(
            f"prompt of {max(prompt_tokens)} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
            f"{limit} positions"
        )
    device = model.lm_head.weight.device
    inputs = {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    sizes = [r.images[-1].size if r.images else None for r in requests]
    return _Batch(inputs=inputs, prompt_tokens=prompt_tokens, sizes=sizes)


# ---------------------------------------------------------------------------------------------
# Run: decode, detokenise, stop strings, results


def run(
    model: VisionLanguageModel, processor: Any, chat: Chat, batch: _Batch, options: GenerationOptions, *,
    stop_token_ids: tuple[int, ...],
) -> GenerationStream:
    """The decode loop as a stream of (channel, piece) events; `.result` once drained."""
    text = model.cfg.text
    sampler = options.sampler(batch=len(chat.requests), vocab_size=text.vocab_size, device=model.lm_head.weight.device)
    tokens = TokenStream(
        model, batch.inputs, max_new_tokens=options.max_new_tokens, sampler=sampler, stop_token_ids=stop_token_ids,
        pad_token_id=text.pad_token_id, draft_tokens=options.draft_tokens_for(model, batch=len(chat.requests)),
    )
    rows = [chat.row_text(processor.decode) for _ in chat.requests]
    results: list[Generation] = []
    events = _events(tokens, rows, set(stop_token_ids), batch, results, streaming=chat.stream)
    return GenerationStream(events, results)


def _events(
    tokens: TokenStream,
    rows: list[RowText],
    stop_ids: set[int],
    batch: _Batch,
    results: list[Generation],
    *,
    streaming: bool,
) -> Iterator[tuple[Channel, str]]:
    done = [False] * len(rows)
    stopped = [False] * len(rows)
    steps = iter(tokens)
    try:
        for ids in steps:
            for b, (row, token) in enumerate(zip(rows, ids)):
                if done[b]:
                    continue
                row.add(token, is_stop_token=token in stop_ids)
                stopped[b] = token in stop_ids or row.stopped_by_string
                done[b] = stopped[b]
            if streaming:
                yield from rows[0].new_pieces(final=False)
            if all(done):
                break
    finally:
        steps.close()  # frees the cache now, also when the consumer stops early
    if streaming:
        yield from rows[0].new_pieces(final=True)
    rate = tokens.decode_steps / tokens.decode_s if tokens.decode_s > 0 else 0.0
    for b, row in enumerate(rows):
        results.append(finish(row, stopped=stopped[b], prompt_tokens=int(batch.prompt_tokens[b]), size=batch.sizes[b],
                              prefill_s=tokens.prefill_s, decode_tokens_per_s=rate))


def finish(row: RowText, *, stopped: bool, prompt_tokens: int, size: tuple[int, int] | None, prefill_s: float,
           decode_tokens_per_s: float) -> Generation:
    """The `Generation` of a row that has ended (by a stop, or at its length limit when not `stopped`)."""
    answer, thinking = row.split(final=True)
    parsed = parse_tool_calls(answer, row.tools) if row.tools is not None else None
    answer = parsed.content if parsed is not None else answer
    calls, errors = (parsed.calls, parsed.errors) if parsed is not None else ([], [])
    if [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in row.streamed_calls]:
        calls = row.streamed_calls  # the same calls, with the ids a stream already gave out
    boxes = [to_pixels(t, width=size[0], height=size[1]) for t in parse_boxes(answer)] if size else []
    reason: FinishReason = row.call_finish if calls else "stop" if stopped else "length"
    return Generation(text=answer, thinking=thinking, boxes=boxes, token_ids=row.ids, finish_reason=reason,
                      prompt_tokens=prompt_tokens, prefill_s=prefill_s, decode_tokens_per_s=decode_tokens_per_s,
                      tool_calls=calls, tool_call_errors=errors)


def _stop_strings(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, Sequence) else None
    if stops is None or not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"stop={stop!r:.80}: expected a non-empty string or a list of non-empty strings")
    return stops


def _requests(prompt: Any, *, images: Any, videos: Any, system: str | None) -> tuple[list[_Request], bool]:
    """One request per prompt; `batched` when a list of prompts (or conversations) was given."""
    if isinstance(prompt, str):
        return [_request(prompt, images, videos, system)], False
    if isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
        return [_request(prompt, images, videos, system)], False
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, (str, Sequence)) for p in prompt):
        n = len(prompt)
        per_row_images = _per_row("images", images, n)
        per_row_videos = _per_row("videos", videos, n)
        return [_request(p, i, v, system) for p, i, v in zip(prompt, per_row_images, per_row_videos)], True
    raise ValueError(
        f"prompt_or_messages={prompt!r:.80}: expected a string, a list of messages (dicts with 'role' and "
        "'content'), or a non-empty list of those for a batch"
    )


def _per_row(name: str, media: Any, n: int) -> list[Any]:
    if media is None:
        return [None] * n
    if not isinstance(media, Sequence) or isinstance(media, str) or len(media) != n:
        raise ValueError(f"{name}: with a batch of {n} prompts, pass one entry (a list, or None) per prompt")
    return list(media)


def _request(prompt: Any, images: Any, videos: Any, system: str | None) -> _Request:
    from .processor import _as_image_list, _as_video_list, media_of

    if isinstance(prompt, str):
        image_list = [load_image(i) for i in _as_image_list(images)]
        video_list = _as_video_list(videos)
        parts = [{"type": "image", "image": i} for i in image_list]
        parts += [{"type": "video", "video": v} for v in video_list] + [{"type": "text", "text": prompt}]
        messages: list[dict[str, Any]] = [{"role": "user", "content": parts}]
    else:
        if images is not None or videos is not None:
            raise ValueError("images=/videos= go with a string prompt; in messages, put them in image/video parts")
        messages = template_messages(prompt)
        for m in messages:
            if "role" not in m or "content" not in m:
                raise ValueError(f"message {m!r:.80}: expected a dict with 'role' and 'content'")
        found_images, video_list = media_of(messages)
        image_list = [load_image(i) for i in found_images]
        messages = _with_images(messages, iter(image_list))
    if system is not None:
        if any(m.get("role") == "system" for m in messages):
            raise ValueError("system= was given but the messages already hold a system message")
        messages = [{"role": "system", "content": system}, *messages]
    return _Request(messages=messages, images=image_list, videos=list(video_list))


def _with_images(messages: list[dict[str, Any]], opened: Iterator[Any]) -> list[dict[str, Any]]:
    """The messages with each image part's value replaced by its opened image (same order as media_of)."""
    out = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str) and content is not None:
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, Mapping) else None
                if isinstance(part, Mapping) and (kind in ("image", "image_url") or (kind is None and "image" in part)):
                    part = {"type": "image", "image": next(opened)}
                parts.append(part)
            m = {**m, "content": parts}
        out.append(m)
    return out


def _render(processor: Any, messages: list[dict[str, Any]], thinking: bool | None,
            tools: list[dict[str, Any]] | None) -> str:
    kwargs = {"tools": tools} if tools else {}
    if thinking is not None:  # else the processor's (and the template's) own default
        kwargs["thinking"] = thinking
    return processor.apply_chat_template(messages, **kwargs)


# ---------------------------------------------------------------------------------------------
# Checkpoint settings


def stop_token_ids(text: TextConfig, processor: Any, checkpoint: str | os.PathLike | None) -> tuple[int, ...]:
    """Ids that end a generation: the config's eos ids, the checkpoint directory's
    generation_config.json, the tokenizer's turn ends."""
    ids: list[int] = list(text.eos_token_ids)
    ids += read_generation_config(checkpoint).get("eos_token_ids", [])
    if processor is not None and hasattr(processor, "stop_token_ids"):
        ids += [i for i in processor.stop_token_ids if isinstance(i, int) and i >= 0]
    return tuple(dict.fromkeys(ids))


def read_generation_config(path: str | os.PathLike | None) -> dict[str, list[int]]:
    """`eos_token_ids` from a checkpoint's generation_config.json ({} when absent)."""
    if path is None or not (Path(path) / "generation_config.json").is_file():
        return {}
    raw = json.loads((Path(path) / "generation_config.json").read_text(encoding="utf-8"))
    eos = raw.get("eos_token_id")
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return {"eos_token_ids": eos}
