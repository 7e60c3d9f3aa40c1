"""The processor: same tensors as transformers' Glm4vProcessor on our shipped tokenizer and
settings, the chat template rendering the GLM-4.5V format string for string, and what
save_pretrained writes reading back as the same processor."""

import dataclasses
import itertools
import json
import os
import pathlib
import subprocess

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoProcessor, PreTrainedTokenizerBase
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
from transformers.video_utils import load_video as reference_load_video

from vlm import Processor
from vlm.processor import ASSETS, media_of


@pytest.fixture(scope="module")
def processor():
    return Processor.from_pretrained()


@pytest.fixture(scope="module")
def reference():
    """transformers' own processor on the same directory, with the PIL image backend the
    released model's preprocessing is defined by."""
    ref = AutoProcessor.from_pretrained(ASSETS)
    ref.image_processor = Glm4vImageProcessorPil.from_pretrained(ASSETS)
    return ref


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=duration=2.6:size=112x84:rate=10",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return str(path)


def images(*sizes):
    rng = np.random.default_rng(0)
    return [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def assert_same(ours, expected):
    assert sorted(ours.keys()) == sorted(expected.keys())
    for key in expected:
        if expected[key].is_floating_point():
            assert torch.allclose(ours[key], expected[key], atol=1e-4, rtol=0), key
        else:
            assert torch.equal(ours[key], expected[key]), key


def test_loads_offline_with_a_transformers_tokenizer(processor):
    assert isinstance(processor.tokenizer, PreTrainedTokenizerBase)
    # The pixel budget is the checkpoint's own (the default model's is smaller than the released 12,544..9,633,792).
    size = json.loads((ASSETS / "preprocessor_config.json").read_text())["size"]
    assert (processor.image_config.min_pixels, processor.image_config.max_pixels) == (size["shortest_edge"], size["longest_edge"])
    assert len(set(processor.stop_token_ids)) == 3


def test_image_batch_equals_transformers(processor, reference):
    pictures = images((300, 200), (64, 500), (20, 20))
    texts = [
        "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>Describe it.<|assistant|>\n",
        "[gMASK]<sop><|user|>\nCompare <|begin_of_image|><|image|><|end_of_image|> with "
        "<|begin_of_image|><|image|><|end_of_image|>, please: which is 512 px wide?<|assistant|>\n",
    ]
    ours = processor(text=texts, images=pictures, return_tensors="pt")
    assert_same(ours, reference(text=texts, images=pictures, padding=True, return_tensors="pt"))
    # Left padding: the shorter row starts with padding, every row ends with the prompt's end.
    mask = ours["attention_mask"]
    shorter = mask.sum(-1).argmin()
    assert mask.sum(-1).min() < mask.shape[1] and mask[shorter, 0] == 0 and mask[:, -1].all()
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image|>")
    assert (ours["input_ids"] == image_id).sum() == ours["image_grid_thw"].prod(-1).sum() // 4


def test_video_equals_transformers(processor, reference, clip):
    text = "[gMASK]<sop><|user|>\n<|begin_of_video|><|video|><|end_of_video|>What happens?<|assistant|>\n"
    frames, metadata = reference_load_video(clip, backend="decord", sample_indices_fn=reference.video_processor.sample_frames)
    expected = reference(text=text, videos=[frames], video_metadata=[metadata], do_sample_frames=False,
                         return_tensors="pt")
    ours = processor(text=text, videos=[clip])
    assert_same(ours, expected)
    prompt = processor.decode(ours["input_ids"][0])
    pairs = ours["video_grid_thw"][0, 0].item()
    per_pair = ours["video_grid_thw"][0, 1:].prod().item() // 4
    frame = "<|begin_of_image|>" + "<|image|>" * per_pair + "<|end_of_image|>"
    expected_video = "".join(f"{frame}{second}" for second in [0, 1, 2][:pairs])
    assert f"<|begin_of_video|>{expected_video}<|end_of_video|>" in prompt


def test_frame_list_video_with_timestamps(processor):
    frames = [np.full((56, 56, 3), 30 * i, dtype=np.uint8) for i in range(4)]
    text = "<|begin_of_video|><|video|><|end_of_video|>"
    ours = processor(text=text, videos=frames, timestamps=[[0.0, 4.5, 9.2, 12.0]])
    prompt = processor.decode(ours["input_ids"][0])
    assert prompt.count("<|end_of_image|>0<|begin_of_image|>") == 1 and prompt.endswith("<|end_of_image|>9<|end_of_video|>")
    assert ours["mm_token_type_ids"].max() == 2  # frames are video tokens although their placeholder is <|image|>
    with pytest.raises(ValueError, match="neither timestamps nor fps"):
        processor(text=text, videos=frames)


def test_placeholder_count_must_match_media(processor):
    with pytest.raises(ValueError, match=r"1 <\|image\|> and 0 <\|video\|> placeholders but 2 images"):
        processor(text="<|image|>", images=images((40, 40), (40, 40)))


def test_chat_messages_end_to_end(processor, reference):
    pictures = images((200, 120), (90, 90))
    messages = [
        {"role": "user", "content": [
            {"type": "text", "text": "Where is the cat in"},
            {"type": "image", "image": pictures[0]},
            {"type": "text", "text": "and in"},
            {"type": "image", "image": pictures[1]},
            {"type": "text", "text": "?"},
        ]},
    ]
    prompt = processor.apply_chat_template(messages)
    found_images, found_videos = media_of(messages)
    assert found_images == pictures and found_videos == []
    ours = processor(text=prompt, images=found_images)
    assert_same(ours, reference(text=prompt, images=found_images, return_tensors="pt"))


# --- the chat template, string for string ---------------------------------------------------

IMG = "<|begin_of_image|><|image|><|end_of_image|>"
VID = "<|begin_of_video|><|video|><|end_of_video|>"


def test_template_single_turn(processor):
    messages = [{"role": "user", "content": "Hello"}]
    assert processor.apply_chat_template(messages) == "[gMASK]<sop><|user|>\nHello<|assistant|>\n"


def test_template_system_and_media_anywhere(processor):
    messages = [
        {"role": "system", "content": "You are a GUI agent."},
        {"role": "user", "content": [
            {"type": "text", "text": "First"},
            {"type": "image", "image": "a.png"},
            {"type": "text", "text": "then"},
            {"type": "video", "video": "b.mp4"},
            {"type": "image", "url": "c.png"},
        ]},
    ]
    assert processor.apply_chat_template(messages) == (
        "[gMASK]<sop><|system|>\nYou are a GUI agent.<|user|>\nFirst" + IMG + "then" + VID + IMG + "<|assistant|>\n"
    )


def test_template_history_drops_earlier_reasoning(processor):
    messages = [
        {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "Where is OK?"}]},
        {"role": "assistant", "content": "<think>The button is bottom right.</think>\n"
                                         "<|begin_of_box|>[812,903,901,950]<|end_of_box|>"},
        {"role": "user", "content": "And Cancel?"},
    ]
    assert processor.apply_chat_template(messages) == (
        "[gMASK]<sop><|user|>\n" + IMG + "Where is OK?"
        "<|assistant|>\n<think></think>\n<|begin_of_box|>[812,903,901,950]<|end_of_box|>"
        "<|user|>\nAnd Cancel?<|assistant|>\n"
    )


