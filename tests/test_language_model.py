"""Language-model invariants: cached decoding equals a full forward, a packed row equals its
samples run one by one, gradient checkpointing changes nothing."""

from __future__ import annotations

import pytest
import torch

from vlm import VLM
from vlm.cache import KVCache
from vlm.config import tiny
from vlm.positions import mrope_positions

IMG, BOI, EOI = 300, 302, 303


@pytest.fixture(scope="module", params=["glm4v_moe", "glm4v"])
def vlm(request):
    return VLM.from_config(tiny(model_type=request.param), seed=0)


def _image_prompt(grid, text_before, text_after):
    n = grid[0] * grid[1] * grid[2] // 4
    return text_before + [BOI] + [IMG] * n + [EOI] + text_after


def _pixels(grids, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(t * h * w for t, h, w in grids), 3 * 2 * 14 * 14, generator=g)


def test_cached_decoding_equals_a_full_forward(vlm):
    model, cfg = vlm.model, vlm.config
    grid = [1, 4, 6]
    rows = [_image_prompt(grid, [5, 6], [7]), [8, 9, 10, 11]]
    T = max(map(len, rows))
    prompt = torch.tensor([[0] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    cont = torch.tensor([[21, 22, 23, 24, 25], [31, 32, 33, 34, 35]])
    vision = {"pixel_values": _pixels([grid]), "image_grid_thw": torch.tensor([grid])}
    # the image belongs to row 0 only
    with torch.no_grad():
        full = model(input_ids=torch.cat([prompt, cont], 1), attention_mask=torch.cat([mask, torch.ones_like(cont)], 1), **vision).logits
        cache = KVCache(cfg.text.num_hidden_layers, 2, T + 5, cfg.text.num_key_value_heads, cfg.text.head_dim, "cpu", torch.float32)
        prefill = model(input_ids=prompt, attention_mask=mask, cache=cache, **vision)
        steps = [prefill.logits]
        for chunk in (cont[:, :1], cont[:, 1:3], cont[:, 3:]):  # one token, then chunks of two
            # decode positions: real tokens so far + rope delta, on all three axes
            pos = (mask.sum(-1) + prefill.rope_deltas)[:, None] + torch.arange(chunk.shape[1])
            mask = torch.cat([mask, torch.ones_like(chunk)], 1)
            steps.append(model(input_ids=chunk, attention_mask=mask, cache=cache, position_ids=pos[None].expand(3, -1, -1)).logits)
    cached = torch.cat(steps, 1)
    real = mask.bool()
    torch.testing.assert_close(cached[real], full[real], rtol=1e-4, atol=1e-4)


def test_generate_ids_greedy_matches_argmax_of_full_forward(vlm):
    model = vlm.model
    prompt = torch.tensor([[5, 6, 7, 8]])
    new = vlm.generate_ids({"input_ids": prompt}, max_new_tokens=6)
    assert new.shape == (1, 6)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt, new], 1)).logits
    assert logits[0, 3:-1].argmax(-1).tolist() == new[0].tolist()


def test_packed_row_equals_samples_one_by_one(vlm):
    model, cfg = vlm.model, vlm.config
    grid = [1, 4, 4]
    a = _image_prompt(grid, [5], [6, 7])
    b = [8, 9, 10]
    c = [11, 12, 13, 14]
    packed = torch.tensor([a + b + c + [0, 0]])
    segments = torch.tensor([[1] * len(a) + [2] * len(b) + [3] * len(c) + [0, 0]])
    vision = {"pixel_values": _pixels([grid]), "image_grid_thw": torch.tensor([grid])}
    with torch.no_grad():
        got = model(input_ids=packed, segment_ids=segments, **vision).logits[0]
        want = torch.cat([
            model(input_ids=torch.tensor([a]), **vision).logits[0],
            model(input_ids=torch.tensor([b])).logits[0],
            model(input_ids=torch.tensor([c])).logits[0],
        ])
    torch.testing.assert_close(got[: len(want)], want, rtol=1e-4, atol=1e-4)
    positions = mrope_positions(packed, cfg, image_grid_thw=torch.tensor([grid]), segment_ids=segments).ids_3BT
    assert positions[0, 0, len(a)].item() == 0 and positions[0, 0, len(a) + len(b)].item() == 0


def test_gradient_checkpointing_gives_the_same_gradients(vlm):
    model = vlm.model
    grid = [1, 4, 4]
    ids = torch.tensor([_image_prompt(grid, [5], [6, 7, 8])])
    vision = {"pixel_values": _pixels([grid]), "image_grid_thw": torch.tensor([grid])}
    grads = []
    model.train()
    try:
        for on in (False, True):
            model.zero_grad()
            model.language_model.gradient_checkpointing = model.visual.gradient_checkpointing = on
            model(input_ids=ids, **vision).logits.square().mean().backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    finally:
        model.language_model.gradient_checkpointing = model.visual.gradient_checkpointing = False
        model.eval()
        model.zero_grad()
    assert grads[0].keys() == grads[1].keys() and any("visual.blocks" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def test_mrope_positions_follow_the_spec():
    """Text runs share one position on 3 axes; a vision run of merged grid (h', w') gets
    (p, p + row, p + col) and advances p by max(h', w'); each video frame pair is its own run."""
    cfg = tiny()
    VID, BOV, EOV = 301, 304, 305
    ids = torch.tensor([[1, 2, BOI] + [IMG] * 6 + [EOI, BOV] + [VID] * 2 + [9] + [VID] * 2 + [EOV, 3]])
    pos = mrope_positions(ids, cfg, image_grid_thw=torch.tensor([[1, 4, 6]]), video_grid_thw=torch.tensor([[2, 2, 4]]))
    t, h, w = pos.ids_3BT[:, 0].tolist()
    assert t[:3] == h[:3] == w[:3] == [0, 1, 2]
    assert t[3:9] == [3] * 6 and h[3:9] == [3, 3, 3, 4, 4, 4] and w[3:9] == [3, 4, 5, 3, 4, 5]
    # after the image p = 3 + max(2, 3) = 6: EOI, BOV take 6, 7; frame 1 at 8 (1x2), then "9" at 10
    assert t[9:11] == [6, 7] and t[11:13] == [8, 8] and w[11:13] == [8, 9] and t[13] == 10
    assert t[14:16] == [11, 11] and w[14:16] == [11, 12] and t[16:] == [13, 14]
    assert pos.rope_deltas_B.tolist() == [14 + 1 - ids.shape[1]]


def test_a_generated_placeholder_id_is_plain_text_while_decoding(vlm):
    model, cfg = vlm.model, vlm.config
    cache = KVCache(cfg.text.num_hidden_layers, 1, 8, cfg.text.num_key_value_heads, cfg.text.head_dim, "cpu", torch.float32)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[5, 6, 7]]), cache=cache)
        step = model(input_ids=torch.tensor([[IMG]]), cache=cache, position_ids=(3 + out.rope_deltas).view(1, 1, 1).expand(3, 1, 1))
    assert torch.isfinite(step.logits).all()
    with pytest.raises(ValueError, match="1 image placeholder tokens in input_ids but 0 image features"):
        model(input_ids=torch.tensor([[5, IMG]]))  # in a prompt it is a missing image
