"""FP8 checkpoints. Block-FP8: what `python -m vlm.quantize --fp8` writes loads in transformers' FP8
path and in ours with the same logits; dequantized logits stay close to the unquantized model's;
an MTP layer keeps the released layout and drafts alike kept or dequantized; bad scales fail
loudly; the e4m3 matmuls' arithmetic (block and row-wise) is checked on the CPU. Compressed-tensors
float-quantized (Z.ai's -FP8 releases): a hand-written checkpoint loads as its weights dequantized
by hand, and in transformers with our logits; kept in e4m3 (row, tensor or block scales; language
model, vision tower and MTP layer) it gives the dequantized logits and tokens; scales or configs we
do not read are named."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from torch import nn

from _model_utils import image_tokens, mm_token_type_ids, patches, reference_checkpoint, reference_checkpoint_with_mtp
from vlm import VLM
from vlm.cache import KVCache
from vlm.decode import mtp_block
from vlm.fp8 import FP8Checkpoint, is_quantizable
from vlm.fp8_format import E4M3, E4M3_MAX, QUANTIZATION_CONFIG, BlockFP8, ChannelFP8, TensorFP8
from vlm.fp8_linear import (Fp8Linear, block_scaled_linear, cuda_rowwise_mm, cuda_scaled_mm, reference_mm,
                            reference_rowwise_mm, rowwise_scaled_linear, uses_scaled_mm)
from vlm.mtp import set_draft_vocab
from vlm.quantize import main as quantize_main
from vlm.rotary import mrope_cos_sin
from vlm.vlm import DEFAULT_MODEL_DIR

LAYOUT = BlockFP8(128, 128)
UNQUANTIZED_MATRICES = ("embed_tokens.weight", "position_embedding.weight", "lm_head.weight", "mlp.gate.weight")


@pytest.fixture(scope="module", params=["moe", "dense"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def quantized(kind, tmp_path_factory):
    """(source, destination): a transformers-written reference checkpoint and our FP8 copy, in shards."""
    source = reference_checkpoint(tmp_path_factory, kind)
    destination = tmp_path_factory.mktemp(f"fp8_{kind}") / "fp8"
    quantize_main(["--fp8", str(source), str(destination), "--max-shard-bytes", str(64 * 1024)])
    return source, destination


def _inputs():
    grid = [1, 4, 6]
    return {"input_ids": torch.tensor([[5, 6] + image_tokens(grid) + [7, 8]]), "pixel_values": patches([grid]),
            "image_grid_thw": torch.tensor([grid])}


def _tensors(directory):
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            out.update({key: f.get_tensor(key) for key in f.keys()})
    return out


def _logits(vlm, inputs=None):
    with torch.no_grad():
        return vlm.model(**(inputs or _inputs())).logits


# ---- the layout -----------------------------------------------------------------------------------


def test_block_scales_cover_partial_edge_blocks():
    weight = torch.randn(300, 200, generator=torch.Generator().manual_seed(0))
    q, scale_inv = LAYOUT.quantize(weight)
    assert q.dtype == E4M3 and q.shape == (300, 200)
    assert scale_inv.dtype == torch.float32 and scale_inv.shape == (3, 2)  # ceil(300/128) x ceil(200/128)
    back = LAYOUT.dequantize(q, scale_inv)
    for i in range(3):
        for j in range(2):
            rows, cols = slice(128 * i, 128 * (i + 1)), slice(128 * j, 128 * (j + 1))
            assert q[rows, cols].float().abs().max() == E4M3_MAX  # each block's largest value maps to 448
            assert torch.equal(back[rows, cols], q[rows, cols].float() * scale_inv[i, j])
    assert ((back - weight).norm() / weight.norm()).item() < 0.04  # 3 mantissa bits: ~2.6% measured


def test_strip_reader_equals_whole_tensor_dequantization(tmp_path):
    weight = torch.randn(300, 200, generator=torch.Generator().manual_seed(1))
    q, scale_inv = LAYOUT.quantize(weight)
    file = tmp_path / "model.safetensors"
    save_file({"w.weight": q, "w.weight_scale_inv": scale_inv}, str(file))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": QUANTIZATION_CONFIG}))
    checkpoint = FP8Checkpoint.open(tmp_path, [file])
    header_len = int.from_bytes(file.read_bytes()[:8], "little")
    start = 8 + header_len + json.loads(file.read_bytes()[8:8 + header_len])["w.weight"]["data_offsets"][0]
    for dtype in (torch.float32, torch.bfloat16, E4M3):
        target = torch.empty(300, 200, dtype=dtype)
        with open(file, "rb") as raw:
            checkpoint.read_into(raw, (None, start, start + 300 * 200), target, "w.weight", file)
        expected = q if dtype == E4M3 else LAYOUT.dequantize(q, scale_inv, dtype)
        assert torch.equal(target.view(torch.uint8), expected.view(torch.uint8)), dtype


def test_quantize_writes_the_released_layout(kind, quantized):
    source, destination = quantized
    config = json.loads((destination / "config.json").read_text())
    assert config["quantization_config"] == QUANTIZATION_CONFIG
    assert {k: v for k, v in config.items() if k != "quantization_config"} == json.loads((source / "config.json").read_text())
    assert (destination / "generation_config.json").read_text() == (source / "generation_config.json").read_text()
    index = json.loads((destination / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in destination.glob("model-*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    before, after = load_file(str(source / "model.safetensors")), _tensors(destination)
    assert set(index["weight_map"]) == set(after)
    quantized_keys = {k for k in before if is_quantizable(k, tuple(before[k].shape))}
    assert set(after) == set(before) | {k + "_scale_inv" for k in quantized_keys}
    kept_2d = {k for k, t in before.items() if t.ndim == 2 and k not in quantized_keys}
    assert kept_2d == {k for k, t in before.items() if t.ndim == 2 and k.endswith(UNQUANTIZED_MATRICES)}
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in quantized_keys
    assert any(".experts.7.down_proj." in k for k in quantized_keys) == (kind == "moe")
    for key, tensor in before.items():
        if key in quantized_keys:
            assert after[key].dtype == E4M3 and after[key].shape == tensor.shape, key
            scale = after[key + "_scale_inv"]
            assert scale.dtype == torch.float32 and scale.shape == tuple(math.ceil(n / 128) for n in tensor.shape), key
        else:  # norms, biases, embeddings, lm_head, the router and its bias: untouched
            assert torch.equal(after[key], tensor), key


def test_transformers_loads_our_fp8_checkpoint_with_our_logits(kind, quantized):
    from transformers import FineGrainedFP8Config, Glm4vForConditionalGeneration, Glm4vMoeForConditionalGeneration

    _, destination = quantized
    cls = Glm4vMoeForConditionalGeneration if kind == "moe" else Glm4vForConditionalGeneration
    theirs = cls.from_pretrained(destination, dtype=torch.float32,
                                 quantization_config=FineGrainedFP8Config(dequantize=True)).eval()
    ours = VLM.from_pretrained(destination)
    inputs = _inputs()
    with torch.no_grad():
        got = theirs(**inputs, mm_token_type_ids=mm_token_type_ids(inputs["input_ids"])).logits
    assert (got - _logits(ours, inputs)).abs().max().item() < 2e-4  # 1.2e-5 measured: same weights, bit for bit


def test_keep_mode_holds_e4m3_and_gives_the_dequantized_logits(quantized, tmp_path):
    _, destination = quantized
    dequantized = VLM.from_pretrained(destination)
    kept = VLM.from_pretrained(destination, fp8="keep")
    linears = [m for m in kept.model.modules() if isinstance(m, Fp8Linear)]
    assert linears and all(m.weight.dtype == E4M3 for m in linears)
    assert not any(isinstance(m, Fp8Linear) for m in dequantized.model.modules())
    assert torch.equal(_logits(kept), _logits(dequantized))
    assert all(m.last_path == "dequantize" for m in linears)  # the CPU fallback, recorded by each forward
    kept.save_pretrained(tmp_path / "kept")  # still the FP8 layout: e4m3 weights and their scales
    assert json.loads((tmp_path / "kept" / "config.json").read_text())["quantization_config"] == QUANTIZATION_CONFIG
    assert torch.equal(_logits(VLM.from_pretrained(tmp_path / "kept")), _logits(dequantized))


def test_keep_mode_generates_the_dequantized_tokens(quantized):
    """The decode plan calls kept e4m3 projections as modules instead of fusing their raw bytes."""
    _, destination = quantized
    dequantized, kept = VLM.from_pretrained(destination), VLM.from_pretrained(destination, fp8="keep")
    inputs = _inputs()
    expected = dequantized.generate_ids(inputs, max_new_tokens=8)
    assert torch.equal(kept.generate_ids(inputs, max_new_tokens=8), expected)


def test_a_dequantized_model_saves_a_plain_checkpoint(quantized, tmp_path):
    _, destination = quantized
    ours = VLM.from_pretrained(destination)
    ours.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    assert all(t.dtype == torch.float32 for t in _tensors(tmp_path).values())
    assert torch.equal(_logits(VLM.from_pretrained(tmp_path)), _logits(ours))


@pytest.mark.slow
def test_dequantized_logits_stay_close_on_the_trained_model(tmp_path):
    """The embedded model (trained, 256 wide: 2x2-block matrices) on a real prompt with an image."""
    from PIL import Image, ImageDraw

    quantize_main(["--fp8", str(DEFAULT_MODEL_DIR), str(tmp_path / "fp8")])
    full, fp8 = VLM.from_pretrained(), VLM.from_pretrained(tmp_path / "fp8")
    image = Image.new("RGB", (448, 280), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([40, 40, 200, 120], fill="blue")
    draw.text((60, 160), "Sign in", fill="black")
    text = full.processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is Sign in?"}]}])
    inputs = {k: v for k, v in full.processor(text, images=[image]).items() if k != "mm_token_type_ids"}
    a, b = _logits(full, inputs)[0], _logits(fp8, inputs)[0]
    log_a, log_b = a.log_softmax(-1), b.log_softmax(-1)
    kl = (log_a.exp() * (log_a - log_b)).sum(-1)
    # measured (v1 model, 175 positions): relative L2 0.017, top-1 agreement 0.989, mean KL 5e-4 nats
    assert ((a - b).norm() / a.norm()).item() < 0.05
    assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() >= 0.95
    assert kl.mean().item() < 5e-3


# ---- the multi-token-prediction layer ------------------------------------------------------------


MTP_PLAIN = ("eh_proj.weight", "shared_head.head.weight")  # unquantized in the released layout (fp8.py)


@pytest.fixture(scope="module")
def mtp_quantized(kind, tmp_path_factory):
    """(source, destination): a reference checkpoint with an MTP layer, and our FP8 copy."""
    source = reference_checkpoint_with_mtp(tmp_path_factory, kind)
    destination = tmp_path_factory.mktemp(f"fp8_mtp_{kind}") / "fp8"
    quantize_main(["--fp8", str(source), str(destination)])
    return source, destination


def _mtp_prefix(directory):
    n = json.loads((directory / "config.json").read_text())["text_config"]["num_hidden_layers"]
    return f"model.language_model.layers.{n}."


def _draft_logits(vlm, *, logits_last=False):
    """The MTP layer's logits over a text prompt as a draft step computes them (decode.mtp_block)."""
    model, text = vlm.model, vlm.config.text
    ids = torch.tensor([[3, 17, 42, 8, 99, 23, 5]])
    T = ids.shape[1] - 1
    with torch.no_grad():
        out = model(ids)
        cos, sin = mrope_cos_sin(out.position_ids[:, :, :T], rotary_dim=text.rotary_dim, theta=text.rope_theta,
                                 mrope_section=text.mrope_section, layout=text.rotary_layout)
        cache = KVCache(1, 1, T, text.num_key_value_heads, text.head_dim, "cpu", torch.float32)
        causal = torch.zeros(T, T).masked_fill_(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        logits, _ = mtp_block(model, ids[:, 1:], out.hidden[:, :T], cos[:, None], sin[:, None], causal[None, None], cache,
                              logits_last=logits_last)
    return logits


def _drafts_like_dequantize(kept, dequantized):
    """Greedy drafting gives plain greedy's tokens in both modes, and the draft step's logits agree."""
    inputs = _inputs()
    expected = dequantized.generate_ids(inputs, max_new_tokens=8, draft_tokens=0)
    for vlm in (dequantized, kept):
        assert torch.equal(vlm.generate_ids(inputs, max_new_tokens=8, draft_tokens=2), expected)
    torch.testing.assert_close(_draft_logits(kept), _draft_logits(dequantized), rtol=1e-4, atol=1e-4)


def test_quantize_keeps_the_mtp_input_projection_and_head_unquantized(mtp_quantized):
    source, destination = mtp_quantized
    before, after = load_file(str(source / "model.safetensors")), _tensors(destination)
    p = _mtp_prefix(source)
    for name in MTP_PLAIN:
        assert p + name + "_scale_inv" not in after and torch.equal(after[p + name], before[p + name]), name
    # the layer's decoder block is quantized like any other layer
    block = {k for k, t in before.items()
             if k.startswith(p) and t.ndim == 2 and not k.endswith(MTP_PLAIN + UNQUANTIZED_MATRICES)}
    assert p + "self_attn.q_proj.weight" in block
    assert {k for k in before if k.startswith(p) and k + "_scale_inv" in after} == block
    assert all(after[k].dtype == E4M3 for k in block)


def test_keep_mode_keeps_the_mtp_block_in_e4m3_and_drafts_as_dequantize_does(mtp_quantized):
    _, destination = mtp_quantized
    dequantized, kept = VLM.from_pretrained(destination), VLM.from_pretrained(destination, fp8="keep")
    layer = kept.model.language_model.mtp_layers[0]
    attn = layer.mtp_block.self_attn
    assert isinstance(attn.q_proj, Fp8Linear) and isinstance(attn.o_proj, Fp8Linear)
    assert type(layer.eh_proj) is nn.Linear and type(layer.shared_head.head) is nn.Linear
    _drafts_like_dequantize(kept, dequantized)


def test_keep_mode_drafts_from_an_e4m3_input_projection_and_head(mtp_quantized, tmp_path):
    """Our quantizer stored `eh_proj` and the MTP head in e4m3 before: such a checkpoint still loads,
    keeps them as Fp8Linear and drafts (the decode plan calls them; a draft vocabulary's rows of the
    e4m3 head are dequantized)."""
    _, destination = mtp_quantized
    p = _mtp_prefix(destination)

    def quantize_mtp_ends(tensors):
        for name in MTP_PLAIN:
            tensors[p + name], tensors[p + name + "_scale_inv"] = LAYOUT.quantize(tensors[p + name])

    path = _copy_with(destination, tmp_path, quantize_mtp_ends)
    dequantized, kept = VLM.from_pretrained(path), VLM.from_pretrained(path, fp8="keep")
    layer = kept.model.language_model.mtp_layers[0]
    assert isinstance(layer.eh_proj, Fp8Linear) and isinstance(layer.shared_head.head, Fp8Linear)
    _drafts_like_dequantize(kept, dequantized)
    for vlm in (kept, dequantized):
        set_draft_vocab(vlm.model, range(0, vlm.config.text.vocab_size, 3))
    torch.testing.assert_close(_draft_logits(kept, logits_last=True), _draft_logits(dequantized, logits_last=True),
                               rtol=1e-4, atol=1e-4)
    inputs = _inputs()
    assert torch.equal(kept.generate_ids(inputs, max_new_tokens=8, draft_tokens=2),
                       dequantized.generate_ids(inputs, max_new_tokens=8, draft_tokens=0))


# ---- bad input ------------------------------------------------------------------------------------


def _copy_with(source, tmp_path, edit, config_edit=None):
    tensors = _tensors(source)
    edit(tensors)
    config = json.loads((source / "config.json").read_text())
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config_edit(config) if config_edit else config))
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    return tmp_path


