"""Images in, flat vision patches out: the GLM-4.5V image preprocessing.

What is unusual here:

- `smart_resize` keeps the native resolution: both sides become multiples of 28 (patch 14 x
  merge 2) with Python's banker's `round`, then the whole picture is scaled into a pixel
  budget. The budget counts *two* frames per image because every still image is duplicated
  into a temporal pair (the vision tower's Conv3d has temporal kernel 2), so an image really
  gets half of `max_pixels`. The resize stretches and never pads, so 0-999 coordinates map
  straight back onto the original picture.
- Patches are emitted block-major: the four patches of every 2x2 merge block are consecutive,
  which is the order the projector's downsample expects.
- Real-world inputs are forgiving but never silent: EXIF orientation is applied, transparency
  is composited on white (as transformers does), 16-bit images are scaled rather than
  clipped, and anything unreadable raises an error that names the input.

Reference (the oracle, not the model for this code):
`transformers.models.glm4v.image_processing_pil_glm4v.Glm4vImageProcessorPil`.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_EXIF_ORIENTATION = 0x0112

ImageInput = Union[str, os.PathLike, bytes, PIL.Image.Image, np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class ImageConfig:
    """How pictures become patches; read from / written to `preprocessor_config.json`."""

    patch_size: int = 14  # ViT patch side, pixels
    temporal_patch_size: int = 2  # frames per patch: a still image is duplicated to fill it
    merge_size: int = 2  # the projector merges merge_size x merge_size patches into one token
    min_pixels: int = 112 * 112  # budget floor, counted over the two duplicated frames
    max_pixels: int = 14 * 14 * 2 * 2 * 2 * 6144  # 9,633,792: about 6144 LLM tokens per image
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    # Decompression-bomb guard: a 20-kB PNG can claim 50,000 x 50,000 pixels. Checked from the
    # header before any pixel is decoded.
    max_image_pixels: int = 16384 * 16384

    @property
    def factor(self) -> int:
        """Side granularity in pixels: one merge block."""
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class VisionPatches:
    """Flat patches of one image or video and their grid, in 14-px patches."""

    pixel_values: torch.Tensor  # (t*h*w, C*temporal_patch_size*patch_size**2) float32
    grid_thw: tuple[int, int, int]  # (temporal groups, patch rows, patch cols)


# ---------------------------------------------------------------------------------------------
# Loading


def describe(image: object) -> str:
    """A short name for an input, for error messages (never the whole payload)."""
    if isinstance(image, (str, os.PathLike)):
        text = os.fspath(image)
        return repr(text if len(text) <= 80 else text[:60] + "...")
    if isinstance(image, (bytes, bytearray)):
        return f"<{len(image)} bytes>"
    if isinstance(image, PIL.Image.Image):
        return f"<PIL image {image.mode} {image.width}x{image.height}>"
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return f"<{type(image).__name__} shape={tuple(image.shape)} dtype={image.dtype}>"
    return f"<{type(image).__name__}>"


def load_image(image: ImageInput, *, max_image_pixels: int = ImageConfig.max_image_pixels) -> PIL.Image.Image:
    """Any supported input -> an upright 8-bit RGB PIL image.

    Accepts a path (str or `PathLike`), a `data:` URL with base64 payload, raw encoded bytes, a
    PIL image, a numpy HWC (or HW) uint8 array, or a torch CHW (or HW) tensor (uint8, or float
    in [0, 1]).
    """
    if isinstance(image, PIL.Image.Image):
        pil = image
    elif isinstance(image, np.ndarray):
        pil = _from_array(image, name=describe(image))
    elif isinstance(image, torch.Tensor):
        pil = _from_tensor(image)
    elif isinstance(image, (bytes, bytearray)):
        pil = _open_encoded(io.BytesIO(image), name=describe(image), max_image_pixels=max_image_pixels)
    elif isinstance(image, str) and image.startswith("data:"):
        pil = _open_encoded(io.BytesIO(_decode_data_url(image)), name=describe(image), max_image_pixels=max_image_pixels)
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if isinstance(image, str) and image.startswith(("http://", "https://")):
            raise ValueError(f"image {describe(image)}: URLs are not fetched; download the file and pass its path")
        if not path.is_file():
            raise FileNotFoundError(f"image {describe(image)}: no such file")
        with path.open("rb") as f:
            pil = _open_encoded(io.BytesIO(f.read()), name=describe(image), max_image_pixels=max_image_pixels)
    else:
        raise TypeError(
            f"image {describe(image)}: expected a path, data: URL, bytes, PIL image, numpy HWC uint8 array "
            "or torch CHW tensor"
        )
    if pil.width * pil.height > max_image_pixels:
        raise ValueError(
            f"image {describe(image)} has {pil.width}x{pil.height} pixels, more than the limit of "
            f"{max_image_pixels} (decompression-bomb guard; raise max_image_pixels to allow it)"
        )
    return to_rgb(_upright(pil))


def _upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """Apply the EXIF orientation tag: phones store portrait photos as landscape pixels plus
    a tag. Also for PIL inputs, which `Image.open` leaves un-rotated."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) == 1:
        return image
    return PIL.ImageOps.exif_transpose(image)


