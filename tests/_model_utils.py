"""Tiny reference checkpoints written by transformers' own `save_pretrained`, and model inputs.

The weights are re-drawn larger than transformers' init (std 0.02 makes every logit ~0 and a
2e-4 tolerance meaningless) and the routing bias is non-zero, so a wrong detail shows up.
Checkpoints are written once per test session under pytest's base temp directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.gpu_parity import redraw_weights

IMG, VID, BOI, EOI, BOV, EOV = 290, 291, 292, 293, 294, 295
VOCAB = 300
PATCH_DIM = 3 * 2 * 14 * 14

VISION = dict(
    depth=2, hidden_size=32, num_heads=2, out_hidden_size=48, intermediate_size=40, image_size=56,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
)
SPECIAL = dict(
    image_token_id=IMG, video_token_id=VID, image_start_token_id=BOI, image_end_token_id=EOI,
    video_start_token_id=BOV, video_end_token_id=EOV,
)
MOE_TEXT = dict(
    vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, moe_intermediate_size=24, n_routed_experts=8, num_experts_per_tok=3,
    n_shared_experts=2, n_group=2, topk_group=1, first_k_dense_replace=1, norm_topk_prob=False,
    routed_scaling_factor=1.5,
    rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5, mrope_section=[1, 1, 2]),
)
DENSE_TEXT = dict(
    vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2,
    rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5, mrope_section=[1, 1, 1]),
)

_written: dict[tuple[str, str], Path] = {}


def reference_model(kind: str, *, seed: int = 0):
    """A random transformers reference model, kind "moe" (GLM-4.5V) or "dense" (GLM-4.1V)."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration, Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    torch.manual_seed(seed)
    if kind == "moe":
        model = Glm4vMoeForConditionalGeneration(Glm4vMoeConfig(text_config=MOE_TEXT, vision_config=VISION, **SPECIAL))
    else:
        model = Glm4vForConditionalGeneration(Glm4vConfig(text_config=DENSE_TEXT, vision_config=VISION, **SPECIAL))
    redraw_weights(model)
    return model.eval()


def reference_checkpoint(tmp_path_factory, kind: str) -> Path:
    """Directory with config.json + model.safetensors written by transformers (cached per session)."""
    key = (str(tmp_path_factory.getbasetemp()), kind)
    if key not in _written:
        path = tmp_path_factory.mktemp(f"reference_{kind}")
        reference_model(kind).save_pretrained(path)
        _written[key] = path
    return _written[key]


def reference_checkpoint_with_mtp(tmp_path_factory, kind: str) -> Path:
    """`reference_checkpoint` given a multi-token-prediction layer by us (vlm/mtp.py: started from
    the last layer and lm_head, then moved off them by noise so a wrong weight shows up); cached."""
    from vlm import VLM
    from vlm.mtp import add_mtp_layer

    key = (str(tmp_path_factory.getbasetemp()), f"{kind}+mtp")
    if key not in _written:
        model = add_mtp_layer(VLM.from_pretrained(reference_checkpoint(tmp_path_factory, kind)).model, seed=3)
        with torch.no_grad():
            for p in model.language_model.mtp_layers.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        path = tmp_path_factory.mktemp(f"mtp_{kind}")
        VLM(model).save_pretrained(path)
        _written[key] = path
    return _written[key]


def image_tokens(grid_thw: list[int]) -> list[int]:
    t, h, w = grid_thw
    return [BOI] + [IMG] * (t * h * w // 4) + [EOI]


def video_tokens(grid_thw: list[int], *, placeholder: int = IMG, timestamps: list[list[int]] | None = None) -> list[int]:
    """The reference's video layout: per frame pair begin/placeholders/end then timestamp text."""
    t, h, w = grid_thw
    timestamps = timestamps or [[10 + i] for i in range(t)]
    ids = [BOV]
    for i in range(t):
        ids += [BOI] + [placeholder] * (h * w // 4) + [EOI] + timestamps[i]
    return ids + [EOV]


def patches(grids: list[list[int]], *, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n = sum(t * h * w for t, h, w in grids)
    return torch.randn(n, PATCH_DIM, generator=generator)


def mm_token_type_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """What the reference processor would pass: 1 for image tokens, 2 for image tokens in a video."""
    in_video = (input_ids == BOV).cumsum(-1) > (input_ids == EOV).cumsum(-1)
    is_img = input_ids == IMG
    return (is_img & ~in_video).int() + 2 * (is_img & in_video).int()


def left_pad(rows: list[list[int]], *, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    return ids, mask
