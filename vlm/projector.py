"""The projector ("merger"): one merged 2x2 patch feature -> one language-model token.

Linear (no bias) -> LayerNorm (with bias) -> exact erf GELU -> SwiGLU (no biases). It sits at
`visual.merger` in the checkpoint, so it is an attribute of the vision encoder here as well, and
its SwiGLU weights are direct attributes (`merger.gate_proj`), as in the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projector(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=False)
        self.post_projection_norm = nn.LayerNorm(dim)
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x_ND: torch.Tensor) -> torch.Tensor:
        x_ND = F.gelu(self.post_projection_norm(self.proj(x_ND)), approximate="none")
        return self.down_proj(F.silu(self.gate_proj(x_ND)) * self.up_proj(x_ND))
