"""The token-level decode loop: one prefill, then one token per row per step over a preallocated cache.

What is unusual here:
- Prefill is the model's own forward (vision, placeholders, M-RoPE ids, rope_delta). Decode
  steps do NOT go through `VisionLanguageModel.forward`: a step only needs the embedding, the
  decoder layers, the final norm and the lm_head, and the general forward would rebuild masks,
  M-RoPE ids and placeholder checks (with host syncs) for one token. `tests/test_generation.py`
  checks that this path equals recomputing the whole sequence.
- Everything a step needs is made once before the loop: the KV cache (`cache.py`), the rotary
  tables for every future position (during decoding all three M-RoPE axes carry
  `position + rope_delta`, so one table per row covers the whole run), and the padding mask
  (its columns for new tokens are already True; a step takes a view of the first S columns).
- One host sync per step: the sampled ids go to the host once (`tolist`) for stop checks and
  streaming; nothing else in a step reads a device value.
- Left padding stays in the mask; positions count real tokens only, as in the reference.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .model import VisionLanguageModel
from .layers import FusedSwiGLU
from .moe import MoE
from .rotary import apply_rotary, mrope_cos_sin
from .sampling import Sampler, SamplingParams

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class GenerationOptions:
    """How to decode: length, sampling and seed, shared by `VLM.generate` (which builds one from its
    keywords) and `generate_ids`. Checked on construction: a bad value raises `ValueError` naming it."""

    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass in (0, 1]; 1 keeps everything
    top_k: int = 0  # keep the k most likely tokens; 0 keeps everything
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the row; 1 is off
    seed: int | None = None  # makes sampling reproducible; None draws from torch's global generator

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"max_new_tokens={n!r}: expected an integer >= 0")
        _ = self.sampling  # SamplingParams checks the sampling values
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed={self.seed!r}: expected an integer or None")

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              repetition_penalty=self.repetition_penalty)

    def sampler(self, *, batch: int, vocab_size: int, device: torch.device | str) -> Sampler:
        """A fresh sampler for one generation (seeded on `device` when `seed` is set)."""
        generator = torch.Generator(device=device).manual_seed(self.seed) if self.seed is not None else None
        return Sampler(self.sampling, batch=batch, vocab_size=vocab_size, device=device, generator=generator)


MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
_IGNORED_INPUTS = ("mm_token_type_ids",)  # the reference processor's; our model reads types from the ids


class TokenStream:
    """Iterate to get, per step, the new token id of every row (a list of B ints).

    Stops after `max_new_tokens` steps or when every row has produced a stop token; a row that
    has stopped keeps yielding `pad_token_id` (None: the first stop id, else 0). Close the
    iterator (or stop iterating) to end early. Timings are filled in as it runs.
    """

    def __init__(
        self,
        model: VisionLanguageModel,
        inputs: Mapping[str, torch.Tensor],
        *,
        max_new_tokens: int,
        sampler: Sampler,
        stop_token_ids: tuple[int, ...] = (),
        pad_token_id: int | None = None,
    ) -> None:
        unknown = set(inputs) - set(MODEL_INPUTS) - set(_IGNORED_INPUTS)
        if unknown:
            raise ValueError(f"unexpected inputs {sorted(unknown)}; expected some of {MODEL_INPUTS}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens}: expected an integer >= 0")
        self.model = model
        self.inputs = {k: inputs[k] for k in MODEL_INPUTS if inputs.get(k) is not None}
        self.max_new_tokens = max_new_tokens
        self.sampler = sampler
        self.stop_token_ids = frozenset(stop_token_ids)
        self.pad_token_id = pad_token_id if pad_token_id is not None else (stop_token_ids[0] if stop_token_ids else 0)
        self.prefill_s = 0.0  # prompt forward (vision included) and the first token
        self.decode_s = 0.0  # every later step
        self.decode_steps = 0

    @torch.inference_mode()
    def __iter__(self) -> Iterator[list[int]]:
        if self.max_new_tokens == 0:
            return
        model, text = self.model, self.model.cfg.text
        input_ids = self.inputs["input_ids"]
        B, T = input_ids.shape
        device = input_ids.device
        mask_BT = self.inputs.pop("attention_mask", None)
        mask_BT = torch.ones_like(input_ids) if mask_BT is None else mask_BT.to(device)
        N = self.max_new_tokens
        dtype = model.lm_head.weight.dtype
        cache = KVCache(text.num_hidden_layers, B, T + N, text.num_key_value_heads, text.head_dim, device, dtype)

        start = time.perf_counter()
        out = model(**self.inputs, attention_mask=mask_BT, cache=cache, logits_to_keep=1)
        self.sampler.observe(input_ids, mask_BT)
        token_B = self.sampler(out.logits[:, -1])
        padded = not bool(mask_BT.bool().all())
        # Rotary tables for the N - 1 decode steps: every axis at (real tokens so far) + rope_delta.
        first_B = mask_BT.sum(-1) + out.rope_deltas.to(device)
        positions_BN = first_B[:, None] + torch.arange(N, device=device)
        cos_BNR, sin_BNR = mrope_cos_sin(
            positions_BN[None].expand(3, B, N), rotary_dim=text.rotary_dim, theta=text.rope_theta,
            mrope_section=text.mrope_section, layout=text.rotary_layout,
        )
        cos_B1NR, sin_B1NR = cos_BNR[:, None].to(dtype), sin_BNR[:, None].to(dtype)  # broadcast over heads
        # Additive key mask for every step: -inf on prompt padding, 0 elsewhere (new columns visible).
        bias_B11S = None
        if padded:
            bias_B11S = torch.zeros(B, 1, 1, T + N, dtype=dtype, device=device)
            bias_B11S[:, 0, 0, :T].masked_fill_(~mask_BT.bool(), float("-inf"))
        plan = decode_plan(model)
        finished = [False] * B
        ids = token_B.tolist()
        self.prefill_s = time.perf_counter() - start

        start = time.perf_counter()
        for step in range(N):
            ids = [self.pad_token_id if done else i for i, done in zip(ids, finished)]
            finished = [done or i in self.stop_token_ids for i, done in zip(ids, finished)]
            if step:
                self.decode_steps += 1
                self.decode_s = time.perf_counter() - start
            yield ids
            if all(finished) or step == N - 1:
                return
            token_B1 = torch.tensor(ids, device=device)[:, None]
            self.sampler.observe(token_B1)
            S = T + step + 1
            logits_BV = decode_step(
                model, token_B1, cos_B1NR[:, :, step : step + 1], sin_B1NR[:, :, step : step + 1],
                bias_B11S[..., :S] if padded else None, cache, plan,
            )
            ids = self.sampler(logits_BV).tolist()


class _LayerPlan:
    """One decoder layer's weights as a decode step reads them (fused copies built once)."""

    def __init__(self, layer: nn.Module) -> None:
        attn = layer.self_attn
        H, Hkv, hd = attn.num_attention_heads, attn.num_key_value_heads, attn.head_dim
        self.H, self.Hkv, self.hd, self.layout = H, Hkv, hd, attn.layout
        scale = hd**-0.5  # folded into the q rows: SDPA's default scale, applied before rotary (linear)
        projs = (attn.q_proj, attn.k_proj, attn.v_proj)
        self.qkv_w = torch.cat([attn.q_proj.weight * scale, attn.k_proj.weight, attn.v_proj.weight])
        self.qkv_b = (
            torch.cat([attn.q_proj.bias * scale, attn.k_proj.bias, attn.v_proj.bias])
            if all(p.bias is not None for p in projs) else None
        )
        self.o_w = attn.o_proj.weight
        self.input_norm = layer.input_layernorm
        self.post_attn_norm = None if isinstance(layer.post_self_attn_layernorm, nn.Identity) else layer.post_self_attn_layernorm
        self.mlp_norm = layer.post_attention_layernorm
        self.post_mlp_norm = None if isinstance(layer.post_mlp_layernorm, nn.Identity) else layer.post_mlp_layernorm
        mlp = layer.mlp
        self.moe = mlp if isinstance(mlp, MoE) else None
        dense = mlp.shared_experts if self.moe is not None else mlp
        if isinstance(dense, FusedSwiGLU):
            self.gate_up_w = dense.gate_up_proj.weight
        else:
            self.gate_up_w = torch.cat([dense.gate_proj.weight, dense.up_proj.weight])
        self.down_w = dense.down_proj.weight


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
        with torch.no_grad():
            self.layers = [_LayerPlan(layer) for layer in model.language_model.layers]


