"""Text pictures for the reading stage: every label points at ink, and each patch names its characters."""

import random

import numpy as np
import pytest

from synth import text


def _ink_near(picture: text.TextPicture, glyph: text.Glyph, radius: int = 3) -> bool:
    pixels = np.asarray(picture.image, dtype=np.int16)
    x, y = int(glyph.x), int(glyph.y)
    window = pixels[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
    corners = np.stack([pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]])
    background = np.median(corners, axis=0)
    return bool((np.abs(window - background).sum(-1) > 60).any())


def test_pictures_are_a_pure_function_of_the_stream():
    a, b = text.draw(random.Random(5)), text.draw(random.Random(5))
    assert a.image.tobytes() == b.image.tobytes() and a.glyphs == b.glyphs and a.lines == b.lines
    assert a.image.size == (224, 112)


@pytest.mark.parametrize("seed", range(6))
def test_every_glyph_sits_on_ink_inside_the_picture(seed):
    picture = text.draw(random.Random(seed), size=(336, 112))
    assert picture.glyphs, "a picture with no text teaches nothing"
    width, height = picture.image.size
    drawn = "".join(line.replace(" ", "") for line in picture.lines)
    assert "".join(g.char for g in picture.glyphs) == drawn
    inside = [g for g in picture.glyphs if 0 <= g.x < width and 0 <= g.y < height]
    assert len(inside) >= 0.9 * len(picture.glyphs)
    on_ink = [_ink_near(picture, g) for g in inside]
    assert sum(on_ink) >= 0.95 * len(inside), f"labels off the text: {sum(on_ink)}/{len(inside)}"


def test_patch_labels_name_the_characters_centred_in_each_patch_left_to_right():
    picture = text.TextPicture(image=text.Image.new("RGB", (56, 28)), lines=("ab", "c"), scale=1.0,
                               glyphs=(text.Glyph("b", 9.0, 5.0), text.Glyph("a", 2.0, 5.0),
                                       text.Glyph("c", 20.0, 20.0), text.Glyph("é", 30.0, 3.0),
                                       text.Glyph("x", 60.0, 3.0)))  # x: outside, dropped
    labels = text.patch_labels(picture, slots=2)
    assert labels.shape == (2, 4, 2)
    assert labels[0, 0].tolist() == [text.CHARSET.index("a"), text.CHARSET.index("b")]
    assert labels[1, 1].tolist() == [text.CHARSET.index("c"), text.NONE]
    assert labels[0, 2].tolist() == [text.OTHER, text.NONE]
    assert (labels != text.NONE).sum() == 4


def test_overflowing_patches_keep_the_leftmost_characters():
    glyphs = tuple(text.Glyph(c, 1.0 + 3 * i, 7.0) for i, c in enumerate("wxyz"))
    picture = text.TextPicture(text.Image.new("RGB", (28, 28)), glyphs, ("wxyz",), 1.0)
    assert text.patch_labels(picture, slots=3)[0, 0].tolist() == [text.CHARSET.index(c) for c in "wxy"]


def test_text_reaches_the_input_at_the_scale_asked_for():
    rng = random.Random(0)
    small = [text.draw(rng, scale=(0.45, 0.45)) for _ in range(8)]
    large = [text.draw(rng, scale=(1.0, 1.0)) for _ in range(8)]
    per_patch = [np.mean([(text.patch_labels(p) != text.NONE).sum() / max(1, len({(int(g.x // 14), int(g.y // 14))
                                                                                   for g in p.glyphs}))
                          for p in ps]) for ps in (small, large)]
    assert per_patch[0] > per_patch[1]  # smaller text: more characters share a patch
