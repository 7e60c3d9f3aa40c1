"""The processor: prompts, images and videos in, the model's input tensors out.

    processor = Processor.from_pretrained()            # assets/model: our tokenizer + settings
    prompt = processor.apply_chat_template(messages)   # GLM-4.5V chat format, thinking on
    inputs = processor(text=prompt, images=[shot], return_tensors="pt")

What is unusual here:

- The call shape and outputs are those of transformers' `Glm4vProcessor`: the text already
  holds one `<|image|>` per image and one `<|video|>` per video, each expanded here into one
  placeholder per merged vision token. A video becomes, per temporal pair,
  `<|begin_of_image|>` + placeholders + `<|end_of_image|>` + the pair's integer second, and
  its placeholders are `<|image|>` like the reference (the model accepts both kinds).
- Batches are left-padded, so generation can append to every row at once.
- The chat template is the checkpoint's own (`chat_template.jinja` or the tokenizer config),
  rendered by transformers; `thinking=False` sets the template's `enable_thinking`.
- `save_pretrained` writes what `from_pretrained` reads, each file replaced atomically; the
  preprocessor files take the released checkpoints' layout, since only our settings are kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import PIL.Image
import torch

from . import preprocessor_files as settings
from .files import atomic_write, fsync_dir, fsync_file
from .images import ImageConfig, ImageInput, VisionPatches, preprocess_image
from .video import Video, VideoConfig, VideoInput, as_video, preprocess_video

if TYPE_CHECKING:  # transformers takes seconds to import: loaded when a processor is built
    from transformers import BatchFeature, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "model"

IMAGE_TOKEN = "<|image|>"
VIDEO_TOKEN = "<|video|>"
BEGIN_IMAGE, END_IMAGE = "<|begin_of_image|>", "<|end_of_image|>"
BEGIN_VIDEO, END_VIDEO = "<|begin_of_video|>", "<|end_of_video|>"
_PLACEHOLDER = re.compile(re.escape(IMAGE_TOKEN) + "|" + re.escape(VIDEO_TOKEN))
CHAT_TEMPLATE_FILE = "chat_template.jinja"


@dataclass(frozen=True)
class Processor:
    """Tokenizer plus image and video preprocessing, with transformers' Glm4vProcessor contract."""

    tokenizer: "PreTrainedTokenizerBase"
    image_config: ImageConfig = ImageConfig()
    video_config: VideoConfig = VideoConfig()

    # -----------------------------------------------------------------------------------------
    # Loading and saving

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> Processor:
        """Read a checkpoint directory (default: `assets/model`, the project's own model).

        Uses `tokenizer.json` / `tokenizer_config.json` / `chat_template.jinja` through
        transformers, `preprocessor_config.json` for images and, when present,
        `video_preprocessor_config.json` for videos. Never touches the network.
        """
        from transformers import AutoTokenizer

        directory = Path(path) if path is not None else ASSETS
        if not directory.is_dir():
            raise FileNotFoundError(f"processor path {str(directory)!r} is not a directory")
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        image_json = settings.read_json(directory / "preprocessor_config.json")
        video_json = settings.read_json(directory / "video_preprocessor_config.json")
        return cls(
            tokenizer=tokenizer,
            image_config=settings.image_config(image_json),
            video_config=settings.video_config(video_json, image_json),
        )

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write everything `from_pretrained` reads into the directory `path` (created if needed).

        The tokenizer files come from transformers' own writer (`tokenizer.json`,
        `tokenizer_config.json`, `chat_template.jinja`); `preprocessor_config.json`,
        `video_preprocessor_config.json` and `processor_config.json` take the layout of
        `assets/model`. Each file is replaced atomically, the set is not: a save cut midway over
        an older checkpoint leaves some files new and the rest old.
        """
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        for name, values in (
            ("preprocessor_config.json", settings.image_json(self.image_config)),
            ("video_preprocessor_config.json", settings.video_json(self.video_config)),
            ("processor_config.json", {"processor_class": settings.PROCESSOR_CLASS}),
        ):
            text = json.dumps(values, indent=2) + "\n"
            atomic_write(directory / name, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
        self._save_tokenizer(directory)
        return directory

    def _save_tokenizer(self, directory: Path) -> None:
        """transformers writes in place, so it writes into a staging folder inside `directory`
        (same file system) and each file is then renamed over its old version."""
        staging = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=directory))
        try:
            self.tokenizer.save_pretrained(staging)
            if not (staging / CHAT_TEMPLATE_FILE).exists():  # else an older checkpoint's template is read back
                (directory / CHAT_TEMPLATE_FILE).unlink(missing_ok=True)
            for file in sorted(p for p in staging.rglob("*") if p.is_file()):
                target = directory / file.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                fsync_file(file)
                os.replace(file, target)
                fsync_dir(target.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -----------------------------------------------------------------------------------------
    # Prompts

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        thinking: bool = True,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """Render OpenAI-style messages (content parts `text` / `image` / `video`) to a prompt.

        Media parts become `<|begin_of_image|><|image|><|end_of_image|>` (or the video form)
        where they stand; pass the same media, in order, to `__call__`, or use `media_of`.
        """
        if not isinstance(messages, Sequence) or not all(isinstance(m, Mapping) for m in messages):
            raise TypeError(f"messages: expected a list of dicts with 'role' and 'content', got {messages!r:.80}")
        if self.tokenizer.chat_template is None:
            raise ValueError("this checkpoint has no chat template (no chat_template.jinja, none in tokenizer_config)")
        return self.tokenizer.apply_chat_template(
            list(messages),
            tools=list(tools) if tools else None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=thinking,
        )

    # -----------------------------------------------------------------------------------------
    # Tensors

    def __call__(
        self,
        text: str | Sequence[str],
        images: Sequence[ImageInput] | ImageInput | None = None,
        videos: Sequence[VideoInput | Video] | VideoInput | Video | None = None,
        *,
        timestamps: Sequence[Sequence[float] | None] | None = None,
        fps: float | Sequence[float | None] | None = None,
        return_tensors: Literal["pt"] = "pt",
    ) -> BatchFeature:
        """Expand vision placeholders, tokenize (left-padded) and preprocess the media.

        `videos` holds one entry per `<|video|>`: a file path (decoded with decord and sampled
        at 2 fps), a `Video`, or a list of already-sampled frames; frame lists need their
        `timestamps` (seconds, one list per video) or an `fps`.
        Returns `input_ids`, `attention_mask`, `mm_token_type_ids` (0 text, 1 image, 2 video
        frame) and, when given, `pixel_values` / `image_grid_thw` and `pixel_values_videos` /
        `video_grid_thw`.
        """
        from transformers import BatchFeature

        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' is supported")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"text: expected a string or a list of strings, got {text!r:.80}")

        image_list = _as_image_list(images)
        raw_videos = _as_video_list(videos)
        _check_placeholders(texts, num_images=len(image_list), num_videos=len(raw_videos))
        video_list = self._videos(raw_videos, timestamps=timestamps, fps=fps)
        image_patches = [preprocess_image(image, self.image_config) for image in image_list]
        video_patches = [preprocess_video(video, self.video_config) for video in video_list]

        expanded = self._expand(texts, image_patches, video_patches, [v.pair_seconds for v in video_list])
        encoded = self.tokenizer(expanded, padding=True, padding_side="left", return_tensors="pt")
        data: dict[str, torch.Tensor] = {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "mm_token_type_ids": self._token_types(encoded["input_ids"]),
        }
        if image_patches:
            data["pixel_values"] = _concat([p.pixel_values for p in image_patches])
            data["image_grid_thw"] = torch.tensor([p.grid_thw for p in image_patches], dtype=torch.long)
        if video_patches:
            data["pixel_values_videos"] = _concat([p.pixel_values for p in video_patches])
            data["video_grid_thw"] = torch.tensor([p.grid_thw for p in video_patches], dtype=torch.long)
        return BatchFeature(data=data)

    def _videos(
        self,
        videos: list[VideoInput | Video],
        *,
        timestamps: Sequence[Sequence[float] | None] | None,
        fps: float | Sequence[float | None] | None,
    ) -> list[Video]:
        if timestamps is not None and len(timestamps) != len(videos):
            raise ValueError(f"timestamps: got {len(timestamps)} lists for {len(videos)} videos")
        fps_list = fps if isinstance(fps, Sequence) else [fps] * len(videos)
        if len(fps_list) != len(videos):
            raise ValueError(f"fps: got {len(fps_list)} values for {len(videos)} videos")
        return [
            as_video(video, self.video_config, timestamps=timestamps[i] if timestamps else None, fps=fps_list[i])
            for i, video in enumerate(videos)
        ]

    def _expand(
        self,
        texts: list[str],
        images: list[VisionPatches],
        videos: list[VisionPatches],
        seconds: list[list[int]],
    ) -> list[str]:
        """Replace each placeholder by its tokens, media taken in order across the batch."""
        merge = self.image_config.merge_size**2
        next_media = {IMAGE_TOKEN: iter(images), VIDEO_TOKEN: iter(zip(videos, seconds))}

        def expand(match: re.Match[str]) -> str:
            if match.group(0) == IMAGE_TOKEN:
                t, h, w = next(next_media[IMAGE_TOKEN]).grid_thw
                return IMAGE_TOKEN * (t * h * w // merge)
            video, pair_seconds = next(next_media[VIDEO_TOKEN])
            t, h, w = video.grid_thw
            frame = BEGIN_IMAGE + IMAGE_TOKEN * (h * w // merge) + END_IMAGE
            return "".join(f"{frame}{second}" for second in pair_seconds[:t])

        return [_PLACEHOLDER.sub(expand, text) for text in texts]

    def _token_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        """0 for text, 1 for image placeholders, 2 for placeholders inside a video."""
        ids = self.tokenizer.convert_tokens_to_ids([IMAGE_TOKEN, VIDEO_TOKEN, BEGIN_VIDEO, END_VIDEO])
        image_id, video_id, begin_id, end_id = ids
        inside = (input_ids == begin_id).cumsum(-1) > (input_ids == end_id).cumsum(-1)
        placeholder = (input_ids == image_id) | (input_ids == video_id)
        types = torch.zeros_like(input_ids)
        types[placeholder & ~inside] = 1
        types[placeholder & inside] = 2
        return types

    # -----------------------------------------------------------------------------------------
    # Text out

    def decode(self, ids: torch.Tensor | Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Token ids -> text; special tokens kept by default, since answers are parsed by them."""
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1:
                raise ValueError(f"decode: expected one sequence of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def stop_token_ids(self) -> list[int]:
        """`<|endoftext|>`, `<|user|>`, `<|observation|>`: where generation ends."""
        return self.tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"])


def media_of(messages: Sequence[Mapping[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Images and videos of OpenAI-style messages, in prompt order (for `Processor.__call__`).

    A part's media is read from its `image` / `video` key, else `url` / `path`, else an
    OpenAI `image_url: {"url": ...}`.
    """
    images: list[Any] = []
    videos: list[Any] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) or content is None:
            continue
        for part in content:
            kind = part.get("type")
            if kind in ("image", "image_url") or (kind is None and "image" in part):
                images.append(_media_value(part, "image"))
            elif kind in ("video", "video_url") or (kind is None and "video" in part):
                videos.append(_media_value(part, "video"))
    return images, videos


def _media_value(part: Mapping[str, Any], kind: str) -> Any:
    for key in (kind, "url", "path", f"{kind}_url"):
        value = part.get(key)
        if isinstance(value, Mapping):
            value = value.get("url")
        if value is not None:
            return value
    raise ValueError(f"{kind} part {dict(part)!r:.80} has no '{kind}', 'url' or 'path' value")


def _as_image_list(images: Sequence[ImageInput] | ImageInput | None) -> list[ImageInput]:
    if images is None:
        return []
    if isinstance(images, (str, os.PathLike, bytes, PIL.Image.Image, torch.Tensor)):
        return [images]
    if isinstance(images, np.ndarray):
        return [images] if images.ndim <= 3 else list(images)
    return list(images)


def _as_video_list(videos: Any) -> list[VideoInput | Video]:
    """One video or a list of videos; a list of frames counts as one video."""
    if videos is None:
        return []
    if isinstance(videos, (str, os.PathLike, Video)):
        return [videos]
    if isinstance(videos, np.ndarray) and videos.ndim == 4:  # (T, H, W, C) frames
        return [list(videos)]
    videos = list(videos)
    if videos and isinstance(videos[0], (PIL.Image.Image, np.ndarray, torch.Tensor)):
        return [videos]
    return videos


def _check_placeholders(texts: list[str], *, num_images: int, num_videos: int) -> None:
    """Fail before any decoding when the text and the media disagree."""
    found_images = sum(text.count(IMAGE_TOKEN) for text in texts)
    found_videos = sum(text.count(VIDEO_TOKEN) for text in texts)
    if (found_images, found_videos) != (num_images, num_videos):
        raise ValueError(
            f"the text holds {found_images} {IMAGE_TOKEN} and {found_videos} {VIDEO_TOKEN} placeholders "
            f"but {num_images} images and {num_videos} videos were given"
        )


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat without the copy of a lone tensor (a 1080p screenshot is 25 MB of patches)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
