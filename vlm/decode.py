"""Decode-step kernels: the network's forward for a few new tokens per row over a KV cache, on
fused copies of the weights (used by generation.py, running_batch.py and speculative.py).

What is unusual here:
- A decode step does NOT go through `VisionLanguageModel.forward`: it only needs the embedding,
  the decoder layers, the final norm and the lm_head, and the general forward would rebuild masks,
  M-RoPE ids and placeholder checks (with host syncs) for one token. `tests/test_generation.py`
  checks that this path equals recomputing the whole sequence.
- `decode_block` runs T >= 1 new tokens per row (speculative decoding verifies a draft block in
  one forward); `decode_step` is its one-token form. `mtp_block` runs a multi-token-prediction
  layer (mtp.py) the same way over its own cache.
- On CPU, `_linear` multiplies as `w @ x.T` and `_moe_few_tokens` runs only the picked experts:
  both are faster than the general modules for a handful of rows.
- A projection whose weight is kept in e4m3 (`Fp8Linear`, fp8="keep") is not fused: the plan
  calls the modules, so their scaled product runs and no full-precision copy is made. The
  MTP layer's `eh_proj` and head go through the plan the same way (fp8.py keeps them unquantized,
  but an older checkpoint may store them in e4m3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .fp8_linear import Fp8Linear
from .layers import FusedSwiGLU
from .model import VisionLanguageModel
from .moe import MoE
from .rotary import apply_rotary


class _LayerPlan:
    """One decoder layer's weights as a decode step reads them (fused copies built once)."""

    def __init__(self, layer: nn.Module) -> None:
        attn = layer.self_attn
        H, Hkv, hd = attn.num_attention_heads, attn.num_key_value_heads, attn.head_dim
        self.H, self.Hkv, self.hd, self.layout = H, Hkv, hd, attn.layout
        scale = hd**-0.5  # folded into the q rows: SDPA's default scale, applied before rotary (linear)
        self.qkv = _Product([attn.q_proj, attn.k_proj, attn.v_proj], [scale, 1.0, 1.0])
        self.o = _Product([attn.o_proj])
        self.input_norm = layer.input_layernorm
        self.post_attn_norm = None if isinstance(layer.post_self_attn_layernorm, nn.Identity) else layer.post_self_attn_layernorm
        self.mlp_norm = layer.post_attention_layernorm
        self.post_mlp_norm = None if isinstance(layer.post_mlp_layernorm, nn.Identity) else layer.post_mlp_layernorm
        mlp = layer.mlp
        self.moe = mlp if isinstance(mlp, MoE) else None
        dense = mlp.shared_experts if self.moe is not None else mlp
        fused = isinstance(dense, FusedSwiGLU)
        self.gate_up = _Product([dense.gate_up_proj] if fused else [dense.gate_proj, dense.up_proj])
        self.down = _Product([dense.down_proj])


class _MTPPlan:
    """An MTP layer's weights as a draft step reads them: its decoder block, `eh_proj` and head
    (each called as a module when kept in e4m3) and the draft vocabulary's rows of the head."""

    def __init__(self, layer: nn.Module, dtype: torch.dtype) -> None:
        self.block = _LayerPlan(layer.mtp_block)
        self.eh_proj = _Product([layer.eh_proj])
        head = layer.shared_head.head
        self.head = _Product([head])
        self.vocab_size = head.weight.shape[0]
        # The draft vocabulary's rows (mtp.py), gathered once. Rows of an e4m3 head are dequantized
        # here instead: a gathered subset no longer lines up with the 128-row scale blocks the
        # block-scaled product needs (row scales would gather along), and ~1k rows in `dtype` are
        # a small copy in every layout.
        ids = self.draft_ids = layer.draft_token_ids
        if ids is None:
            self.draft_head = None
        else:
            self.draft_head = head.weight_rows(ids, dtype) if isinstance(head, Fp8Linear) else head.weight[ids].contiguous()


