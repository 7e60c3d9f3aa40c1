"""The data engine end to end: same output for any worker count, complete and readable."""

import json

import pytest

from train.synth import SynthConfig, parse_kinds, synthesize, unit_seed


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
    (tmp_path / "x").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        synthesize(SynthConfig(n=1, kinds=("video",)), tmp_path / "x", progress=False)


def test_kind_weights_repeat_a_kind_in_the_unit_cycle():
    assert parse_kinds("grounding:3, qa,video") == ("grounding",) * 3 + ("qa", "video")
    with pytest.raises(ValueError, match="'qa:x'"):
        parse_kinds("qa:x")
