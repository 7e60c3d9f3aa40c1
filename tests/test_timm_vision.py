"""A GLM-V vision encoder initialised from a (randomly initialised) timm AIMv2 reproduces timm's
features: every converted tensor is exercised. GLM-V's 2D rotary is what the GLM-4.5V recipe
adds on top of AIMv2 and starts untrained, so the comparison runs our encoder's own stages
with the rotary set to the identity (cos 1, sin 0)."""

import dataclasses

import pytest
import timm
import torch

from train.timm_vision import build_from_timm, vision_config_from_timm
from vlm.config import tiny


@pytest.fixture(scope="module")
def aimv2():
    torch.manual_seed(0)
    model = timm.create_model("aimv2_large_patch14_224", pretrained=False, img_size=112, depth=2, embed_dim=64,
                              num_heads=4, mlp_ratio=1.0).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped tensor shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return model


def _patches(image_13HW: torch.Tensor, *, patch: int, temporal: int, merge: int) -> torch.Tensor:
    """Our processor's layout: the image duplicated into `temporal` frames, flat (C, T, P, P)
    patches in block-major order (2x2 merge blocks of consecutive patches)."""
    _, C, H, W = image_13HW.shape
    h, w = H // patch, W // patch
    x = image_13HW[0].expand(temporal, -1, -1, -1)  # (T, C, H, W)
    x = x.reshape(temporal, C, h // merge, merge, patch, w // merge, merge, patch)
    x = x.permute(2, 5, 3, 6, 1, 0, 4, 7)  # (bh, bw, mh, mw, C, T, P, P)
    return x.reshape(h * w, C * temporal * patch * patch)


def _features_without_rotary(encoder, patches, grid):
    from vlm.vision import patch_coordinates

    rows, cols, heights, widths = patch_coordinates(grid, encoder.cfg.spatial_merge_size)
    x = encoder.post_conv_layernorm(encoder.patch_embed(patches))
    x = x + encoder.embeddings(rows, cols, heights, widths)
    cos, sin = torch.ones(x.shape[0], encoder.cfg.head_dim), torch.zeros(x.shape[0], encoder.cfg.head_dim)
    for block in encoder.blocks:
        x = block(x, cos, sin, [x.shape[0]])
    return encoder.post_layernorm(x)


def test_converted_encoder_reproduces_timm_features(aimv2):
    base = tiny()
    vision = vision_config_from_timm(aimv2, base=base.vision)
    assert (vision.hidden_size, vision.depth, vision.num_heads, vision.out_hidden_size, vision.image_size) == (64, 2, 4, 64, 112)
    config = dataclasses.replace(base, text=dataclasses.replace(base.text, hidden_size=64))
    encoder = build_from_timm(aimv2, config).model.visual.eval()

    image = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        theirs = aimv2.forward_features(image)[0]  # (64, D), row-major patches
        ours = _features_without_rotary(encoder, _patches(image, patch=14, temporal=2, merge=2),
                                        torch.tensor([[1, 8, 8]]))
    # Our patches are block-major: position k holds the patch at (row, col) of the 8x8 grid.
    h = w = 8
    index = torch.arange(h * w).view(h // 2, 2, w // 2, 2).permute(0, 2, 1, 3).reshape(-1)
    torch.testing.assert_close(ours, theirs[index], atol=1e-5, rtol=1e-5)


def test_incompatible_widths_and_models_are_refused_by_name(aimv2):
    base = tiny()
    narrow = dataclasses.replace(base, text=dataclasses.replace(base.text, hidden_size=32),
                                 vision=dataclasses.replace(base.vision, out_hidden_size=32))
    with pytest.raises(ValueError, match="MLP width 64 must equal the language model's hidden size 32"):
        build_from_timm(aimv2, narrow)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1)
    with pytest.raises(ValueError, match="class/register tokens.*attention biases"):
        vision_config_from_timm(vit)