class _Product:
    """x (n, K) -> the outputs of `modules` side by side, the i-th times `scales[i]`: one matrix
    product over their fused weights (a copy when there are several), or, when one keeps its
    weight in e4m3, the modules themselves (fusing would dequantize them into a copy)."""

    def __init__(self, modules: list[nn.Module], scales: list[float] | None = None) -> None:
        scales = scales or [1.0] * len(modules)
        self.kept = list(zip(modules, scales)) if any(isinstance(m, Fp8Linear) for m in modules) else None
        if self.kept is not None:
            return
        weights = [m.weight if s == 1 else m.weight * s for m, s in zip(modules, scales)]
        self.w = weights[0] if len(weights) == 1 else torch.cat(weights)
        biases = [m.bias if s == 1 or m.bias is None else m.bias * s for m, s in zip(modules, scales)]
        self.b = None if any(b is None for b in biases) else biases[0] if len(biases) == 1 else torch.cat(biases)

    def __call__(self, x_nK: torch.Tensor) -> torch.Tensor:
        if self.kept is None:
            return _linear(x_nK, self.w, self.b)
        outs = [m(x_nK) if s == 1 else m(x_nK) * s for m, s in self.kept]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


def _linear(x_nK: torch.Tensor, w_NK: torch.Tensor, b_N: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, w, b)` for a few rows, contiguous (n, N), computed as `w @ x.T`.

    On CPU float32 that form of the same product runs ~2.5x faster than `F.linear` for 2-8 rows
    (2 threads: 512x512 24 vs 63 us, 8192x512 lm_head 0.41 vs 1.02 ms), and one row falls back
    to the slow matrix-vector kernel, so a single row is doubled and the copy dropped.
    """
    n = x_nK.shape[0]
    if x_nK.device.type != "cpu":
        return F.linear(x_nK, w_NK, b_N)
    x = torch.cat((x_nK, x_nK)) if n == 1 else x_nK.contiguous()
    y_Nn = torch.matmul(w_NK, x.t())
    if b_N is not None:
        y_Nn = y_Nn.add_(b_N[:, None])
    return y_Nn.t()[:n].contiguous()


class _DecodePlan:
    """Per-model decode weights: q/k/v fused into one matrix (with the attention scale folded into
    the q rows) and the dense MLP's / shared expert's gate and up fused into one, so a step runs
    one matrix product where the modules run two or three. An in-memory copy of the attention and
    dense/shared-expert weights (routed experts, embedding and lm_head are not copied; the
    checkpoint layout and the modules are unchanged); rebuilt when a source tensor changes (new
    storage, or an in-place update bumping its version)."""

    def __init__(self, model: VisionLanguageModel) -> None:
        self.key = _plan_key(model)
        lm = model.language_model
        with torch.no_grad():
            self.layers = [_LayerPlan(layer) for layer in lm.layers]
            self.mtp = [_MTPPlan(layer, model.lm_head.weight.dtype) for layer in lm.mtp_layers]


def _plan_key(model: VisionLanguageModel) -> tuple:
    lm = model.language_model
    draft_ids = [ids for ids in (layer.draft_token_ids for layer in lm.mtp_layers) if ids is not None]
    return tuple((p.data_ptr(), p._version) for p in [*lm.layers.parameters(), *lm.mtp_layers.parameters(), *draft_ids])


def decode_plan(model: VisionLanguageModel) -> _DecodePlan:
    plan = getattr(model, "_decode_plan", None)
    if plan is None or plan.key != _plan_key(model):
        with torch.inference_mode(False):
            plan = _DecodePlan(model)
        model.__dict__["_decode_plan"] = plan  # a plain attribute: not a submodule, not in the state dict
    return plan


def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """RMSNorm; fused `F.rms_norm` in float32 (the module's order matters only in lower precision)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.eps)
    return norm(x)


def decode_step(
    model: VisionLanguageModel,
    token_B1: torch.Tensor,
    cos_B11R: torch.Tensor,
    sin_B11R: torch.Tensor,
    bias_B11S: torch.Tensor | None,
    cache: KVCache,
    plan: _DecodePlan | None = None,
) -> torch.Tensor:
    """Logits (B, V) of one new token per row, appended to `cache` (which must hold the prompt).

    cos/sin: (B, 1, 1, rotary_dim) in the model dtype; bias_B11S: additive key mask (0 or -inf)
    over the S cached positions including this one, or None without padding.
    """
    logits_BTV, _ = decode_block(model, token_B1, cos_B11R, sin_B11R, bias_B11S, cache, plan)
    return logits_BTV[:, 0]


def decode_block(
    model: VisionLanguageModel,
    tokens_BT: torch.Tensor,
    cos_B1TR: torch.Tensor,
    sin_B1TR: torch.Tensor,
    bias_B1TS: torch.Tensor | None,
    cache: KVCache,
    plan: _DecodePlan | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, T, V), final-normed hidden states (B, T, D)) of T new tokens per row, appended
    to `cache`. bias_B1TS: additive mask (0 / -inf) over the S = cached + T positions, causal
    inside the block and hiding padding; None only when T == 1 and nothing is padded.

    The residual structure is `DecoderLayer.forward`'s, on (B*T, D) rows with the fused weights of
    `decode_plan`; attention is written out (GQA as a (B, Hkv, G*T, hd) view), and the MoE runs
    only the picked experts (`_moe_few_tokens`).
    """
    plan = plan if plan is not None else decode_plan(model)
    lm = model.language_model
    B, T = tokens_BT.shape
    x_ND = F.embedding(tokens_BT.reshape(-1), lm.embed_tokens.weight)  # N = B*T rows
    for i, lp in enumerate(plan.layers):
        x_ND = _layer(lp, x_ND, B, T, cos_B1TR, sin_B1TR, bias_B1TS, cache, i)
    cache.advance(T)
    h_ND = _norm(lm.norm, x_ND)
    logits_NV = _linear(h_ND, model.lm_head.weight, model.lm_head.bias)
    return logits_NV.view(B, T, -1), h_ND.view(B, T, -1)


def mtp_block(
    model: VisionLanguageModel,
    next_tokens_BT: torch.Tensor,
    hidden_BTD: torch.Tensor,
    cos_B1TR: torch.Tensor,
    sin_B1TR: torch.Tensor,
    bias_B1TS: torch.Tensor | None,
    cache: KVCache,
    plan: _DecodePlan | None = None,
    *,
    logits_last: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first MTP layer on T positions per row: (logits (B, V) of the last position, -inf outside
    its draft vocabulary when it has one, or (B, T, V) over the whole vocabulary with
    `logits_last=False`; its hidden states g (B, T, D)), appended to `cache` (the MTP's own, one
    layer). `next_tokens_BT[:, t]` is the token after position t, `hidden_BTD` the main model's
    final-normed hidden state at t (or, chaining drafts, the previous MTP step's g)."""
    plan = plan if plan is not None else decode_plan(model)
    lm = model.language_model
    layer, mtp = lm.mtp_layers[0], plan.mtp[0]
    B, T = next_tokens_BT.shape
    D = hidden_BTD.shape[-1]
    e_ND = _norm(layer.enorm, F.embedding(next_tokens_BT.reshape(-1), lm.embed_tokens.weight))
    h_ND = _norm(layer.hnorm, hidden_BTD.reshape(-1, D))
    x_ND = mtp.eh_proj(torch.cat([e_ND, h_ND], dim=-1))
    g_ND = _layer(mtp.block, x_ND, B, T, cos_B1TR, sin_B1TR, bias_B1TS, cache, 0)
    cache.advance(T)
    last = _norm(layer.shared_head.norm, g_ND.view(B, T, D)[:, -1] if logits_last else g_ND)
    drafting = logits_last and mtp.draft_head is not None  # only the draft vocabulary's rows
    logits = _linear(last, mtp.draft_head) if drafting else mtp.head(last)
    if drafting:  # -inf outside the draft vocabulary
        logits = logits.new_full((B, mtp.vocab_size), float("-inf")).index_copy_(1, mtp.draft_ids, logits)
    return (logits if logits_last else logits.view(B, T, -1)), g_ND.view(B, T, D)


def _layer(lp: _LayerPlan, x_ND, B: int, T: int, cos_B1TR, sin_B1TR, bias_B1TS, cache: KVCache, slot: int):
    """One decoder layer on N = B*T rows (T new tokens per row), its keys/values written at `slot`."""
    H, Hkv, hd = lp.H, lp.Hkv, lp.hd
    h_ND = _norm(lp.input_norm, x_ND)
    qkv = lp.qkv(h_ND).view(B, T, H + 2 * Hkv, hd).transpose(1, 2)  # (B, H+2Hkv, T, hd)
    qk = apply_rotary(qkv[:, : H + Hkv], cos_B1TR, sin_B1TR, lp.layout)  # q and k rotated together
    k_all, v_all = cache.update(slot, qk[:, H:], qkv[:, H + Hkv :])  # (B, Hkv, S, hd)
    G = H // Hkv
    scores = torch.matmul(qk[:, :H].reshape(B, Hkv, G * T, hd), k_all.transpose(-1, -2))  # (B, Hkv, G*T, S)
    if bias_B1TS is not None:
        scores = (scores.view(B, Hkv, G, T, -1) + bias_B1TS[:, :, None]).view(B, Hkv, G * T, -1)
    attn = torch.matmul(scores.softmax(-1), v_all)  # (B, Hkv, G*T, hd) = (B, H, T, hd)
    attn = attn.view(B, H, T, hd).transpose(1, 2).reshape(B * T, H * hd)
    attn = lp.o(attn)
    x_ND = x_ND + (attn if lp.post_attn_norm is None else _norm(lp.post_attn_norm, attn))
    h_ND = _norm(lp.mlp_norm, x_ND)
    gate, up = lp.gate_up(h_ND).chunk(2, dim=-1)
    mlp = lp.down(F.silu(gate) * up)
    if lp.moe is not None:
        mlp = _moe_few_tokens(lp.moe, h_ND, mlp)
    return x_ND + (mlp if lp.post_mlp_norm is None else _norm(lp.post_mlp_norm, mlp))


def _moe_few_tokens(moe: MoE, x_TD: torch.Tensor, shared_TD: torch.Tensor) -> torch.Tensor:
    """Routed experts of a handful of tokens added to `shared_TD` (the shared experts' output,
    consumed): `MoE.forward` running only the experts that were picked.

    The packed `grouped_mm` visits all E experts (a slice and a matmul each, picked or not), which
    for one token costs more than the 4-8 matrix-vector products that matter. Here the choices
    come to the host once (on CPU not a device sync) and each picked expert runs as plain
    `F.linear` on its rows, the routing weight applied before the down projection and the result
    accumulated in place. On an accelerator the packed path is kept.
    """
    if x_TD.device.type != "cpu":
        return moe.experts(x_TD, *moe.gate(x_TD)[1:]) + shared_TD
    _, topk_ids_TK, topk_weights_TK = moe.gate(x_TD)
    w_gate_up, w_down = moe.experts.gate_up_proj, moe.experts.down_proj
    weights_TK = topk_weights_TK.to(x_TD.dtype)
    ids = topk_ids_TK.tolist()
    if len(ids) == 1:  # one token: each picked expert on the row, accumulated with addmm
        for k, e in enumerate(ids[0]):
            gate, up = _linear(x_TD, w_gate_up[e]).chunk(2, dim=-1)
            shared_TD = shared_TD + _linear(F.silu(gate) * up * weights_TK[:, k : k + 1], w_down[e])
        return shared_TD
    # Several tokens: the (token, k) slots sorted by expert (on the host), the rows gathered once,
    # each picked expert on its contiguous range, one weighting and one scatter-add at the end.
    K = len(ids[0])
    flat = [e for row in ids for e in row]
    order = sorted(range(len(flat)), key=flat.__getitem__)
    order_S = torch.tensor(order, device=x_TD.device)
    token_S = order_S // K
    x_SD = x_TD.index_select(0, token_S)
    outs, start = [], 0
    while start < len(order):
        e, end = flat[order[start]], start + 1
        while end < len(order) and flat[order[end]] == e:
            end += 1
        gate, up = _linear(x_SD[start:end], w_gate_up[e]).chunk(2, dim=-1)
        outs.append(_linear(F.silu(gate) * up, w_down[e]))
        start = end
    y_SD = torch.cat(outs) * weights_TK.reshape(-1).index_select(0, order_S)[:, None]
    shared_TD.index_add_(0, token_S, y_SD)
    return shared_TD
