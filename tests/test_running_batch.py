"""Continuous batching: rows that join a running batch at different steps, with different prompts,
images, lengths, sampling and stop strings, produce what `VLM.generate` gives each alone; rows that
leave (ended or dropped) free their slot and the cache keeps no all-padding columns."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from vlm import VLM, GenerationOptions
from vlm.engine import Chat
from vlm.running_batch import RunningBatch


@pytest.fixture(scope="module")
def vlm():
    return VLM.from_pretrained()  # the shipped model: real, varied answers


def _screen(colour: str, size=(320, 200)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle((40, 30, 160, 90), fill=colour)
    return image


REQUESTS = [  # (prompt, image, options, stop)
    ("Where is the red box?", _screen("red"), dict(max_new_tokens=20), None),
    ("Describe this screen.", _screen("blue", (200, 320)), dict(max_new_tokens=12), None),
    ("What is 2+2?", None, dict(max_new_tokens=30, temperature=0.9, top_p=0.9, seed=7), None),
    ("Click the green button.", _screen("green"), dict(max_new_tokens=25, repetition_penalty=1.2), ["\n"]),
    ("Hi", None, dict(max_new_tokens=1), None),
]


def _chat(prompt, image, stop):
    return Chat.of(prompt, images=[image] if image else None, videos=None, system=None, thinking=None,
                   stop=stop, stream=False)


def _alone(vlm, prompt, image, options, stop):
    return vlm.generate(prompt, images=[image] if image else None, stop=stop, **options)


def test_rows_joining_at_different_steps_equal_each_request_alone(vlm):
    batch = RunningBatch(vlm.model, vlm.require_processor(), stop_token_ids=vlm.stop_token_ids())
    results, pieces = {}, {}
    join_at = {0: [0, 1], 3: [2], 5: [3, 4]}  # step -> requests admitted before it
    step = 0
    while len(results) < len(REQUESTS):
        for i in join_at.get(step, []):
            prompt, image, options, stop = REQUESTS[i]
            update = batch.admit(_chat(prompt, image, stop), GenerationOptions(**options), key=i)
            pieces[i] = list(update.pieces)
            if update.generation is not None:
                results[i] = update.generation
        for update in batch.step():
            pieces[update.row.key] += update.pieces
            if update.generation is not None:
                results[update.row.key] = update.generation
                assert update.row not in batch.rows  # an ended row leaves at once
        step += 1
        assert step < 200
    assert batch.rows == [] and batch.cache is None
    for i, (prompt, image, options, stop) in enumerate(REQUESTS):
        alone = _alone(vlm, prompt, image, options, stop)
        got = results[i]
        assert got.token_ids == alone.token_ids, i
        assert (got.text, got.thinking, got.finish_reason, got.boxes) == (
            alone.text, alone.thinking, alone.finish_reason, alone.boxes), i
        assert "".join(p for c, p in pieces[i] if c == "answer") == got.text


def test_a_dropped_row_frees_its_slot_and_padding_columns_go(vlm):
    batch = RunningBatch(vlm.model, vlm.require_processor(), stop_token_ids=vlm.stop_token_ids())
    long = batch.admit(_chat("Where is the red box?", _screen("red", (640, 400)), None),
                       GenerationOptions(max_new_tokens=40)).row
    short = batch.admit(_chat("Hi", None, None), GenerationOptions(max_new_tokens=40)).row
    batch.step()
    assert batch.padded and len(batch.rows) == 2
    width = batch.cache.length
    batch.drop(long)
    # only the short row is left: the long prompt's columns (padding for it) are gone
    assert batch.rows == [short] and not batch.padded and batch.cache.length < width
    updates = batch.step()
    alone = vlm.generate("Hi", max_new_tokens=40)
    assert [u.row for u in updates] == [short] or updates[0].generation is not None
    while batch.rows:
        updates = batch.step()
    assert updates[0].generation.token_ids == alone.token_ids
