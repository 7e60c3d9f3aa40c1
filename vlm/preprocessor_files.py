"""The processor's settings files in the released checkpoints' layout.

`preprocessor_config.json` and `video_preprocessor_config.json` are transformers'
`Glm4vImageProcessor` / `Glm4vVideoProcessor` settings. Read: the pixel budget from `size`
(`shortest_edge`, `longest_edge`) or the older flat `min_pixels` / `max_pixels`, everything else
with our defaults; the video file takes the patch and merge sizes of the image file when it lacks
them. Written: the released layout, with transformers' fixed resize and rescale settings, so
`AutoProcessor` reads what we write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .images import CLIP_MEAN, CLIP_STD, ImageConfig
from .video import VideoConfig

PROCESSOR_CLASS = "Glm4vProcessor"  # transformers' name, so AutoProcessor reads what we write


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _budget(values: Mapping[str, Any], default: tuple[int, int]) -> tuple[int, int]:
    """(min_pixels, max_pixels) from `size` ({shortest_edge, longest_edge}) or flat keys."""
    size = values.get("size") or {}
    low = size.get("shortest_edge", values.get("min_pixels", default[0]))
    high = size.get("longest_edge", values.get("max_pixels", default[1]))
    return int(low), int(high)


def image_config(values: Mapping[str, Any]) -> ImageConfig:
    base = ImageConfig()
    low, high = _budget(values, (base.min_pixels, base.max_pixels))
    return ImageConfig(
        patch_size=int(values.get("patch_size", base.patch_size)),
        temporal_patch_size=int(values.get("temporal_patch_size", base.temporal_patch_size)),
        merge_size=int(values.get("merge_size", base.merge_size)),
        min_pixels=low,
        max_pixels=high,
        image_mean=tuple(values.get("image_mean", CLIP_MEAN)),
        image_std=tuple(values.get("image_std", CLIP_STD)),
        max_image_pixels=int(values.get("max_image_pixels", base.max_image_pixels)),
    )


def video_config(values: Mapping[str, Any], image_values: Mapping[str, Any]) -> VideoConfig:
    base = VideoConfig()
    values = {**{k: image_values[k] for k in ("patch_size", "temporal_patch_size", "merge_size") if k in image_values},
              **values}
    low, high = _budget(values, (base.min_pixels, base.max_pixels))
    return VideoConfig(
        patch_size=int(values.get("patch_size", base.patch_size)),
        temporal_patch_size=int(values.get("temporal_patch_size", base.temporal_patch_size)),
        merge_size=int(values.get("merge_size", base.merge_size)),
        min_pixels=low,
        max_pixels=high,
        fps=float(values.get("fps", base.fps)),
        max_duration_s=float(values.get("max_duration", base.max_duration_s)),
        image_mean=tuple(values.get("image_mean", CLIP_MEAN)),
        image_std=tuple(values.get("image_std", CLIP_STD)),
    )


# transformers' resize and rescale settings: fixed in the released checkpoints, implied by our code.
_FIXED_PREPROCESSING = {"resample": 3, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
                        "do_normalize": True, "do_convert_rgb": True}


def image_json(config: ImageConfig) -> dict[str, Any]:
    """`preprocessor_config.json` as the released checkpoints (and assets/model) lay it out."""
    values = {
        "image_processor_type": "Glm4vImageProcessor",
        "processor_class": PROCESSOR_CLASS,
        "size": {"shortest_edge": config.min_pixels, "longest_edge": config.max_pixels},
        "patch_size": config.patch_size,
        "temporal_patch_size": config.temporal_patch_size,
        "merge_size": config.merge_size,
        "image_mean": list(config.image_mean),
        "image_std": list(config.image_std),
        **_FIXED_PREPROCESSING,
    }
    if config.max_image_pixels != ImageConfig.max_image_pixels:  # our own guard: written only when changed
        values["max_image_pixels"] = config.max_image_pixels
    return values


def video_json(config: VideoConfig) -> dict[str, Any]:
    """`video_preprocessor_config.json` as the released checkpoints (and assets/model) lay it out."""
    return {
        "video_processor_type": "Glm4vVideoProcessor",
        "processor_class": PROCESSOR_CLASS,
        "size": {"shortest_edge": config.min_pixels, "longest_edge": config.max_pixels},
        "patch_size": config.patch_size,
        "temporal_patch_size": config.temporal_patch_size,
        "merge_size": config.merge_size,
        "fps": config.fps,
        "max_duration": config.max_duration_s,
        "image_mean": list(config.image_mean),
        "image_std": list(config.image_std),
        **_FIXED_PREPROCESSING,
        "do_sample_frames": True,
    }