def test_a_malformed_scale_shape_names_the_key_and_the_shapes(quantized, tmp_path):
    key = "model.language_model.layers.0.self_attn.q_proj.weight_scale_inv"
    rows, cols = _tensors(quantized[1])[key.removesuffix("_scale_inv")].shape
    path = _copy_with(quantized[1], tmp_path, lambda t: t.update({key: torch.ones(2, 1)}))
    with pytest.raises(ValueError, match=rf"'{key}' is F32 \[2, 1\], expected F32 \[1, 1\] for weight "
                                         rf"'{key.removesuffix('_scale_inv')}' of shape \[{rows}, {cols}\] in 128x128 blocks"):
        VLM.from_pretrained(path)


def test_a_scale_without_its_weight_and_a_scaled_float_weight_are_named(quantized, tmp_path):
    key = "model.language_model.layers.0.self_attn.o_proj.weight"
    path = _copy_with(quantized[1], tmp_path / "a", lambda t: t.update({"model.visual.surprise.weight_scale_inv": torch.ones(1, 1)}))
    with pytest.raises(ValueError, match=r"'model.visual.surprise.weight_scale_inv' .* scales 'model.visual.surprise.weight', which"):
        VLM.from_pretrained(path)
    path = _copy_with(quantized[1], tmp_path / "b", lambda t: t.update({key: t[key].float()}))
    rows, cols = _tensors(path)[key].shape
    with pytest.raises(ValueError, match=rf"'{key}' .* has a scale .* but is F32 \[{rows}, {cols}\]; expected a 2-D F8_E4M3 weight"):
        VLM.from_pretrained(path)


