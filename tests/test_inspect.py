"""`python -m vlm.inspect`: the full-size GLM-4.5V layout, written out here from the spec's key
list independently of vlm/weights.py, must match exactly; counts follow the documented formula."""

from __future__ import annotations

import json
import math
import time

from safetensors import safe_open

from _model_utils import reference_checkpoint
from vlm import config as presets
from vlm.inspect import main, summarize


def _released_glm45v_layout() -> dict[str, list[int]]:
    """The released GLM-4.5V tensors, from the spec (shared/reference/glm45v.md, sections 1 and 5)."""
    D, V, L, H, KV, hd, FF, E, F, VD, VFF, VOUT, MERGE_FF = 4096, 151552, 46, 96, 8, 128, 10944, 128, 1408, 1536, 4096, 4096, 10944
    t = {
        "model.visual.patch_embed.proj.weight": [VD, 3, 2, 14, 14],
        "model.visual.patch_embed.proj.bias": [VD],
        "model.visual.post_conv_layernorm.weight": [VD],
        "model.visual.embeddings.position_embedding.weight": [24 * 24, VD],
        "model.visual.post_layernorm.weight": [VD],
        "model.visual.downsample.weight": [VOUT, VD, 2, 2],
        "model.visual.downsample.bias": [VOUT],
        "model.visual.merger.proj.weight": [VOUT, VOUT],
        "model.visual.merger.post_projection_norm.weight": [VOUT],
        "model.visual.merger.post_projection_norm.bias": [VOUT],
        "model.visual.merger.gate_proj.weight": [MERGE_FF, VOUT],
        "model.visual.merger.up_proj.weight": [MERGE_FF, VOUT],
        "model.visual.merger.down_proj.weight": [VOUT, MERGE_FF],
        "model.language_model.embed_tokens.weight": [V, D],
        "model.language_model.norm.weight": [D],
        "lm_head.weight": [V, D],
    }
    for i in range(24):
        b = f"model.visual.blocks.{i}."
        t |= {b + "norm1.weight": [VD], b + "norm2.weight": [VD], b + "attn.qkv.weight": [3 * VD, VD],
              b + "attn.proj.weight": [VD, VD], b + "mlp.gate_proj.weight": [VFF, VD], b + "mlp.up_proj.weight": [VFF, VD],
              b + "mlp.down_proj.weight": [VD, VFF]}
    for i in range(L):
        p = f"model.language_model.layers.{i}."
        t |= {p + "self_attn.q_proj.weight": [H * hd, D], p + "self_attn.q_proj.bias": [H * hd],
              p + "self_attn.k_proj.weight": [KV * hd, D], p + "self_attn.k_proj.bias": [KV * hd],
              p + "self_attn.v_proj.weight": [KV * hd, D], p + "self_attn.v_proj.bias": [KV * hd],
              p + "self_attn.o_proj.weight": [D, H * hd],
              p + "input_layernorm.weight": [D], p + "post_attention_layernorm.weight": [D]}
        if i == 0:
            t |= {p + "mlp.gate_proj.weight": [FF, D], p + "mlp.up_proj.weight": [FF, D], p + "mlp.down_proj.weight": [D, FF]}
            continue
        t |= {p + "mlp.gate.weight": [E, D], p + "mlp.gate.e_score_correction_bias": [E],
              p + "mlp.shared_experts.gate_proj.weight": [F, D], p + "mlp.shared_experts.up_proj.weight": [F, D],
              p + "mlp.shared_experts.down_proj.weight": [D, F]}
        for e in range(E):
            t |= {p + f"mlp.experts.{e}.gate_proj.weight": [F, D], p + f"mlp.experts.{e}.up_proj.weight": [F, D],
                  p + f"mlp.experts.{e}.down_proj.weight": [D, F]}
    return t


def test_full_size_glm45v_lists_the_released_layout_on_meta_in_seconds():
    start = time.perf_counter()
    summary = summarize(presets.glm45v())
    elapsed = time.perf_counter() - start
    assert summary.tensors == _released_glm45v_layout()
    assert summary.total_params == sum(math.prod(s) for s in summary.tensors.values())
    assert 100e9 < summary.total_params < 115e9  # "106B" class
    unused = 45 * (128 - 8) * 3 * 4096 * 1408
    assert summary.active_params == summary.total_params - unused
    assert elapsed < 60, f"inspect took {elapsed:.1f}s"


def test_json_output_matches_a_transformers_checkpoint(tmp_path_factory, capsys):
    for kind in ("moe", "dense"):
        path = reference_checkpoint(tmp_path_factory, kind)
        main([str(path), "--json"])
        report = json.loads(capsys.readouterr().out)
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            stored = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
        assert report["tensors"] == {k: stored[k] for k in report["tensors"]} and set(report["tensors"]) == set(stored)
        assert report["total_params"] == sum(math.prod(s) for s in stored.values())
        moe_unused = 2 * (8 - 3) * 3 * 48 * 24 if kind == "moe" else 0
        assert report["active_params"] == report["total_params"] - moe_unused


def test_text_report_names_sizes(capsys):
    main(["glm41v"])
    out = capsys.readouterr().out
    assert "model_type      glm4v" in out and "weights @ int4" in out
    assert "model.language_model.layers.0.mlp.gate_up_proj.weight  [27392, 4096]" in out
    assert "model.language_model.layers.0.post_self_attn_layernorm.weight  [4096]" in out
