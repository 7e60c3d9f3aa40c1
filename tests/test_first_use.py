"""`recipes.first_use`: a box on the asked button (or the red square) counts, a box elsewhere does not.

The model is the scripted tiny checkpoint (`_scripted_checkpoint`), whose greedy answer is one
box whatever it is shown, run by the real engine on pages rendered by real Chromium; so a box
scripted onto the toolbar page's "Sign in" must score as a hit there and as a miss for "Cancel".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from _scripted_checkpoint import build_scripted_checkpoint
from recipes import first_use
from vlm import VLM

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_thread")]
README = Path(__file__).resolve().parent.parent / "README.md"


def box_on(truth: first_use.Px, *, width: int, height: int) -> tuple[int, int, int, int]:
    """A 0-999 box whose centre in pixels (`to_pixels`, as scored) lies near the middle of `truth`,
    written with ten different digits at most: the scripted checkpoint tells a repeated digit's
    successors apart only by its neighbours, so distinct digits always script."""
    def pairs(lo: float, hi: float, size: int) -> dict[frozenset[str], tuple[float, int, int]]:
        best: dict[frozenset[str], tuple[float, int, int]] = {}  # digits used -> the pair nearest the middle
        for a in range(1000):
            for b in range(max(a, int(2000 * lo / size) - a - 1), 1000):  # from just below lo
                centre = (a + b + 1) / 2 * size / 1000
                if centre >= hi:
                    break
                digits = f"{a}{b}"
                if lo < centre < hi and len(set(digits)) == len(digits):
                    fit = (abs(centre - (lo + hi) / 2) / (hi - lo), a, b)
                    best[frozenset(digits)] = min(best.get(frozenset(digits), fit), fit)
        return best
    xs, ys = pairs(truth[0], truth[2], width), pairs(truth[1], truth[3], height)
    fits = [(max(dx, dy), (x1, y1, x2, y2)) for kx, (dx, x1, x2) in xs.items()
            for ky, (dy, y1, y2) in ys.items() if not kx & ky]
    assert fits, f"no box with distinct digits is centred in {truth}"
    return min(fits)[1]


def scripted_box(out_dir: Path, box: tuple[int, int, int, int]) -> VLM:
    answer = "<|begin_of_box|>[" + ",".join(map(str, box)) + "]<|end_of_box|>"
    return VLM.from_pretrained(build_scripted_checkpoint(out_dir, answer=answer).path)


@pytest.fixture(scope="module")
def shots() -> dict[str, first_use.Shot]:
    return {shot.page: shot for shot in first_use.render_pages()}


@pytest.fixture(scope="module")
def square() -> first_use.Px:
    with Image.open(first_use.SHAPES) as image:
        return first_use.red_box(image)


@pytest.fixture(scope="module")
def on_sign_in(shots, tmp_path_factory) -> VLM:
    """Answers a box centred on the toolbar page's "Sign in" button (top right), to every question."""
    box = box_on(shots["toolbar"].buttons["Sign in"], **first_use.VIEWPORT)
    return scripted_box(tmp_path_factory.mktemp("on_sign_in"), box)


@pytest.fixture(scope="module")
def on_square(square, tmp_path_factory) -> VLM:
    with Image.open(first_use.SHAPES) as image:
        box = box_on(square, width=image.width, height=image.height)
    return scripted_box(tmp_path_factory.mktemp("on_square"), box)


def test_a_box_centred_on_the_asked_button_is_counted_correct(on_sign_in, shots):
    [asked] = [a for a in first_use.ask_buttons(on_sign_in, [shots["toolbar"]]) if a.target == "Sign in"]
    assert asked.correct and asked.question == "Where is the Sign in button? Answer with its bounding box."
    left, top, right, bottom = asked.answered
    x1, y1, x2, y2 = asked.truth
    assert x1 < (left + right) / 2 < x2 and y1 < (top + bottom) / 2 < y2


def test_the_same_box_is_wrong_for_another_button_or_on_another_page(on_sign_in, shots):
    toolbar = {a.target: a.correct for a in first_use.ask_buttons(on_sign_in, [shots["toolbar"]])}
    assert toolbar == {"Sign in": True, "Cancel": False, "Help": False}
    column = {a.target: a.correct for a in first_use.ask_buttons(on_sign_in, [shots["column"]])}
    assert column == {"Sign in": False, "Cancel": False, "Help": False}  # its buttons are at the left


def test_a_box_on_the_red_square_is_a_hit(on_square):
    asked = first_use.ask_red_square(on_square)
    assert asked.correct and asked.target == "red square" and asked.image == "shapes.png"


