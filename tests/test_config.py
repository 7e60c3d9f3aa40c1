"""config.json round trips: transformers' files and the released files' older spelling load,
save back unchanged (unknown fields included), and bad values are named."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from _model_utils import reference_checkpoint
from vlm.config import VLMConfig, glm41v, glm45v, tiny


@pytest.mark.parametrize("kind", ["moe", "dense"])
def test_transformers_config_round_trips_exactly(kind, tmp_path_factory, tmp_path):
    original = json.loads((reference_checkpoint(tmp_path_factory, kind) / "config.json").read_text())
    cfg = VLMConfig.from_dict(original)
    assert cfg.model_type == {"moe": "glm4v_moe", "dense": "glm4v"}[kind]
    assert cfg.text.sandwich_norms == cfg.text.fused_gate_up == (kind == "dense")
    assert cfg.text.rotary_layout == ("interleaved" if kind == "dense" else "half")
    cfg.save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == original


def _released_style() -> dict:
    """GLM-4.5V's own config.json spelling (transformers 4.x): rotary settings at top level."""
    return {
        "architectures": ["Glm4vMoeForConditionalGeneration"], "model_type": "glm4v_moe",
        "image_token_id": 151363, "video_token_id": 151364, "image_start_token_id": 151339,
        "image_end_token_id": 151340, "video_start_token_id": 151341, "video_end_token_id": 151342,
        "my_top_field": {"kept": True},
        "text_config": {
            "model_type": "glm4v_moe_text", "hidden_size": 4096, "num_hidden_layers": 46, "head_dim": 128,
            "num_attention_heads": 96, "num_key_value_heads": 8, "n_routed_experts": 128, "num_experts_per_tok": 8,
            "partial_rotary_factor": 0.5, "rope_theta": 10000.0,
            "rope_scaling": {"rope_type": "default", "mrope_section": [8, 12, 12]},
            "eos_token_id": [151329, 151336, 151338], "num_nextn_predict_layers": 1, "vocab_size": 151552,
        },
        "vision_config": {"model_type": "glm4v_moe", "depth": 24, "hidden_size": 1536, "out_hidden_size": 4096,
                          "intermediate_size": 10944, "my_vision_field": 3},
    }


def test_released_spelling_is_read_and_written_back(tmp_path):
    raw = _released_style()
    cfg = VLMConfig.from_dict(raw)
    assert cfg.text.mrope_section == (8, 12, 12) and cfg.text.partial_rotary_factor == 0.5
    assert cfg.text.eos_token_ids == (151329, 151336, 151338)
    assert cfg.text.extra["num_nextn_predict_layers"] == 1 and cfg.vision.extra["my_vision_field"] == 3
    saved = VLMConfig.from_dict(raw).to_dict()
    for key, value in raw.items():
        if isinstance(value, dict):
            assert {k: saved[key][k] for k in value} == value, key
        else:
            assert saved[key] == value, key
    assert "rope_parameters" not in saved["text_config"]  # the spelling that was read is kept
    assert VLMConfig.from_dict(saved) == cfg


def test_wrong_model_type_is_named():
    with pytest.raises(ValueError, match=r"'qwen2_5_vl'.*glm4v_moe"):
        VLMConfig.from_dict({**_released_style(), "model_type": "qwen2_5_vl"})


def test_inconsistent_rotary_sections_are_named():
    text = dataclasses.replace(tiny().text, mrope_section=(1, 1, 1))
    with pytest.raises(ValueError, match=r"mrope_section \[1, 1, 1\] sums to 3, expected rotary_dim/2 = 4"):
        VLMConfig(text=text, vision=tiny().vision)


