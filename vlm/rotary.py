"""Rotary position tables: 3-axis M-RoPE for the language model, 2D axial rotary for the ViT.

Two layouts exist for the same frequencies, and mixing them up is the classic GLM bug:
- "half" (GLM-4.5V, NeoX): dims [0, r/2) pair with [r/2, r); cos/sin are the frequencies twice.
- "interleaved" (GLM-4.1V): dims (0,1), (2,3), ... pair up; each frequency is repeated in place.
Only the first `rotary_dim` dims of a head rotate (partial rotary); the rest pass through.
Tables are computed in float32 on the fly (cheap, and nothing to re-initialise after meta loading).
"""

from __future__ import annotations

from typing import Literal

import torch

Layout = Literal["half", "interleaved"]


def inverse_frequencies(dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """(dim/2,) float32 inverse frequencies theta^(-2i/dim)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))


def mrope_cos_sin(
    positions_3BT: torch.Tensor, *, rotary_dim: int, theta: float, mrope_section: tuple[int, ...], layout: Layout
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, T, rotary_dim) from (3, B, T) positions.

    Frequency i belongs to axis (T, H, W)[section index % 3], sections taken in order.
    """
    inv_freq = inverse_frequencies(rotary_dim, theta, positions_3BT.device)  # (F,)
    freqs_3BTF = positions_3BT[..., None].float() * inv_freq
    chunks = freqs_3BTF.split(list(mrope_section), dim=-1)
    freqs_BTF = torch.cat([chunk[i % 3] for i, chunk in enumerate(chunks)], dim=-1)
    return _expand(freqs_BTF.cos(), layout), _expand(freqs_BTF.sin(), layout)


def vision_cos_sin(rows_N: torch.Tensor, cols_N: torch.Tensor, *, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (N, head_dim) for 2D axial rotary: half the frequencies follow rows, half columns."""
    inv_freq = inverse_frequencies(head_dim // 2, theta, rows_N.device)  # (head_dim/4,)
    freqs_NF = torch.cat([rows_N[:, None].float() * inv_freq, cols_N[:, None].float() * inv_freq], dim=-1)
    return _expand(freqs_NF.cos(), "half"), _expand(freqs_NF.sin(), "half")


def _expand(table: torch.Tensor, layout: Layout) -> torch.Tensor:
    if layout == "half":
        return torch.cat([table, table], dim=-1)
    return table.repeat_interleave(2, dim=-1)


def _rotate(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    if layout == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([-x2, x1], dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x; cos/sin must broadcast against x[..., :r]."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    x_rot = x_rot * cos + _rotate(x_rot, layout) * sin
    return torch.cat([x_rot, x_pass], dim=-1) if x_pass.shape[-1] else x_rot