def test_template_thinking_off(processor):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Count to 3"},
    ]
    assert processor.apply_chat_template(messages, thinking=False) == (
        "[gMASK]<sop><|user|>\nHi/nothink<|assistant|>\n<think></think>\nHello."
        "<|user|>\nCount to 3/nothink<|assistant|>\n<think></think>\n"
    )
    already = [{"role": "user", "content": "Count to 3/nothink"}]
    assert processor.apply_chat_template(already, thinking=False) == (
        "[gMASK]<sop><|user|>\nCount to 3/nothink<|assistant|>\n<think></think>\n"
    )


def test_template_keeps_reasoning_after_the_last_user_turn(processor):
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "reasoning_content": "I should call the tool.", "content": "",
         "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris", "days": 2}}}]},
        {"role": "tool", "content": "sunny"},
    ]
    assert processor.apply_chat_template(messages) == (
        "[gMASK]<sop><|user|>\nWeather in Paris?<|assistant|>\n<think>I should call the tool.</think>"
        "\n<tool_call>weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>"
        "<|observation|>\n<tool_response>\nsunny\n</tool_response><|assistant|>\n"
    )


def test_image_and_video_in_one_prompt(processor):
    """transformers cannot mix the two in one prompt; the model can, so we do."""
    picture = images((84, 56))
    frames = [np.full((56, 84, 3), 60 * i, dtype=np.uint8) for i in range(4)]
    text = "<|begin_of_image|><|image|><|end_of_image|> vs <|begin_of_video|><|video|><|end_of_video|>"
    out = processor(text=text, images=picture, videos=[frames], fps=[1.0])
    types = out["mm_token_type_ids"][0]
    assert (types == 1).sum() == out["image_grid_thw"].prod() // 4
    assert (types == 2).sum() == out["video_grid_thw"].prod() // 4
    assert processor.decode(out["input_ids"][0]).count("<|begin_of_image|>") == 1 + 2


