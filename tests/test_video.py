"""Video preprocessing: decord decoding and sampling identical to transformers'
Glm4vVideoProcessor, frame lists with timestamps or fps, one shared pixel budget, clear errors."""

import subprocess

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessor
from transformers.video_utils import VideoMetadata
from transformers.video_utils import load_video as reference_load_video

from vlm.video import Video, VideoConfig, as_video, load_video, preprocess_video, sample_frame_indices, video_from_frames


def make_video(path, *, seconds: float, fps: int, size: str = "96x64") -> str:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=duration={seconds}:size={size}:rate={fps}",
         "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )
    return str(path)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """3.3 s at 25 fps: 83 frames, sampled to 6 (an even count after de-duplication)."""
    return make_video(tmp_path_factory.mktemp("video") / "clip.mp4", seconds=3.3, fps=25, size="160x90")


@pytest.fixture(scope="module")
def reference():
    return Glm4vVideoProcessor()


def test_decoded_video_equals_transformers(clip, reference):
    frames, metadata = reference_load_video(clip, backend="decord", sample_indices_fn=reference.sample_frames)
    expected = reference(videos=[frames], video_metadata=[metadata], do_sample_frames=False, return_tensors="pt")
    video = load_video(clip)
    assert list(video.frame_indices) == metadata.frames_indices.tolist()
    assert np.allclose(video.timestamps, metadata.timestamps)
    assert video.pair_seconds == [0, 1, 2]
    patches = preprocess_video(video)
    assert list(patches.grid_thw) == expected["video_grid_thw"][0].tolist()
    assert torch.allclose(patches.pixel_values, expected["pixel_values_videos"], atol=1e-4, rtol=0)


@settings(max_examples=200, deadline=None)
@given(
    total_frames=st.integers(min_value=1, max_value=40_000),
    video_fps=st.sampled_from([1.0, 5.0, 12.5, 23.976, 25.0, 29.97, 30.0, 60.0]),
)
def test_sampled_indices_equal_transformers(total_frames, video_fps):
    metadata = VideoMetadata(total_num_frames=total_frames, fps=video_fps, duration=total_frames / video_fps)
    expected = Glm4vVideoProcessor().sample_frames(metadata).tolist()
    ours = sample_frame_indices(total_frames=total_frames, video_fps=video_fps, duration_s=total_frames / video_fps)
    assert ours == expected
    assert len(ours) % 2 == 0 and len(ours) <= 601


def test_long_videos_get_600_evenly_spread_frames():
    indices = sample_frame_indices(total_frames=30 * 900, video_fps=30.0, duration_s=900.0)
    assert len(indices) == 600 and indices[0] == 0 and indices[-1] == 30 * 900 - 1
    steps = np.diff(indices)
    assert steps.min() >= 44 and steps.max() <= 46  # 900 s / 599 gaps = 1.5 s = 45 frames


def test_frame_lists_with_timestamps_or_fps():
    frames = [np.full((60, 80, 3), 40 * i, dtype=np.uint8) for i in range(5)]
    by_fps = video_from_frames(frames, fps=2.0)
    assert by_fps.frames.shape == (6, 3, 60, 80)  # odd count: the last frame is repeated
    assert torch.equal(by_fps.frames[5], by_fps.frames[4])
    assert by_fps.pair_seconds == [0, 1, 2]
    by_time = as_video([PIL.Image.fromarray(f) for f in frames], timestamps=[0.0, 3.5, 7.9, 12.0, 13.2])
    assert by_time.pair_seconds == [0, 7, 13]
    patches = preprocess_video(by_time)
    assert patches.grid_thw[0] == 3
    as_array = video_from_frames(np.stack(frames), fps=2.0)
    as_tensor = video_from_frames(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2), fps=2.0)
    assert torch.equal(as_array.frames, by_fps.frames) and torch.equal(as_tensor.frames, by_fps.frames)


def test_one_pixel_budget_is_shared_by_all_frames():
    config = VideoConfig(max_pixels=28 * 28 * 2 * 200)
    frames = [np.zeros((360, 640, 3), dtype=np.uint8)] * 2
    short = preprocess_video(video_from_frames(frames, fps=1.0), config)
    long = preprocess_video(video_from_frames(frames * 10, fps=1.0), config)
    for patches, count in ((short, 2), (long, 20)):
        t, h, w = patches.grid_thw
        assert t * 2 == count
        assert count * h * w * 14 * 14 <= config.max_pixels
    assert long.grid_thw[1] * long.grid_thw[2] < short.grid_thw[1] * short.grid_thw[2]


def test_bad_videos_are_refused_clearly(tmp_path):
    frames = [np.zeros((32, 32, 3), dtype=np.uint8)] * 2
    with pytest.raises(ValueError, match="neither timestamps nor fps"):
        video_from_frames(frames)
    with pytest.raises(ValueError, match="no frames"):
        video_from_frames([], fps=2.0)
    with pytest.raises(ValueError, match="2 frames but 3 timestamps"):
        video_from_frames(frames, timestamps=[0, 1, 2])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="junk.mp4.*not a readable video"):
        load_video(junk)
    empty = tmp_path / "empty.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=duration=1:size=64x48:rate=10",
                    "-frames:v", "0", str(empty)], check=True)
    with pytest.raises(ValueError, match="empty.mp4"):
        load_video(empty)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_video(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="fps"):
        sample_frame_indices(total_frames=10, video_fps=0.0)


@pytest.mark.parametrize(("timestamps", "message"), [
    ([0.0, float("inf")], r"timestamp 1 is inf: expected a finite number of seconds >= 0"),
    ([float("nan"), 1.0], r"timestamp 0 is nan"),
    ([-1.0, 0.5], r"timestamp 0 is -1.0"),
    ([0.0, float("-inf")], r"timestamp 1 is -inf"),
    ([2.0, 1.0], r"must not decrease: frame 1 at 1.0 s follows one at 2.0 s"),
    (["0", "1"], r"timestamp 0 is '0'"),
    ([True, 1.0], r"timestamp 0 is True"),
])
def test_bad_timestamps_are_named(timestamps, message):
    frames = [np.zeros((32, 32, 3), dtype=np.uint8)] * 2
    with pytest.raises(ValueError, match=message):
        video_from_frames(frames, timestamps=timestamps)
    with pytest.raises(ValueError, match=message):  # a Video built directly is held to the same rule
        Video(frames=torch.zeros(2, 3, 32, 32, dtype=torch.uint8), timestamps=tuple(timestamps))


@pytest.mark.parametrize("fps", [float("nan"), float("inf"), -2.0, 0, "2", True])
def test_bad_frame_rates_are_named(fps):
    frames = [np.zeros((32, 32, 3), dtype=np.uint8)] * 2
    with pytest.raises(ValueError, match=r"video fps .* is not a finite positive number of frames per second"):
        video_from_frames(frames, fps=fps)
    with pytest.raises(ValueError, match=r"video fps .* is not a finite positive number"):
        sample_frame_indices(total_frames=10, video_fps=fps)
