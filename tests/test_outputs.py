"""Reading answers: thinking split, boxes in every bracket style (property-tested), pixel
conversion that never leaves the image, display text without special tokens."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.actions import Box, Point
from vlm.outputs import boxes_in_pixels, parse_boxes, split_thinking, strip_special_tokens, to_pixels

coord = st.integers(min_value=0, max_value=999)


@st.composite
def boxes(draw):
    x1, x2 = sorted((draw(coord), draw(coord)))
    y1, y2 = sorted((draw(coord), draw(coord)))
    return Box(x1, y1, x2, y2)


points = st.builds(Point, coord, coord)
targets = st.lists(st.one_of(boxes(), points), min_size=1, max_size=4)
spaces = st.sampled_from(["", " "])


def numbers(target, sep):
    values = target.as_list() if isinstance(target, Box) else [target.x, target.y]
    return sep.join(str(v) for v in values)


def render(found, style, sep):
    """Write targets the ways the model does."""
    if style == "flat":  # [x1,y1,x2,y2] [x,y]
        return ", ".join(f"[{numbers(t, sep)}]" for t in found)
    if style == "nested":  # [[x1,y1,x2,y2],[x,y]]
        return "[" + ",".join(f"[{numbers(t, sep)}]" for t in found) + "]"
    if style == "round":  # (x1,y1,x2,y2)
        return " and ".join(f"({numbers(t, sep)})" for t in found)
    # a GUI action: left_click(start_box='[x,y]')
    return " ".join(f"left_click(start_box='[{numbers(t, sep)}]', element_info='OK')" for t in found)


@settings(max_examples=300, deadline=None)
@given(found=targets, style=st.sampled_from(["flat", "nested", "round", "action"]), sep=st.sampled_from([",", ", "]),
       before=st.text(alphabet="abc xyz.:\n", max_size=20), split=st.booleans())
def test_boxes_round_trip_in_every_bracket_style(found, style, sep, before, split):
    if split:  # one box span per target, with prose between
        text = before + " then ".join(f"<|begin_of_box|>{render([t], style, sep)}<|end_of_box|>" for t in found)
    else:
        text = f"{before}<|begin_of_box|>{render(found, style, sep)}<|end_of_box|> done"
    assert parse_boxes(text) == found


def test_boxes_outside_box_tokens_need_anywhere():
    text = "The cat is at [10,20,30,40]; <|begin_of_box|>[1,2]<|end_of_box|>"
    assert parse_boxes(text) == [Point(1, 2)]
    assert parse_boxes(text, anywhere=True) == [Box(10, 20, 30, 40), Point(1, 2)]


def test_sloppy_coordinates_are_clamped_and_ordered():
    text = "<|begin_of_box|>[500, 1000, 100, 20.4]<|end_of_box|><|begin_of_box|>[1, 2, 3]<|end_of_box|>"
    assert parse_boxes(text) == [Box(100, 20, 500, 999)]  # 3 numbers is no coordinate
    assert parse_boxes("<|begin_of_box|>[7,8") == []  # cut off inside a group: nothing to trust
    assert parse_boxes("<|begin_of_box|>[7,8] and [9,") == [Point(7, 8)]


@settings(max_examples=200, deadline=None)
@given(box=boxes(), width=st.integers(1, 8000), height=st.integers(1, 8000))
def test_pixels_stay_inside_the_original_image(box, width, height):
    left, top, right, bottom = to_pixels(box, width=width, height=height)
    assert 0 <= left < right <= width + 1e-9 and 0 <= top < bottom <= height + 1e-9
    x, y = to_pixels(box.center, width=width, height=height)
    assert left <= x <= right and top <= y <= bottom


def test_full_box_is_the_full_image():
    assert to_pixels(Box(0, 0, 999, 999), width=1920, height=1080) == (0, 0, 1920, 1080)
    assert to_pixels(Point(499, 999), width=1000, height=500) == (499.5, 499.75)
    with pytest.raises(ValueError, match="positive"):
        to_pixels(Point(1, 1), width=0, height=10)


def test_split_thinking():
    reply = split_thinking("<think>Look left.\n</think>\nIt is <|begin_of_box|>[1,2]<|end_of_box|>.<|user|>")
    assert reply.thinking == "Look left." and reply.answer == "It is <|begin_of_box|>[1,2]<|end_of_box|>."
    assert split_thinking("<think></think>\nHi").thinking == ""
    assert split_thinking("Hi<|endoftext|>").answer == "Hi"
    cut = split_thinking("<think>step 1, step 2")
    assert cut.thinking == "step 1, step 2" and cut.answer == "" and not cut.finished_thinking


def test_strip_special_tokens_keeps_box_contents():
    text = "[gMASK]<sop><think>x</think>The OK button: <|begin_of_box|>[1,2,3,4]<|end_of_box|><|endoftext|>"
    assert strip_special_tokens(text) == "xThe OK button: [1,2,3,4]"
    assert strip_special_tokens(split_thinking(text).answer) == "The OK button: [1,2,3,4]"


def test_boxes_in_pixels_writes_each_span_in_pixels_and_keeps_the_model_values_labelled():
    text = "A <|begin_of_box|>[0,0,999,999]<|end_of_box|> and B <|begin_of_box|>(500,500)<|end_of_box|>."
    assert boxes_in_pixels(text, width=1000, height=500) == (
        "A [0, 0, 1000, 500] px (0-999: [0,0,999,999]) and B [500, 250] px (0-999: (500,500)).")
    assert boxes_in_pixels("<|begin_of_box|>not a box<|end_of_box|>", width=10, height=10) == "not a box"