def _decode_data_url(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ValueError(f"image {describe(url)}: expected a data URL like 'data:image/png;base64,<payload>'")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as e:
        raise ValueError(f"image {describe(url)}: the base64 payload does not decode ({e})") from None


def _open_encoded(stream: io.BytesIO, *, name: str, max_image_pixels: int) -> PIL.Image.Image:
    try:
        pil = PIL.Image.open(stream)
    except PIL.Image.DecompressionBombError as e:  # PIL's own, larger, limit
        raise ValueError(f"image {name}: refused as a decompression bomb ({e})") from None
    except (PIL.UnidentifiedImageError, OSError) as e:
        raise ValueError(f"image {name} is not a readable image file ({e})") from None
    # Only the header is parsed so far; refuse before decoding the pixels.
    if pil.width * pil.height > max_image_pixels:
        raise ValueError(
            f"image {name} claims {pil.width}x{pil.height} pixels, more than the limit of {max_image_pixels} "
            "(decompression-bomb guard; raise max_image_pixels to allow it)"
        )
    try:
        pil.load()
        return pil
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"image {name} is truncated or corrupt ({e})") from None


def _from_array(array: np.ndarray, *, name: str) -> PIL.Image.Image:
    if array.dtype != np.uint8:
        raise ValueError(f"image {name}: numpy images must be uint8 (HWC or HW); convert or pass a PIL image")
    if array.ndim == 2:
        return PIL.Image.fromarray(array)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        channels = array.shape[2]
        if channels == 1:
            return PIL.Image.fromarray(np.ascontiguousarray(array[:, :, 0]))
        return PIL.Image.fromarray(np.ascontiguousarray(array))  # uint8 HWC: RGB or RGBA by channels
    raise ValueError(f"image {name}: expected an HWC array with 1, 3 or 4 channels")


