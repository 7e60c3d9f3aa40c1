"""Every parser of model output runs in linear time and raises only its documented errors.

Model output is untrusted: a generation of a few thousand tokens can be 64 KB of blanks,
brackets or half-written calls. Each entry point gets adversarial inputs (a format fragment, one
short unit repeated to 64 KB, a tail; and mutated canonical answers) and must answer within
50 ms, where a quadratic regex took seconds to minutes; the audit's cases also run at 1 MB
(< 1 s). Timing on a shared machine is noisy, so an input over the bound is timed twice more
and its best time counts: a quadratic case stays slow every time.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import parsing
from agent.formats.common import ParseError
from vlm import outputs

KB = 1024
# name -> (call, the exceptions it documents)
ENTRY_POINTS = {
    "vlm.outputs.parse_boxes": (outputs.parse_boxes, ()),
    "vlm.outputs.parse_boxes(anywhere)": (lambda t: outputs.parse_boxes(t, anywhere=True), ()),
    "vlm.outputs.split_thinking": (outputs.split_thinking, ()),
    "vlm.outputs.strip_special_tokens": (outputs.strip_special_tokens, ()),
    "vlm.outputs.boxes_in_pixels": (lambda t: outputs.boxes_in_pixels(t, width=1280, height=720), ()),
    "agent.parsing.parse_box": (parsing.parse_box, (ParseError,)),
    **{f"agent.parsing.parse_response({p})": ((lambda p: lambda t: parsing.parse_response(t, p))(p), (ParseError,))
       for p in ("desktop", "mobile", "web")},
    **{f"agent.parsing.parse_action({p})": ((lambda p: lambda t: parsing.parse_action(t, p))(p), (ParseError,))
       for p in ("desktop", "mobile", "web")},
}

HEADS = ["", "<|begin_of_box|>", "<think>", "</think>", "<answer>", "Action: ", "Action: Key; a", "Action: Click ",
         "Action: Type [1]; ", "Action: Scroll ", "Thought: ", "Memory: ", "Reason: ", "Memory_Updated: ",
         "ANSWER; <content>", "left_click(", "left_click(start_box=", "type(content='", "key(keys='", "scroll(",
         "[", "[1", "[1,", "(", "{", '{"action_type": "click", "box_2d": ', '{"action_type": "input_text", "text": "']
UNITS = [" ", "\n", "\t", "\r\n", "[", "(", ",", "1", "9", ".", "-", "'", '"', "\\", "a", "a=", "a=[,", "a='", "[1,",
         "1 ", ", ", "] ", "[ ", "<|", "<|a", "<|begin_of_box|>", "<|end_of_box|>", "Action:", "\nAction:", "{", "}",
         '{"a":', "left_click(", "click", "+", "1.", "</think>", "<think>", "Memory:"]
TAILS = ["", "x", "b", "]", ")", "')", "]]", "}", "<|end_of_box|>", "</think>", "\n"]
CANONICAL = [
    "<think>find it</think>Click OK.<|begin_of_box|>left_click(start_box='[586, 446]', element_info='OK')<|end_of_box|>\nMemory:\n[]",
    'Memory: code 4821\nReason: the field\nAction: <|begin_of_box|>{"action_type": "click", "box_2d": [[1, 2, 3, 4]]}<|end_of_box|>',
    "Thought: label 4\nAction: Type [4]; [cheap flights]\nMemory_Updated: {}",
    "The button is at <|begin_of_box|>[[100, 200, 300, 400]]<|end_of_box|>.",
]


def _repeated(head: str, unit: str, tail: str, size: int) -> str:
    return head + unit * (size // len(unit)) + tail


adversarial = st.builds(_repeated, st.sampled_from(HEADS), st.sampled_from(UNITS) | st.text(min_size=1, max_size=4),
                        st.sampled_from(TAILS) | st.text(max_size=8), st.just(64 * KB))


@st.composite
def mutated(draw) -> str:
    """A canonical answer with one fragment of it repeated to 64 KB at a random place."""
    text = draw(st.sampled_from(CANONICAL))
    start = draw(st.integers(0, len(text) - 1))
    piece = text[start:start + draw(st.integers(1, 6))]
    at = draw(st.integers(0, len(text)))
    return text[:at] + piece * (64 * KB // len(piece)) + text[at:]


def _best_seconds(call, text: str, limit_s: float, allowed: tuple[type[BaseException], ...]) -> float:
    """Seconds `call(text)` takes (the best of up to 3 runs when over `limit_s`); an exception
    other than `allowed` fails the test."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        try:
            call(text)
        except allowed:
            pass
        best = min(best, time.perf_counter() - start)
        if best < limit_s:
            break
    return best


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=adversarial | mutated())
def test_every_parser_is_linear_and_raises_only_its_documented_errors(name, text):
    call, allowed = ENTRY_POINTS[name]
    seconds = _best_seconds(call, text, 0.05, allowed)
    assert seconds < 0.05, f"{name} took {seconds * 1000:.0f} ms on {len(text)} chars starting {text[:60]!r}"


# The audit's cases (each took 3.7 to 46 s at its size) and the classes found beside them.
WORST = [
    ("vlm.outputs.parse_boxes", "<|begin_of_box|>[1", " ", ""),
    ("vlm.outputs.parse_boxes(anywhere)", "[1", "\t", "x"),
    ("agent.parsing.parse_action(web)", "Key; a", " ", "b"),
    ("agent.parsing.parse_response(web)", "Action: Key; a", " ", "b"),
    ("agent.parsing.parse_action(web)", "Click", " ", "x"),
    ("agent.parsing.parse_response(web)", "Thought:", "\n", "x"),
    ("agent.parsing.parse_response(mobile)", "Reason:", "\n", "'"),
    ("agent.parsing.parse_action(desktop)", "left_click(", "a=[,", ")"),
    ("agent.parsing.parse_action(desktop)", "key(keys='a", " ", "b')"),
    ("agent.parsing.parse_box", "[", " ", "x"),
]


@pytest.mark.parametrize(("size", "limit_s"), [(64 * KB, 0.05), (1024 * KB, 1.0)], ids=["64KB", "1MB"])
@pytest.mark.parametrize(("name", "head", "unit", "tail"), WORST)
def test_the_audits_quadratic_inputs_run_in_linear_time(name, head, unit, tail, size, limit_s):
    call, allowed = ENTRY_POINTS[name]
    seconds = _best_seconds(call, _repeated(head, unit, tail, size), limit_s, allowed)
    assert seconds < limit_s, f"{name} took {seconds:.2f} s on {size // KB} KB"


def test_a_huge_number_in_a_box_is_clamped_not_an_overflow():
    assert outputs.parse_boxes("<|begin_of_box|>[" + "9" * 400 + ", 5]<|end_of_box|>") == [outputs.Point(999, 5)]
    assert outputs.parse_boxes("[-" + "1" * 400 + ".5, 2, 3, 4]", anywhere=True) == [outputs.Box(0, 2, 3, 4)]
    with pytest.raises(ParseError, match="not finite"):
        parsing.parse_box("[" + "9" * 400 + ", 5]")
