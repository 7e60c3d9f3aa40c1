"""The data engine end to end: same output for any worker count, complete and readable."""

import json

import pytest

from synth.dataset import SynthConfig, parse_kinds, parse_languages, synthesize, thinking_off, unit_seed
from vlm.processor import Processor


@pytest.mark.slow
@pytest.mark.browser
def test_two_workers_write_exactly_what_one_worker_writes(tmp_path):
    config = SynthConfig(n=14, seed=5, kinds=("grounding", "action", "qa", "video"))
    one = synthesize(config, tmp_path / "one", workers=1, progress=False)
    two = synthesize(config, tmp_path / "two", workers=2, progress=False)
    assert (one / "data.jsonl").read_bytes() == (two / "data.jsonl").read_bytes()
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for path in files:
        assert (one / path).read_bytes() == (two / path).read_bytes(), path

    records = [json.loads(line) for line in (one / "data.jsonl").read_text().splitlines()]
    assert len(records) == 14
    assert {r["meta"]["kind"] for r in records} == {"grounding", "action", "qa", "video"}
    referenced = {part.get("image") or part.get("video") for r in records for m in r["messages"]
                  if isinstance(m["content"], list) for part in m["content"] if part["type"] != "text"}
    on_disk = {str(p) for p in files if p.name != "data.jsonl"}
    assert referenced == on_disk  # every file used, no leftovers from surplus units
    assert not list(tmp_path.glob(".*partial*"))  # staging directories are gone


def test_splits_and_seeds_use_disjoint_unit_seeds():
    train = {unit_seed("train", s, i) for s in range(3) for i in range(2000)}
    heldout = {unit_seed("heldout", s, i) for s in range(3) for i in range(2000)}
    assert len(train) == 6000 and not train & heldout


def test_bad_config_names_the_value(tmp_path):
    with pytest.raises(ValueError, match="'audio'"):
        SynthConfig(n=3, kinds=("grounding", "audio"))
    with pytest.raises(ValueError, match="n=0"):
        SynthConfig(n=0)
    with pytest.raises(ValueError, match="grounding_turns=0"):
        SynthConfig(n=1, grounding_turns=0)
    with pytest.raises(ValueError, match="'xx'"):
        SynthConfig(n=1, languages=parse_languages("en,xx"))
    with pytest.raises(ValueError, match="nothink=1.5"):
        SynthConfig(n=1, nothink=1.5)
    (tmp_path / "x").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        synthesize(SynthConfig(n=1, kinds=("video",)), tmp_path / "x", progress=False)


def test_kind_weights_repeat_a_kind_in_the_unit_cycle():
    assert parse_kinds("grounding:3, qa,video") == ("grounding",) * 3 + ("qa", "video")
    with pytest.raises(ValueError, match="'qa:x'"):
        parse_kinds("qa:x")


@pytest.mark.slow
@pytest.mark.browser
def test_languages_pin_the_pages_and_nothink_switches_a_share_of_conversations(tmp_path):
    config = SynthConfig(n=40, seed=2, kinds=("grounding", "read", "qa", "episode"), languages=("de", "fr"),
                         nothink=0.5)
    records = [json.loads(line) for line in (synthesize(config, tmp_path / "d", progress=False)
                                             / "data.jsonl").read_text().splitlines()]
    assert {r["meta"]["language"] for r in records if "language" in r["meta"]} == {"de", "fr"}
    episode_pages = {r["meta"]["page_seed"] for r in records if "episode" in r["meta"]}
    assert episode_pages and {config.language(seed) for seed in episode_pages} <= {"de", "fr"}
    switched = [all(_user_text(m).endswith("/nothink") for m in r["messages"] if m["role"] == "user")
                for r in records]
    untouched = [not any("/nothink" in _user_text(m) for m in r["messages"]) for r in records]
    assert all(a or b for a, b in zip(switched, untouched))  # a conversation is switched whole
    assert 0.25 < sum(switched) / len(records) < 0.75
    # the same samples as without the switch: it draws from its own random stream
    plain = SynthConfig(n=40, seed=2, kinds=config.kinds, languages=config.languages)
    plain_records = (synthesize(plain, tmp_path / "p", progress=False) / "data.jsonl").read_text().splitlines()
    assert [r["meta"] for r in records] == [json.loads(line)["meta"] for line in plain_records]


def _user_text(message):
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def test_every_language_keeps_the_page_stream_and_one_language_pins_it():
    assert SynthConfig(n=1).language(12345) is None  # the page picks among all six, as it always did
    assert {SynthConfig(n=1, languages=("en",)).language(s) for s in range(50)} == {"en"}
    assert {SynthConfig(n=1, languages=("en", "ja")).language(s) for s in range(50)} == {"en", "ja"}


@pytest.mark.parametrize("conversation", [
    [{"role": "user", "content": [{"type": "text", "text": "Do it."}, {"type": "image", "image": "x.png"}]},
     {"role": "assistant", "content": "done"}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": [{"type": "image", "image": "x.png"}, {"type": "text", "text": "Where?"}]},
     {"role": "assistant", "content": "here"}, {"role": "user", "content": "And?"},
     {"role": "assistant", "content": "there"}],
])
def test_a_switched_conversation_renders_as_the_template_renders_thinking_off(conversation):
    processor = Processor.from_pretrained()
    switched = json.loads(json.dumps(conversation))
    thinking_off(switched)
    assert (processor.apply_chat_template(switched, add_generation_prompt=False)
            == processor.apply_chat_template(conversation, thinking=False, add_generation_prompt=False))
