"""Scoring: the engine's own answers score right, near misses score wrong."""

import pytest

from synth.scoring import normalise, score

GROUNDING = {"kind": "grounding", "box": [100, 200, 180, 240]}


def test_grounding_is_point_in_box():
    assert score(GROUNDING, "<|begin_of_box|>[100,200,180,240]<|end_of_box|>")
    assert score(GROUNDING, "<think>the button</think><|begin_of_box|>[[120, 210, 150, 230]]<|end_of_box|>")
    assert score(GROUNDING, "[140, 220]")  # a point inside
    assert not score(GROUNDING, "<|begin_of_box|>[170,200,260,240]<|end_of_box|>")  # centre at x=215
    assert not score(GROUNDING, "I cannot find it.")


@pytest.mark.parametrize("fmt,right,wrong", [
    ("desktop", "ok\n<|begin_of_box|>left_click(start_box='[150, 220]')<|end_of_box|>\nMemory:\n[]",
     "ok\n<|begin_of_box|>left_click(start_box='[190, 220]')<|end_of_box|>\nMemory:\n[]"),
    ("mobile", 'Memory: \nReason: x\nAction: {"action_type": "click", "box_2d": [[110, 205, 170, 235]]}',
     'Memory: \nReason: x\nAction: {"action_type": "long_press", "box_2d": [[110, 205, 170, 235]]}'),
    ("web", "Thought: x\nAction: Click [7]\nMemory_Updated: {}", "Thought: x\nAction: Click [8]\nMemory_Updated: {}"),
])
def test_click_must_hit_the_element(fmt, right, wrong):
    meta = {"kind": "action", "format": fmt, "action_type": "click", "box": GROUNDING["box"], "mark": 7, "text": None}
    assert score(meta, right)
    assert not score(meta, wrong)
    assert not score(meta, "no action here")


def test_typing_needs_the_same_text_and_target():
    meta = {"kind": "action", "format": "web", "action_type": "type", "box": [0, 0, 9, 9], "mark": 2, "text": "Berlin"}
    assert score(meta, "Thought: x\nAction: Type [2]; [Berlin]\nMemory_Updated: {}")
    assert not score(meta, "Thought: x\nAction: Type [2]; [Berlin!]\nMemory_Updated: {}")
    assert not score(meta, "Thought: x\nAction: Type [3]; [Berlin]\nMemory_Updated: {}")
    desktop = {**meta, "format": "desktop"}
    assert score(desktop, "<|begin_of_box|>type(content='Berlin')<|end_of_box|>")


def test_qa_normalises_case_punctuation_and_articles_and_counts_by_number():
    assert score({"kind": "qa", "question_type": "text", "answer": "The Save button."}, "save button")
    assert not score({"kind": "qa", "question_type": "text", "answer": "Save"}, "Delete")
    assert score({"kind": "qa", "question_type": "count", "answer": "4"}, "There are 4 items.")
    assert not score({"kind": "qa", "question_type": "count", "answer": "4"}, "5")
    assert normalise("<think>hm</think>«Yes»!") == "yes"


def test_video_when_is_within_one_second():
    meta = {"kind": "video", "question_type": "when", "answer": "At 5 seconds.", "second": 5}
    assert score(meta, "At 5 seconds.") and score(meta, "6") and score(meta, "around 4.0 s")
    assert not score(meta, "At 7 seconds.") and not score(meta, "never")
    assert score({"kind": "video", "question_type": "order", "answer": "The circle, then the square."},
                 "the circle then the square")


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="'audio'"):
        score({"kind": "audio"}, "x")