def test_settings_come_from_the_checkpoint_directory(tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((ASSETS / name).read_bytes())
    (tmp_path / "preprocessor_config.json").write_text(
        '{"size": {"shortest_edge": 3136, "longest_edge": 200704}, "patch_size": 14, "merge_size": 2}'
    )
    custom = Processor.from_pretrained(tmp_path)
    assert (custom.image_config.min_pixels, custom.image_config.max_pixels) == (3136, 200704)
    out = custom(text="<|image|>", images=images((1920, 1080)))
    assert 2 * out["image_grid_thw"][0, 1:].prod() * 14 * 14 <= 200704
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Processor.from_pretrained(tmp_path / "nowhere")


def test_template_with_tools(processor):
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    assert processor.apply_chat_template([{"role": "user", "content": "Paris?"}], tools=tools) == (
        "[gMASK]<sop><|system|>\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}\n</tools>\n\n'
        "For each function call, output the function name and arguments within the following XML format:\n"
        "<tool_call>{function-name}\n<arg_key>{arg-key-1}</arg_key>\n<arg_value>{arg-value-1}</arg_value>\n"
        "<arg_key>{arg-key-2}</arg_key>\n<arg_value>{arg-value-2}</arg_value>\n...\n</tool_call>"
        "<|user|>\nParis?<|assistant|>\n"
    )


# --- save_pretrained ---------------------------------------------------------------------------

def _files(directory):
    """Every entry under `directory`: file bytes, or None for a folder (a leftover staging one)."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() if p.is_file() else None for p in directory.rglob("*")}


def _changed(processor):
    """The shipped processor with every setting the JSON files hold moved off its value."""
    image = dataclasses.replace(processor.image_config, min_pixels=3136, max_pixels=200704, max_image_pixels=4096**2,
                                image_mean=(0.5, 0.5, 0.5))
    video = dataclasses.replace(processor.video_config, min_pixels=3136, max_pixels=1_000_000, fps=1.0,
                                max_duration_s=60.0, image_std=(0.25, 0.25, 0.25))
    return dataclasses.replace(processor, image_config=image, video_config=video)


def test_save_pretrained_round_trips_the_shipped_processor(processor, tmp_path):
    again = Processor.from_pretrained(processor.save_pretrained(tmp_path))
    assert again.image_config == processor.image_config and again.video_config == processor.video_config
    ours, theirs = processor.tokenizer, again.tokenizer
    assert theirs.get_vocab() == ours.get_vocab() and theirs.all_special_tokens == ours.all_special_tokens
    assert theirs.chat_template == ours.chat_template and theirs.padding_side == ours.padding_side
    for name in ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads((ASSETS / name).read_text()), name
    messages = [{"role": "user", "content": [{"type": "image", "image": images((300, 200))[0]},
                                             {"type": "text", "text": "Where is the red square?"}]}]
    prompt = again.apply_chat_template(messages)
    assert prompt == processor.apply_chat_template(messages)
    pictures = media_of(messages)[0]
    expected, got = processor(text=prompt, images=pictures), again(text=prompt, images=pictures)
    for key in ("input_ids", "pixel_values"):
        assert torch.equal(got[key], expected[key]), key


def test_save_pretrained_keeps_changed_settings_and_overwrites_the_old_ones(processor, tmp_path):
    changed = _changed(processor)
    processor.save_pretrained(tmp_path)
    again = Processor.from_pretrained(changed.save_pretrained(tmp_path))
    assert again.image_config == changed.image_config and again.video_config == changed.video_config
    assert not [name for name in _files(tmp_path) if name.startswith(".")]  # no temporary file left behind


class _Cut(Exception):
    pass


def test_a_save_cut_at_any_rename_leaves_each_file_whole_old_or_new(processor, tmp_path):
    old, new = processor, _changed(processor)
    wanted = [_files(p.save_pretrained(tmp_path / name)) for name, p in (("old", old), ("new", new))]
    replace = os.replace
    for k in itertools.count():
        directory = tmp_path / f"cut-{k}"
        old.save_pretrained(directory)
        calls = [0]

        def cut(*args, **kwargs):
            if calls[0] == k:
                raise _Cut(f"cut at rename {k}")
            calls[0] += 1
            return replace(*args, **kwargs)

        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setattr(os, "replace", cut)
            try:
                new.save_pretrained(directory)
                finished = True
            except _Cut:
                finished = False
        files = _files(directory)
        assert files.keys() == wanted[0].keys(), f"cut at rename {k}: a temporary or staging entry was left"
        assert all(files[name] in (wanted[0][name], wanted[1][name]) for name in files), f"cut at rename {k}"
        if finished:
            assert files == wanted[1]
            break
    assert k >= 4  # three JSON files and the tokenizer's three


def test_a_write_that_fails_halfway_leaves_the_old_file(processor, tmp_path, monkeypatch):
    processor.save_pretrained(tmp_path)
    before = _files(tmp_path)

    def half(self, text, *args, **kwargs):
        with open(self, "w", encoding="utf-8") as f:
            f.write(text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(pathlib.Path, "write_text", half)
    with pytest.raises(OSError, match="disk full"):
        _changed(processor).save_pretrained(tmp_path)
    assert _files(tmp_path) == before  # preprocessor_config.json whole and old, no half-written temporary
