"""Choosing the next token: repetition penalty, temperature, top-k, top-p, then a draw.

What is unusual here:
- The order and the semantics are transformers' `generate` ones, so a seeded run is comparable:
  repetition penalty over every token already in the row (prompt included, padding excluded),
  then temperature, top-k, top-p (the smallest prefix of the sorted distribution whose mass
  reaches `top_p` is kept; the most likely token always stays), then one multinomial draw.
- `temperature == 0` means greedy (argmax); the other warpers are then irrelevant.
- The seen-token set is a preallocated (B, V) boolean mask updated in place, so a decode step
  allocates nothing that grows with the sequence and never syncs with the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass in (0, 1]; 1 keeps everything
    top_k: int = 0  # keep the k most likely tokens; 0 keeps everything
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the row; 1 is off

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature, "a number >= 0 (0 = greedy)", lambda v: v >= 0)
        _check_number("top_p", self.top_p, "a number in (0, 1]", lambda v: 0 < v <= 1)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r}: expected an integer >= 0 (0 = off)")
        _check_number("repetition_penalty", self.repetition_penalty, "a number > 0 (1 = off)", lambda v: v > 0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check_number(name: str, value: object, expected: str, ok) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or not ok(value):
        raise ValueError(f"{name}={value!r}: expected {expected}")


class Sampler:
    """Per-batch sampling state. `observe` records tokens for the repetition penalty; calling the
    sampler on last-position logits (B, V) returns the next token ids (B,) on the same device."""

    def __init__(
        self,
        params: SamplingParams,
        *,
        batch: int,
        vocab_size: int,
        device: torch.device | str,
        generator: torch.Generator | None = None,
    ) -> None:
        self.params = params
        self.generator = generator
        self.seen_BV = (
            torch.zeros(batch, vocab_size, dtype=torch.bool, device=device) if params.repetition_penalty != 1.0 else None
        )

    def observe(self, ids_BT: torch.Tensor, mask_BT: torch.Tensor | None = None) -> None:
        """Mark ids as seen (prompt with its padding mask, or one new token per row as (B, 1))."""
        if self.seen_BV is None:
            return
        if mask_BT is None:
            self.seen_BV.scatter_(1, ids_BT, True)
            return
        for row, (ids_T, mask_T) in enumerate(zip(ids_BT, mask_BT)):  # once per prompt: padding is not seen
            self.seen_BV[row, ids_T[mask_T.bool()]] = True

    def __call__(self, logits_BV: torch.Tensor) -> torch.Tensor:
        logits_BV = self.warp(logits_BV)
        if self.params.greedy:
            return logits_BV.argmax(-1)
        return torch.multinomial(logits_BV.softmax(-1), 1, generator=self.generator)[:, 0]

    def warp(self, logits_BV: torch.Tensor, *, seen_BV: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits after the penalty and, when sampling, temperature / top-k / top-p
        (-inf where a token may not be drawn). `seen_BV` replaces the observed tokens (speculative
        decoding warps a position as if its draft prefix had been observed)."""
        p = self.params
        logits_BV = logits_BV.float()
        seen_BV = self.seen_BV if seen_BV is None else seen_BV
        if seen_BV is not None:
            penalised = torch.where(logits_BV > 0, logits_BV / p.repetition_penalty, logits_BV * p.repetition_penalty)
            logits_BV = torch.where(seen_BV, penalised, logits_BV)
        if p.greedy:
            return logits_BV
        logits_BV = logits_BV / p.temperature
        if p.top_k > 0 and p.top_k < logits_BV.shape[-1]:
            kth_B1 = logits_BV.topk(p.top_k, dim=-1).values[:, -1:]
            logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
        if p.top_p < 1.0:
            logits_BV = _top_p(logits_BV, p.top_p)
        return logits_BV


def _top_p(logits_BV: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability mass reaches top_p."""
    sorted_BV, order_BV = logits_BV.sort(dim=-1, descending=True)
    probs_BV = sorted_BV.softmax(-1)
    mass_before_BV = probs_BV.cumsum(-1) - probs_BV  # mass of the strictly more likely tokens
    drop_BV = mass_before_BV >= top_p
    drop_BV[:, 0] = False
    return logits_BV.masked_fill(torch.empty_like(drop_BV).scatter_(-1, order_BV, drop_BV), float("-inf"))
