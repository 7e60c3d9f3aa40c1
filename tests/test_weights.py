"""Checkpoint load/save: transformers loads what we save, shards round-trip, bad files fail loudly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from _model_utils import image_tokens, patches, reference_checkpoint
from vlm import VLM, Processor
from vlm.config import tiny


@pytest.fixture(scope="module", params=["moe", "dense"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def checkpoint(kind, tmp_path_factory):
    return reference_checkpoint(tmp_path_factory, kind)


def _inputs():
    grid = [1, 4, 6]
    return {
        "input_ids": torch.tensor([[5, 6] + image_tokens(grid) + [7, 8]]),
        "pixel_values": patches([grid]),
        "image_grid_thw": torch.tensor([grid]),
    }


def _keys_and_shapes(directory):
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            out.update({k: f.get_slice(k).get_shape() for k in f.keys()})
    return out


def test_transformers_loads_what_we_save(kind, checkpoint, tmp_path):
    from transformers import Glm4vForConditionalGeneration, Glm4vMoeForConditionalGeneration

    from _model_utils import mm_token_type_ids

    ours = VLM.from_pretrained(checkpoint)
    ours.save_pretrained(tmp_path)
    assert _keys_and_shapes(tmp_path) == _keys_and_shapes(checkpoint)  # same layout, experts one by one
    cls = Glm4vMoeForConditionalGeneration if kind == "moe" else Glm4vForConditionalGeneration
    theirs = cls.from_pretrained(tmp_path).eval()
    inputs = _inputs()
    with torch.no_grad():
        expected = ours.model(**inputs).logits
        got = theirs(**inputs, mm_token_type_ids=mm_token_type_ids(inputs["input_ids"])).logits
    assert (got - expected).abs().max().item() < 2e-4


def test_sharded_save_round_trips_with_an_index(checkpoint, tmp_path):
    ours = VLM.from_pretrained(checkpoint)
    ours.save_pretrained(tmp_path, max_shard_bytes=64 * 1024)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    assert not (tmp_path / "model.safetensors").exists()
    again = VLM.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(ours.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_saved_model_loads_back_with_its_processor(tmp_path):
    ours = VLM(VLM.from_config(tiny(), seed=0).model, processor=Processor.from_pretrained())
    ours.save_pretrained(tmp_path / "saved")  # a new directory: every processor file must come from the save
    again = VLM.from_pretrained(tmp_path / "saved")
    assert isinstance(again.processor, Processor)
    assert again.processor.image_config == ours.processor.image_config
    assert again.processor.video_config == ours.processor.video_config
    prompt = ours.processor.apply_chat_template([{"role": "user", "content": "Hello"}])
    assert again.processor.apply_chat_template([{"role": "user", "content": "Hello"}]) == prompt
    assert torch.equal(again.processor(text=prompt)["input_ids"], ours.processor(text=prompt)["input_ids"])
    for (name, a), (_, b) in zip(ours.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_bfloat16_load_keeps_the_routing_bias_in_float32(kind, checkpoint):
    ours = VLM.from_pretrained(checkpoint, dtype=torch.bfloat16)
    assert ours.model.lm_head.weight.dtype == torch.bfloat16
    biases = [b for n, b in ours.model.named_buffers() if n.endswith("e_score_correction_bias")]
    assert all(b.dtype == torch.float32 for b in biases) and (kind == "dense" or biases)
    if biases:
        stored = load_file(str(checkpoint / "model.safetensors"))["model.language_model.layers.1.mlp.gate.e_score_correction_bias"]
        assert torch.equal(biases[0], stored)


def test_no_meta_tensors_remain_after_loading(checkpoint):
    ours = VLM.from_pretrained(checkpoint)
    assert all(not t.is_meta for t in [*ours.model.parameters(), *ours.model.buffers()])
    assert ours.processor is None  # no tokenizer files in a bare checkpoint
    with pytest.raises(RuntimeError, match="no tokenizer files"):
        ours.require_processor()


def _copy_with(checkpoint, tmp_path, edit, *, edit_config=None):
    tensors = load_file(str(checkpoint / "model.safetensors"))
    edit(tensors)
    config = json.loads((checkpoint / "config.json").read_text())
    if edit_config is not None:
        edit_config(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    return tmp_path


def _mtp_layer(n):
    return lambda t: t.update({
        f"model.language_model.layers.{n}.eh_proj.weight": torch.zeros(4, 4),
        f"model.language_model.layers.{n}.enorm.weight": torch.zeros(4),
    })


def test_declared_multi_token_prediction_layer_is_skipped(kind, checkpoint, tmp_path):
    """mtp=False skips a declared MTP layer; loaded (the default), a mis-shaped one is named
    (tests/test_mtp.py loads real ones)."""
    n = json.loads((checkpoint / "config.json").read_text())["text_config"]["num_hidden_layers"]
    path = _copy_with(checkpoint, tmp_path, _mtp_layer(n),
                      edit_config=lambda c: c["text_config"].update(num_nextn_predict_layers=1))
    loaded = VLM.from_pretrained(path, mtp=False).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in VLM.from_pretrained(checkpoint).model.state_dict().items())
    with pytest.raises(ValueError, match=rf"layers.{n}.eh_proj.weight' .* has shape \[4, 4\]"):
        VLM.from_pretrained(path)


def test_undeclared_layer_past_the_network_is_named(kind, checkpoint, tmp_path):
    n = json.loads((checkpoint / "config.json").read_text())["text_config"]["num_hidden_layers"]
    # no num_nextn_predict_layers: layer n is not a declared MTP layer
    path = _copy_with(checkpoint, tmp_path, _mtp_layer(n))
    with pytest.raises(ValueError, match=rf"'model.language_model.layers.{n}.eh_proj.weight'.*num_hidden_layers={n} "
                                         r"and num_nextn_predict_layers=0"):
        VLM.from_pretrained(path)
    # one MTP layer declared, two stored: the second is not skipped
    path = _copy_with(checkpoint, tmp_path, lambda t: (_mtp_layer(n)(t), _mtp_layer(n + 1)(t)),
                      edit_config=lambda c: c["text_config"].update(num_nextn_predict_layers=1))
    with pytest.raises(ValueError, match=rf"layers.{n + 1}.eh_proj.weight"):
        VLM.from_pretrained(path, mtp=False)
    # fewer layers declared, the last real layer passed off as the declared MTP layer
    path = _copy_with(checkpoint, tmp_path, lambda t: None,
                      edit_config=lambda c: c["text_config"].update(num_hidden_layers=n - 1, num_nextn_predict_layers=1))
    with pytest.raises(ValueError, match=rf"layers.{n - 1} .*has no eh_proj.weight"):
        VLM.from_pretrained(path)


def test_config_with_fewer_layers_than_stored_does_not_load(kind, checkpoint, tmp_path):
    """The audit's case: config.json says one layer less; loading used to run a cut network."""
    n = json.loads((checkpoint / "config.json").read_text())["text_config"]["num_hidden_layers"]
    path = _copy_with(checkpoint, tmp_path, lambda t: None,
                      edit_config=lambda c: c["text_config"].update(num_hidden_layers=n - 1))
    with pytest.raises(ValueError, match=rf"layers.{n - 1}\..*num_hidden_layers={n - 1}"):
        VLM.from_pretrained(path)