def test_a_truncated_fp8_shard_names_the_file(quantized, tmp_path):
    import shutil

    shutil.copytree(quantized[1], tmp_path / "cut")
    shard = sorted((tmp_path / "cut").glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{shard.name}"):
        VLM.from_pretrained(tmp_path / "cut")


def test_an_unsupported_quantization_config_is_named(quantized, tmp_path):
    config_edit = lambda c: {**c, "quantization_config": {**QUANTIZATION_CONFIG, "fmt": "e5m2"}}  # noqa: E731
    path = _copy_with(quantized[1], tmp_path, lambda t: None, config_edit)
    with pytest.raises(ValueError, match=r"quantization_config fmt 'e5m2' is not supported; expected 'e4m3'"):
        VLM.from_pretrained(path)
    with pytest.raises(ValueError, match=r"fp8='fast'; expected 'dequantize' or 'keep'"):
        VLM.from_pretrained(quantized[1], fp8="fast")


def test_quantize_refuses_a_quantized_source_and_a_non_empty_destination(quantized, tmp_path):
    source, destination = quantized
    with pytest.raises(ValueError, match="already quantized"):
        quantize_main(["--fp8", str(destination), str(tmp_path / "again")])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="busy already exists and is not empty"):
        quantize_main(["--fp8", str(source), str(tmp_path / "busy")])
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    key = "model.language_model.layers.0.self_attn.o_proj.weight"
    odd = _copy_with(source, tmp_path / "odd", lambda t: t.update({key: t[key].double()}))
    with pytest.raises(ValueError, match=rf"tensor '{key}' in .* is torch.float64; expected one of"):
        quantize_main(["--fp8", str(odd), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*staging"))  # nothing half-written


# ---- compressed-tensors float-quantized (Z.ai's GLM-4.5 / 4.5-Air / 4.5V -FP8 releases) --------
# The layout as the README's evidence documents it: e4m3 `<module>.weight` beside a float32
# `<module>.weight_scale` of shape (rows, 1) (strategy "channel"; (1,) for "tensor", one per block
# for "block"), dynamic per-token activations, and an `ignore` list for lm_head, the routers and
# the vision tower (or, with `vision`, one vision module, as GLM-4.5V-FP8's config ignores
# `visual.blocks.1.attn.qkv_proj`, `qkv` in the checkpoint's names). Written by hand here,
# quantized by hand, so that no code under test makes it.

CT_BLOCK = [32, 16]  # partial edge blocks on the tiny models' 48- and 24-wide matrices
CT_IGNORE = ["lm_head", "re:.*mlp\\.gate$", "re:^model\\.visual\\."]
CT_IGNORE_VISION = ["lm_head", "re:.*mlp\\.gate$", "visual.blocks.1.attn.qkv"]


def _ct_config(strategy: str, *, static_inputs: bool = False, ignore: list[str] = CT_IGNORE) -> dict:
    inputs = ({"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True, "dynamic": False} if static_inputs
              else {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": True, "dynamic": True})
    weights = {"num_bits": 8, "type": "float", "strategy": strategy, "symmetric": True, "dynamic": False,
               "group_size": None, "block_structure": CT_BLOCK if strategy == "block" else None,
               "observer": "minmax", "observer_kwargs": {}, "actorder": None}
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": inputs,
                                          "output_activations": None}},
            "ignore": ignore,
            "kv_cache_scheme": None, "global_compression_ratio": None, "sparsity_config": {}}


def _ct_quantize(weight: torch.Tensor, strategy: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(e4m3, float32 scale, dequantized by hand): each scale's span has its absolute maximum at 448."""
    w = weight.float()
    rows, cols = w.shape
    if strategy == "block":
        br, bc = CT_BLOCK
        spans = [[w[i:i + br, j:j + bc].abs().amax() for j in range(0, cols, bc)] for i in range(0, rows, br)]
        amax = torch.tensor(spans)  # (ceil(rows/br), ceil(cols/bc))
        expand = lambda s: s.repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols]  # noqa: E731
    else:
        amax = w.abs().amax(dim=1, keepdim=True) if strategy == "channel" else w.abs().amax().reshape(1)
        expand = lambda s: s  # noqa: E731  (rows, 1) and (1,) broadcast
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    q = (w / expand(scale)).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale, q.float() * expand(scale)


def _is_ct_quantized(key: str, tensor: torch.Tensor, *, vision: bool = False) -> bool:
    """The language model's linears (the MTP layer's included), and with `vision` the vision tower's
    but `blocks.1.attn.qkv`; never lm_head, the embeddings or the routers."""
    if tensor.ndim != 2 or not key.endswith(".weight") or key.endswith("mlp.gate.weight"):
        return False
    if key.startswith("model.language_model.layers."):
        return True
    return (vision and key.startswith("model.visual.") and "position_embedding" not in key
            and not key.startswith("model.visual.blocks.1.attn.qkv."))


def _write_ct(source, destination, strategy: str = "channel", *, static_inputs: bool = False, vision: bool = False):
    """`source` in compressed-tensors' layout at `destination`, and beside it `<destination>_by_hand`:
    the same weights dequantized by hand into a plain checkpoint. Returns both directories."""
    tensors, by_hand = {}, {}
    for key, weight in load_file(str(source / "model.safetensors")).items():
        if not _is_ct_quantized(key, weight, vision=vision):
            tensors[key] = by_hand[key] = weight
            continue
        module = key.removesuffix(".weight")
        tensors[key], tensors[module + ".weight_scale"], by_hand[key] = _ct_quantize(weight, strategy)
        if static_inputs:
            tensors[module + ".input_scale"] = torch.tensor([0.25])
    config = json.loads((source / "config.json").read_text())
    ignore = CT_IGNORE_VISION if vision else CT_IGNORE
    quantized = {**config, "quantization_config": _ct_config(strategy, static_inputs=static_inputs, ignore=ignore)}
    plain = destination.with_name(destination.name + "_by_hand")
    for path, weights, cfg in ((destination, tensors, quantized), (plain, by_hand, config)):
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(cfg))
        save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return destination, plain


@pytest.fixture(scope="module")
def ct_quantized(kind, tmp_path_factory):
    """(compressed-tensors channel-FP8 checkpoint, the same dequantized by hand)."""
    return _write_ct(reference_checkpoint(tmp_path_factory, kind), tmp_path_factory.mktemp(f"ct_{kind}") / "ct")


def test_compressed_tensors_channel_fp8_loads_as_dequantized_by_hand(ct_quantized):
    ct, plain = ct_quantized
    header = {key: info for key, info in _tensors(ct).items() if key.endswith("q_proj.weight_scale")}
    assert header and all(t.dtype == torch.float32 and t.shape[1] == 1 for t in header.values())  # (rows, 1)
    ours = VLM.from_pretrained(ct)
    assert torch.equal(_logits(ours), _logits(VLM.from_pretrained(plain)))  # same weights, bit for bit
    assert "quantization_config" not in ours.config.extra  # it saves as a plain checkpoint


def test_hand_dequantized_weights_are_within_e4m3_rounding(ct_quantized, kind, tmp_path_factory):
    """What the loader must reproduce is the source up to e4m3's round to nearest: half a step,
    2^-4 of the value's power of two, or 2^-10 of the scale among the subnormals."""
    source = load_file(str(reference_checkpoint(tmp_path_factory, kind) / "model.safetensors"))
    stored, plain = _tensors(ct_quantized[0]), _tensors(ct_quantized[1])
    quantized = [key for key in source if key + "_scale" in stored]
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in quantized
    assert any(".experts.0.down_proj." in key for key in quantized) == (kind == "moe")
    for key in quantized:
        scale = stored[key + "_scale"]
        bound = source[key].abs() * 2**-4 + scale * 2**-10
        assert ((plain[key] - source[key]).abs() <= bound * (1 + 1e-6)).all(), key


def test_transformers_loads_the_compressed_tensors_checkpoint_with_our_logits(kind, ct_quantized):
    from transformers import CompressedTensorsConfig, Glm4vForConditionalGeneration, Glm4vMoeForConditionalGeneration

    ct, _ = ct_quantized
    cls = Glm4vMoeForConditionalGeneration if kind == "moe" else Glm4vForConditionalGeneration
    theirs = cls.from_pretrained(ct, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
    inputs = _inputs()
    with torch.no_grad():
        got = theirs(**inputs, mm_token_type_ids=mm_token_type_ids(inputs["input_ids"])).logits
    assert (got - _logits(VLM.from_pretrained(ct), inputs)).abs().max().item() < 2e-4  # 1.1e-5 / 2.1e-5 measured (dense / MoE)


@pytest.mark.parametrize("strategy, static_inputs", [("tensor", True), ("block", False)])
def test_compressed_tensors_tensor_and_block_scales_load_as_dequantized_by_hand(tmp_path_factory, strategy, static_inputs):
    """Per-tensor scales with static activation scales (read past: the dequantized model computes
    in full precision), and per-block scales with partial edge blocks."""
    source = reference_checkpoint(tmp_path_factory, "dense")
    ct, plain = _write_ct(source, tmp_path_factory.mktemp(f"ct_{strategy}") / "ct", strategy, static_inputs=static_inputs)
    assert any(key.endswith(".input_scale") for key in _tensors(ct)) == static_inputs
    assert torch.equal(_logits(VLM.from_pretrained(ct)), _logits(VLM.from_pretrained(plain)))


@pytest.fixture(scope="module")
def ct_dense(tmp_path_factory):
    return _write_ct(reference_checkpoint(tmp_path_factory, "dense"), tmp_path_factory.mktemp("ct_dense") / "ct")[0]


def test_a_malformed_channel_scale_names_the_key_the_shapes_and_the_layout(ct_dense, tmp_path):
    key = "model.language_model.layers.0.self_attn.q_proj.weight_scale"
    rows = _tensors(ct_dense)[key].shape[0]
    path = _copy_with(ct_dense, tmp_path, lambda t: t.update({key: t[key].view(-1)}))  # (rows,) not (rows, 1)
    with pytest.raises(ValueError, match=rf"'{key}' is F32 \[{rows}\], expected F32 or BF16 or F16 \[{rows}, 1\] for weight "
                                         rf"'{key.removesuffix('_scale')}' of shape \[{rows}, \d+\] one per output row"):
        VLM.from_pretrained(path)


def test_compressed_tensors_scales_that_contradict_the_config_are_named(ct_dense, tmp_path):
    def quantize_lm_head(t):
        t["lm_head.weight"], t["lm_head.weight_scale"], _ = _ct_quantize(t["lm_head.weight"], "channel")

    with pytest.raises(ValueError, match=r"ignores 'lm_head' \(leaves it unquantized\), but .* scale 'lm_head.weight_scale'"):
        VLM.from_pretrained(_copy_with(ct_dense, tmp_path / "a", quantize_lm_head))
    key = "model.language_model.layers.0.mlp.down_proj.weight"
    with pytest.raises(ValueError, match=rf"'{key}' in .* is F8_E4M3 but the checkpoint has no '{key}_scale'"):
        VLM.from_pretrained(_copy_with(ct_dense, tmp_path / "b", lambda t: t.pop(key + "_scale")))
    key = "model.language_model.layers.0.mlp.down_proj.input_scale"  # static scales the config does not declare
    with pytest.raises(ValueError, match=rf"unexpected tensor '{key}'"):
        VLM.from_pretrained(_copy_with(ct_dense, tmp_path / "c", lambda t: t.update({key: torch.tensor([1.0])})))


def test_unsupported_compressed_tensors_configs_and_weight_only_keep_are_named(ct_dense, tmp_path):
    def with_weights(**changes):
        return lambda c: {**c, "quantization_config": {**c["quantization_config"], "config_groups": {"group_0": {
            **c["quantization_config"]["config_groups"]["group_0"],
            "weights": {**c["quantization_config"]["config_groups"]["group_0"]["weights"], **changes}}}}}

    cases = [
        (with_weights(strategy="group", group_size=128), r"config_groups.group_0.weights.strategy 'group' is not supported; "
                                                          r"expected 'tensor', 'channel' or 'block'"),
        (with_weights(type="int"), r"config_groups.group_0.weights.type 'int' is not supported; expected 'float'"),
        (lambda c: {**c, "quantization_config": {**c["quantization_config"], "format": "pack-quantized"}},
         r"format 'pack-quantized' is not supported; expected 'float-quantized'"),
        (lambda c: {**c, "quantization_config": {"quant_method": "gptq", "bits": 4}},
         r"quant_method 'gptq' is not supported; this loader reads 'fp8' .* and 'compressed-tensors'"),
    ]
    for i, (config_edit, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            VLM.from_pretrained(_copy_with(ct_dense, tmp_path / str(i), lambda t: None, config_edit))
    # weights only (W8A16): keep's CUDA products would quantize activations the config keeps in full precision
    group = json.loads((ct_dense / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    weight_only = _copy_with(ct_dense, tmp_path / "weight_only", lambda t: None, lambda c: {**c, "quantization_config": {
        **c["quantization_config"], "config_groups": {"group_0": {**group, "input_activations": None}}}})
    with pytest.raises(ValueError, match=r"fp8='keep' multiplies FP8 weights by activations quantized to FP8 on the fly "
                                         r"\(W8A8, on CUDA\); this checkpoint is compressed-tensors 'float-quantized' with "
                                         r"scales one per output row .* weight-only .* fp8='dequantize'"):
        VLM.from_pretrained(weight_only, fp8="keep")
    assert torch.equal(_logits(VLM.from_pretrained(weight_only)), _logits(VLM.from_pretrained(ct_dense)))


# ---- fp8="keep" on compressed-tensors: e4m3 weights with row, tensor or block scales ---------------


def _weight_bytes(vlm) -> int:
    return sum(t.numel() * t.element_size() for t in [*vlm.model.parameters(), *vlm.model.buffers()])


def test_keep_mode_holds_channel_fp8_and_gives_the_dequantized_logits_and_tokens(ct_quantized, tmp_path):
    ct, _ = ct_quantized
    dequantized, kept = VLM.from_pretrained(ct), VLM.from_pretrained(ct, fp8="keep")
    linears = [m for m in kept.model.modules() if isinstance(m, Fp8Linear)]
    assert linears and all(m.weight.dtype == E4M3 and m.layout == ChannelFP8() for m in linears)
    q_proj = kept.model.language_model.layers[0].self_attn.q_proj
    assert q_proj in linears and q_proj.weight_scale.shape == (q_proj.weight.shape[0], 1)  # the stored (rows, 1)
    assert _weight_bytes(kept) < _weight_bytes(dequantized)
    assert torch.equal(_logits(kept), _logits(dequantized))  # on a CPU both multiply the same dequantized weights
    assert all(m.last_path == "dequantize" for m in linears)
    inputs = _inputs()
    assert torch.equal(kept.generate_ids(inputs, max_new_tokens=8), dequantized.generate_ids(inputs, max_new_tokens=8))
    kept.save_pretrained(tmp_path / "kept")  # still compressed-tensors: e4m3 weights and their weight_scale
    assert json.loads((tmp_path / "kept" / "config.json").read_text())["quantization_config"] == _ct_config("channel")
    assert torch.equal(_logits(VLM.from_pretrained(tmp_path / "kept")), _logits(dequantized))


@pytest.mark.parametrize("strategy", ["tensor", "block"])
def test_keep_mode_runs_tensor_and_block_scales_as_dequantize_does(tmp_path_factory, strategy):
    """A per-tensor scale is a row scale repeated; compressed-tensors' block scales lie as
    block-FP8's ((rows / block_structure[0], cols / block_structure[1]), compressed-tensors'
    initialize.py), so the block product takes them, under their own name."""
    source = reference_checkpoint(tmp_path_factory, "dense")
    ct, _ = _write_ct(source, tmp_path_factory.mktemp(f"ct_keep_{strategy}") / "ct", strategy,
                      static_inputs=strategy == "tensor")
    dequantized, kept = VLM.from_pretrained(ct), VLM.from_pretrained(ct, fp8="keep")
    q_proj = kept.model.language_model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, Fp8Linear) and q_proj.layout == (TensorFP8() if strategy == "tensor" else BlockFP8(*CT_BLOCK))
    assert q_proj.scale_name == "weight_scale" and q_proj.weight.dtype == E4M3
    assert torch.equal(_logits(kept), _logits(dequantized))


def test_keep_mode_reads_a_per_tensor_scale_stored_zero_dimensional(tmp_path_factory, tmp_path):
    """A per-tensor `weight_scale` of shape () is the same one number as (1,): both modes read it,
    and keep holds it as (1,)."""
    source = reference_checkpoint(tmp_path_factory, "dense")
    ct, _ = _write_ct(source, tmp_path_factory.mktemp("ct_keep_0d") / "ct", "tensor")
    scalars = _copy_with(ct, tmp_path, lambda t: t.update({key: scale.reshape(()) for key, scale in t.items()
                                                           if key.endswith(".weight_scale")}))
    assert _tensors(scalars)["model.language_model.layers.0.self_attn.q_proj.weight_scale"].shape == ()
    kept = VLM.from_pretrained(scalars, fp8="keep")
    assert kept.model.language_model.layers[0].self_attn.q_proj.weight_scale.shape == (1,)
    assert torch.equal(_logits(kept), _logits(VLM.from_pretrained(scalars)))
    assert torch.equal(_logits(kept), _logits(VLM.from_pretrained(ct, fp8="keep")))


@pytest.fixture(scope="module")
def ct_mtp_vision(tmp_path_factory):
    """A compressed-tensors channel-FP8 MoE checkpoint with an MTP layer (its `eh_proj` and head
    quantized too, as Z.ai's releases store them) and the vision tower quantized but one module."""
    source = reference_checkpoint_with_mtp(tmp_path_factory, "moe")
    return _write_ct(source, tmp_path_factory.mktemp("ct_mtp_vision") / "ct", vision=True)[0]


def test_keep_mode_keeps_the_vision_tower_and_mtp_layer_and_drafts_as_dequantize_does(ct_mtp_vision):
    dequantized, kept = VLM.from_pretrained(ct_mtp_vision), VLM.from_pretrained(ct_mtp_vision, fp8="keep")
    layer, visual = kept.model.language_model.mtp_layers[0], kept.model.visual
    for module in (layer.mtp_block.self_attn.q_proj, layer.eh_proj, layer.shared_head.head, visual.blocks[0].attn.qkv,
                   visual.blocks[1].mlp.down_proj, visual.merger.proj):
        assert isinstance(module, Fp8Linear) and module.layout == ChannelFP8()
    assert type(visual.blocks[1].attn.qkv) is nn.Linear  # the one the config ignores stays as stored
    assert torch.equal(_logits(kept), _logits(dequantized))
    _drafts_like_dequantize(kept, dequantized)
    for vlm in (kept, dequantized):  # the draft vocabulary's rows of the e4m3 head, with their row scales
        set_draft_vocab(vlm.model, range(0, vlm.config.text.vocab_size, 3))
    torch.testing.assert_close(_draft_logits(kept, logits_last=True), _draft_logits(dequantized, logits_last=True),
                               rtol=1e-4, atol=1e-4)


# ---- the e4m3 matmul, checked on the CPU ----------------------------------------------------------


def test_block_scaled_matmul_math_is_a_close_linear():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 1024, generator=generator)
    weight, bias = torch.randn(256, 1024, generator=generator) / 32, torch.randn(256, generator=generator)
    q, scale_inv = LAYOUT.quantize(weight)
    y = block_scaled_linear(x, q, scale_inv, bias, mm=reference_mm)
    exact = F.linear(x, weight, bias)
    weight_only = F.linear(x, LAYOUT.dequantize(q, scale_inv), bias)
    assert y.shape == exact.shape
    # activations and weights each lose ~2.6% to e4m3; together ~3.7% relative (measured 0.030)
    assert ((y - exact).norm() / exact.norm()).item() < 0.05
    assert ((y - weight_only).norm() / weight_only.norm()).item() < 0.04
    assert 0 < ((y - weight_only).norm() / weight_only.norm()).item()  # the activations were quantized


def test_the_cuda_call_is_well_formed_on_meta_tensors():
    """torch's meta kernel for scaled_mm checks dtypes and layouts (not the GPU math)."""
    q = torch.empty(512, 1024, dtype=E4M3, device="meta")
    scale_inv = torch.empty(4, 8, device="meta")
    x = torch.empty(3, 7, 1024, dtype=torch.bfloat16, device="meta")
    y = block_scaled_linear(x, q, scale_inv, None, mm=cuda_scaled_mm)
    assert y.shape == (3, 7, 512) and y.dtype == torch.bfloat16
    assert not uses_scaled_mm(torch.empty(1, 1024), q, LAYOUT)  # on a CPU the dequantizing fallback runs


@pytest.mark.parametrize("strategy", ["channel", "tensor"])
def test_rowwise_scaled_matmul_is_the_dequantized_matmul_within_activation_rounding(strategy):
    """The row-wise kernel sums e4m3 products unscaled and scales each output once. That is the
    dequantized product of the e4m3-rounded activations up to float32 rounding, and it stays off the
    plain dequantized product by no more than the activations' rounding (half an e4m3 step, 2^-4 of
    the value or 2^-10 of the token's scale among the subnormals) carried through |W|."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 1024, generator=generator) * torch.logspace(-2, 1, 5)[:, None]  # tokens 0.01 to 10 wide
    weight, bias = torch.randn(256, 1024, generator=generator) / 32, torch.randn(256, generator=generator)
    q, scale, weight_dq = _ct_quantize(weight, strategy)
    y = rowwise_scaled_linear(x, q, scale, bias, mm=reference_rowwise_mm)
    token_scale = x.abs().amax(-1, keepdim=True) / E4M3_MAX  # by hand: one scale per token, its maximum at 448
    x_rounded = (x / token_scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).float() * token_scale
    torch.testing.assert_close(y, F.linear(x_rounded, weight_dq, bias), rtol=1e-5, atol=5e-5)  # 1.1e-5 measured
    exact = F.linear(x, weight_dq, bias)
    bound = (x.abs() * 2**-4 + token_scale * 2**-10) @ weight_dq.abs().t()
    assert ((y - exact).abs() <= bound * (1 + 1e-4) + 1e-5).all()
    assert (y - exact).abs().max() > 0  # the activations were rounded


def test_the_rowwise_cuda_call_is_well_formed_on_meta_tensors(monkeypatch):
    """torch 2.14's meta kernel for F.scaled_mm only infers the output; the legacy torch._scaled_mm's
    checks row-wise operands (float32 scales (M, 1) and (1, N), contiguous; b column-major; K and N
    multiples of 16), so the operands our call passes are run through it."""
    calls, scaled_mm = [], F.scaled_mm
    monkeypatch.setattr(F, "scaled_mm", lambda *args, **kwargs: calls.append((args, kwargs)) or scaled_mm(*args, **kwargs))
    q = torch.empty(512, 1024, dtype=E4M3, device="meta")
    x = torch.empty(3, 7, 1024, dtype=torch.bfloat16, device="meta")
    for scale in (torch.empty(512, 1, device="meta"), torch.empty(1, device="meta")):  # channel, tensor
        y = rowwise_scaled_linear(x, q, scale, None, mm=cuda_rowwise_mm)
        assert y.shape == (3, 7, 512) and y.dtype == torch.bfloat16
    assert len(calls) == 2
    for (a, b, scale_a, recipe_a, scale_b, recipe_b), kwargs in calls:
        assert recipe_a == recipe_b == F.ScalingType.RowWise
        assert torch._scaled_mm(a, b, scale_a, scale_b, out_dtype=kwargs["output_dtype"]).shape == (21, 512)
    a, b, scale_a, _, scale_b, _ = calls[0][0]
    with pytest.raises(RuntimeError, match="mat2 must be col_major"):  # the check bites: W^T copied row-major
        torch._scaled_mm(a, b.contiguous(), scale_a, scale_b, out_dtype=torch.bfloat16)
    assert not uses_scaled_mm(torch.empty(1, 1024), q, ChannelFP8())  # on a CPU the dequantizing fallback runs


@pytest.mark.slow
def test_loading_fp8_never_holds_the_model_twice(tmp_path):
    """Peak resident memory of the load in a fresh process (benchmarks/fp8_load.py), ~70M parameters."""
    from benchmarks.fp8_load import load_peak
    from benchmarks.generate import write_checkpoint

    write_checkpoint(tmp_path / "source")
    quantize_main(["--fp8", str(tmp_path / "source"), str(tmp_path / "fp8")])
    result = load_peak(tmp_path / "fp8", dtype="float32", fp8="dequantize")
    # measured 296 MB for a 288 MB float32 model (1.03x); keeping the 101 MB checkpoint as well
    # would be 1.35x, a dequantized copy of the model 2x
    assert result["load_peak_mb"] < 1.15 * result["model_mb"]