def test_presets_follow_the_spec():
    big = glm45v()
    assert (big.text.hidden_size, big.text.num_hidden_layers, big.text.num_attention_heads, big.text.head_dim) == (4096, 46, 96, 128)
    assert (big.text.n_routed_experts, big.text.num_experts_per_tok, big.text.moe_intermediate_size) == (128, 8, 1408)
    assert big.text.rotary_dim == 64 and big.text.rotary_layout == "half" and not big.text.sandwich_norms
    assert (big.vision.depth, big.vision.hidden_size, big.vision.head_dim, big.vision.image_size // big.vision.patch_size) == (24, 1536, 128, 24)
    dense = glm41v()
    assert dense.model_type == "glm4v" and dense.text.sandwich_norms and dense.text.rotary_layout == "interleaved"
    assert not any(dense.text.is_moe_layer(i) for i in range(dense.text.num_hidden_layers))
    with pytest.raises(dataclasses.FrozenInstanceError):
        big.text.hidden_size = 1  # type: ignore[misc]


def _tiny_file(tmp_path, edit) -> Path:
    raw = tiny().to_dict()
    edit(raw)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path / "config.json"


def _set(section, **values):
    return lambda raw: (raw[section] if section else raw).update(values)


# (edit of a valid tiny config.json, what the error must say: field, value, expectation)
BAD_CONFIGS = {
    "patch size 0": (_set("vision_config", patch_size=0), r"vision_config.patch_size=0: expected an integer in 1..16777216"),
    "negative vocab": (_set("text_config", vocab_size=-5), r"text_config.vocab_size=-5: expected an integer in 1..16777216"),
    "heads do not divide the width": (_set("vision_config", num_heads=3),
                                      r"vision_config.num_heads=3 does not divide vision_config.hidden_size=32"),
    "text heads without head_dim": (lambda r: (r["text_config"].pop("head_dim"), r["text_config"].update(num_attention_heads=3,
                                                                                                       num_key_value_heads=1)),
                                    r"text_config.num_attention_heads=3 does not divide text_config.hidden_size=64"),
    "top-k above the experts": (_set("text_config", num_experts_per_tok=9),
                                r"text_config.num_experts_per_tok=9 exceeds text_config.n_routed_experts=8"),
    "string eps": (_set("text_config", rms_norm_eps="1e-5"),
                   r"text_config.rms_norm_eps='1e-5': expected a finite number > 0"),
    "negative image token": (_set(None, image_token_id=-1), r"image_token_id=-1: expected a token id in 0..319"),
    "token past the vocabulary": (_set(None, video_end_token_id=320), r"video_end_token_id=320: expected a token id"),
    "boolean layer count": (_set("text_config", num_hidden_layers=True), r"num_hidden_layers=True: expected an integer"),
    "float layer count": (_set("text_config", num_hidden_layers=2.5), r"num_hidden_layers=2.5: expected an integer"),
    "text_config a list": (_set(None, text_config=[1, 2]), r"text_config must be a JSON object, got list"),
    "rope_parameters a string": (_set("text_config", rope_parameters="x"), r"text_config.rope_parameters must be a JSON object"),
    "string rope theta": (lambda r: r["text_config"]["rope_parameters"].update(rope_theta="big"),
                          r"text_config.rope_theta='big': expected a finite number > 0"),
    "mrope section of strings": (lambda r: r["text_config"]["rope_parameters"].update(mrope_section=["1", "1", "2"]),
                                 r"text_config.mrope_section\[0\]='1': expected an integer in 0..16777216"),
    "kv heads not dividing heads": (_set("text_config", num_key_value_heads=3),
                                    r"text_config.num_key_value_heads=3 does not divide text_config.num_attention_heads=4"),
    "unknown activation": (_set("vision_config", hidden_act="gelu"), r"vision_config.hidden_act='gelu': expected one of \['silu'\]"),
    "eos past the vocabulary": (_set("text_config", eos_token_id=[1, 999]), r"text_config.eos_token_id\[1\]=999"),
    "negative MTP layers": (_set("text_config", num_nextn_predict_layers=-1),
                            r"text_config.num_nextn_predict_layers=-1: expected an integer in 0..16777216"),
    "infinite rotary factor": (lambda r: r["text_config"]["rope_parameters"].update(partial_rotary_factor=float("inf")),
                               r"partial_rotary_factor=inf: expected a finite number > 0 and <= 1"),
    # absurd sizes pass a lower bound and then never finish building the model
    "10**30 layers": (_set("text_config", num_hidden_layers=10**30), r"num_hidden_layers=10{30}: expected an integer in 1..16777216".replace("10{30}", str(10**30))),
    "10**30 vision width": (_set("vision_config", hidden_size=10**30), r"vision_config.hidden_size=1000000000000000000000000000000"),
    "10**30 routed experts": (_set("text_config", n_routed_experts=10**30), r"text_config.n_routed_experts=1000000000000000000000000000000"),
    "more groups kept than exist": (_set("text_config", topk_group=3), r"n_group=2, topk_group=3"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_values_name_file_field_value_and_expectation(case, tmp_path):
    edit, message = BAD_CONFIGS[case]
    file = _tiny_file(tmp_path, edit)
    with pytest.raises(ValueError, match=re.escape(str(file)) + ": .*" + message):
        VLMConfig.load(tmp_path)


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", '{"model_type": "glm4v_moe"', "[" * 100_000, "\ufffe\x00"])
def test_config_json_that_is_not_an_object_is_named(text, tmp_path):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "config.json"))):
        VLMConfig.load(tmp_path)


def test_a_valid_tiny_config_survives_the_checks(tmp_path):
    assert VLMConfig.load(_tiny_file(tmp_path, lambda raw: None)) == tiny()