def test_missing_tensor_names_key_and_file(checkpoint, tmp_path):
    path = _copy_with(checkpoint, tmp_path, lambda t: t.pop("model.visual.post_layernorm.weight"))
    with pytest.raises(ValueError, match=r"missing tensor 'model.visual.post_layernorm.weight'.*model.safetensors"):
        VLM.from_pretrained(path)


def test_unexpected_tensor_names_key_and_file(checkpoint, tmp_path):
    path = _copy_with(checkpoint, tmp_path, lambda t: t.update({"model.visual.surprise.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"unexpected tensor 'model.visual.surprise.weight' in .*model.safetensors"):
        VLM.from_pretrained(path)


def test_misshaped_tensor_names_key_file_and_shapes(checkpoint, tmp_path):
    path = _copy_with(checkpoint, tmp_path, lambda t: t.update({"lm_head.weight": torch.zeros(7, 3)}))
    with pytest.raises(ValueError, match=r"'lm_head.weight' in .*model.safetensors has shape \[7, 3\], expected \[300, 48\]"):
        VLM.from_pretrained(path)


def test_truncated_file_names_the_file(checkpoint, tmp_path):
    data = (checkpoint / "model.safetensors").read_bytes()
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors"):
        VLM.from_pretrained(tmp_path)


def test_wrong_model_type_is_named(checkpoint, tmp_path):
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "qwen2_vl"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="qwen2_vl"):
        VLM.from_pretrained(tmp_path)


def test_loads_shards_written_by_transformers(kind, checkpoint, tmp_path):
    from _model_utils import reference_model

    reference_model(kind).save_pretrained(tmp_path, max_shard_size="40KB")  # same seed as `checkpoint`
    assert (tmp_path / "model.safetensors.index.json").exists()
    sharded = VLM.from_pretrained(tmp_path).model.state_dict()
    single = VLM.from_pretrained(checkpoint).model.state_dict()
    assert sharded.keys() == single.keys()
    assert all(torch.equal(sharded[k], single[k]) for k in single)


class _PowerCut(Exception):
    """Raised in place of the k-th file-system step of a save."""


def _cut_at(monkeypatch, k):
    """Make the k-th file write, fsync, rename or unlink of a save raise `_PowerCut`; returns a
    counter of the steps seen (k=None: never cut)."""
    import os
    import pathlib

    import vlm.weights

    seen = [0]

    def step(original):
        def wrapped(*args, **kwargs):
            if seen[0] == k:
                raise _PowerCut(f"cut at step {k}")
            seen[0] += 1
            return original(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(os, "replace", step(os.replace))
    monkeypatch.setattr(os, "fsync", step(os.fsync))
    monkeypatch.setattr(pathlib.Path, "unlink", step(pathlib.Path.unlink))
    monkeypatch.setattr(vlm.weights, "save_file", step(vlm.weights.save_file))
    return seen


SHARDED, SINGLE = 200 * 1024, 1 << 40  # about 4 shards of the tiny model


@pytest.mark.parametrize(("before", "after"), [(SINGLE, SHARDED), (SHARDED, SINGLE), (SHARDED, SHARDED), (SINGLE, SINGLE)],
                         ids=["single-to-shards", "shards-to-single", "shards-to-same-count", "single-to-single"])
def test_a_save_cut_at_any_step_leaves_the_old_or_the_new_checkpoint(checkpoint, tmp_path, before, after):
    old = VLM.from_pretrained(checkpoint)
    new = VLM.from_config(old.config, seed=7)
    versions = [old.model.state_dict(), new.model.state_dict()]
    k = 0
    while True:
        directory = tmp_path / f"cut-{k}"
        old.save_pretrained(directory, max_shard_bytes=before)
        with pytest.MonkeyPatch.context() as monkeypatch:
            seen = _cut_at(monkeypatch, k)
            try:
                new.save_pretrained(directory, max_shard_bytes=after)
                finished = True
            except _PowerCut:
                finished = False
        loaded = VLM.from_pretrained(directory).model.state_dict()
        matches = [all(torch.equal(loaded[n], v[n]) for n in v) for v in versions]
        assert any(matches), f"a save cut at step {k} left a checkpoint that is neither the old nor the new one"
        if finished:
            assert matches[1] and seen[0] == k
            break
        k += 1
    assert k > 3  # the save had steps to cut
