"""Continuous batching: requests join and leave one running decode batch between steps.

    batch = RunningBatch(vlm.model, vlm.require_processor(), stop_token_ids=vlm.stop_token_ids())
    row = batch.admit(chat, options)          # prefill alone, then the row joins the batch
    while batch.rows:
        for update in batch.step():           # one token for every row, decoded together
            update.row, update.pieces, update.generation

What is unusual here:
- A row is prefilled alone (batch of one, exactly `VLM.generate`'s prefill), then its keys and
  values are copied into the shared cache right-aligned to the batch's current length: the
  columns before its prompt are masked (-inf), as left padding is in a batch made at once. If
  its prompt is longer than the batch so far, the other rows are shifted right instead. Columns
  that every row masks are dropped whenever the cache is rebuilt (on admission and departure),
  so padding does not accumulate.
- Each row keeps its own rotary position (real tokens + its rope_delta), its own `Sampler`
  (temperature, top-k/p, penalty, seed) and its own stop strings and `max_new_tokens`: a row's
  tokens are those of decoding it alone (greedy: identical, `tests/test_running_batch.py`).
- The cache is rebuilt only when the set of rows changes; a step is one `decode_step` over all
  rows, the same kernel as a batch made at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .cache import KVCache
from .engine import Chat, Generation, finish, prepare
from .decode import decode_plan, decode_step
from .generation import MODEL_INPUTS, GenerationOptions
from .model import VisionLanguageModel
from .row_text import Channel, RowText
from .rotary import mrope_cos_sin
from .sampling import Sampler


@dataclass(eq=False)
class Row:
    """One request in the batch."""

    text: RowText
    sampler: Sampler
    max_new_tokens: int
    prompt_tokens: int
    size: tuple[int, int] | None  # (width, height) of the last image, for boxes in pixels
    position: int  # rotary position of the next token fed in: real tokens so far + rope_delta
    last: int  # the token to feed at the next step
    prefill_s: float
    key: Any = None  # the caller's handle (the server's request)
    stop_ids: frozenset[int] = frozenset()  # token ids that end this row
    start: float = field(default_factory=time.perf_counter)  # when decoding began, for the rate


@dataclass
class Update:
    """What one row produced in one step: text pieces to show, and its result when it ended."""

    row: Row
    pieces: list[tuple[Channel, str]]
    generation: Generation | None = None


class RunningBatch:
    """A decode batch that rows join (`admit`) and leave (`step` ends them, `drop` cancels them)."""

    def __init__(self, model: VisionLanguageModel, processor: Any, *, stop_token_ids: tuple[int, ...]) -> None:
        self.model = model
        self.processor = processor
        self.stop_ids = frozenset(stop_token_ids)
        self.rows: list[Row] = []
        self.cache: KVCache | None = None
        self.bias_BS: torch.Tensor | None = None  # additive key mask per row over the cache columns
        self.padded = False  # some column of bias_BS is -inf

    # -- joining ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def admit(self, chat: Chat, options: GenerationOptions, *, key: Any = None, ignore_eos: bool = False) -> Update:
        """Prefill one request (a `Chat` of one prompt) and add it to the batch; the update holds
        its first pieces, and its generation when it already ended (stop token, one token asked).
        `ignore_eos`: stop tokens do not end this row (vLLM's option, for fixed-length benchmarks)."""
        if len(chat.requests) != 1:
            raise ValueError(f"a RunningBatch admits one prompt at a time, got {len(chat.requests)}")
        model, text_cfg = self.model, self.model.cfg.text
        batch = prepare(model, self.processor, chat, max_new_tokens=options.max_new_tokens)
        start = time.perf_counter()
        inputs = {k: batch.inputs[k] for k in MODEL_INPUTS if batch.inputs.get(k) is not None}
        input_ids = inputs["input_ids"]
        T = input_ids.shape[1]
        mask = inputs.pop("attention_mask", torch.ones_like(input_ids))
        device, dtype = input_ids.device, model.lm_head.weight.dtype
        sampler = options.sampler(batch=1, vocab_size=text_cfg.vocab_size, device=device)
        row = Row(text=chat.row_text(self.processor.decode), sampler=sampler,
                  max_new_tokens=options.max_new_tokens, prompt_tokens=int(batch.prompt_tokens[0]),
                  size=batch.sizes[0], position=0, last=0, prefill_s=0.0, key=key,
                  stop_ids=frozenset() if ignore_eos else self.stop_ids)
        if options.max_new_tokens == 0:
            return Update(row, [], self._end(row, stopped=False))
        own = KVCache(text_cfg.num_hidden_layers, 1, T, text_cfg.num_key_value_heads, text_cfg.head_dim, device, dtype)
        out = model(**inputs, attention_mask=mask, cache=own, logits_to_keep=1)
        sampler.observe(input_ids, mask)
        row.position = int(mask.sum()) + int(out.rope_deltas[0])
        row.prefill_s = time.perf_counter() - start
        row.start = time.perf_counter()
        update = self._advance(row, self._sample(row, out.logits[:, -1]))
        if update.generation is None:
            self._join(row, own)
        return update

    def _join(self, row: Row, own: KVCache) -> None:
        """Copy the row's prompt keys/values into the shared cache, right-aligned to its length."""
        T = own.length
        S = self.cache.length if self.cache is not None else 0
        width = max(S, T)
        old = self.cache
        self._rebuild(self.rows + [row], width, sources=[(old, r, i) for i, r in enumerate(self.rows)]
                      + [(own, row, 0)])

    def _rebuild(self, rows: list[Row], width: int, *, sources: list[tuple[KVCache, Row, int]]) -> None:
        """A new cache for `rows`, `width` columns written, each row's columns right-aligned from its
        source cache; then all-masked leading columns are dropped."""
        text_cfg = self.model.cfg.text
        ref = sources[0][0]
        device, dtype = ref.k.device, ref.k.dtype
        # Room for the longest remaining row: every step writes one column for all rows.
        room = max(r.max_new_tokens - len(r.text.ids) for r in rows)
        old_bias = self.bias_BS
        keep_from = self._first_live_column(rows, sources, width)
        width -= keep_from
        cache = KVCache(text_cfg.num_hidden_layers, len(rows), width + room, text_cfg.num_key_value_heads,
                        text_cfg.head_dim, device, dtype)
        bias_BS = torch.zeros(len(rows), width + room, dtype=dtype, device=device)
        for b, (source, _, i) in enumerate(sources):
            n = min(source.length, width)  # columns of this row that survive the trim
            shift = width - n
            cache.k[:, b, :, shift:width] = source.k[:, i, :, source.length - n : source.length]
            cache.v[:, b, :, shift:width] = source.v[:, i, :, source.length - n : source.length]
            bias_BS[b, :shift] = float("-inf")
            if source is self.cache and old_bias is not None:
                bias_BS[b, shift:width] = old_bias[i, source.length - n : source.length]
        cache.length = width
        self.rows, self.cache, self.bias_BS = rows, cache, bias_BS
        self.padded = bool(torch.isinf(bias_BS[:, :width]).any())

    def _first_live_column(self, rows: list[Row], sources: list[tuple[KVCache, Row, int]], width: int) -> int:
        """How many leading columns (of `width`, right-aligned) every row masks."""
        live = width
        for source, _, i in sources:
            n = source.length
            first = width - n
            if source is self.cache and self.bias_BS is not None:
                unmasked = torch.nonzero(~torch.isinf(self.bias_BS[i, :n])).flatten()
                first += int(unmasked[0]) if len(unmasked) else n
            live = min(live, first)
        return live

    # -- stepping --------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Update]:
        """One token for every row; rows that ended leave the batch (their update has the generation)."""
        if not self.rows or self.cache is None:
            return []
        model, text_cfg = self.model, self.model.cfg.text
        device, dtype = self.cache.k.device, self.cache.k.dtype
        B, S = len(self.rows), self.cache.length
        token_B1 = torch.tensor([[r.last] for r in self.rows], device=device)
        positions_B1 = torch.tensor([[r.position] for r in self.rows], device=device)
        cos_B1R, sin_B1R = mrope_cos_sin(positions_B1[None].expand(3, B, 1), rotary_dim=text_cfg.rotary_dim,
                                         theta=text_cfg.rope_theta, mrope_section=text_cfg.mrope_section,
                                         layout=text_cfg.rotary_layout)
        bias_B11S = self.bias_BS[:, None, None, : S + 1] if self.padded else None
        logits_BV = decode_step(model, token_B1, cos_B1R[:, None].to(dtype), sin_B1R[:, None].to(dtype),
                                bias_B11S, self.cache, decode_plan(model))
        # Plain greedy rows (no penalty state) share one argmax and one host sync; the others
        # sample with their own sampler, as they would alone.
        plain = [r.sampler.params.greedy and r.sampler.seen_BV is None for r in self.rows]
        argmax = logits_BV.argmax(-1).tolist() if any(plain) else []
        updates = []
        for b, row in enumerate(self.rows):
            row.position += 1
            token = argmax[b] if plain[b] else self._sample(row, logits_BV[b : b + 1])
            updates.append(self._advance(row, token))
        ended = {id(u.row) for u in updates if u.generation is not None}
        if ended:
            self._keep([r for r in self.rows if id(r) not in ended])
        return updates

    def drop(self, row: Row) -> None:
        """Cancel a row (its client went away): it leaves the batch now."""
        if row in self.rows:
            self._keep([r for r in self.rows if r is not row])

    def _keep(self, rows: list[Row]) -> None:
        if not rows:
            self.rows, self.cache, self.bias_BS, self.padded = [], None, None, False
            return
        index = {id(r): i for i, r in enumerate(self.rows)}
        self._rebuild(rows, self.cache.length, sources=[(self.cache, r, index[id(r)]) for r in rows])

    def _sample(self, row: Row, logits_1V: torch.Tensor) -> int:
        token_1 = row.sampler(logits_1V)
        row.sampler.observe(token_1[:, None])
        return int(token_1[0])

    def _advance(self, row: Row, token: int) -> Update:
        is_stop = token in row.stop_ids
        row.text.add(token, is_stop_token=is_stop)
        row.last = token
        stopped = is_stop or row.text.stopped_by_string
        if stopped or len(row.text.ids) >= row.max_new_tokens:
            pieces = row.text.new_pieces(final=True)
            return Update(row, pieces, self._end(row, stopped=stopped))
        return Update(row, row.text.new_pieces(final=False))

    def _end(self, row: Row, *, stopped: bool) -> Generation:
        decoded = len(row.text.ids) - 1
        elapsed = time.perf_counter() - row.start
        return finish(row.text, stopped=stopped, prompt_tokens=row.prompt_tokens, size=row.size,
                      prefill_s=row.prefill_s, decode_tokens_per_s=decoded / elapsed if decoded > 0 else 0.0)

