"""`generate_ids`: a correct cached decode (greedy or sampled) over the model's own forward.

Prefill runs the whole prompt once into a preallocated KVCache, keeping only the last logits;
each step then feeds one token per row at 3-axis position `real tokens so far + rope_delta`.
Left padding stays in `attention_mask`, which grows by one real column per step. Rows that emit
an end-of-sequence id keep emitting the pad id; decoding stops when every row has finished.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .cache import KVCache
from .model import VisionLanguageModel

_MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


@torch.no_grad()
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
    """New token ids only, (B, new) with new <= max_new_tokens."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    unknown = set(inputs) - set(_MODEL_INPUTS) - {"mm_token_type_ids"}
    if unknown:
        raise ValueError(f"unexpected inputs {sorted(unknown)}; expected some of {_MODEL_INPUTS}")
    kwargs = {k: inputs[k] for k in _MODEL_INPUTS if inputs.get(k) is not None}
    input_ids = kwargs["input_ids"]
    B, T = input_ids.shape
    device = input_ids.device
    mask = kwargs.pop("attention_mask", None)
    mask = torch.ones(B, T, dtype=torch.long, device=device) if mask is None else mask.to(device).long()
    if max_new_tokens == 0:
        return input_ids.new_zeros(B, 0)

    text = model.cfg.text
    dtype = model.lm_head.weight.dtype
    cache = KVCache(text.num_hidden_layers, B, T + max_new_tokens, text.num_key_value_heads, text.head_dim, device, dtype)
    out = model(**kwargs, attention_mask=mask, cache=cache, logits_to_keep=1)
    rope_deltas = out.rope_deltas
    pad = pad_token_id if pad_token_id is not None else (eos_token_ids[0] if eos_token_ids else 0)
    eos = torch.tensor(eos_token_ids, device=device, dtype=torch.long)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    new_tokens = []
    for step in range(max_new_tokens):
        token = _next_token(out.logits[:, -1].float(), do_sample, temperature, top_p, top_k, generator)
        token = torch.where(finished, pad, token)
        new_tokens.append(token)
        finished |= torch.isin(token, eos)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        position = mask.sum(-1) + rope_deltas  # (B,): real tokens so far + rope delta
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        out = model(
            token[:, None], attention_mask=mask, cache=cache, position_ids=position.view(1, B, 1).expand(3, B, 1),
            logits_to_keep=1,
        )
    return torch.stack(new_tokens, dim=1)


def _next_token(
    logits_BV: torch.Tensor, do_sample: bool, temperature: float, top_p: float, top_k: int, generator
) -> torch.Tensor:
    if not do_sample:
        return logits_BV.argmax(-1)
    logits_BV = logits_BV / temperature
    if top_k > 0:
        kth = logits_BV.topk(min(top_k, logits_BV.shape[-1]), dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits_BV.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits_BV = torch.full_like(logits_BV, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits_BV.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
