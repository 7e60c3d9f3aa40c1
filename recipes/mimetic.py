"""Mimetic initialisation (Trockman & Kolter 2023, arXiv 2305.09828): attention that starts
with a useful bias, the architecture unchanged.

- `vision`: the ViT's attention starts local. Per head W_q^T W_k ~ qk (Z + I) and per block
  W_o W_v ~ vo (Z - I), Z ~ N(0, 1/D), factored by SVD; the position table becomes a smooth 2D
  sin-cos table, so nearby patches start with similar queries and keys and attend to each other.
- `language`: the language model's attention starts by content. In each head's non-rotary
  dimensions (GLM rotates only the first `rotary_dim`) W_q^T W_k ~ qk (Z + I), so a token attends
  to earlier tokens whose (normed) states resemble its own wherever they are, and W_o W_v ~
  vo (Z + I) copies what it finds. A quoted word then finds the image tokens that show it from
  step 0 (when the reader is aligned to the embeddings, `recipes.alignment`); the rotary
  dimensions keep their random init, so positional heads can still form.
"""

from __future__ import annotations

import math

import torch

from vlm.language_model import TextModel
from vlm.vision import VisionEncoder


def _factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of shapes (rank, D) with A^T B the best rank-`rank` approximation of `matrix`."""
    U, S, Vh = torch.linalg.svd(matrix)
    root = S[:rank].sqrt()
    return (U[:, :rank] * root).T, Vh[:rank] * root[:, None]


def vision(encoder: VisionEncoder, *, seed: int, qk: float = 0.7, vo: float = 0.4, pos_scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    D, H = encoder.cfg.hidden_size, encoder.cfg.num_heads
    hd = D // H
    with torch.no_grad():
        for block in encoder.blocks:
            qkv = block.attn.qkv.weight  # (3D, D): query rows, key rows, value rows
            for h in range(H):
                q, k = _factors(qk * (torch.randn(D, D, generator=g) / math.sqrt(D) + torch.eye(D)), hd)
                qkv[h * hd:(h + 1) * hd], qkv[D + h * hd:D + (h + 1) * hd] = q, k
            U, S, Vh = torch.linalg.svd(vo * (torch.randn(D, D, generator=g) / math.sqrt(D) - torch.eye(D)))
            qkv[2 * D:] = S.sqrt()[:, None] * Vh
            block.attn.proj.weight.copy_(U * S.sqrt())
        side = encoder.embeddings.side
        freq = 1.0 / (100.0 ** (torch.arange(D // 4, dtype=torch.float32) / (D // 4)))
        yy, xx = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
                                indexing="ij")
        ay, ax = yy.reshape(-1, 1) * freq, xx.reshape(-1, 1) * freq
        table = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1) * pos_scale
        encoder.embeddings.position_embedding.weight.copy_(table)


def language(text_model: TextModel, *, seed: int, qk: float = 1.0, vo: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    cfg = text_model.cfg
    D, H, Hkv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    free = slice(cfg.rotary_dim, hd)  # the dimensions RoPE leaves alone
    if free.start >= hd:
        raise ValueError(f"partial_rotary_factor {cfg.partial_rotary_factor}: every head dimension rotates, "
                         "so no attention can start by content alone")
    with torch.no_grad():
        for layer in text_model.layers:
            attn = layer.self_attn
            for kv in range(Hkv):  # the query heads of a group share their key head's factor
                q, k = _factors(qk * (torch.randn(D, D, generator=g) / math.sqrt(D) + torch.eye(D)), hd - free.start)
                attn.k_proj.weight[kv * hd:(kv + 1) * hd][free] = k
                for h in range(kv * H // Hkv, (kv + 1) * H // Hkv):
                    attn.q_proj.weight[h * hd:(h + 1) * hd][free] = q
            v, o = _factors(vo * (torch.randn(D, D, generator=g) / math.sqrt(D) + torch.eye(D)), Hkv * hd)
            attn.v_proj.weight.copy_(v)
            # a group's query heads each read its value head; the output sums them, so each gets a share
            per_head = o.T.reshape(D, Hkv, hd).repeat_interleave(H // Hkv, 1).reshape(D, H * hd)
            attn.o_proj.weight.copy_(per_head / (H // Hkv))
