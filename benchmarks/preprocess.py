"""Preprocessing time: our processor beside transformers' Glm4vProcessor on the same inputs.

    .venv/bin/python -m benchmarks.preprocess [--repeats 3] [--video clip.mp4]

Inputs: a synthetic 1920x1080 screenshot (PNG) and a 60 s 1080p 30 fps video (made with
ffmpeg once, in a temporary directory, unless --video is given). Both processors read the
shipped settings in `assets/model`. transformers is timed with its PIL image backend (the
reference for pixel values) and its default torchvision one; its video path cannot decode
files without torchcodec, so its video time is transformers' own decord loader plus its video
processor, the same work ours does. Times are medians in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import PIL.Image
import PIL.ImageDraw
import torch

from vlm.processor import ASSETS, Processor

IMAGE_PROMPT = "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>Click Save.<|assistant|>\n"
VIDEO_PROMPT = "[gMASK]<sop><|user|>\n<|begin_of_video|><|video|><|end_of_video|>What happens?<|assistant|>\n"


def screenshot(path: Path) -> Path:
    """A desktop-like picture: title bar, sidebar, text lines, buttons."""
    image = PIL.Image.new("RGB", (1920, 1080), (245, 245, 245))
    draw = PIL.ImageDraw.Draw(image)
    draw.rectangle((0, 0, 1920, 40), fill=(40, 44, 52))
    draw.rectangle((0, 40, 300, 1080), fill=(230, 232, 236))
    for row in range(40):
        draw.text((330, 60 + row * 25), f"Row {row}: quarterly report, value {row * 37 % 1000}", fill=(20, 20, 20))
        draw.text((20, 60 + row * 25), f"Folder {row}", fill=(60, 60, 60))
    for i, label in enumerate(["Save", "Cancel", "Help"]):
        draw.rounded_rectangle((1500 + i * 130, 1000, 1610 + i * 130, 1040), 6, fill=(30, 110, 230))
        draw.text((1520 + i * 130, 1012), label, fill=(255, 255, 255))
    image.save(path)
    return path


def make_video(path: Path) -> Path:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=duration=60:size=1920x1080:rate=30",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )
    return path


def median_ms(candidates: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Round-robin: one run of each candidate per round, so a busy machine slows all alike.
    Returns the median times and each candidate's last output."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    outputs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--video", type=Path, help="a video to use instead of the generated 60 s 1080p clip")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from transformers import AutoProcessor
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
    from transformers.video_utils import load_video as reference_load_video

    ours = Processor.from_pretrained()
    reference_tv = AutoProcessor.from_pretrained(ASSETS)
    reference_pil = AutoProcessor.from_pretrained(ASSETS)
    reference_pil.image_processor = Glm4vImageProcessorPil.from_pretrained(ASSETS)

    with tempfile.TemporaryDirectory() as tmp:
        shot_path = screenshot(Path(tmp) / "screenshot.png")
        shot = PIL.Image.open(shot_path).convert("RGB")
        video_path = args.video or make_video(Path(tmp) / "video.mp4")

        image_ms, image_out = median_ms(
            {
                "ours (from the PNG path)": lambda: ours(text=IMAGE_PROMPT, images=[shot_path]),
                "ours (PIL image)": lambda: ours(text=IMAGE_PROMPT, images=[shot]),
                "transformers, PIL backend (PIL image)":
                    lambda: reference_pil(text=IMAGE_PROMPT, images=[shot], return_tensors="pt"),
                "transformers, torchvision backend (PIL image)":
                    lambda: reference_tv(text=IMAGE_PROMPT, images=[shot], return_tensors="pt"),
            },
            args.repeats,
        )

        def reference_video():
            frames, metadata = reference_load_video(
                str(video_path), backend="decord", sample_indices_fn=reference_tv.video_processor.sample_frames
            )
            return reference_tv(text=VIDEO_PROMPT, videos=[frames], video_metadata=[metadata],
                                do_sample_frames=False, return_tensors="pt")

        video_ms, video_out = median_ms(
            {
                "ours (decode + sample + preprocess)": lambda: ours(text=VIDEO_PROMPT, videos=[video_path]),
                "transformers (its decord loader + processor)": reference_video,
            },
            args.repeats,
        )
        rows = [("1920x1080 screenshot", who, ms) for who, ms in image_ms.items()]
        rows += [("60 s 1080p video", who, ms) for who, ms in video_ms.items()]
        image_inputs = image_out["ours (PIL image)"]
        inputs = video_out["ours (decode + sample + preprocess)"]

    print(f"{'input':<22} {'processor':<48} {'median ms':>10}")
    for name, who, ms in rows:
        print(f"{name:<22} {who:<48} {ms:>10.1f}")
    print(f"screenshot grid_thw {image_inputs['image_grid_thw'].tolist()}, {image_inputs['input_ids'].shape[1]} tokens")
    print(f"video grid_thw {inputs['video_grid_thw'].tolist()}, {inputs['input_ids'].shape[1]} tokens")


if __name__ == "__main__":
    main()
