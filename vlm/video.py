"""Videos in, flat vision patches and per-pair timestamps out.

What is unusual here:

- Frame sampling is the released model's, index for index: 2 fps for clips up to 300 s
  (frame ceil(i * fps / 2)), else 600 instants spread evenly over the whole clip; repeated
  indices are dropped and an odd count is made even by repeating the last frame, because
  frames are consumed in temporal pairs.
- One pixel budget is shared by all frames (`smart_resize` with num_frames = T), so a long
  video is shrunk harder than a short one.
- The prompt writes the integer second of each pair's *first* frame after that pair's image
  tokens, so every pair keeps its timestamp; `Video.pair_seconds` carries them.
- Resizing uses torchvision's bicubic with antialias on uint8 frames, the operation of the
  reference video processor (images use PIL's bicubic instead, like the reference image
  processor): the two are not bit-identical and each side matches its own reference.

Reference (the oracle): `transformers.models.glm4v.video_processing_glm4v.Glm4vVideoProcessor`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .images import CLIP_MEAN, CLIP_STD, ImageInput, VisionPatches, load_image, patchify, smart_resize

logger = logging.getLogger(__name__)

VideoInput = Union[str, os.PathLike, Sequence[ImageInput]]


@dataclass(frozen=True)
class VideoConfig:
    """How videos become patches; read from / written to `video_preprocessor_config.json`."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 112 * 112  # over all sampled frames together
    max_pixels: int = 28 * 28 * 2 * 30000  # 47,040,000, shared by all sampled frames
    fps: float = 2.0  # sampling rate for clips up to max_duration_s
    max_duration_s: float = 300.0  # longer clips get fps * max_duration_s evenly spread frames
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD


@dataclass(frozen=True)
class Video:
    """Sampled frames ready for resizing: an even count, each with its time in seconds."""

    frames: torch.Tensor  # (T, 3, H, W) uint8 RGB, T even; may be a channels-last view
    timestamps: tuple[float, ...]  # seconds of each frame in the source
    frame_indices: tuple[int, ...] | None = None  # indices in the source file, when decoded

    def __post_init__(self) -> None:
        check_timestamps(self.timestamps)

    @property
    def pair_seconds(self) -> list[int]:
        """Integer second of the first frame of each temporal pair: the prompt's time index."""
        return [int(t) for t in self.timestamps[::2]]


def check_timestamps(timestamps: Sequence[object]) -> None:
    """Frame times must be finite seconds >= 0 that never decrease: the prompt writes each
    pair's integer second, and a time that is NaN, infinite, negative or out of order has none."""
    previous = 0.0
    for i, t in enumerate(timestamps):
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"video timestamp {i} is {t!r}: expected a finite number of seconds >= 0")
        if t < previous:
            raise ValueError(f"video timestamps must not decrease: frame {i} at {t!r} s follows one at {previous!r} s")
        previous = t


def check_fps(fps: object, what: str) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) or not 0 < fps < math.inf:
        raise ValueError(f"{what} {fps!r} is not a finite positive number of frames per second")
    return float(fps)


def sample_frame_indices(
    *,
    total_frames: int,
    video_fps: float,
    duration_s: float | None = None,
    fps: float = VideoConfig.fps,
    max_duration_s: float = VideoConfig.max_duration_s,
) -> list[int]:
    """Source frame indices to decode; an even count (the last one repeated if needed)."""
    if total_frames <= 0:
        raise ValueError(f"video has {total_frames} frames; expected at least one")
    check_fps(video_fps, "video fps")
    last = total_frames - 1
    # `or` on purpose: a zero duration from a broken container falls back like the reference.
    duration = duration_s or round(last / video_fps) + 1
    if duration <= max_duration_s:
        n = max(int(math.floor(duration * fps)), 1)
        indices = [min(last, int(math.ceil(i * video_fps / fps))) for i in range(n)]
    else:
        num_samples = int(max_duration_s * fps)
        if num_samples >= total_frames:
            indices = list(range(total_frames))
        else:
            instants = np.linspace(0, duration, num_samples, endpoint=True)
            indices = [min(last, int(math.ceil(t * video_fps))) for t in instants]
    unique = list(dict.fromkeys(indices))
    if len(unique) % 2:
        unique.append(unique[-1])
    return unique