def test_a_box_beside_the_red_square_is_a_miss(on_sign_in, square):
    asked = first_use.ask_red_square(on_sign_in)
    assert asked.answered is not None and not asked.correct


def test_the_centre_must_lie_inside_on_both_axes_and_no_box_is_a_miss():
    def hit(answer: str) -> bool:  # a 640x400 image; the target is the middle 40x40 pixels
        return first_use.score(answer, (300, 180, 340, 220), width=640, height=400)[1]
    assert hit("<|begin_of_box|>[400,400,599,599]<|end_of_box|>")  # centre (320, 200) px
    assert not hit("<|begin_of_box|>[400,100,599,299]<|end_of_box|>")  # right column, above it
    assert not hit("<|begin_of_box|>[100,400,299,599]<|end_of_box|>")  # right row, left of it
    assert hit("<|begin_of_box|>[499,499]<|end_of_box|>")  # a point on it counts
    for no_box in ("It is in the middle.", "[400,400,599,599]",  # no box tokens
                   "<|begin_of_box|>[21,154,2878]<|end_of_box|>"):  # three numbers (the shipped model's answer)
        assert first_use.score(no_box, (0, 0, 640, 400), width=640, height=400) == (None, False)


def test_the_red_square_is_found_from_its_pixels(square):
    image = Image.new("RGB", (300, 200), (244, 241, 234))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 10, 90, 90), fill=(31, 119, 180))
    draw.rectangle((120, 40, 179, 139), fill=(214, 39, 40))  # inclusive corners: 60 x 100 pixels
    assert first_use.red_box(image) == (120, 40, 180, 140)
    assert square == (80, 100, 231, 251)  # the demo's example, as it looks
    with pytest.raises(ValueError, match="300x200 has no red pixels"):
        first_use.red_box(Image.new("RGB", (300, 200), "white"))


def test_the_command_counts_every_page_and_writes_json(on_sign_in, tmp_path, capsys):
    out = tmp_path / "first_use.json"
    first_use.main(["--model", str(on_sign_in.path), "--out", str(out)])
    result = json.loads(out.read_text())
    asked = {(a["image"], a["target"]): a["correct"] for a in result["asked"]}
    assert len(asked) == result["n"] == len(first_use.PAGES) * 3
    assert asked[("toolbar", "Sign in")] and not asked[("toolbar", "Cancel")]
    assert result["accuracy"] == sum(asked.values()) / result["n"]
    assert sum(g["correct"] for g in result["groups"].values()) == sum(asked.values())
    assert result["red_square"]["correct"] is False
    assert list(tmp_path.iterdir()) == [out]  # written atomically, nothing left beside it
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"first use: {sum(asked.values())}/15 buttons boxed, red square missed"


def test_a_missing_model_directory_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        first_use.main(["--model", str(tmp_path / "nope")])
    assert f"--model {tmp_path / 'nope'}: no such directory; expected a checkpoint directory" in capsys.readouterr().err


def test_the_questions_are_the_readme_example_and_the_demos(tmp_path):
    from demo.app import EXAMPLES_DIR, Settings, _examples

    example = re.search(r'vlm\.generate\("([^"]+)", images=\["shot\.png"\], thinking=False\)', README.read_text())
    assert example and example.group(1) == first_use.QUESTION.format("Sign in")
    assert _examples(EXAMPLES_DIR)[0] == {"text": first_use.RED_SQUARE, "files": [str(first_use.SHAPES)]}
    assert (Settings().thinking, Settings().max_new_tokens) == (first_use.DEMO_THINKING, first_use.DEMO_MAX_NEW_TOKENS)


def test_the_recipes_full_eval_measures_it_once_and_caches_it(on_sign_in, tmp_path, monkeypatch):
    from recipes import stages
    from recipes.recipe import Recipe

    monkeypatch.setattr(stages, "eval_runs", lambda recipe, mode: [])  # the held-out evals are tested elsewhere
    results = stages.evaluate_model(Recipe(), on_sign_in.path, tmp_path, workers=1, mode="full")
    cached = json.loads((tmp_path / "eval" / "first_use.json").read_text())
    assert results["first_use"] == cached and cached["n"] == 15 and cached["measured"].startswith("full eval on ")

    def not_again(*args, **kwargs):
        raise AssertionError("measured again despite work/eval/first_use.json")
    monkeypatch.setattr(first_use, "measure", not_again)
    assert stages.evaluate_model(Recipe(), on_sign_in.path, tmp_path, workers=1, mode="full") == results
    assert "first_use" not in stages.evaluate_model(Recipe(), on_sign_in.path, tmp_path, workers=1, mode="browserless")
