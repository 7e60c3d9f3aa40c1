"""UI text at the model's input: the OCR match counts what it should, the specimen's boxes are
the words', and at the recipe's pixel budget an offline OCR model reads the data engine's drawn
UIs while at a ~x0.27 budget it does not (so the check measures legibility and can fail)."""

import numpy as np
import pytest

from recipes.legibility import FONT_PX, Label, Reader, Word, drawn_screens, measure, share, specimen, words_read
from recipes.recipe import IMAGE_MAX_PIXELS

SMALL_BUDGET = 160_000  # a 1280x720 screen becomes 364x196 (x0.27); the recipe's: 728x420 (x0.58)


def test_words_are_matched_by_centre_casefolded_each_counted_once():
    labels = [Label("Sign in", (10, 10, 70, 24)), Label("Cancel", (90, 10, 140, 24)),
              Label("in in", (10, 100, 40, 114)), Label("Menu", (0, 0, 300, 200))]
    found = [Word("SIGN", 25, 17), Word("in", 55, 17),  # inside "Sign in" (and inside "Menu": the smaller wins)
             Word("Cancel", 115, 26),  # just below the box: boxes grow by a quarter of their height
             Word("in", 20, 107),  # one of two
             Word("Cancel", 250, 150)]  # in "Menu" only: a word of another label does not count
    assert words_read(labels, found) == [2, 1, 1, 0]
    assert words_read(labels, []) == [0, 0, 0, 0]


def test_specimen_labels_are_the_drawn_words_at_every_font_size():
    screens = specimen("task", seed=3, per_size=4)
    labels = [label for s in screens for label in s.labels]
    assert {label.font_px for label in labels} == set(FONT_PX)
    for screen in screens:
        pixels = np.asarray(screen.image).astype(int)
        background = pixels[0, 0]
        for label in screen.labels:
            x1, y1, x2, y2 = (int(v) for v in label.box)
            assert 0 <= x1 < x2 <= screen.image.width and 0 <= y1 < y2 <= screen.image.height
            assert np.abs(pixels[y1:y2, x1:x2] - background).sum(axis=2).max() > 60, label  # ink in the box
            assert " " not in label.text


@pytest.mark.slow
def test_the_recipe_budget_keeps_drawn_ui_text_legible_and_a_small_budget_does_not():
    screens = drawn_screens(["desktop"], n=3, seed=0)  # 1280x720-ish, 12-22 px text, 76 elements
    outcomes = measure(screens, (IMAGE_MAX_PIXELS, SMALL_BUDGET), Reader(threads=1))
    at_recipe = share(o for o in outcomes if o.budget == IMAGE_MAX_PIXELS)
    at_small = share(o for o in outcomes if o.budget == SMALL_BUDGET)
    # measured: 0.95 and 0.35 (`python -m recipes.legibility`: 0.93 and 0.20 over 4 screens)
    assert at_recipe >= 0.9
    assert at_small <= 0.5 and at_recipe - at_small >= 0.4
