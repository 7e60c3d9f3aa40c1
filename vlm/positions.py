"""3-axis M-RoPE position ids from token ids and vision grids, without a Python loop over tokens.

The sequence is read in runs. A text token takes the running position p on all three axes and
advances it by 1. A vision run (one image, or ONE temporal group of a video: each frame pair is
its own run because the timestamp text sits between frames) with merged grid (h', w') gives its
token at (t, row, col) the ids (p + t, p + row, p + col) and then advances p by max(h', w').

Which placeholder belongs to what is derived from the ids alone: `<|video|>` tokens, and
`<|image|>` tokens between `<|begin_of_video|>` and `<|end_of_video|>`, are video frames; other
`<|image|>` tokens are images. Both kinds may appear in one prompt. Images and frames are
consumed in reading order across the batch (row by row), as the features are.

Padding (`attention_mask` 0) takes no position; with `segment_ids` each packed sample restarts
at 0 exactly as if it were alone. `rope_deltas` (per row) = max position + 1 - real tokens:
decoding continues at `real tokens so far + rope_delta` on all three axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import VLMConfig


@dataclass(frozen=True)
class Positions:
    ids_3BT: torch.Tensor  # (3, B, T) long
    rope_deltas_B: torch.Tensor  # (B,) long


def placeholder_masks(input_ids: torch.Tensor, cfg: VLMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(image_mask, video_mask), each (B, T) bool, from the ids and the config's special ids."""
    starts = (input_ids == cfg.video_start_token_id).cumsum(-1)
    ends = (input_ids == cfg.video_end_token_id).cumsum(-1)
    in_video = starts > ends
    is_image_token = input_ids == cfg.image_token_id
    video = (input_ids == cfg.video_token_id) | (is_image_token & in_video)
    return is_image_token & ~in_video, video


def vision_units(grid_thw: torch.Tensor | None, merge: int, *, split_frames: bool) -> torch.Tensor:
    """(U, 3) merged grids (t, h', w') of the runs: one per image, or one per video frame pair."""
    if grid_thw is None or grid_thw.numel() == 0:
        return torch.zeros(0, 3, dtype=torch.long)
    g = grid_thw.detach().to("cpu", torch.long)
    if split_frames:
        g = g.repeat_interleave(g[:, 0], dim=0)
        g[:, 0] = 1
    return torch.stack([g[:, 0], g[:, 1] // merge, g[:, 2] // merge], dim=1)


def mrope_positions(
    input_ids: torch.Tensor,
    cfg: VLMConfig,
    *,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> Positions:
    B, T = input_ids.shape
    device = input_ids.device
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if segment_ids is not None:
        valid = valid & (segment_ids > 0)
    image_mask, video_mask = placeholder_masks(input_ids, cfg)
    merge = cfg.vision.spatial_merge_size

    inc = valid.long()  # text advances by 1; vision tokens by max(h', w') at the end of their run
    t_off = torch.zeros(B, T, dtype=torch.long, device=device)
    row = torch.zeros_like(t_off)
    col = torch.zeros_like(t_off)
    for mask, grids, split, name in (
        (image_mask & valid, image_grid_thw, False, "image"),
        (video_mask & valid, video_grid_thw, True, "video"),
    ):
        units = vision_units(grids, merge, split_frames=split).to(device)
        sizes = units.prod(-1)
        n_tokens, n_features = int(mask.sum()), int(sizes.sum())
        if n_tokens != n_features:
            raise ValueError(f"{n_tokens} {name} placeholder tokens but the {name} grids give {n_features} features")
        if n_tokens == 0:
            continue
        k = mask.view(-1).cumsum(0)[mask.view(-1)] - 1  # rank of each placeholder in reading order
        ends = sizes.cumsum(0)
        unit = torch.searchsorted(ends, k, right=True)
        idx = k - (ends[unit] - sizes[unit])  # index inside its run
        hw = units[unit, 1] * units[unit, 2]
        t_off[mask] = idx // hw
        row[mask] = (idx % hw) // units[unit, 2]
        col[mask] = idx % units[unit, 2]
        is_last = idx == sizes[unit] - 1
        inc[mask] = torch.where(is_last, units[unit, 1:].max(-1).values, 0)

    start = inc.cumsum(-1) - inc  # exclusive running position
    if segment_ids is not None:  # every packed sample restarts at 0
        new_segment = torch.ones_like(valid)
        new_segment[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
        start = start - torch.where(new_segment, start, 0).cummax(-1).values
    ids = torch.stack([start + t_off, start + row, start + col]) * valid  # padding sits at 0
    n_valid = valid.sum(-1)
    deltas = torch.where(n_valid > 0, ids.amax(dim=(0, 2)) + 1 - n_valid, 0)
    return Positions(ids_3BT=ids, rope_deltas_B=deltas)
