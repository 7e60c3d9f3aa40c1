"""Native-resolution ViT encoder: many images / video frame pairs of different sizes in one call.

Input is the processor's flat patches `(N, C*T*P*P)` in block-major order (every 4 consecutive
patches form one 2x2 merge block) and a grid `(n, 3)` of (t, h, w) in patches per image or video.
What is unusual, in forward order:
- The Conv3d patch embed has kernel == stride, so it runs as one matmul on the flat patch.
- The learned 24x24 position table is resampled bicubically (grid_sample, float32,
  align_corners=False, border padding) to each image's own (h, w) grid.
- Attention is bidirectional but block-diagonal: each image, and each temporal group (frame
  pair) of a video, attends only to itself (`cu_seqlens`). Equal-length groups (all frames of
  a video) run as one batched SDPA call; unequal ones one call each, never an N x N mask.
- The 2x2 downsample Conv2d is also one matmul over each block of 4 consecutive patches.
Reference: transformers' `Glm4vMoeVisionModel` (the numerical oracle).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import VisionConfig
from .layers import RMSNorm, SwiGLU
from .projector import Projector
from .rotary import apply_rotary, vision_cos_sin


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel_size=kernel, stride=kernel)

    def forward(self, patches_NP: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight  # (D, C, T, P, P): kernel == stride, so conv == linear on the flat patch
        return F.linear(patches_NP.to(w.dtype), w.reshape(w.shape[0], -1), self.proj.bias)


class PositionEmbedding(nn.Module):
    """The learned square position table, resampled to each image's patch grid."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.side = cfg.image_size // cfg.patch_size
        self.position_embedding = nn.Embedding(self.side**2, cfg.hidden_size)

    def forward(self, rows_N: torch.Tensor, cols_N: torch.Tensor, heights_N: torch.Tensor, widths_N: torch.Tensor) -> torch.Tensor:
        table = self.position_embedding.weight
        D = table.shape[1]
        table_1DSS = table.float().view(self.side, self.side, D).permute(2, 0, 1)[None]
        # Sampling point of patch (h, w) in normalised [-1, 1] coordinates, x = width first.
        x = (cols_N.float() + 0.5) / widths_N.float() * 2 - 1
        y = (rows_N.float() + 0.5) / heights_N.float() * 2 - 1
        grid_11N2 = torch.stack([x, y], dim=-1)[None, :, None, :]  # (1, N, 1, 2)
        sampled = F.grid_sample(table_1DSS, grid_11N2, mode="bicubic", align_corners=False, padding_mode="border")
        return sampled[0, :, :, 0].T.to(table.dtype)  # (N, D)


class Attention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=False)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x_ND: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        N, D = x_ND.shape
        q, k, v = self.qkv(x_ND).view(N, 3, self.num_heads, -1).unbind(1)  # each (N, H, hd)
        dtype = q.dtype
        # Rotary in float32, as the checkpoint was trained.
        q = apply_rotary(q.float(), cos[:, None], sin[:, None], "half").to(dtype)
        k = apply_rotary(k.float(), cos[:, None], sin[:, None], "half").to(dtype)
        if len(set(lengths)) == 1:  # one image, or frames of one size: one batched call
            n, L = len(lengths), lengths[0]
            q, k, v = (t.view(n, L, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))  # (n, H, L, hd)
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, D)
        else:
            outs = [
                F.scaled_dot_product_attention(qi.transpose(0, 1), ki.transpose(0, 1), vi.transpose(0, 1)).transpose(0, 1)
                for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths))
            ]
            out = torch.cat(outs).reshape(N, D)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.out_hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, lengths)
        return x + self.mlp(self.norm2(x))


