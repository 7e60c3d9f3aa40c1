"""MoE load balance without an auxiliary loss (GLM-4.5, DeepSeek-V3 §2.1.2).

Routing picks experts by `sigmoid(logits) + e_score_correction_bias`; the bias is not trained by
gradient. After every optimiser step each layer's bias moves toward balance:

    bias_e += rate * sign(mean_load - load_e)

where `load_e` is the number of tokens routed to expert e during that step (summed over
micro-batches and, in multi-process runs, over processes, so every process applies the same
update and the biases stay identical without a broadcast).

An optional small sequence-wise balance loss (DeepSeek-V3 eq. 17-20) can be added:
`alpha * sum_e f_e * P_e`, with f_e = E / (K * T) * (tokens of the sequence routed to e) and
P_e = the mean over the sequence's tokens of the normalised scores s_e / sum_j s_j.

Legend for shape suffixes: N tokens, E experts, K experts per token, L MoE layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MoELayer:
    """One MoE block: its module name, the module (with `tokens_per_expert`) and where its bias lives.

    The bias tensor is looked up on every access, never cached: moving the model (`.to(device)`)
    or wrapping it for DDP replaces buffer tensors, and a cached reference would silently update
    a stale copy.
    """

    name: str
    module: nn.Module
    bias_owner: nn.Module
    bias_name: str

    @property
    def bias_E(self) -> torch.Tensor:
        return getattr(self.bias_owner, self.bias_name)


def find_moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every module that records `tokens_per_expert`, paired with its correction bias."""
    layers = []
    for name, module in model.named_modules():
        if not hasattr(module, "tokens_per_expert"):
            continue
        biases = [n for n, _ in module.named_buffers() if n.endswith("e_score_correction_bias")]
        if len(biases) != 1:
            raise ValueError(f"MoE module {name!r} has {len(biases)} e_score_correction_bias buffers, expected 1")
        owner_path, _, buffer_name = biases[0].rpartition(".")
        owner = module.get_submodule(owner_path) if owner_path else module
        layers.append(MoELayer(name, module, owner, buffer_name))
    return layers


def current_loads(layers: list[MoELayer]) -> torch.Tensor:
    """(L, E) float64 token counts of each layer's last forward."""
    if not layers:
        return torch.zeros(0, 0, dtype=torch.float64)
    return torch.stack([layer.module.tokens_per_expert.detach().to("cpu", torch.float64) for layer in layers])


@torch.no_grad()
def update_biases(layers: list[MoELayer], loads_LE: torch.Tensor, *, rate: float) -> None:
    """bias += rate * sign(mean_load - load), per layer. A layer that saw no token is left alone."""
    if len(layers) != loads_LE.shape[0]:
        raise ValueError(f"{loads_LE.shape[0]} load rows for {len(layers)} MoE layers")
    for layer, load_E in zip(layers, loads_LE):
        if load_E.sum() == 0:
            continue
        step_E = rate * torch.sign(load_E.mean() - load_E)
        layer.bias_E.add_(step_E.to(layer.bias_E.device, layer.bias_E.dtype))


def load_stats(layers: list[MoELayer], loads_LE: torch.Tensor) -> dict[str, float]:
    """Per-layer max/mean expert load (1.0 = perfectly balanced), for logging."""
    stats = {}
    for layer, load_E in zip(layers, loads_LE):
        mean = load_E.mean().item()
        stats[f"moe/{layer.name}/max_over_mean"] = load_E.max().item() / mean if mean > 0 else 0.0
    if stats:
        stats["moe/max_over_mean"] = max(stats.values())
    return stats


def sequence_balance_loss(scores_NE: torch.Tensor, topk_ids_NK: torch.Tensor,
                          segment_ids_N: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3 sequence-wise balance loss for one layer, averaged over sequences.

    `scores_NE` are the router's sigmoid scores (with grad), `topk_ids_NK` the chosen experts,
    `segment_ids_N` the sequence each token belongs to (0 = padding, excluded).
    """
    N, E = scores_NE.shape
    K = topk_ids_NK.shape[1]
    keep_N = segment_ids_N > 0
    seq_N = segment_ids_N[keep_N].long()
    scores_NE, topk_ids_NK = scores_NE[keep_N], topk_ids_NK[keep_N]
    S = int(seq_N.max().item()) + 1 if seq_N.numel() else 1
    counts_SE = torch.zeros(S, E, device=scores_NE.device, dtype=torch.float32)
    counts_SE.index_put_((seq_N[:, None].expand(-1, K), topk_ids_NK.long()),
                         torch.ones_like(topk_ids_NK, dtype=torch.float32), accumulate=True)
    tokens_S = torch.zeros(S, device=scores_NE.device).index_add_(0, seq_N, torch.ones_like(seq_N, dtype=torch.float32))
    probs_NE = scores_NE.float() / scores_NE.float().sum(-1, keepdim=True)
    mean_probs_SE = torch.zeros(S, E, device=scores_NE.device).index_add_(0, seq_N, probs_NE)
    present_S = tokens_S > 0
    f_SE = counts_SE[present_S] * E / (K * tokens_S[present_S, None])
    P_SE = mean_probs_SE[present_S] / tokens_S[present_S, None]
    return (f_SE * P_SE).sum(-1).mean()
