"""Parsers and serialisers of the three released formats: real outputs, round trips, fuzzing."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.actions import (Answer, Back, Box, Click, Done, Drag, Fail, Home, Hover, Key, LongPress,
                           Mark, Navigate, OpenApp, Point, Scroll, Swipe, Type, Wait)
from agent.formats.web import BING_URL
from agent.parsing import (ParsedResponse, ParseError, parse_action, parse_box, parse_response,
                           serialise_action, serialise_response)

# --- what real outputs look like -----------------------------------------------------------

DESKTOP_REAL = (
    "<think>The dialog blocks the window; OK closes it.</think>\n"
    "I need to dismiss the error first. <|begin_of_box|>left_click(start_box='[586, 446]', "
    "element_info='OK button')<|end_of_box|>\nMemory:\n[]")


def test_desktop_real_output_with_thinking_box_and_memory():
    parsed = parse_response(DESKTOP_REAL, "desktop")
    assert parsed.action == Click(Point(586, 446), element_info="OK button")
    assert parsed.thinking == "The dialog blocks the window; OK closes it."
    assert parsed.reason == "I need to dismiss the error first."
    assert parsed.memory == "[]"


@pytest.mark.parametrize("text, expected", [
    ("left_click(start_box='[10,20]')", Click(Point(10, 20))),
    ('left_click(start_box="[10, 20]", element_info="Save")', Click(Point(10, 20), element_info="Save")),
    ("left_click(start_box=[10,20])", Click(Point(10, 20))),
    ("left_click( start_box = '(10, 20)' )", Click(Point(10, 20))),
    ("left_click(start_box='<|begin_of_box|>[10,20]<|end_of_box|>')", Click(Point(10, 20))),
    ("left_click(start_box='[10,20,30,40]')", Click(Box(10, 20, 30, 40))),
    ("right_click(start_box='[1,2]')", Click(Point(1, 2), button="right")),
    ("middle_click(start_box='[1,2]')", Click(Point(1, 2), button="middle")),
    ("left_double_click(start_box='[1,2]')", Click(Point(1, 2), count=2)),
    ("hover(start_box='[1,2]', element_info='menu')", Hover(Point(1, 2), element_info="menu")),
    ("left_drag(start_box='[1,2]', end_box='[3,4]')", Drag(Point(1, 2), Point(3, 4))),
    ("key(keys='ctrl+c')", Key(("ctrl", "c"))),
    ("key(keys='Ctrl + Shift + Return')", Key(("ctrl", "shift", "enter"))),
    ("type(content='it's, done=yes')", Type("it's, done=yes")),  # unescaped quote and comma
    ("type(content='line\\nnext \\'q\\'')", Type("line\nnext 'q'")),
    ("scroll(start_box='[500,500]', direction='down', step=3)", Scroll("down", Point(500, 500), steps=3)),
    ("WAIT()", Wait(5.0)), ("DONE()", Done()), ("FAIL()", Fail()), ("done()", Done()),
])
def test_desktop_variants(text, expected):
    assert parse_action(text, "desktop") == expected


def test_desktop_box_tokens_around_the_coordinates_only():
    text = "Click it. left_click(start_box='<|begin_of_box|>[12,34]<|end_of_box|>')\nMemory:\n[]"
    parsed = parse_response(text, "desktop")
    assert parsed.action == Click(Point(12, 34)) and parsed.reason == "Click it." and parsed.memory == "[]"


def test_desktop_action_without_box_tokens_is_found_in_prose():
    parsed = parse_response("I will press save now.\nleft_click(start_box='[5, 6]')\nMemory:\n[{\"a\": 1}]", "desktop")
    assert parsed.action == Click(Point(5, 6))
    assert parsed.reason == "I will press save now."
    assert parsed.memory == '[{"a": 1}]'


MOBILE_REAL = (
    "<think>Search first.</think>\nMemory: recipe ids 3 and 7 are duplicates\n"
    "Reason: the search field sits at the top of the screen\n"
    'Action: <|begin_of_box|>{"action_type": "input_text", "text": "Pasta", '
    '"box_2d": [[120, 80, 880, 130]], "override": true}<|end_of_box|>')


def test_mobile_real_output():
    parsed = parse_response(MOBILE_REAL, "mobile")
    assert parsed.action == Type("Pasta", target=Box(120, 80, 880, 130), clear=True)
    assert parsed.memory == "recipe ids 3 and 7 are duplicates"
    assert parsed.reason == "the search field sits at the top of the screen"
    assert parsed.thinking == "Search first."


@pytest.mark.parametrize("text, expected", [
    ('{"action_type": "click", "box_2d": [[1, 2, 3, 4]]}', Click(Box(1, 2, 3, 4))),
    ('{"action_type": "click", "box_2d": [1, 2, 3, 4]}', Click(Box(1, 2, 3, 4))),
    ('{"action_type": "click", "box_2d": [[10, 20]]}', Click(Point(10, 20))),
    ("{'action_type': 'long_press', 'box_2d': [[1, 2, 3, 4]]}", LongPress(Box(1, 2, 3, 4))),
    ('{"action_type": "swipe", "direction": "up"}', Swipe("up")),
    ('{"action_type": "swipe", "direction": "left", "box_2d": [[1,2,3,4]]}', Swipe("left", Box(1, 2, 3, 4))),
    ('{"action_type": "keyboard_enter"}', Key(("enter",))),
    ('{"action_type": "navigate_home"}', Home()), ('{"action_type": "navigate_back"}', Back()),
    ('{"action_type": "open_app", "app_name": "Clock"}', OpenApp("Clock")),
    ('{"action_type": "answer", "text": "42"}', Answer("42")),
    ('{"action_type": "status", "goal_status": "complete"}', Done()),
    ("{'action_type': 'status', 'goal_status': 'infeasible'}", Fail()),
    ('{"action_type": "input_text", "text": "x", "box_2d": [[1,2,3,4]], "override": False}',
     Type("x", target=Box(1, 2, 3, 4))),
])
def test_mobile_variants(text, expected):
    assert parse_action(text, "mobile") == expected


WEB_REAL = ("Thought: The search box is label 4; I search for the flight.\n"
            "Action: Type [4]; [cheap flights to Oslo]\nMemory_Updated: {\"city\": \"Oslo\"}")


def test_web_real_output():
    parsed = parse_response(WEB_REAL, "web")
    assert parsed.action == Type("cheap flights to Oslo", target=Mark(4), clear=True, press_enter=True)
    assert parsed.reason == "The search box is label 4; I search for the flight."
    assert parsed.memory == '{"city": "Oslo"}'


def test_trailing_text_after_the_action():
    mobile = 'Reason: r\nAction: {"action_type": "click", "box_2d": [[1,2,3,4]]} (the {OK} button)'
    assert parse_response(mobile, "mobile").action == Click(Box(1, 2, 3, 4))
    web = "Thought: t\nAction: Click [5]\nThis opens the menu.\nMemory_Updated: {}"
    assert parse_response(web, "web").action == Click(Mark(5))


def test_web_answer_without_the_answer_tags_the_official_parser_waits_for():
    text = "Thought: done.\nAction: ANSWER; <content>Guatemala\nand Peru</content>\nMemory_Updated: {}"
    assert parse_response(text, "web").action == Answer("Guatemala\nand Peru")
    glm41v = "<think>x</think><answer>Thought: ok\nAction: Click [2]\nMemory_Updated: {}</answer>"
    assert parse_response(glm41v, "web").action == Click(Mark(2))


@pytest.mark.parametrize("text, expected", [
    ("Click [3]", Click(Mark(3))), ("click 3.", Click(Mark(3))), ("Click [ 12 ]", Click(Mark(12))),
    ("Type [2]; [5$]", Type("5$", Mark(2), clear=True, press_enter=True)),
    ("Type [2]; hello", Type("hello", Mark(2), clear=True, press_enter=True)),
    ("Scroll [WINDOW]; [down]", Scroll("down")), ("scroll [6]; [up]", Scroll("up", Mark(6))),
    ("Wait", Wait(5.0)), ("GoBack.", Back()), ("Bing", Navigate(BING_URL)),
    ("Key; [Return]", Key(("enter",))), ("ANSWER; [42]", Answer("42")),
    ("<|begin_of_box|>Click [7]<|end_of_box|>", Click(Mark(7))),
])
def test_web_variants(text, expected):
    assert parse_action(text, "web") == expected


@pytest.mark.parametrize("platform, text, reason", [
    ("desktop", "I am not sure what to do.", "no desktop action call"),
    ("desktop", "left_click(start_box='[1200, 5]')", "0..999"),
    ("desktop", "left_click(element_info='x')", "missing start_box"),
    ("desktop", "<think>still thinking", "never closed"),
    ("mobile", 'Action: {"action_type": "fly"}', "unknown mobile action_type"),
    ("mobile", "Action: click the button", "no JSON object"),
    ("mobile", 'Action: {"action_type": "click", "box_2d": [[5, 5, 1, 1]]}', "x2 < x1"),
    ("web", "Thought: hmm", "no 'Action:' line"),
    ("web", "Action: Tap [3]", "is not a web action"),
])
def test_malformed_output_raises_parse_error_with_the_text(platform, text, reason):
    with pytest.raises(ParseError, match=reason) as info:
        parse_response(text, platform)
    assert info.value.text == text


def test_unknown_platform_is_a_clear_error():
    with pytest.raises(ValueError, match="'ios' is not one of"):
        parse_response("x", "ios")  # type: ignore[arg-type]


def test_serialising_what_a_format_cannot_express_names_it():
    with pytest.raises(ValueError, match="web actions point at set-of-marks labels"):
        serialise_action(Click(Point(1, 2)), "web")
    with pytest.raises(ValueError, match="cannot express"):
        serialise_action(OpenApp("Clock"), "desktop")


def test_grounding_box():
    assert parse_box("<think>x</think>It is here <|begin_of_box|>[[10,20,30,40]]<|end_of_box|>") == Box(10, 20, 30, 40)
    assert parse_box("[512, 300]") == Box(512, 300, 512, 300)
    with pytest.raises(ParseError):
        parse_box("I cannot see it.")


# --- canonical forms round-trip ------------------------------------------------------------

CANONICAL = {
    "desktop": ["left_click(start_box='[586, 446]', element_info='OK button')",
                "right_click(start_box='[1, 2]')", "left_double_click(start_box='[1, 2, 3, 4]')",
                "hover(start_box='[7, 8]')", "left_drag(start_box='[1, 2]', end_box='[3, 4]')",
                "key(keys='ctrl+alt+t')", "type(content='say \\'hi\\'\\n')",
                "scroll(start_box='[500, 500]', direction='up', step=5)", "WAIT()", "DONE()", "FAIL()"],
    "mobile": ['{"action_type": "click", "box_2d": [[1, 2, 3, 4]]}',
               '{"action_type": "input_text", "text": "héllo", "box_2d": [[1, 2, 3, 4]], "override": false}',
               '{"action_type": "swipe", "direction": "up"}', '{"action_type": "keyboard_enter"}',
               '{"action_type": "status", "goal_status": "infeasible"}', '{"action_type": "wait"}'],
    "web": ["Click [3]", "Type [2]; [5$]", "Scroll [WINDOW]; [down]", "Scroll [6]; [up]", "Wait",
            "GoBack", "Bing", "Key; [Return]", "ANSWER; <content>Guatemala</content>"],
}


@pytest.mark.parametrize("platform, text", [(p, t) for p, texts in CANONICAL.items() for t in texts])
def test_canonical_action_round_trips(platform, text):
    assert serialise_action(parse_action(text, platform), platform) == text


@pytest.mark.parametrize("platform, text", [
    ("desktop", DESKTOP_REAL.replace("first. <|begin", "first.\n<|begin")),
    ("mobile", MOBILE_REAL), ("web", WEB_REAL)])
def test_canonical_response_round_trips(platform, text):
    assert serialise_response(parse_response(text, platform), platform) == text


coords = st.integers(0, 999)
points = st.builds(Point, coords, coords)
boxes = st.tuples(coords, coords, coords, coords).map(
    lambda c: Box(min(c[0], c[2]), min(c[1], c[3]), max(c[0], c[2]), max(c[1], c[3])))
targets = points | boxes
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
infos = st.none() | texts.filter(bool)
key_names = st.sampled_from(["ctrl", "alt", "shift", "super", "enter", "tab", "a", "z", "1", "f5", "escape"])
directions = st.sampled_from(["up", "down", "left", "right"])
# section texts must not themselves look like the next section header
line_texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters=":<>\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
                     max_size=30).map(str.strip)

desktop_actions = st.one_of(
    st.builds(Click, targets, st.sampled_from(["left", "right", "middle"]), st.just(1), infos),
    st.builds(Click, targets, st.just("left"), st.just(2), infos),
    st.builds(Hover, targets, infos), st.builds(Drag, targets, targets, infos),
    st.builds(Key, st.lists(key_names, min_size=1, max_size=3).map(tuple)), st.builds(Type, texts),
    st.builds(Scroll, directions, targets, st.integers(1, 100), infos),
    st.just(Wait(5.0)), st.just(Done()), st.just(Fail()))
mobile_actions = st.one_of(
    st.builds(Click, boxes), st.builds(LongPress, boxes),
    st.builds(Type, texts, st.none() | boxes, st.booleans()), st.builds(Swipe, directions, st.none() | boxes),
    st.just(Key(("enter",))), st.just(Home()), st.just(Back()), st.just(Wait()), st.just(Done()),
    st.just(Fail()), st.builds(OpenApp, texts), st.builds(Answer, texts))
marks = st.builds(Mark, st.integers(0, 9999))
web_actions = st.one_of(
    st.builds(Click, marks), st.builds(lambda t, m: Type(t, m, clear=True, press_enter=True), line_texts, marks),
    st.builds(Scroll, st.sampled_from(["up", "down"]), st.none() | marks), st.just(Wait(5.0)),
    st.just(Back()), st.just(Navigate(BING_URL)), st.just(Key(("enter",))), st.builds(Answer, line_texts))
ACTIONS = {"desktop": desktop_actions, "mobile": mobile_actions, "web": web_actions}


@pytest.mark.parametrize("platform", ["desktop", "mobile", "web"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_action_survives_serialise_then_parse(platform, data):
    action = data.draw(ACTIONS[platform])
    assert parse_action(serialise_action(action, platform), platform) == action
    parsed = ParsedResponse(action, thinking=data.draw(st.none() | line_texts),
                            reason=data.draw(st.none() | line_texts.filter(bool)),
                            memory=data.draw(line_texts.filter(bool)))
    assert parse_response(serialise_response(parsed, platform), platform) == parsed


@pytest.mark.parametrize("platform, action", [
    ("mobile", OpenApp("<think>")), ("mobile", Answer("a</think>b<|end_of_box|>")),
    ("desktop", Type("</think>")), ("desktop", Type("<|begin_of_box|>\\u003c"))])
@pytest.mark.parametrize("thinking", [None, "", "plan"])
def test_markup_inside_an_action_reads_back_as_text(platform, action, thinking):
    """A typed "</think>" is text: serialised with its `<` escaped, never split as thinking."""
    text = serialise_response(ParsedResponse(action, thinking=thinking), platform)
    assert "\\u003c" in text
    parsed = parse_response(text, platform)
    assert (parsed.action, parsed.thinking) == (action, thinking)


def test_thinking_ends_at_the_first_close_tag_and_a_later_open_tag_is_answer_text():
    assert parse_response('<think>a</think>Action: {"action_type": "answer", "text": "</think>"}',
                          "mobile").action == Answer("</think>")
    assert parse_response('Memory: x\nAction: {"action_type": "open_app", "app_name": "<think>"}',
                          "mobile").action == OpenApp("<think>")


# --- fuzzing: nothing but ParseError escapes ----------------------------------------------

FRAGMENTS = ["<think>", "</think>", "<|begin_of_box|>", "<|end_of_box|>", "<|start_of_box|>", "Memory:",
             "Reason:", "Action:", "Thought:", "Memory_Updated:", "<answer>", "</answer>", "left_click(",
             "start_box=", "'[", "]'", "[", "]", "(", ")", "{", "}", '"', "'", ",", "=", ";", "\\", "\n",
             '{"action_type": ', '"click"', '"box_2d": [[', '"input_text"', '"status"', "999", "1000", "-1",
             "1e309", "Click [", "Type [", "Scroll [", "WINDOW", "ANSWER;", "<content>", "Key; [", "+",
             "key(keys='", "type(content='", "scroll(", "direction='up'", "step=", "element_info='", "NaN"]
fuzz_texts = st.one_of(st.text(max_size=200),
                       st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=30).map("".join))


@pytest.mark.parametrize("platform", ["desktop", "mobile", "web"])
@settings(max_examples=400, deadline=None)
@given(text=fuzz_texts)
def test_fuzz_only_parse_error_escapes(platform, text):
    for parse in (parse_response, parse_action):
        try:
            parse(text, platform)
        except ParseError as error:
            assert error.text == text
    try:
        parse_box(text)
    except ParseError:
        pass
