"""The vision-encoder learnability probe: the pictures, and that it does learn what is learnable."""

import random

import pytest
import torch

from recipes.recipe import IMAGE_MAX_PIXELS
from recipes.learnability import COLOURS, WORDS, batch, labels, main, picture, run
from vlm.images import ImageConfig


def test_pictures_are_a_pure_function_of_the_stream_and_show_their_label():
    a, label_a = picture("colour", random.Random(3))
    b, label_b = picture("colour", random.Random(3))
    assert label_a == label_b and a.tobytes() == b.tobytes()
    assert labels("colour") == tuple(COLOURS) and labels("word") == WORDS
    assert COLOURS[labels("colour")[label_a]] in {c for _, c in a.getcolors(1 << 16)}
    word, _ = picture("word", random.Random(3))
    assert len(word.getcolors(1 << 16)) > 2  # anti-aliased text, not an empty canvas


def test_batches_are_resized_to_the_default_models_screenshot_budget():
    b = batch("word", random.Random(0), 3, ImageConfig(max_pixels=IMAGE_MAX_PIXELS))
    assert b.grid_thw.tolist() == [[1, 30, 52]] * 3  # 1280x720 -> 728x420, as screenshots
    assert b.pixel_values.shape[0] == 3 * 30 * 52 and b.labels.shape == (3,)


@pytest.mark.slow
def test_the_encoder_learns_a_colour_from_scratch():
    """Chance is 1/8; the shipped size learns the square's colour within 25 steps. The probe
    therefore can tell a learnable property from one the encoder does not pick up."""
    assert run("colour", steps=25, every=100, n_test=64) >= 0.75


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="task 'shape'"):
        run("shape", steps=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps=0"):
        run("colour", steps=0)
    with pytest.raises(ValueError, match="word_px=3"):
        run("word", steps=1, word_px=3)
    with pytest.raises(SystemExit):
        main(["shape"])


def test_word_size_is_a_choice_and_small_words_are_small():
    def ink_height(word_px: int) -> int:
        image, _ = picture("word", random.Random(5), word_px=word_px)
        box = image.convert("L").point(lambda v: 255 if v < 200 else 0).getbbox()
        return box[3] - box[1]

    assert picture("word", random.Random(5))[0].tobytes() == picture("word", random.Random(5), word_px=48)[0].tobytes()
    assert 2.5 * ink_height(16) < ink_height(48)
