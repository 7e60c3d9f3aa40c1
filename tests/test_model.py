"""Reference parity of the whole model: logits within 2e-4 of transformers in float32, and
identical greedy tokens, on tiny checkpoints that transformers itself wrote (MoE and dense)."""

from __future__ import annotations

import pytest
import torch

from _model_utils import (
    BOV, EOV, IMG, VID, image_tokens, left_pad, mm_token_type_ids, patches, reference_checkpoint, reference_model,
    video_tokens,
)
from vlm import VLM

TOL = 2e-4


@pytest.fixture(scope="module", params=["moe", "dense"])
def pair(request, tmp_path_factory):
    path = reference_checkpoint(tmp_path_factory, request.param)
    return reference_model(request.param), VLM.from_pretrained(path)


def _compare(pair, inputs: dict, *, attention_mask=None):
    ref, ours = pair
    with torch.no_grad():
        expected = ref(**inputs, attention_mask=attention_mask, mm_token_type_ids=mm_token_type_ids(inputs["input_ids"])).logits
        got = ours.model(**inputs, attention_mask=attention_mask).logits
    keep = torch.ones_like(inputs["input_ids"], dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    assert got.shape == expected.shape
    diff = (got - expected)[keep].abs().max().item()
    assert diff < TOL, f"max |logit diff| {diff:.2e}"
    assert expected[keep].abs().max() > 0.5  # logits are not all ~0: the tolerance means something


def test_left_padded_text_batch(pair):
    ids, mask = left_pad([[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13]])
    _compare(pair, {"input_ids": ids}, attention_mask=mask)


def test_one_image_non_square_grid(pair):
    grid = [1, 4, 6]
    ids = torch.tensor([[5, 6] + image_tokens(grid) + [7, 8, 9]])
    _compare(pair, {"input_ids": ids, "pixel_values": patches([grid]), "image_grid_thw": torch.tensor([grid])})


def test_two_images_of_different_sizes(pair):
    grids = [[1, 4, 6], [1, 6, 2]]
    ids = torch.tensor([[5] + image_tokens(grids[0]) + [7] + image_tokens(grids[1]) + [8, 9]])
    _compare(pair, {"input_ids": ids, "pixel_values": patches(grids), "image_grid_thw": torch.tensor(grids)})


def test_video_with_frame_pairs_and_timestamps(pair):
    grid = [3, 4, 4]
    ids = torch.tensor([[5, 6] + video_tokens(grid, timestamps=[[20], [21, 22], [23]]) + [7, 8]])
    _compare(pair, {"input_ids": ids, "pixel_values_videos": patches([grid]), "video_grid_thw": torch.tensor([grid])})


def test_images_in_a_left_padded_batch(pair):
    grids = [[1, 4, 4], [1, 2, 4]]
    ids, mask = left_pad([[5] + image_tokens(grids[0]) + [6], [7, 8, 9, 10, 11] + image_tokens(grids[1]) + [12, 13, 14]])
    _compare(pair, {"input_ids": ids, "pixel_values": patches(grids), "image_grid_thw": torch.tensor(grids)}, attention_mask=mask)


def test_greedy_tokens_identical(pair):
    ref, ours = pair
    grid = [1, 4, 6]
    ids, mask = left_pad([[5, 6] + image_tokens(grid) + [7, 8, 9], [3, 4] + [5] * 3])
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": patches([grid]), "image_grid_thw": torch.tensor([grid])}
    with torch.no_grad():
        expected = ref.generate(
            **inputs, mm_token_type_ids=mm_token_type_ids(ids), max_new_tokens=8, do_sample=False, pad_token_id=0
        )[:, ids.shape[1]:]
    got = ours.generate_ids(inputs, max_new_tokens=8)
    assert got.tolist() == expected.tolist()


def test_video_placeholders_may_be_video_tokens(pair):
    """`<|video|>` slots (vLLM style) give exactly what `<|image|>` slots inside a video give."""
    _, ours = pair
    grid = [2, 4, 4]
    inputs = {"pixel_values_videos": patches([grid]), "video_grid_thw": torch.tensor([grid])}
    with torch.no_grad():
        a = ours.model(input_ids=torch.tensor([[5] + video_tokens(grid, placeholder=IMG) + [6]]), **inputs).logits
        b = ours.model(input_ids=torch.tensor([[5] + video_tokens(grid, placeholder=VID) + [6]]), **inputs).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_image_and_video_in_one_prompt(pair):
    """The reference cannot do this; ours must equal its two halves where they do not interact:
    the tokens before the video are exactly the image-only prompt's, and the whole row equals
    the same prompt with the video encoded in a separate call (packing changes nothing)."""
    _, ours = pair
    igrid, vgrid = [1, 4, 6], [2, 4, 4]
    prefix = [5] + image_tokens(igrid) + [6]
    ids = torch.tensor([prefix + video_tokens(vgrid) + [7]])
    img = {"pixel_values": patches([igrid]), "image_grid_thw": torch.tensor([igrid])}
    vid = {"pixel_values_videos": patches([vgrid], seed=2), "video_grid_thw": torch.tensor([vgrid])}
    with torch.no_grad():
        both = ours.model(input_ids=ids, **img, **vid).logits
        image_only = ours.model(input_ids=torch.tensor([prefix]), **img).logits
        features = ours.model.encode_vision(img["pixel_values"], img["image_grid_thw"], None, None)[0]
        video_features = ours.model.encode_vision(None, None, vid["pixel_values_videos"], vid["video_grid_thw"])[1]
        packed = ours.model.encode_vision(img["pixel_values"], img["image_grid_thw"], vid["pixel_values_videos"], vid["video_grid_thw"])
    torch.testing.assert_close(both[:, : len(prefix)], image_only, rtol=0, atol=1e-5)
    torch.testing.assert_close(packed[0], features, rtol=0, atol=1e-5)
    torch.testing.assert_close(packed[1], video_features, rtol=0, atol=1e-5)


def test_placeholder_count_mismatch_names_the_numbers(pair):
    _, ours = pair
    grid = [1, 4, 6]
    ids = torch.tensor([[5] + image_tokens(grid)[:-2] + [6]])  # one placeholder short
    with pytest.raises(ValueError, match=r"5 image placeholder tokens .* 6 image features"):
        ours.model(input_ids=ids, pixel_values=patches([grid]), image_grid_thw=torch.tensor([grid]))


def test_grid_not_divisible_by_merge_size_names_the_grid(pair):
    _, ours = pair
    grid = [1, 4, 5]
    with pytest.raises(ValueError, match=r"t=1, h=4, w=5.*merge size 2"):
        ours.model(input_ids=torch.tensor([[5] + [IMG] * 5]), pixel_values=patches([grid]), image_grid_thw=torch.tensor([grid]))


def test_logits_to_keep_returns_the_last_positions(pair):
    _, ours = pair
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        full = ours.model(input_ids=ids).logits
        last = ours.model(input_ids=ids, logits_to_keep=1).logits
    assert last.shape == (1, 1, full.shape[-1])
    torch.testing.assert_close(last, full[:, -1:], rtol=0, atol=1e-5)


def test_logits_at_projects_only_the_masked_positions(pair):
    _, ours = pair
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
    at = torch.tensor([[False, True, False, False, True, True], [True, False, False, False, False, False]])
    with torch.no_grad():
        full = ours.model(input_ids=ids).logits
        picked = ours.model(input_ids=ids, logits_at=at).logits
    assert picked.shape == (4, full.shape[-1])
    torch.testing.assert_close(picked, full[at], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"logits_at: expected a bool mask of shape \(2, 6\)"):
        ours.model(input_ids=ids, logits_at=at.long())
