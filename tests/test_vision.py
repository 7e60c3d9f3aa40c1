"""Vision encoder: parity with the reference tower, packing invariance, and its two matmul
shortcuts (Conv3d patch embed, 2x2 downsample) equal the convolutions they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _model_utils import patches, reference_checkpoint, reference_model
from vlm import VLM
from vlm.config import tiny


@pytest.fixture(scope="module")
def encoder():
    return VLM.from_config(tiny(), seed=0).model.visual


def test_matches_the_reference_tower_on_mixed_images_and_video(tmp_path_factory):
    ref = reference_model("moe")
    ours = VLM.from_pretrained(reference_checkpoint(tmp_path_factory, "moe")).model.visual
    grids = torch.tensor([[1, 4, 6], [1, 2, 2], [3, 4, 4]])
    pixels = patches(grids.tolist())
    # the reference tower takes a video as one grid per frame pair (its get_video_features does this)
    per_frame = grids.repeat_interleave(grids[:, 0], dim=0)
    per_frame[:, 0] = 1
    with torch.no_grad():
        expected = ref.model.visual(pixels, grid_thw=per_frame).pooler_output
        got = ours(pixels, grids)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_several_images_packed_equal_one_at_a_time(encoder):
    grids = [[1, 4, 6], [1, 6, 2], [2, 4, 4], [1, 2, 2]]
    pixels = patches(grids)
    with torch.no_grad():
        packed = encoder(pixels, torch.tensor(grids))
        singles = torch.cat([encoder(p, torch.tensor([g])) for p, g in zip(pixels.split([t * h * w for t, h, w in grids]), grids)])
    torch.testing.assert_close(packed, singles, rtol=1e-5, atol=1e-5)


def test_native_grid_reproduces_the_position_table(encoder):
    side = encoder.embeddings.side
    rows = torch.arange(side).repeat_interleave(side)
    cols = torch.arange(side).repeat(side)
    full = torch.full((side * side,), side)
    with torch.no_grad():
        sampled = encoder.embeddings(rows, cols, full, full)
    torch.testing.assert_close(sampled, encoder.embeddings.position_embedding.weight, rtol=1e-5, atol=1e-5)


def test_matmul_shortcuts_equal_the_convolutions(encoder):
    cfg = encoder.cfg
    x = torch.randn(8, cfg.patch_dim)
    conv = encoder.patch_embed.proj
    with torch.no_grad():
        want = conv(x.view(-1, 3, 2, 14, 14)).view(8, -1)
        torch.testing.assert_close(encoder.patch_embed(x), want, rtol=1e-5, atol=1e-5)
        h = torch.randn(8, cfg.hidden_size)  # two 2x2 blocks of consecutive patches
        want = F.conv2d(h.view(-1, 2, 2, cfg.hidden_size).permute(0, 3, 1, 2), encoder.downsample.weight, encoder.downsample.bias, stride=2)
        w = encoder.downsample.weight
        got = F.linear(h.view(-1, 2, 2, cfg.hidden_size).permute(0, 3, 1, 2).reshape(2, -1), w.reshape(w.shape[0], -1), encoder.downsample.bias)
        torch.testing.assert_close(got, want.view(2, -1), rtol=1e-5, atol=1e-5)


def test_bad_grids_and_patch_counts_name_the_numbers(encoder):
    with pytest.raises(ValueError, match=r"grid 1 \(t=1, h=3, w=4\).*merge size 2"):
        encoder(patches([[1, 2, 2], [1, 3, 4]]), torch.tensor([[1, 2, 2], [1, 3, 4]]))
    with pytest.raises(ValueError, match=r"pixel values have shape \(10, 1176\), expected \(24, 1176\)"):
        encoder(torch.randn(10, 1176), torch.tensor([[1, 4, 6]]))