def _plan_key(model: VisionLanguageModel) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in model.language_model.layers.parameters())


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
    The residual structure is `DecoderLayer.forward`'s, on (B, D) rows with the fused weights of
    `decode_plan`; attention is written out for the one query (GQA as a (B, Hkv, G, hd) view),
    and the MoE runs only the picked experts (`_moe_few_tokens`).
    """
    plan = plan if plan is not None else decode_plan(model)
    lm = model.language_model
    x_BD = F.embedding(token_B1[:, 0], lm.embed_tokens.weight)
    B = x_BD.shape[0]
    for i, lp in enumerate(plan.layers):
        H, Hkv, hd = lp.H, lp.Hkv, lp.hd
        h_BD = _norm(lp.input_norm, x_BD)
        qkv = _linear(h_BD, lp.qkv_w, lp.qkv_b).view(B, H + 2 * Hkv, 1, hd)
        qk = apply_rotary(qkv[:, : H + Hkv], cos_B11R, sin_B11R, lp.layout)  # q and k rotated together
        k_all, v_all = cache.update(i, qk[:, H:], qkv[:, H + Hkv :])  # (B, Hkv, S, hd)
        scores = torch.matmul(qk[:, :H].reshape(B, Hkv, H // Hkv, hd), k_all.transpose(-1, -2))  # (B, Hkv, G, S)
        if bias_B11S is not None:
            scores = scores + bias_B11S
        attn = torch.matmul(scores.softmax(-1), v_all).view(B, H * hd)
        attn = _linear(attn, lp.o_w)
        x_BD = x_BD + (attn if lp.post_attn_norm is None else _norm(lp.post_attn_norm, attn))
        h_BD = _norm(lp.mlp_norm, x_BD)
        gate, up = _linear(h_BD, lp.gate_up_w).chunk(2, dim=-1)
        mlp = _linear(F.silu(gate) * up, lp.down_w)
        if lp.moe is not None:
            mlp = _moe_few_tokens(lp.moe, h_BD, mlp)
        x_BD = x_BD + (mlp if lp.post_mlp_norm is None else _norm(lp.post_mlp_norm, mlp))
    cache.advance(1)
    return _linear(_norm(lm.norm, x_BD), model.lm_head.weight, model.lm_head.bias)


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


def generate_ids(
    model: VisionLanguageModel,
    inputs: Mapping[str, torch.Tensor],
    options: GenerationOptions = GenerationOptions(),
    *,
    stop_token_ids: tuple[int, ...] = (),
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """New token ids only, (B, new) with new <= max_new_tokens; rows that stopped hold the pad id
    (`pad_token_id`, else the first stop id, else 0)."""
    input_ids = inputs["input_ids"]
    sampler = options.sampler(batch=input_ids.shape[0], vocab_size=model.cfg.text.vocab_size, device=input_ids.device)
    steps = list(TokenStream(model, inputs, max_new_tokens=options.max_new_tokens, sampler=sampler,
                             stop_token_ids=stop_token_ids, pad_token_id=pad_token_id))
    if not steps:
        return input_ids.new_zeros(input_ids.shape[0], 0)
    return torch.tensor(steps, dtype=torch.long, device=input_ids.device).T
