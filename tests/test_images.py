"""Image preprocessing: parity with transformers' Glm4vImageProcessorPil, every input kind,
EXIF and mode handling, clear errors, and smart_resize invariants."""

import base64
import io
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.glm4v.image_processing_glm4v import smart_resize as reference_smart_resize
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

from vlm.images import ImageConfig, load_image, preprocess_image, resize_to_budget, smart_resize

BUDGET = ImageConfig()


def random_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def reference():
    return Glm4vImageProcessorPil(size={"shortest_edge": BUDGET.min_pixels, "longest_edge": BUDGET.max_pixels})


@pytest.mark.parametrize("width,height", [(1280, 720), (1080, 2400), (503, 37), (28, 28), (20, 20), pytest.param(2990, 1711, marks=pytest.mark.slow)])
def test_pixel_values_equal_transformers(reference, width, height):
    image = random_image(width, height)
    expected = reference(image, return_tensors="pt")
    ours = preprocess_image(image, BUDGET)
    assert list(ours.grid_thw) == expected["image_grid_thw"][0].tolist()
    assert ours.pixel_values.shape == expected["pixel_values"].shape
    assert torch.allclose(ours.pixel_values, expected["pixel_values"], atol=1e-4, rtol=0)


def test_every_input_kind_gives_the_same_patches(tmp_path):
    image = random_image(97, 61, seed=1)
    png = io.BytesIO()
    image.save(png, format="PNG")
    path = tmp_path / "shot.png"
    path.write_bytes(png.getvalue())
    array = np.array(image)
    inputs = [
        str(path),
        path,
        image,
        array,
        torch.from_numpy(array).permute(2, 0, 1),
        torch.from_numpy(array).permute(2, 0, 1).float() / 255,
        png.getvalue(),
        "data:image/png;base64," + base64.b64encode(png.getvalue()).decode(),
    ]
    expected = preprocess_image(image).pixel_values
    for value in inputs:
        assert torch.equal(preprocess_image(value).pixel_values, expected), type(value)


def test_resize_to_budget_gives_the_picture_the_patches_are_cut_from():
    image, config = random_image(1280, 720, seed=2), ImageConfig(max_pixels=640_000)
    picture = resize_to_budget(image, config)
    assert (picture.height, picture.width) == smart_resize(720, 1280, max_pixels=640_000) == (420, 728)
    assert torch.equal(preprocess_image(picture, config).pixel_values, preprocess_image(image, config).pixel_values)


def test_exif_orientation_is_applied(tmp_path):
    # 40 wide x 20 high, left half red; orientation 6 means "rotate 90 degrees clockwise to view".
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    PIL.Image.fromarray(pixels).save(path, exif=exif, quality=95)
    upright = load_image(path)
    assert upright.size == (20, 40)
    top, bottom = np.asarray(upright)[2, 10], np.asarray(upright)[37, 10]
    assert top[0] > 200 and top[1] < 60  # red on top after rotating clockwise
    assert bottom[0] < 60
    assert load_image(PIL.Image.open(path)).size == (20, 40)  # also for PIL images opened by the caller


def test_modes_convert_to_rgb():
    transparent = PIL.Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert np.asarray(load_image(transparent))[0, 0].tolist() == [255, 255, 255]  # over white, not black
    gray_alpha = PIL.Image.new("LA", (8, 8), (10, 255))
    assert np.asarray(load_image(gray_alpha))[0, 0].tolist() == [10, 10, 10]
    palette = PIL.Image.new("P", (8, 8), 3)
    palette.putpalette([0, 0, 0] * 3 + [1, 2, 3] + [0, 0, 0] * 252)
    assert np.asarray(load_image(palette))[0, 0].tolist() == [1, 2, 3]
    cmyk = PIL.Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    assert np.asarray(load_image(cmyk))[0, 0].tolist() == [255, 0, 0]
    sixteen = PIL.Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    assert np.asarray(load_image(sixteen))[0, 0].tolist() == [128, 128, 128]  # scaled, not clipped to 255
    gray = np.full((8, 8), 77, dtype=np.uint8)
    assert np.asarray(load_image(gray))[0, 0].tolist() == [77, 77, 77]
    for image in (transparent, sixteen, cmyk):
        assert load_image(image).mode == "RGB"


def test_not_an_image_is_refused_by_name(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt"):
        load_image(path)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="5 bytes"):
        load_image(b"hello")
    with pytest.raises(ValueError, match="base64"):
        load_image("data:image/png;base64,@@@")
    with pytest.raises(ValueError, match="uint8"):
        load_image(np.zeros((4, 4, 3), dtype=np.float64))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # A 3000x3000 PNG of one colour is a few kB; with a 1 MP limit its header alone refuses it.
    path = tmp_path / "bomb.png"
    PIL.Image.new("L", (3000, 3000)).save(path)
    assert path.stat().st_size < 50_000
    with pytest.raises(ValueError, match=r"bomb\.png.*3000x3000.*decompression-bomb"):
        load_image(path, max_image_pixels=1_000_000)
    with pytest.raises(ValueError, match="decompression-bomb"):
        preprocess_image(path.read_bytes(), ImageConfig(max_image_pixels=1_000_000))


def test_aspect_ratio_over_200_is_refused():
    with pytest.raises(ValueError, match="aspect ratio 300 > 200"):
        smart_resize(10, 3000)


sides = st.integers(min_value=1, max_value=8000)


@settings(max_examples=300, deadline=None)
@given(height=sides, width=sides, max_tokens=st.integers(min_value=64, max_value=16384))
def test_smart_resize_equals_transformers_and_keeps_its_invariants(height, width, max_tokens):
    min_pixels, max_pixels = 112 * 112, 28 * 28 * 2 * max_tokens
    try:
        expected = reference_smart_resize(2, height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError:
        with pytest.raises(ValueError, match="aspect ratio"):
            smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
        return
    h, w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    assert (h, w) == expected
    assert h % 28 == 0 and w % 28 == 0 and h >= 28 and w >= 28
    # Within budget (both frames counted); only a side clamped at one block may exceed it.
    assert 2 * h * w <= max_pixels or min(h, w) == 28
    assert 2 * h * w >= min_pixels
    # The aspect ratio survives up to one block per side: some common scale s fits both sides.
    up = max(28 / height, 28 / width, 1.0)
    h0, w0 = int(height * up) if up > 1 else height, int(width * up) if up > 1 else width
    low = max((h - 28) / h0, (w - 28) / w0)
    high = min((h + 28) / h0, (w + 28) / w0)
    assert low <= high + 1e-9 or min(h, w) == 28
