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

import torch
import torch.nn.functional as F

from .cache import KVCache
from .model import VisionLanguageModel
from .moe import MoE
from .rotary import mrope_cos_sin
from .sampling import Sampler, SamplingParams

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
_IGNORED_INPUTS = ("mm_token_type_ids",)  # the reference processor's; our model reads types from the ids


class TokenStream:
    """Iterate to get, per step, the new token id of every row (a list of B ints).

    Stops after `max_new_tokens` steps or when every row has produced a stop token; a row that
    has stopped keeps yielding its stop token's row value `pad_token_id`. Close the iterator (or
    stop iterating) to end early. Timings are filled in as it runs.
    """

    def __init__(
        self,
        model: VisionLanguageModel,
        inputs: Mapping[str, torch.Tensor],
        *,
        max_new_tokens: int,
        sampler: Sampler,
        stop_token_ids: tuple[int, ...] = (),
        pad_token_id: int = 0,
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
        self.pad_token_id = pad_token_id
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
        # Key mask for every step: prompt padding, then all new columns visible.
        keys_B11S = torch.ones(B, 1, 1, T + N, dtype=torch.bool, device=device)
        keys_B11S[:, 0, 0, :T] = mask_BT.bool()
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
                model, token_B1, cos_BNR[:, step : step + 1], sin_BNR[:, step : step + 1],
                keys_B11S[..., :S] if padded else None, cache,
            )
            ids = self.sampler(logits_BV).tolist()


def decode_step(
    model: VisionLanguageModel,
    token_B1: torch.Tensor,
    cos_B1R: torch.Tensor,
    sin_B1R: torch.Tensor,
    mask_B11S: torch.Tensor | None,
    cache: KVCache,
) -> torch.Tensor:
    """Logits (B, V) of one new token per row, appended to `cache` (which must hold the prompt).

    The residual structure is `DecoderLayer.forward`'s; only the MoE runs through `_moe_few_tokens`.
    """
    lm = model.language_model
    x_B1D = lm.embed_tokens(token_B1)
    for layer in lm.layers:
        attn = layer.self_attn(layer.input_layernorm(x_B1D), cos_B1R, sin_B1R, mask_B11S, cache)
        x_B1D = x_B1D + layer.post_self_attn_layernorm(attn)
        h_B1D = layer.post_attention_layernorm(x_B1D)
        mlp = _moe_few_tokens(layer.mlp, h_B1D) if isinstance(layer.mlp, MoE) else layer.mlp(h_B1D)
        x_B1D = x_B1D + layer.post_mlp_layernorm(mlp)
    cache.advance(1)
    return model.lm_head(lm.norm(x_B1D))[:, -1]


def _moe_few_tokens(moe: MoE, x_BTD: torch.Tensor) -> torch.Tensor:
    """`MoE.forward` for a handful of tokens: run only the experts that were picked.

    The packed `grouped_mm` visits all E experts (a slice and a matmul each, picked or not), which
    for one token costs more than the 4-8 matrix-vector products that matter. Here the per-expert
    counts come to the host once and each picked expert runs as plain `F.linear` on its rows.
    On CPU that read is not a device sync; on an accelerator the packed path is kept.
    """
    if x_BTD.device.type != "cpu":
        return moe(x_BTD)
    shape = x_BTD.shape
    x_TD = x_BTD.reshape(-1, shape[-1])
    _, topk_ids_TK, topk_weights_TK = moe.gate(x_TD)
    K = topk_ids_TK.shape[1]
    order_S = topk_ids_TK.reshape(-1).argsort(stable=True)
    token_S = order_S // K
    x_SD = x_TD[token_S]
    counts = torch.bincount(topk_ids_TK.reshape(-1), minlength=moe.experts.num_experts).tolist()
    w_gate_up, w_down = moe.experts.gate_up_proj, moe.experts.down_proj
    outs, start = [], 0
    for e, n in enumerate(counts):
        if n:
            gate_SF, up_SF = F.linear(x_SD[start : start + n], w_gate_up[e]).chunk(2, dim=-1)
            outs.append(F.linear(F.silu(gate_SF) * up_SF, w_down[e]))
            start += n
    y_SD = torch.cat(outs) * topk_weights_TK.reshape(-1)[order_S, None].to(x_TD.dtype)
    routed_TD = moe.shared_experts(x_TD).index_add_(0, token_S, y_SD)
    return routed_TD.view(shape)


def generate_ids(
    model: VisionLanguageModel,
    inputs: Mapping[str, torch.Tensor],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_token_ids: tuple[int, ...] = (),
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """New token ids only, (B, new) with new <= max_new_tokens; rows that stopped hold the pad id."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected an integer >= 0")
    params = SamplingParams(temperature=temperature if do_sample else 0.0, top_p=top_p, top_k=top_k)
    input_ids = inputs["input_ids"]
    sampler = Sampler(
        params, batch=input_ids.shape[0], vocab_size=model.cfg.text.vocab_size, device=input_ids.device,
        generator=generator,
    )
    pad = pad_token_id if pad_token_id is not None else (eos_token_ids[0] if eos_token_ids else 0)
    steps = list(
        TokenStream(
            model, inputs, max_new_tokens=max_new_tokens, sampler=sampler, stop_token_ids=eos_token_ids,
            pad_token_id=pad,
        )
    )
    if not steps:
        return input_ids.new_zeros(input_ids.shape[0], 0)
    return torch.tensor(steps, dtype=torch.long, device=input_ids.device).T
