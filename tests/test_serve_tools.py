"""Tool calling through the OpenAI-compatible server, with the real `openai` package as the client
and a real server on a checkpoint scripted to say "One moment" and call get_weather(city="Paris")."""

import json

import httpx
import openai
import pytest

from _scripted_checkpoint import TOOL_THINKING, WEATHER_TOOL, build_tool_checkpoint
from demo.openai_schema import ServerLimits
from demo.serve import create_app, running
from vlm import VLM
from vlm.tool_calls import template_messages

MODEL = "scripted-tools"
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return VLM.from_pretrained(build_tool_checkpoint(tmp_path_factory.mktemp("tools")).path)


@pytest.fixture(scope="module")
def base_url(vlm):
    with running(create_app(vlm, limits=ServerLimits(max_tokens=128, default_max_tokens=64), model_name=MODEL)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def calls_of(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def test_a_call_comes_back_as_openai_tool_calls(client):
    completion = client.chat.completions.create(model=MODEL, messages=[QUESTION], tools=[WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert calls_of(choice.message) == [("get_weather", {"city": "Paris"})]
    assert choice.message.content == "One moment" and choice.message.model_extra["reasoning_content"] == TOOL_THINKING
    assert choice.message.tool_calls[0].id.startswith("call_") and choice.message.tool_calls[0].type == "function"


def test_streamed_deltas_accumulate_in_openai_python(client):
    with client.chat.completions.stream(model=MODEL, messages=[QUESTION], tools=[WEATHER_TOOL]) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    assert [e.type for e in events if e.type.startswith("tool_calls")] == ["tool_calls.function.arguments.delta",
                                                                            "tool_calls.function.arguments.done"]
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "One moment"
    assert calls_of(choice.message) == [("get_weather", {"city": "Paris"})]
    chunks = list(client.chat.completions.create(model=MODEL, messages=[QUESTION], tools=[WEATHER_TOOL], stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    with_calls = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert len(with_calls) == 1 and with_calls[0].index == 0 and with_calls[0].function.name == "get_weather"
    assert "".join(d.content or "" for d in deltas) == "One moment"  # no piece of the XML as text
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_required_and_named(client):
    none = client.chat.completions.create(model=MODEL, messages=[QUESTION], tools=[WEATHER_TOOL], tool_choice="none",
                                          extra_body={"skip_special_tokens": False})
    assert none.choices[0].finish_reason == "stop" and not none.choices[0].message.tool_calls
    assert "<tool_call>get_weather" in none.choices[0].message.content
    for choice, reason in (("required", "tool_calls"), (NAMED, "stop")):
        forced = client.chat.completions.create(model=MODEL, messages=[QUESTION], tools=[WEATHER_TOOL],
                                                tool_choice=choice)
        assert forced.choices[0].finish_reason == reason and forced.choices[0].message.content is None
        assert calls_of(forced.choices[0].message) == [("get_weather", {"city": "Paris"})]


def test_a_history_with_calls_and_results_is_rendered_by_the_template(client, vlm):
    first = client.chat.completions.create(model=MODEL, messages=[QUESTION], tools=[WEATHER_TOOL]).choices[0].message
    history = [QUESTION, first.model_dump(exclude_none=True, exclude={"reasoning_content"}),
               {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "Sunny, 24 C"}]
    second = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER_TOOL], max_tokens=4)
    text = vlm.processor.apply_chat_template(template_messages(history), tools=[WEATHER_TOOL])
    assert "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>" in text
    assert "<|observation|>\n<tool_response>\nSunny, 24 C\n</tool_response><|assistant|>" in text
    assert second.usage.prompt_tokens == len(vlm.processor.tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools"),
    ({"tools": "get_weather"}, "tools"),
    ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": [QUESTION, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}]}]},
     "messages[1].tool_calls"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}, QUESTION]}, "messages[0].tool_calls"),
])
def test_bad_tool_requests_get_400_naming_the_field(base_url, body, param):
    response = httpx.post(f"{base_url}/v1/chat/completions", json={"model": MODEL, "messages": [QUESTION], **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