def _from_tensor(tensor: torch.Tensor) -> PIL.Image.Image:
    name = describe(tensor)
    t = tensor.detach().cpu()
    if t.is_floating_point():
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ValueError(f"image {name}: float tensors must hold values in [0, 1]")
        t = (t * 255).round().to(torch.uint8)
    elif t.dtype != torch.uint8:
        raise ValueError(f"image {name}: tensors must be uint8 or float in [0, 1]")
    if t.ndim == 3 and t.shape[0] in (1, 3, 4):
        return _from_array(t.permute(1, 2, 0).numpy(), name=name)
    if t.ndim == 2:
        return _from_array(t.numpy(), name=name)
    raise ValueError(f"image {name}: expected a CHW tensor with 1, 3 or 4 channels")


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """8-bit RGB; transparency over white, 16/32-bit integer images scaled to 8 bits."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # PIL's own convert clips to 255, which turns a 16-bit scan white.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        image = PIL.Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = PIL.Image.fromarray(np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


# ---------------------------------------------------------------------------------------------
# Resizing and patches


def smart_resize(
    height: int,
    width: int,
    *,
    num_frames: int = 2,
    factor: int = 28,
    temporal_factor: int = 2,
    min_pixels: int = ImageConfig.min_pixels,
    max_pixels: int = ImageConfig.max_pixels,
) -> tuple[int, int]:
    """Target (height, width) in pixels: multiples of `factor`, `num_frames * h * w` in budget.

    Tiny images are first scaled up so the short side reaches `factor`; the int() truncation
    there and the banker's `round` below are the reference's and are kept on purpose.
    """
    if num_frames < temporal_factor:
        raise ValueError(f"num_frames {num_frames} must be at least temporal_factor {temporal_factor}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image {width}x{height} has an empty side")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    aspect = max(height, width) / min(height, width)
    if aspect > 200:
        raise ValueError(f"image {width}x{height} has aspect ratio {aspect:g} > 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify(
    frames: torch.Tensor,
    *,
    patch_size: int,
    temporal_patch_size: int,
    merge_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> VisionPatches:
    """(T, C, H, W) uint8 frames -> normalised, block-major flat patches (float32).

    Row order: temporal group, merge-block row, merge-block col, row in block, col in block.
    Each row is a (C, temporal, patch, patch) cube flattened, the Conv3d's weight layout.
    T == 1 is a still image, repeated to fill the temporal kernel. Layout and dtype change
    in one copy, then rescale-and-normalise runs in place as one multiply and one subtract:
    on a 1080p screenshot this is about three times faster than normalising first.
    """
    T, C, H, W = frames.shape
    frames_per_group = 1 if T == 1 else temporal_patch_size
    if T % frames_per_group:
        raise ValueError(f"{T} frames is not a multiple of temporal_patch_size {temporal_patch_size}")
    unit = patch_size * merge_size
    if H % unit or W % unit:
        raise ValueError(f"frame size {W}x{H} is not a multiple of {unit}")
    if len(mean) != C or len(std) != C:
        raise ValueError(f"mean {mean} and std {std} need one value per channel ({C})")
    t, h, w = T // frames_per_group, H // patch_size, W // patch_size
    m, p, tp = merge_size, patch_size, temporal_patch_size
    x = frames.reshape(t, frames_per_group, C, h // m, m, p, w // m, m, p)
    # (t, bh, bw, mh, mw, C, tp, ph, pw): block-major rows, Conv3d-layout columns
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).expand(t, h // m, w // m, m, m, C, tp, p, p)
    patches = torch.empty(x.shape, dtype=torch.float32)
    patches.copy_(x)
    scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float64))  # rescale 1/255 and divide by std at once
    shift = torch.tensor(mean, dtype=torch.float64) / torch.tensor(std, dtype=torch.float64)
    per_channel = patches.view(t * h * w, C, tp * p * p)
    per_channel.mul_(scale.to(torch.float32).view(1, C, 1)).sub_(shift.to(torch.float32).view(1, C, 1))
    return VisionPatches(pixel_values=patches.view(t * h * w, C * tp * p * p), grid_thw=(t, h, w))


def resize_to_budget(image: PIL.Image.Image, config: ImageConfig = ImageConfig()) -> PIL.Image.Image:
    """The picture the patches are cut from: `image` (RGB, as `load_image` gives it) resized,
    bicubic, to `smart_resize`'s size for `config`'s budget. What the model sees, for studies."""
    height, width = smart_resize(
        image.height,
        image.width,
        num_frames=config.temporal_patch_size,
        factor=config.factor,
        temporal_factor=config.temporal_patch_size,
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
    )
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), resample=PIL.Image.Resampling.BICUBIC)
    return image


def preprocess_image(image: ImageInput, config: ImageConfig = ImageConfig()) -> VisionPatches:
    """One image of any supported kind -> its patches, as the released model was trained."""
    pil = resize_to_budget(load_image(image, max_image_pixels=config.max_image_pixels), config)
    frame = torch.from_numpy(np.array(pil)).permute(2, 0, 1)  # (3, H, W) uint8
    return patchify(
        frame.unsqueeze(0),
        patch_size=config.patch_size,
        temporal_patch_size=config.temporal_patch_size,
        merge_size=config.merge_size,
        mean=config.image_mean,
        std=config.image_std,
    )
