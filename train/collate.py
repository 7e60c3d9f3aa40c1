"""From a conversation to training tensors: tokenise, label assistant tokens, pack, group.

Tokenising: the processor renders the whole conversation with the checkpoint's chat template
and expands image/video placeholders, so training sees exactly the token layout inference sees.
Labels are found on the token ids, not on the text: every token after an `<|assistant|>` role
token and the rest of the generation prompt (a newline, or the pre-filled empty think block
when thinking is off), up to and including the token that ends the turn (the next role token,
or an `<|endoftext|>` appended after the last turn) is learned; everything else (system, user,
observation turns, vision placeholders) is -100. Learning the terminator is what teaches the
model to stop. Targets are shifted inside each sample (`targets[t] = labels[t+1]`) before
packing, so no position ever predicts the first token of the next packed sample.

Packing: several samples share one row; `segment_ids` (0 = padding, 1..k = sample) make the
model's attention causal *within* a sample only and restart its M-RoPE positions, so a packed
row computes exactly what the samples would compute one by one. Rows of a batch are padded to
the longest row, not to the row capacity.

Grouping by length: each epoch's order is a seeded shuffle cut into windows of many global
batches, sorted by length inside each window and cut into global batches whose order is then
shuffled again, so a batch packs samples of similar length with little padding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

IGNORE = -100
TURN_END_TOKENS = ("<|user|>", "<|observation|>", "<|system|>", "<|endoftext|>")


@dataclass(frozen=True)
class Sample:
    """One encoded conversation. `targets` are next-token labels (already shifted)."""

    input_ids: torch.Tensor  # (T,) long
    targets: torch.Tensor  # (T,) long, IGNORE where nothing is learned
    pixel_values: torch.Tensor | None = None  # (patches, 3*2*14*14)
    image_grid_thw: torch.Tensor | None = None  # (images, 3)
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.numel()


@dataclass(frozen=True)
class Batch:
    """Packed rows ready for the model; `targets` aligned with `input_ids`."""

    input_ids: torch.Tensor  # (B, T)
    segment_ids: torch.Tensor  # (B, T): 0 padding, 1..k sample within the row
    targets: torch.Tensor  # (B, T)
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    pixel_values_videos: torch.Tensor | None
    video_grid_thw: torch.Tensor | None

    @property
    def num_target_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())

    @property
    def num_tokens(self) -> int:
        return int((self.segment_ids > 0).sum())

    def model_inputs(self, device: torch.device | str) -> dict[str, Any]:
        inputs = {"input_ids": self.input_ids, "attention_mask": (self.segment_ids > 0).long(),
                  "segment_ids": self.segment_ids, "pixel_values": self.pixel_values,
                  "image_grid_thw": self.image_grid_thw, "pixel_values_videos": self.pixel_values_videos,
                  "video_grid_thw": self.video_grid_thw}
        return {k: v.to(device) if v is not None else None for k, v in inputs.items()}


class Encoder:
    """Turns validated conversations into `Sample`s with the processor's chat template."""

    def __init__(self, processor: Any, *, max_length: int, thinking: bool | None = None) -> None:
        self.processor = processor
        self.max_length = max_length
        self.thinking = thinking
        tokenizer = processor.tokenizer
        self.assistant_id = _token_id(tokenizer, "<|assistant|>")
        self.end_ids = frozenset(_token_id(tokenizer, t) for t in TURN_END_TOKENS)
        self.eos_id = _token_id(tokenizer, "<|endoftext|>")
        self.prompt_tail = self._generation_prompt_tail()

    def _generation_prompt_tail(self) -> tuple[int, ...]:
        """Token ids the generation prompt puts after `<|assistant|>` ("\n", or the pre-filled
        "\n<think></think>\n" when thinking is off): given at inference, so never learned."""
        kwargs = {} if self.thinking is None else {"thinking": self.thinking}
        probe = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
        text = self.processor.apply_chat_template(probe, add_generation_prompt=True, **kwargs)
        ids = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.assistant_id not in ids:
            raise ValueError("the chat template's generation prompt has no <|assistant|> token")
        last = len(ids) - 1 - ids[::-1].index(self.assistant_id)
        return tuple(ids[last + 1:])

    def encode(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None) -> Sample:
        """Raises ValueError for a conversation that cannot be trained on (named reason). `tools`:
        OpenAI function tools, rendered by the template into a system turn."""
        kwargs: dict[str, Any] = {} if self.thinking is None else {"thinking": self.thinking}
        if tools:
            kwargs["tools"] = tools
        text = self.processor.apply_chat_template(messages, add_generation_prompt=False, **kwargs)
        images = [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]
        videos = [p["video"] for m in messages for p in m["content"] if p["type"] == "video"]
        try:
            out = self.processor(text=[text], images=images or None, videos=videos or None, return_tensors="pt")
        except (OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"unreadable media: {e}") from e
        ids = torch.cat([out["input_ids"][0], torch.tensor([self.eos_id])])
        if ids.numel() > self.max_length:
            raise ValueError(f"too long: {ids.numel()} tokens > max_length {self.max_length}")
        labels = assistant_labels(ids, assistant_id=self.assistant_id, end_ids=self.end_ids,
                                  prompt_tail=self.prompt_tail)
        if not (labels != IGNORE).any():
            raise ValueError("no assistant turn: the template rendered no assistant tokens")
        targets = torch.cat([labels[1:], torch.tensor([IGNORE])])
        return Sample(ids, targets, out.get("pixel_values"), out.get("image_grid_thw"),
                      out.get("pixel_values_videos"), out.get("video_grid_thw"))


