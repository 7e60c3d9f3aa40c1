"""Mixture-of-Experts feed-forward: sigmoid router with loss-free balance bias, grouped-matmul experts.

Routing (GLM-4.5 / DeepSeek-V3): router logits in float32, scores = sigmoid(logits). Experts are
*selected* on scores + e_score_correction_bias (optionally only inside the best `topk_group` of
`n_group` groups, groups ranked by the sum of their top-2 biased scores), but *weighted* by the
unbiased scores, normalised to sum 1 when `norm_topk_prob`, times `routed_scaling_factor`.
Shared experts run on every token and are added without a gate.

Dispatch: the T*K (token, expert) pairs are sorted by expert, and each stacked weight runs as
one `torch.nn.functional.grouped_mm` over contiguous per-expert row ranges (`offs`). We never
index one expert out of the stacked weight (`w[e]`) in a loop: that backward allocates a
full-size (E, ...) gradient per expert, so it grows with E^2 (benchmarks/moe_dispatch.py, 2 CPU
threads, D=512, F=256, 1024 tokens, top-4: E=32 1.1 s vs 4.0 s; E=64 1.7 s vs 10.4 s).
grouped_mm works on CPU float32 and bfloat16 with autograd in torch 2.14.

The bias is not learned by gradient; the trainer moves it with `tokens_per_expert` (recorded on
every forward; `count_only`, a (B*T,) bool mask the trainer sets, leaves padding out). With
`record_routing = True` the last scores and choices are kept for an optional sequence-level
balance loss.

Shape legend: T tokens (batch*time flattened), D model width, E routed experts, K experts per
token, F expert width, G expert groups, S = T*K (token, expert) slots sorted by expert.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig
from .layers import SwiGLU


class Router(nn.Module):
    """Lives at `mlp.gate` in the checkpoint."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.num_experts_per_tok = cfg.num_experts_per_tok
        self.n_group = cfg.n_group
        self.topk_group = cfg.topk_group
        self.norm_topk_prob = cfg.norm_topk_prob
        self.routed_scaling_factor = cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        # float32 whatever the model dtype: updates of ~1e-3 vanish in bf16.
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))

    def forward(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> scores_TE (float32), topk_ids_TK, topk_weights_TK (float32)."""
        logits_TE = F.linear(x_TD.float(), self.weight.float())
        scores_TE = logits_TE.sigmoid()
        choice_TE = scores_TE + self.e_score_correction_bias
        if self.n_group > 1:
            T, E = choice_TE.shape
            choice_TGe = choice_TE.view(T, self.n_group, E // self.n_group)
            group_scores_TG = choice_TGe.topk(2, dim=-1).values.sum(-1)
            keep_TG = torch.zeros_like(group_scores_TG, dtype=torch.bool)
            keep_TG.scatter_(1, group_scores_TG.topk(self.topk_group, dim=-1, sorted=False).indices, True)
            choice_TE = choice_TGe.masked_fill(~keep_TG[..., None], float("-inf")).view(T, E)
        topk_ids_TK = choice_TE.topk(self.num_experts_per_tok, dim=-1, sorted=False).indices
        topk_weights_TK = scores_TE.gather(1, topk_ids_TK)
        if self.norm_topk_prob:
            topk_weights_TK = topk_weights_TK / (topk_weights_TK.sum(-1, keepdim=True) + 1e-20)
        return scores_TE, topk_ids_TK, topk_weights_TK * self.routed_scaling_factor


class Experts(nn.Module):
    """All routed experts as stacked weights (an in-memory choice; on disk they are one by one).

    gate_up_proj (E, 2F, D) holds [gate; up] rows per expert, down_proj (E, D, F): the orientation
    of `nn.Linear` weights, so one expert's slice equals its checkpoint tensors.
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        E, D, F_ = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.n_routed_experts = E
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * F_, D))
        self.down_proj = nn.Parameter(torch.empty(E, D, F_))

    def forward(self, x_TD: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor) -> torch.Tensor:
        T, K = topk_ids_TK.shape
        flat_ids_S = topk_ids_TK.reshape(-1)
        order_S = flat_ids_S.argsort(stable=True)
        inverse_S = torch.empty_like(order_S)
        inverse_S[order_S] = torch.arange(order_S.numel(), device=order_S.device)
        counts_E = torch.bincount(flat_ids_S, minlength=self.n_routed_experts)
        offs_E = counts_E.cumsum(0).to(torch.int32)  # end row of each expert's range

        w_gate_up = self.gate_up_proj
        x_SD = _Dispatch.apply(x_TD.to(w_gate_up.dtype), order_S // K, inverse_S, K)
        h_S2F = _grouped_mm(x_SD, w_gate_up.transpose(-2, -1), offs_E)
        gate_SF, up_SF = h_S2F.chunk(2, dim=-1)
        y_SD = _grouped_mm(F.silu(gate_SF) * up_SF, self.down_proj.transpose(-2, -1), offs_E)
        # Back to (token, k) order by the inverse permutation, then a weighted sum over k: a gather
        # and a reduction instead of an accumulating index_add (and index_put in backward).
        y_TKD = _Permute.apply(y_SD, inverse_S, order_S).view(T, K, -1)
        return (y_TKD * topk_weights_TK[..., None]).sum(1).to(x_TD.dtype)


class _Dispatch(torch.autograd.Function):
    """x_TD rows `token_S` (each token K times, sorted by expert). Backward: gradient rows back in
    (token, k) order by the inverse permutation, summed over k; no accumulating index_put."""

    @staticmethod
    def forward(ctx, x_TD: torch.Tensor, token_S: torch.Tensor, inverse_S: torch.Tensor, K: int) -> torch.Tensor:
        ctx.save_for_backward(inverse_S)
        ctx.K = K
        return x_TD.index_select(0, token_S)

    @staticmethod
    def backward(ctx, grad_SD: torch.Tensor):
        (inverse_S,) = ctx.saved_tensors
        grad_TKD = grad_SD.index_select(0, inverse_S).view(-1, ctx.K, grad_SD.shape[-1])
        return grad_TKD.sum(1), None, None, None


class _Permute(torch.autograd.Function):
    """x[index] for a permutation `index` whose inverse is `inverse`: backward is grad[inverse]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class MoE(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.gate = Router(cfg)
        self.experts = Experts(cfg)
        self.shared_experts = SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)
        self.register_buffer("tokens_per_expert", torch.zeros(cfg.n_routed_experts, dtype=torch.long), persistent=False)
        self.record_routing = False  # keep last_scores / last_topk_ids for a balance loss
        self.count_only: torch.Tensor | None = None  # (B*T,) bool: the tokens tokens_per_expert counts
        self.last_scores: torch.Tensor | None = None
        self.last_topk_ids: torch.Tensor | None = None

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        shape = x_BTD.shape
        x_TD = x_BTD.reshape(-1, shape[-1])
        scores_TE, topk_ids_TK, topk_weights_TK = self.gate(x_TD)
        with torch.no_grad():
            counted_TK = topk_ids_TK if self.count_only is None else topk_ids_TK[self.count_only]
            self.tokens_per_expert.copy_(torch.bincount(counted_TK.reshape(-1), minlength=self.tokens_per_expert.numel()))
        if self.record_routing:
            self.last_scores, self.last_topk_ids = scores_TE, topk_ids_TK
        routed_TD = self.experts(x_TD, topk_ids_TK, topk_weights_TK)
        return (routed_TD + self.shared_experts(x_TD)).view(shape)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: grouped_mm's CPU backward
    rejects expanded (stride-0) gradients such as the one `out.sum().backward()` produces."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _grouped_mm(x_SK: torch.Tensor, w_EKN: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
    """Rows [offs[e-1], offs[e]) of x times w[e]; one kernel for all experts."""
    return _ContiguousGrad.apply(F.grouped_mm(x_SK, w_EKN, offs=offs_E))
