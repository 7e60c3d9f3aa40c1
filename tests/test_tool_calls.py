"""GLM-4.5 tool calls: the parser reads back what the real chat template writes, a stream cut
anywhere gives the same calls and never shows part of a tag, malformed XML is reported (never
raised, never evaluated), and `VLM.generate(tools=...)` returns parsed calls from a real
(scripted) checkpoint, streamed or not."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _scripted_checkpoint import TOOL_THINKING, WEATHER_TOOL, build_tool_checkpoint
from vlm import VLM
from vlm.processor import Processor
from vlm.tool_calls import ToolCallParser, check_tools, forced_prefix, parse_tool_calls, template_messages

TOOLS = check_tools([WEATHER_TOOL, {"name": "set_timer", "parameters": {"type": "object", "properties": {
    "minutes": {"type": "number"}, "label": {"type": ["string", "null"]}, "repeat": {"type": "boolean"}}}}])
CALL = "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>"
TWO_CALLS = ("Let me look.\n" + CALL + "\n<tool_call>set_timer\n<arg_key>minutes</arg_key>\n<arg_value>2.5</arg_value>\n"
             "<arg_key>repeat</arg_key>\n<arg_value>true</arg_value>\n</tool_call>")


@pytest.fixture(scope="module")
def processor():
    return Processor.from_pretrained()


def events_of(text: str, cuts: list[int]) -> list:
    parser = ToolCallParser(TOOLS)
    events, last = [], 0
    for cut in sorted(set(cuts)) + [len(text)]:
        events += parser.feed(text[last:cut])
        last = cut
    return events + parser.close()


def test_what_the_chat_template_renders_parses_back_with_schema_types(processor):
    arguments = {"city": "007", "days": 3}  # "007" is a string by the schema: kept as written
    messages = template_messages([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps(arguments)}},
            {"id": "call_2", "type": "function",
             "function": {"name": "set_timer", "arguments": {"minutes": 1.5, "label": None}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    text = processor.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=False)
    assert "<tool_response>\nsunny\n</tool_response>" in text and '"name": "get_weather"' in text
    answer = text.split("<|assistant|>")[1].split("<|observation|>")[0].split("</think>")[1]
    parsed = parse_tool_calls(answer, TOOLS)
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", arguments),
                                                              ("set_timer", {"minutes": 1.5, "label": None})]
    assert parsed.content == "" and parsed.errors == []
    assert json.loads(parsed.calls[0].to_openai()["function"]["arguments"]) == arguments


def test_values_are_typed_by_the_schema_and_reported_when_they_misfit():
    parsed = parse_tool_calls("<tool_call>set_timer<arg_key>minutes</arg_key><arg_value>ten</arg_value>"
                              "<arg_key>extra</arg_key><arg_value>[1, 2]</arg_value></tool_call>", TOOLS)
    assert parsed.calls[0].arguments == {"minutes": "ten", "extra": [1, 2]}  # undeclared: read as JSON
    assert len(parsed.errors) == 1 and "'minutes' of 'set_timer' should be number" in parsed.errors[0].reason
    unknown = parse_tool_calls("<tool_call>launch\n</tool_call>", TOOLS)
    assert unknown.calls[0].name == "launch" and "not one of the tools" in unknown.errors[0].reason


@pytest.mark.parametrize("bad, reason", [
    ("<tool_call>get_weather\n<arg_key>city</arg_key>", "never closed"),
    ("<tool_call>\n<arg_key>city</arg_key><arg_value>x</arg_value></tool_call>", "expected a function name"),
    ("<tool_call>get_weather\n<arg_key>city</arg_key>junk<arg_value>x</arg_value></tool_call>", "pairs"),
    ("<tool_call>get_weather\n<arg_key>a</arg_key><arg_value>1</arg_value>"
     "<arg_key>a</arg_key><arg_value>2</arg_value></tool_call>", "given twice"),
])
def test_malformed_xml_is_reported_and_kept_as_text_never_raised(bad, reason):
    parsed = parse_tool_calls("Sure. " + bad, TOOLS)
    assert parsed.calls == [] and reason in parsed.errors[0].reason
    assert parsed.content == "Sure. " + bad.rstrip()


def test_argument_values_are_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    parsed = parse_tool_calls(f"<tool_call>launch<arg_key>x</arg_key><arg_value>{payload}</arg_value></tool_call>")
    assert parsed.calls[0].arguments == {"x": payload} and not marker.exists()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(TWO_CALLS)), max_size=12))
def test_a_stream_cut_anywhere_gives_the_whole_answers_result(cuts):
    whole = parse_tool_calls(TWO_CALLS, TOOLS)
    events = events_of(TWO_CALLS, cuts)
    assert "".join(p for kind, p in events if kind == "answer") == whole.content == "Let me look."
    assert [(c.name, c.arguments) for kind, c in events if kind == "tool_call"] == \
        [("get_weather", {"city": "Paris"}), ("set_timer", {"minutes": 2.5, "repeat": True})]


def test_token_by_token_no_piece_shows_part_of_a_call(processor):
    ids = processor.tokenizer.encode(TWO_CALLS + " Done <tool", add_special_tokens=False)
    parser = ToolCallParser(TOOLS)
    pieces = []
    for n in range(1, len(ids) + 1):  # the engine's way: the text so far, given out as it grows
        text = processor.decode(ids[:n])
        pieces += parser.feed(text[len("".join(processor.decode(ids[:n - 1]))):])
    shown = [p for kind, p in pieces if kind == "answer"]
    assert not any(tag in p for p in shown for tag in ("<tool", "arg_", "Paris"))
    assert "".join(shown) == "Let me look.\nDone" and len([k for k, _ in pieces if k == "tool_call"]) == 2
    assert parser.close() == [("answer", " <tool")]  # at the end, held text is text


def test_bad_tools_and_tool_choices_are_clear_errors():
    with pytest.raises(ValueError, match="name"):
        check_tools([{"type": "function", "function": {"name": "two words"}}])
    with pytest.raises(ValueError, match="repeat"):
        check_tools([WEATHER_TOOL, WEATHER_TOOL])
    with pytest.raises(ValueError, match="one of"):
        forced_prefix({"type": "function", "function": {"name": "nope"}}, TOOLS)
    with pytest.raises(ValueError, match="needs tools"):
        forced_prefix("required", None)
    with pytest.raises(ValueError, match="not JSON"):
        template_messages([{"role": "assistant", "content": None,
                            "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}])


# ---------------------------------------------------------------------------------------------
# VLM.generate on a checkpoint scripted to answer "One moment" and call get_weather(city="Paris")


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return VLM.from_pretrained(build_tool_checkpoint(tmp_path_factory.mktemp("tool_model")).path)


def test_generate_returns_parsed_calls_beside_the_text(vlm):
    out = vlm.generate("What is the weather in Paris?", tools=[WEATHER_TOOL])
    assert out.text == "One moment" and out.thinking == TOOL_THINKING
    assert [(c.name, c.arguments) for c in out.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert out.finish_reason == "tool_calls" and out.tool_call_errors == []


def test_streamed_calls_arrive_whole_and_the_text_matches(vlm):
    stream = vlm.generate("What is the weather in Paris?", tools=[WEATHER_TOOL], thinking=False, stream=True)
    events = list(stream.events())
    answer = "".join(p for kind, p in events if kind == "answer")
    calls = [p for kind, p in events if kind == "tool_call"]
    assert answer == stream.result.text == "One moment" and calls == stream.result.tool_calls
    assert [kind for kind, _ in events][-1] == "tool_call"


def test_tool_choice_none_leaves_the_xml_and_required_or_named_force_a_call(vlm):
    prompt = "What is the weather in Paris?"
    raw = vlm.generate(prompt, tools=[WEATHER_TOOL], tool_choice="none")
    assert raw.tool_calls == [] and raw.finish_reason == "stop" and "<tool_call>get_weather" in raw.text
    # Forced: the answer starts with the call (an empty think block skips the reasoning).
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice, reason in (("required", "tool_calls"), (named, "stop")):
        out = vlm.generate(prompt, tools=[WEATHER_TOOL], tool_choice=choice)
        assert out.thinking == "" and out.text == "" and out.finish_reason == reason
        assert [(c.name, c.arguments) for c in out.tool_calls] == [("get_weather", {"city": "Paris"})]


def test_generate_without_tools_is_unchanged_and_bad_tools_fail_before_work(vlm):
    out = vlm.generate("What is the weather in Paris?")
    assert out.tool_calls == [] and "<tool_call>" in out.text
    with pytest.raises(ValueError, match="tools"):
        vlm.generate("Hi", tools="get_weather")
