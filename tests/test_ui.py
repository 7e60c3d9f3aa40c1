"""The PIL-drawn UI generator: deterministic screens, exact boxes on ink, grounding answers on
the described element, and a dataset the trainer's pipeline reads."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from agent.parsing import parse_box
from synth.scoring import score_grounding
from synth.tasks import grounding_samples, reading_samples, unique_targets
from synth.ui import SCREENS, UIConfig, draw_screen, generate
from train.collate import Encoder
from train.data import BadRecords, read_conversations
from vlm.processor import Processor

SEEDS = range(40)
TEXT_ROLES = ("heading", "text", "link")  # boxes that are the text's own box


def test_a_seed_draws_the_same_screen_and_viewports_cover_every_size():
    for seed in (0, 7, 123):
        a, b = draw_screen(seed), draw_screen(seed)
        assert a.png() == b.png() and a.placed == b.placed
    assert draw_screen(1).png() != draw_screen(2).png()
    assert {draw_screen(s).viewport for s in SEEDS} == set(SCREENS)
    for name in SCREENS:
        assert draw_screen(5, viewport=name).viewport == name
    with pytest.raises(ValueError, match="'tv'"):
        draw_screen(5, viewport="tv")


def test_every_box_is_inside_the_image_and_on_ink():
    checked = 0
    for seed in SEEDS:
        drawn = draw_screen(seed)
        pixels = np.asarray(drawn.image).astype(int)
        width, height = drawn.image.size
        for placed in drawn.placed:
            x1, y1, x2, y2 = placed.box_px
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, placed
            crop = pixels[y1:y2, x1:x2].reshape(-1, 3)
            assert len(np.unique(crop, axis=0)) > 1, f"{placed.element.description} on seed {seed} shows no ink"
            if placed.element.role in TEXT_ROLES:  # the box is tight: ink touches all four sides
                region = pixels[y1:y2, x1:x2]
                colours, counts = np.unique(crop, axis=0, return_counts=True)
                ink = (region != colours[counts.argmax()]).any(axis=2)
                rows, cols = np.nonzero(ink)
                slack = 2 + ink.shape[0] // 3  # PIL's text box is from glyph metrics: a trailing "," sits inside it
                assert rows.min() <= slack and rows.max() >= ink.shape[0] - 1 - slack, placed
                assert cols.min() <= slack and cols.max() >= ink.shape[1] - 1 - slack, placed
            if placed.element.role in ("button", "textbox", "checkbox"):  # the shape differs from what surrounds it
                ring = np.concatenate([pixels[max(0, y1 - 2), x1:x2], pixels[min(height - 1, y2 + 1), x1:x2]])
                assert (crop.mean(axis=0) != ring.mean(axis=0)).any(), placed
            checked += 1
    assert checked > 500


def test_an_element_cut_off_by_the_screen_edge_is_left_out_not_an_error():
    # unit 911 of the recipe's train stream drew a card whose last element ran 5 px past a
    # 1280x720 screen's bottom edge: `to_model_box` raised and the whole data stage stopped
    drawn = draw_screen(76401979042501, language="en")
    width, height = drawn.image.size
    assert drawn.placed and all(0 <= p.box_px[0] < p.box_px[2] <= width and 0 <= p.box_px[1] < p.box_px[3] <= height
                                for p in drawn.placed)


def test_grounding_answers_point_at_the_described_element():
    for seed in SEEDS:
        drawn = draw_screen(seed)
        targets = unique_targets(drawn)
        for sample in grounding_samples(drawn, "images/x.png", random.Random(seed), n=50):
            question, answer = sample.messages[0]["content"][1]["text"], sample.messages[1]["content"]
            matches = [p for p in targets if p.element.description in question]
            target = max(matches, key=lambda p: len(p.element.description))  # the longest quoted description
            assert parse_box(answer).as_list() == target.box.as_list() == sample.meta["box"]
            assert score_grounding(sample.meta, answer)
            text = target.element.text
            assert f'"{text}"' in question or target.element.description == "the page title"
        [read] = reading_samples(drawn, "images/x.png", random.Random(0)) or [None]
        if read is not None:
            assert [t for t, _ in read.meta["items"]] == [p.element.text for p in drawn.placed if p.element.text.strip()]


def test_the_dataset_is_the_same_for_any_number_of_workers_and_loads_in_the_trainer(tmp_path):
    config = UIConfig(n=14, seed=3, grounding_turns=3, nothink=0.5)
    one = generate(config, tmp_path / "one", workers=1, progress=False)
    two = generate(config, tmp_path / "two", workers=2, progress=False)
    assert (one / "data.jsonl").read_text() == (two / "data.jsonl").read_text()
    records = [json.loads(line) for line in (one / "data.jsonl").read_text().splitlines()]
    assert len(records) == 14 and {r["meta"]["kind"] for r in records} == {"grounding", "read"}
    images = {p["image"] for r in records for m in r["messages"] if isinstance(m["content"], list)
              for p in m["content"] if p["type"] == "image"}
    assert {f"images/{p.name}" for p in (one / "images").iterdir()} == images
    assert (one / "images" / "ui0000000.png").read_bytes() == (two / "images" / "ui0000000.png").read_bytes()
    bad = BadRecords(strict=True)
    conversations = read_conversations(one / "data.jsonl", bad=bad)
    encoder = Encoder(Processor.from_pretrained(), max_length=8192)
    for conversation in conversations[:4]:
        sample = encoder.encode(conversation.messages)
        assert sample.pixel_values is not None and sample.image_grid_thw.shape[0] == 1


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "synth.ui", *args], capture_output=True, text=True, timeout=300)


def test_the_cli_writes_atomically_and_names_bad_arguments(tmp_path):
    out = tmp_path / "ui"
    result = _cli("--out", str(out), "--n", "3", "--seed", "1", "--workers", "1", "--kinds", "grounding")
    assert result.returncode == 0, result.stderr
    assert len((out / "data.jsonl").read_text().splitlines()) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ui"]  # no staging directory left
    again = _cli("--out", str(out), "--n", "3")
    assert again.returncode != 0 and "exists" in again.stderr
    for args, named in ((("--kinds", "grounding,qa"), "'qa'"), (("--n", "0"), "n=0"),
                        (("--languages", "en,xx"), "'xx'"), (("--workers", "0"), "--workers 0"),
                        (("--nothink", "2"), "nothink=2")):
        result = _cli("--out", str(tmp_path / "bad"), "--n", "3", *args)
        assert result.returncode == 2 and named in result.stderr, (args, result.stderr)
    assert not (tmp_path / "bad").exists()


def test_the_recipe_mixes_drawn_uis_into_its_data_and_reuses_them(tmp_path):
    from recipes.recipe import Recipe
    from recipes.stages import make_data

    recipe = Recipe(size="tiny", samples=0, ui_samples=6, batch_size=2, kinds="grounding:24,read:16,video:2")
    assert recipe.ui_config(6).kinds == ("grounding", "read")
    data = make_data(recipe, tmp_path, workers=1, progress=False)
    assert data == tmp_path / "data" / "data.jsonl"
    conversations = read_conversations(data, bad=BadRecords(strict=True))  # every image resolves from data/
    assert len(conversations) == 6
    first = data.read_text()
    assert '"../ui/images/ui0000000.png"' in first
    data.unlink()  # the mix is rebuilt from the kept part, identically
    assert make_data(recipe, tmp_path, workers=1, progress=False).read_text() == first
    with pytest.raises(ValueError, match="ui_samples=1"):
        Recipe(samples=0, ui_samples=1)
