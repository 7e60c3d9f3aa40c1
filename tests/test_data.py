"""Reading conversation JSONL: both layouts, relative paths, bad records counted by line."""

import json

import pytest
from PIL import Image

from train.data import BadRecordError, BadRecords, read_conversations


def _write(tmp_path, records):
    path = tmp_path / "data.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture
def images(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (56, 28), "red").save(tmp_path / "imgs" / name)
    return tmp_path


def test_openai_layout_resolves_relative_paths(images):
    path = _write(images, [{"messages": [
        {"role": "user", "content": [{"type": "image", "image": "imgs/a.png"}, {"type": "text", "text": "what?"}]},
        {"role": "assistant", "content": "red"}]}])
    (conv,) = read_conversations(path, bad=BadRecords())
    assert conv.line == 1
    assert conv.media == [("image", str(images / "imgs" / "a.png"))]
    assert conv.messages[1] == {"role": "assistant", "content": [{"type": "text", "text": "red"}]}


def test_sharegpt_layouts_become_the_same_conversation(images):
    ours = {"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "compare "}, {"type": "image", "image": "imgs/a.png"},
                                     {"type": "text", "text": " and "}, {"type": "image", "image": "imgs/b.png"}]},
        {"role": "assistant", "content": "same"}]}
    llama_factory = {"messages": [{"role": "system", "content": "be brief"},
                                  {"role": "user", "content": "compare <image> and <image>"},
                                  {"role": "assistant", "content": "same"}],
                     "images": ["imgs/a.png", "imgs/b.png"]}
    sharegpt = {"system": "be brief", "images": ["imgs/a.png", "imgs/b.png"],
                "conversations": [{"from": "human", "value": "compare <image> and <image>"},
                                  {"from": "gpt", "value": "same"}]}
    convs = read_conversations(_write(images, [ours, llama_factory, sharegpt]), bad=BadRecords())
    assert [c.line for c in convs] == [1, 2, 3]
    assert convs[0].messages == convs[1].messages == convs[2].messages


def test_bad_records_are_skipped_counted_and_reported_by_line(images):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    records = [
        good,
        "{not json",
        {"messages": [{"role": "user", "content": "hi"}]},  # no assistant turn
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "imgs/nope.png"}]},
                      {"role": "assistant", "content": "x"}]},  # missing file
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "<image><image>"}, {"role": "assistant", "content": "x"}],
         "images": ["imgs/a.png"]},  # more markers than images
        good,
    ]
    bad = BadRecords()
    convs = read_conversations(_write(images, records), bad=bad)
    assert [c.line for c in convs] == [1, 7]
    assert bad.lines() == [2, 3, 4, 5, 6]
    summary = bad.summary()
    assert "5 bad record(s)" in summary and "missing file: 1 (lines 4)" in summary
    assert "no assistant turn: 1 (lines 3)" in summary


def test_strict_makes_the_first_bad_record_fatal_with_its_line(images):
    records = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]},
               {"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(BadRecordError, match=r"data.jsonl:2: no assistant turn"):
        read_conversations(_write(images, records), bad=BadRecords(strict=True))


def test_a_dataset_with_nothing_usable_is_an_error(images):
    with pytest.raises(ValueError, match="no usable record"):
        read_conversations(_write(images, ["[]"]), bad=BadRecords())