def assistant_labels(ids_T: torch.Tensor, *, assistant_id: int, end_ids: frozenset[int],
                     prompt_tail: tuple[int, ...] = ()) -> torch.Tensor:
    """Copy of `ids_T` with IGNORE outside assistant turns. A turn's learned tokens start after
    `<|assistant|>` and the generation prompt's `prompt_tail` (when present) and end with the
    turn's end token, inclusive."""
    ids = ids_T.tolist()
    labels = torch.full_like(ids_T, IGNORE)
    t = 0
    while t < len(ids):
        if ids[t] != assistant_id:
            t += 1
            continue
        t += 1
        if tuple(ids[t:t + len(prompt_tail)]) == prompt_tail:
            t += len(prompt_tail)
        while t < len(ids) and ids[t] != assistant_id:
            labels[t] = ids[t]
            t += 1
            if ids[t - 1] in end_ids:
                break
    return labels


def pack(samples: list[Sample], *, row_length: int, pad_id: int = 0, one_per_row: bool = False) -> Batch:
    """First-fit packing of `samples` (in order) into rows of at most `row_length` tokens; with
    `one_per_row`, each sample in a row of its own, in order (attention then costs no more than
    the samples' own lengths squared: short samples in one long row cost its length squared)."""
    rows: list[list[Sample]] = []
    room: list[int] = []
    for sample in samples:
        if len(sample) > row_length:
            raise ValueError(f"sample of {len(sample)} tokens does not fit a row of {row_length}")
        slot = None if one_per_row else next((i for i, r in enumerate(room) if r >= len(sample)), None)
        if slot is None:
            rows.append([]), room.append(row_length)
            slot = len(rows) - 1
        rows[slot].append(sample)
        room[slot] -= len(sample)
    T = max(sum(len(s) for s in row) for row in rows)
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), IGNORE, dtype=torch.long)
    segment_ids = torch.zeros((B, T), dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for k, sample in enumerate(row, start=1):
            end = start + len(sample)
            input_ids[b, start:end] = sample.input_ids
            targets[b, start:end] = sample.targets
            segment_ids[b, start:end] = k
            start = end
    # The model fills placeholders in row-major order: concatenate vision inputs the same way.
    ordered = [s for row in rows for s in row]
    return Batch(input_ids, segment_ids, targets,
                 _cat([s.pixel_values for s in ordered]), _cat([s.image_grid_thw for s in ordered]),
                 _cat([s.pixel_values_videos for s in ordered]), _cat([s.video_grid_thw for s in ordered]))


def epoch_order(lengths: list[int], *, global_batch: int, seed: int, epoch: int,
                group_by_length: bool, window_batches: int = 32) -> list[int]:
    """Sample indices for one epoch; consecutive `global_batch` chunks are the steps' batches.

    Depends only on (lengths, global_batch, seed, epoch), never on the process count, which is
    what makes a 2-process run see the same global batches as a 1-process run.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return order
    window = global_batch * window_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: -lengths[i])
        batches += [chunk[i:i + global_batch] for i in range(0, len(chunk), global_batch)]
    full = [b for b in batches if len(b) == global_batch]
    rest = [i for b in batches if len(b) < global_batch for i in b]
    rng.shuffle(full)
    return [i for b in full for i in b] + rest


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [t for t in tensors if t is not None]
    return torch.cat(present) if present else None


def _token_id(tokenizer: Any, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"tokenizer has no {token!r} token: is this a GLM-V chat tokenizer?")
    return int(token_id)
