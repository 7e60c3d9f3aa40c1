"""Preallocated key/value cache for decoding.

One tensor per K and V for all layers, allocated once at (layers, B, KV heads, max_len, head_dim)
and written in place at the current length: no per-step concatenation, no reallocation, and a
layout SDPA reads directly. The model writes every layer at `length` and then calls `advance`.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        num_hidden_layers: int,
        batch: int,
        max_len: int,
        num_key_value_heads: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        shape = (num_hidden_layers, batch, num_key_value_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions already written (same for every row; padding is in the mask)

    def update(self, layer: int, k_BHTd: torch.Tensor, v_BHTd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values for `layer`; return all keys/values so far (views)."""
        T = k_BHTd.shape[2]
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing {T} at {self.length} overflows it")
        self.k[layer, :, :, self.length : end] = k_BHTd
        self.v[layer, :, :, self.length : end] = v_BHTd
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n
