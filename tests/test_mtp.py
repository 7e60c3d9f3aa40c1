"""The multi-token-prediction layer: released layout both ways, transformers ignores it, what it computes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from vlm import VLM

from _model_utils import reference_checkpoint, reference_checkpoint_with_mtp


@pytest.fixture(scope="module", params=["moe", "dense"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def mtp_checkpoint(kind, tmp_path_factory):
    """A transformers-written tiny checkpoint given an MTP layer (random, large enough to matter) by us."""
    return reference_checkpoint_with_mtp(tmp_path_factory, kind)


def _keys(path):
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_released_key_names(kind, mtp_checkpoint):
    n = json.loads((mtp_checkpoint / "config.json").read_text())["text_config"]["num_hidden_layers"]
    keys = _keys(mtp_checkpoint)
    p = f"model.language_model.layers.{n}."
    for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight", "shared_head.head.weight",
                 "input_layernorm.weight", "self_attn.q_proj.weight", "post_attention_layernorm.weight"):
        assert p + name in keys
    if kind == "moe":
        assert p + "mlp.experts.0.gate_proj.weight" in keys and p + "mlp.gate.e_score_correction_bias" in keys
    assert not any("mtp_block" in k or "mtp_layers" in k for k in keys)
    assert not any(k.startswith(f"model.language_model.layers.{n + 1}.") for k in keys)


def test_round_trip_keeps_mtp_weights(kind, mtp_checkpoint, tmp_path):
    first = VLM.from_pretrained(mtp_checkpoint)
    assert len(first.model.language_model.mtp_layers) == 1
    first.save_pretrained(tmp_path)
    again = VLM.from_pretrained(tmp_path).model.state_dict()
    for name, value in first.model.state_dict().items():
        assert torch.equal(again[name], value), name
    skipped = VLM.from_pretrained(mtp_checkpoint, mtp=False).model
    assert len(skipped.language_model.mtp_layers) == 0


def test_transformers_ignores_the_layer_with_equal_logits(kind, mtp_checkpoint):
    from transformers import AutoModelForImageTextToText

    ids = torch.tensor([[1, 5, 9, 33, 7, 120, 4, 2]])
    ours = VLM.from_pretrained(mtp_checkpoint).model.eval()
    theirs = AutoModelForImageTextToText.from_pretrained(mtp_checkpoint).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(input_ids=ids).logits, rtol=2e-4, atol=2e-4)


def test_mtp_logits_follow_the_released_order(kind, mtp_checkpoint):
    """eh_proj([enorm(embed(x_{t+1})); hnorm(h_t)]) -> block -> shared_head, written out by hand."""
    model = VLM.from_pretrained(mtp_checkpoint).model.eval()
    lm, layer = model.language_model, model.language_model.mtp_layers[0]
    ids = torch.tensor([[3, 17, 42, 8, 99, 23]])
    at = torch.ones_like(ids, dtype=torch.bool)
    at[:, -1] = False
    with torch.no_grad():
        out = model(ids, mtp_logits_at=at)
        e = F.rms_norm(lm.embed_tokens(ids[:, 1:]), (lm.cfg.hidden_size,), layer.enorm.weight, layer.enorm.eps)
        h = F.rms_norm(out.hidden[:, :-1], (lm.cfg.hidden_size,), layer.hnorm.weight, layer.hnorm.eps)
        x = torch.cat([e, h], -1) @ layer.eh_proj.weight.T
        positions = out.position_ids[:, :, :-1]
        from vlm.rotary import mrope_cos_sin
        c = lm.cfg
        cos, sin = mrope_cos_sin(positions, rotary_dim=c.rotary_dim, theta=c.rope_theta, mrope_section=c.mrope_section,
                                 layout=c.rotary_layout)
        g = layer.mtp_block(x, cos, sin, None, None)
        expected = layer.shared_head.head(layer.shared_head.norm(g))[0]
    torch.testing.assert_close(out.mtp_logits, expected, rtol=1e-5, atol=1e-5)


def test_declared_but_absent_layer_loads_without_it(kind, tmp_path_factory):
    """What transformers' save_pretrained leaves: num_nextn_predict_layers 1 and no layer tensors."""
    base = reference_checkpoint(tmp_path_factory, kind)
    path = tmp_path_factory.mktemp("declared_absent")
    for file in base.iterdir():
        (path / file.name).write_bytes(file.read_bytes())
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["num_nextn_predict_layers"] = 1
    (path / "config.json").write_text(json.dumps(config))
    assert len(VLM.from_pretrained(path).model.language_model.mtp_layers) == 0
    with pytest.raises(ValueError, match="mtp=True but .* stores no multi-token-prediction layer"):
        VLM.from_pretrained(path, mtp=True)
