"""The language model: GQA attention with q/k/v bias and partial 3-axis M-RoPE, dense then MoE layers.

What is unusual:
- Positions are (3, B, T) M-RoPE ids (see positions.py); only the first `rotary_dim` dims of each
  head rotate; the frequency table's sections follow the T, H and W axes in turn.
- GLM-4.1V (`sandwich_norms`) normalises the attention and MLP outputs again before each residual
  add and uses the interleaved rotary layout; otherwise those norms are `nn.Identity`.
- One boolean mask covers causality, left padding (`attention_mask`), packed training rows
  (`segment_ids`: attend only within equal ids) and the KV cache offset. A query may always see
  itself, so fully padded rows stay finite instead of NaN.
Reference: transformers' `Glm4vMoeTextModel` / `Glm4vTextModel`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cache import KVCache
from .config import TextConfig
from .layers import FusedSwiGLU, RMSNorm, SwiGLU
from .moe import MoE
from .mtp import MTPLayer
from .rotary import apply_rotary, mrope_cos_sin


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer  # its slot in the KV cache
        self.num_attention_heads, self.num_key_value_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.layout = cfg.rotary_layout
        D, H, Hkv, hd = cfg.hidden_size, self.num_attention_heads, self.num_key_value_heads, self.head_dim
        self.q_proj = nn.Linear(D, H * hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(D, Hkv * hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(D, Hkv * hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(H * hd, D, bias=False)

    def forward(
        self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None
    ) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        H, Hkv, hd = self.num_attention_heads, self.num_key_value_heads, self.head_dim
        q = self.q_proj(x_BTD).view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x_BTD).view(B, T, Hkv, hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x_BTD).view(B, T, Hkv, hd).transpose(1, 2)
        cos, sin = cos[:, None].to(q.dtype), sin[:, None].to(q.dtype)
        q, k = apply_rotary(q, cos, sin, self.layout), apply_rotary(k, cos, sin, self.layout)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and T > 1, enable_gqa=Hkv != H
        )
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer: int, *, cache_layer: int | None = None) -> None:
        """`layer`: the index in the network (decides dense or MoE); `cache_layer`: its KV-cache
        slot when that differs (an MTP layer keeps its own cache)."""
        super().__init__()
        D = cfg.hidden_size
        self.input_layernorm = RMSNorm(D, eps=cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer if cache_layer is None else cache_layer)
        self.post_attention_layernorm = RMSNorm(D, eps=cfg.rms_norm_eps)
        if cfg.is_moe_layer(layer):
            self.mlp: nn.Module = MoE(cfg)
        elif cfg.fused_gate_up:
            self.mlp = FusedSwiGLU(D, cfg.intermediate_size)
        else:
            self.mlp = SwiGLU(D, cfg.intermediate_size)
        sandwich = (lambda: RMSNorm(D, eps=cfg.rms_norm_eps)) if cfg.sandwich_norms else nn.Identity
        self.post_self_attn_layernorm = sandwich()
        self.post_mlp_layernorm = sandwich()

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.post_self_attn_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache))
        return x + self.post_mlp_layernorm(self.mlp(self.post_attention_layernorm(x)))


class TextModel(nn.Module):
    def __init__(self, cfg: TextConfig, *, num_mtp_layers: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        # Multi-token prediction (mtp.py): not run by `forward`; `forward_mtp` runs the first.
        self.mtp_layers = nn.ModuleList([MTPLayer(cfg, i) for i in range(num_mtp_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        x_BTD: torch.Tensor,
        positions_3BT: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Embedded inputs -> final-normed hidden states (B, T, D)."""
        cos, sin, mask = self._rotary_and_mask(x_BTD, positions_3BT, attention_mask, segment_ids, cache)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x_BTD = checkpoint(layer, x_BTD, cos, sin, mask, cache, use_reentrant=False)
            else:
                x_BTD = layer(x_BTD, cos, sin, mask, cache)
        if cache is not None:
            cache.advance(x_BTD.shape[1])
        return self.norm(x_BTD)

    def forward_mtp(
        self,
        next_embeds_BTD: torch.Tensor,
        hidden_BTD: torch.Tensor,
        positions_3BT: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The first MTP layer's hidden states g (B, T, D) (no cache: training and checks).
        `next_embeds_BTD[:, t]` embeds token t+1; `hidden_BTD` is `forward`'s output."""
        if not len(self.mtp_layers):
            raise ValueError("this model has no multi-token-prediction layer (num_nextn_predict_layers is 0)")
        cos, sin, mask = self._rotary_and_mask(next_embeds_BTD, positions_3BT, attention_mask, segment_ids, None)
        layer = self.mtp_layers[0]
        if self.gradient_checkpointing and self.training:
            return checkpoint(layer, next_embeds_BTD, hidden_BTD, cos, sin, mask, None, use_reentrant=False)
        return layer(next_embeds_BTD, hidden_BTD, cos, sin, mask, None)

    def _rotary_and_mask(self, x_BTD, positions_3BT, attention_mask, segment_ids, cache):
        cfg = self.cfg
        cos, sin = mrope_cos_sin(
            positions_3BT, rotary_dim=cfg.rotary_dim, theta=cfg.rope_theta, mrope_section=cfg.mrope_section,
            layout=cfg.rotary_layout,
        )
        past = cache.length if cache is not None else 0
        mask = attention_mask_4d(x_BTD.shape[1], past, attention_mask=attention_mask, segment_ids=segment_ids, device=x_BTD.device)
        return cos, sin, mask


def attention_mask_4d(
    T: int,
    past: int,
    *,
    attention_mask: torch.Tensor | None,
    segment_ids: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Boolean (B, 1, T, past+T) mask (True = may attend), or None when plain causal suffices.

    attention_mask: (B, past+T) 1 for real tokens, 0 for padding. segment_ids: (B, T) with 0 for
    padding and 1..k for the packed sample a token belongs to (no cache with packed rows).
    """
    if segment_ids is not None and past:
        raise ValueError("segment_ids (packed rows) cannot be combined with a non-empty KV cache")
    plain = attention_mask is None or bool(attention_mask.all())
    if segment_ids is None and plain and (past == 0 or T == 1):
        return None  # SDPA's own causal flag (or no mask at all for one new token)
    S = past + T
    q_pos = torch.arange(past, S, device=device)[:, None]
    k_pos = torch.arange(S, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None]  # (1, T, S)
    if attention_mask is not None:
        if attention_mask.shape[-1] != S:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, expected past + new = {S}")
        allowed = allowed & attention_mask.bool()[:, None, :]
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    allowed = allowed | (k_pos == q_pos)[None]  # a query always sees itself: no all-masked (NaN) rows
    return allowed[:, None]
