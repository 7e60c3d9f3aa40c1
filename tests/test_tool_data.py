"""Tool-call conversations in training: OpenAI-style records (tools, assistant tool_calls, tool
results) are read, rendered in GLM-4.5's form, and only the assistant's tokens (its calls
included) are learned; a small LoRA run teaches the shipped model to call a tool."""

import json

import pytest
import torch

from recipes.tool_calling import HELD_OUT_ASKS, TOOLS, conversation, requests, run
from train.collate import IGNORE, Encoder
from train.data import BadRecords, read_conversations


@pytest.fixture(scope="module")
def processor():
    from vlm.processor import Processor

    return Processor.from_pretrained()


RECORD = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "What is the weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "rain, 9 C"},
    {"role": "assistant", "content": "Rain in Oslo."}]}


def _read(tmp_path, records):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    bad = BadRecords()
    return read_conversations(path, bad=bad), bad


def test_openai_tool_records_are_read_with_their_tools(tmp_path):
    sharegpt = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"},
                                  {"from": "observation", "value": "42"}, {"from": "gpt", "value": "y"}]}
    call = {"function": {"name": "f", "arguments": "{x"}}
    bad_call = {"messages": [{"role": "user", "content": "hi"},
                             {"role": "assistant", "content": None, "tool_calls": [call]}]}
    bad_tools = {**RECORD, "tools": [{"type": "function", "function": {"name": "a b"}}]}
    (conv, observation), bad = _read(tmp_path, [RECORD, sharegpt, bad_call, bad_tools])
    assert conv.tools == TOOLS and observation.tools is None
    assert conv.messages[1]["tool_calls"] == [{"type": "function", "function": {"name": "get_weather",
                                                                                "arguments": {"city": "Oslo"}}}]
    assert conv.messages[2]["role"] == "tool" and observation.messages[2]["role"] == "tool"  # rendered, not dropped
    assert bad.lines() == [3, 4] and "not JSON" in bad.items[0][2] and "bad tools" in bad.items[1][2]


def test_the_assistants_calls_are_learned_and_the_results_are_not(processor, tmp_path):
    (conv,), _ = _read(tmp_path, [RECORD])
    sample = Encoder(processor, max_length=1024).encode(conv.messages, tools=conv.tools)
    text = processor.tokenizer.decode(sample.input_ids)
    assert '"name": "set_timer"' in text and "<tool_response>\nrain, 9 C\n</tool_response>" in text
    learned = processor.tokenizer.decode(sample.input_ids[1:][sample.targets[:-1] != IGNORE])
    assert learned == ("<think></think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Oslo</arg_value>\n"
                       "</tool_call><|observation|><think></think>\nRain in Oslo.<|endoftext|>")


def test_held_out_requests_share_no_value_or_new_phrasing_with_training():
    train = requests(3200, seed=0, held_out=False)
    held = requests(40, seed=1, held_out=True)
    seen = {json.dumps(r.arguments) for r in train}
    assert not any(json.dumps(r.arguments) in seen for r in held)
    assert {r.name for r in held} == {"get_weather", "set_timer"}
    # hundreds of distinct values to copy, not a few to memorise
    assert len({r.arguments.get("city") for r in train}) > 400
    assert len({r.arguments.get("minutes") for r in train}) > 100
    new_asks = [ask.split("{}")[0] for ask in HELD_OUT_ASKS.values()]
    assert not any(r.prompt.startswith(a) for r in train for a in new_asks)
    assert sum(any(r.prompt.startswith(a) for a in new_asks) for r in held) >= 10
    assert conversation(train[0], index=0)["messages"][-1]["role"] == "assistant"


@pytest.mark.slow
def test_a_small_lora_run_teaches_the_shipped_model_to_call_the_right_tool(tmp_path):
    torch.set_num_threads(1)
    # A short run (100 steps of 8, ~4 min): the base model never calls; after it, measured 9 of 10
    # held-out answers open a call and 8 are one well-formed call to the right tool (the two misses:
    # the unseen "umbrella" phrasing). The right values take the recipe's full run (800 steps of 4:
    # minute counts copied, 13/20; city names not, 0/20; see the README).
    report = run(tmp_path, model=None, n=800, steps=100, n_eval=10, seed=0, lr=2e-3, batch_size=8)
    assert report["base"]["attempts"] == 0, report["base"]
    assert report["lora"]["attempts"] >= 8 and report["lora"]["right_tool"] >= 7, report["answers"]["lora"]