class VisionEncoder(nn.Module):
    """Patches -> one projected token per 2x2 block. `forward = forward_features + merger`."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.post_conv_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.embeddings = PositionEmbedding(cfg)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.post_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        m = cfg.spatial_merge_size
        self.downsample = nn.Conv2d(cfg.hidden_size, cfg.out_hidden_size, kernel_size=m, stride=m)
        self.merger = Projector(cfg.out_hidden_size, cfg.intermediate_size)
        self.gradient_checkpointing = False

    def forward(self, patches_NP: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """(N, patch_dim) patches, (n, 3) grids -> (N / merge^2, out_hidden_size) tokens."""
        return self.merger(self.forward_features(patches_NP, grid_thw))

    def forward_features(self, patches_NP: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        check_grid(grid_thw, patches_NP, self.cfg)
        rows_N, cols_N, heights_N, widths_N = patch_coordinates(grid_thw, self.cfg.spatial_merge_size)
        lengths = (grid_thw[:, 1] * grid_thw[:, 2]).repeat_interleave(grid_thw[:, 0]).tolist()  # one per frame pair

        x = self.post_conv_layernorm(self.patch_embed(patches_NP))
        x = x + self.embeddings(rows_N, cols_N, heights_N, widths_N)
        cos, sin = vision_cos_sin(rows_N, cols_N, head_dim=self.cfg.head_dim, theta=self.cfg.rope_theta)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, lengths, use_reentrant=False)
            else:
                x = block(x, cos, sin, lengths)
        x = self.post_layernorm(x)

        m = self.cfg.spatial_merge_size
        w = self.downsample.weight  # (out, D, m, m)
        x_BDmm = x.view(-1, m, m, x.shape[-1]).permute(0, 3, 1, 2)  # blocks of m*m consecutive patches
        return F.linear(x_BDmm.reshape(x_BDmm.shape[0], -1), w.reshape(w.shape[0], -1), self.downsample.bias)


def check_grid(grid_thw: torch.Tensor, patches_NP: torch.Tensor, cfg: VisionConfig) -> None:
    """Loud errors for grids the encoder cannot run, naming the numbers."""
    if grid_thw.ndim != 2 or grid_thw.shape[1] != 3:
        raise ValueError(f"grid_thw must have shape (n, 3), got {tuple(grid_thw.shape)}")
    m = cfg.spatial_merge_size
    for i, (t, h, w) in enumerate(grid_thw.tolist()):
        if t < 1 or h % m or w % m or h < m or w < m:
            raise ValueError(
                f"grid {i} (t={t}, h={h}, w={w}) is not divisible by the merge size {m} (need h, w multiples of {m}, t >= 1)"
            )
    expected = int(grid_thw.prod(-1).sum())
    if patches_NP.ndim != 2 or patches_NP.shape[0] != expected or patches_NP.shape[1] != cfg.patch_dim:
        raise ValueError(
            f"pixel values have shape {tuple(patches_NP.shape)}, expected ({expected}, {cfg.patch_dim}) "
            f"for grids {grid_thw.tolist()}"
        )


def patch_coordinates(grid_thw: torch.Tensor, merge: int) -> tuple[torch.Tensor, ...]:
    """Per patch, in block-major order: (row, col) in its image's grid, and that grid's (h, w)."""
    rows, cols, heights, widths = [], [], [], []
    for t, h, w in grid_thw.tolist():
        r = torch.arange(h).view(h // merge, merge, 1, 1).expand(h // merge, merge, w // merge, merge)
        c = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, w // merge, merge)
        # block-major: (block row, block col, inner row, inner col)
        rows.append(r.permute(0, 2, 1, 3).reshape(-1).repeat(t))
        cols.append(c.permute(0, 2, 1, 3).reshape(-1).repeat(t))
        heights.append(torch.full((t * h * w,), h))
        widths.append(torch.full((t * h * w,), w))
    device = grid_thw.device
    return tuple(torch.cat(v).to(device) for v in (rows, cols, heights, widths))


def token_positions(grid_thw: torch.Tensor, merge: int = 2) -> torch.Tensor:
    """(tokens, 2): each merged token's centre (x, y) as a fraction of its picture's width and
    height, in the encoder's token order."""
    rows, cols, _, _ = patch_coordinates(grid_thw.cpu(), merge)
    heights = torch.cat([torch.full((int(t * h * w),), float(h)) for t, h, w in grid_thw.tolist()])
    widths = torch.cat([torch.full((int(t * h * w),), float(w)) for t, h, w in grid_thw.tolist()])
    x = ((cols.float() + 0.5) / widths).view(-1, merge * merge).mean(1)
    y = ((rows.float() + 0.5) / heights).view(-1, merge * merge).mean(1)
    return torch.stack([x, y], dim=1).to(grid_thw.device)