def load_video(path: str | os.PathLike, config: VideoConfig = VideoConfig()) -> Video:
    """Decode the sampled frames of a video file with decord."""
    import decord  # a heavy native library: imported when a video is actually decoded

    name = repr(os.fspath(path))
    if not Path(path).is_file():
        raise FileNotFoundError(f"video {name}: no such file")
    try:
        reader = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0))
    except (decord.DECORDError, RuntimeError) as e:  # decord raises both, depending on the failure
        raise ValueError(f"video {name} is not a readable video file ({str(e).splitlines()[0]})") from None
    total = len(reader)
    video_fps = float(reader.get_avg_fps())
    if total == 0:
        raise ValueError(f"video {name} has no frames")
    if not 0 < video_fps < math.inf:
        raise ValueError(f"video {name} has no usable frame rate ({video_fps!r} fps); decode it yourself and pass "
                         "frames with timestamps")
    indices = sample_frame_indices(
        total_frames=total,
        video_fps=video_fps,
        duration_s=total / video_fps,
        fps=config.fps,
        max_duration_s=config.max_duration_s,
    )
    try:
        frames = reader.get_batch(indices).asnumpy()  # (T, H, W, 3) uint8
    except decord.DECORDError as e:
        raise ValueError(f"video {name}: decoding frames {indices[:4]}... failed ({e})") from None
    logger.debug("video %s: %d of %d frames at %.3f fps", name, len(indices), total, video_fps)
    return Video(
        # A channels-last view, not a copy: torch's uint8 antialiased resize is fastest on it.
        frames=torch.from_numpy(frames).permute(0, 3, 1, 2),
        timestamps=tuple(i / video_fps for i in indices),
        frame_indices=tuple(indices),
    )


def video_from_frames(
    frames: Sequence[ImageInput],
    *,
    timestamps: Sequence[float] | None = None,
    fps: float | None = None,
) -> Video:
    """Already-sampled frames (any image input) with their times; used as given, not resampled.

    `frames` may also be one (T, H, W, C) uint8 array or one (T, C, H, W) tensor.
    """
    if isinstance(frames, (np.ndarray, torch.Tensor)) and frames.ndim == 4:
        frames = list(frames)
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Sequence):
        raise TypeError(f"frames: expected a list of images, got {type(frames).__name__}")
    if len(frames) == 0:
        raise ValueError("video has no frames: the frame list is empty")
    if timestamps is None and fps is None:
        raise ValueError(
            f"video of {len(frames)} frames has neither timestamps nor fps; the prompt needs each frame's time"
        )
    if timestamps is not None and len(timestamps) != len(frames):
        raise ValueError(f"video has {len(frames)} frames but {len(timestamps)} timestamps")
    if timestamps is None:
        fps = check_fps(fps, "video fps")
        timestamps = [i / fps for i in range(len(frames))]
    check_timestamps(timestamps)
    pictures = [np.array(load_image(f)) for f in frames]
    sizes = {p.shape for p in pictures}
    if len(sizes) != 1:
        raise ValueError(f"video frames differ in size: {sorted(s[:2] for s in sizes)}")
    times = [float(t) for t in timestamps]
    if len(pictures) % 2:
        pictures.append(pictures[-1])
        times.append(times[-1])
    stacked = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2)  # channels-last view
    return Video(frames=stacked, timestamps=tuple(times))


def as_video(
    video: VideoInput | Video,
    config: VideoConfig = VideoConfig(),
    *,
    timestamps: Sequence[float] | None = None,
    fps: float | None = None,
) -> Video:
    """A path, a frame list (with timestamps or fps) or a `Video` -> a `Video`."""
    if isinstance(video, Video):
        return video
    if isinstance(video, (str, os.PathLike)):
        if timestamps is not None or fps is not None:
            raise ValueError(f"video {os.fspath(video)!r}: timestamps and fps are for frame lists; files carry their own")
        return load_video(video, config)
    return video_from_frames(video, timestamps=timestamps, fps=fps)


def preprocess_video(video: Video, config: VideoConfig = VideoConfig()) -> VisionPatches:
    """Resize all frames into one shared budget, normalise and patchify in temporal pairs."""
    T, _, H, W = video.frames.shape
    height, width = smart_resize(
        H,
        W,
        num_frames=T,
        factor=config.patch_size * config.merge_size,
        temporal_factor=config.temporal_patch_size,
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
    )
    frames = video.frames
    if (height, width) != (H, W):
        from torchvision.transforms.v2 import functional as tvF  # seconds to import; only videos need it

        frames = tvF.resize(frames, [height, width], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    return patchify(
        frames,
        patch_size=config.patch_size,
        temporal_patch_size=config.temporal_patch_size,
        merge_size=config.merge_size,
        mean=config.image_mean,
        std=config.image_std,
    )
