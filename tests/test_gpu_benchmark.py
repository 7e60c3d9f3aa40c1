"""The GPU benchmark's --quick run on CPU: every part reports real numbers; float32 parity holds
and greedy tokens equal transformers' for an image and a video prompt; the training step is the
same step as transformers' (equal losses from equal weights); the trainer launched by accelerate
learns, saves and resumes at its step; both FP8 modes dequantize on CPU and give the same logits,
off the unquantized model's by a measured amount, for block-FP8 and channel-FP8 (compressed-tensors)
alike; the Markdown table has each row. The full-size configs, which --quick does not run, are
built on the meta device and checked against GLM-4.5V's widths."""

import json
import math

import pytest
import torch

from benchmarks.gpu import main
from benchmarks.gpu_parity import F32_TOL, SPECIAL, glm45v_widths
from benchmarks.gpu_train import SLICE_TEXT, SLICE_VISION

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quick_run_reports_every_part(tmp_path):
    main(["--out", str(tmp_path), "--quick", "--device", "cpu"])
    record = json.loads((tmp_path / "gpu.json").read_text())
    for part in ("parity", "speed", "mtp", "train", "launch", "fp8"):
        assert record[part]["ok"], record[part].get("traceback")

    parity = record["parity"]
    assert sorted(parity["configs"]) == ["tiny/image", "tiny/video"]
    for name, c in parity["configs"].items():
        assert math.isfinite(c["f32_max_diff"]) and c["f32_max_diff"] < F32_TOL and c["f32_pass"], name
        assert math.isfinite(c["bf16_max_diff"]) and c["bf16_pass"], name
        assert c["max_abs_logit"] > 0.5, name  # logits are not all ~0: the tolerances mean something
        assert c["greedy_equal"] and 8 <= len(c["greedy_ours"]) <= parity["greedy_steps"], name

    speed = record["speed"]
    for key in ("ours_decode_b1_tok_s", "hf_decode_b1_tok_s", "ours_decode_b8_tok_s", "hf_decode_b8_tok_s",
                "ours_prefill_s", "hf_prefill_s"):
        assert math.isfinite(speed[key]) and speed[key] > 0, key

    mtp = record["mtp"]
    assert mtp["plain_tok_s"] > 0 and mtp["mtp2_tok_s"] > 0 and 0 <= mtp["acceptance_rate"] <= 1
    assert mtp["identical"]  # greedy drafting commits the same tokens as plain decoding

    train = record["train"]
    for mode in ("full", "lora"):
        r = train[mode]
        for model in ("ours", "hf_eager", "hf_grouped_mm"):
            assert math.isfinite(r[model]["tok_s"]) and r[model]["tok_s"] > 0, (mode, model)
            assert r[model]["peak_gib"] is None  # CPU: no allocator peak to read
            # float32, the same weights, adapters and batch: the same steps give the same loss
            assert r[model]["loss"] == pytest.approx(r["ours"]["loss"], rel=1e-4), (mode, model)
        assert r["vs_eager"] == pytest.approx(r["ours"]["tok_s"] / r["hf_eager"]["tok_s"])
    assert train["step_tflop"] > 0

    launch = record["launch"]["configs"]
    assert "CUDA" in launch["fsdp2"]["skipped"] and "CUDA" in launch["deepspeed_zero3"]["skipped"]
    ddp = launch["ddp"]
    assert ddp["pass"] and all(ddp["checks"].values()), ddp
    assert len(ddp["losses"]) == 6 and ddp["losses"][-1] < ddp["losses"][0]
    assert ddp["checkpoint_steps"] == [3, 6] and ddp["resumed_at"] == 3 and ddp["resumed_steps"] == [4, 5, 6]
    assert ddp["resume_max_loss_diff"] < 1e-5  # float32 on CPU: the resumed steps repeat the first run's

    fp8 = record["fp8"]
    assert fp8["pass"] and all(fp8["checks"].values()), fp8["checks"]
    keep, dequantize, unquantized = fp8["keep"], fp8["dequantize"], fp8["unquantized"]
    for mode in (keep, dequantize, unquantized, fp8["channel_keep"], fp8["channel_dequantize"]):
        assert not mode["errors"] and mode["load_peak_gib"] is None  # CPU: no allocator peak to read
        assert math.isfinite(mode["decode_b1_tok_s"]) and mode["decode_b1_tok_s"] > 0
        assert math.isfinite(mode["prefill_s"]) and mode["prefill_s"] > 0
    # On CPU keep dequantizes per call: the same float32 weights, the same logits, bit for bit
    assert fp8["keep_vs_dequantize"]["max_abs_diff"] == 0 and keep["ran_scaled_mm"] == 0
    assert 0 < keep["fp8_linears"] == keep["ran_dequantize"] and keep["not_run"] == 0
    assert keep["weight_gib"] < dequantize["weight_gib"] == unquantized["weight_gib"]
    channel = fp8["channel_keep"]  # the compressed-tensors copy: every kept linear has row scales
    assert fp8["channel_keep_vs_channel_dequantize"]["max_abs_diff"] == 0 and channel["ran_scaled_mm"] == 0
    assert 0 < channel["fp8_linears"] == channel["ran_dequantize"] and channel["not_run"] == 0
    assert channel["weight_gib"] < fp8["channel_dequantize"]["weight_gib"]
    # Random tiny MoE weights, measured: 37% relative L2, 57% top-1 over 76 positions (chance is
    # 1/512). Above 1%: the weights were quantized (e4m3 alone is ~2.6% a weight); below 60% and
    # well above chance: the FP8 logits still track the unquantized ones. A trained model's bounds
    # (5%, 95%) are tests/test_fp8.py's.
    error = fp8["dequantize_vs_unquantized"]
    assert 0.01 < error["rel_l2"] < 0.6 and error["top1"] > 0.3, error

    table = (tmp_path / "gpu.md").read_text()
    for row in ("parity tiny/image | float32 logits", "parity tiny/video | float32 logits",
                "parity tiny/video | greedy tokens, 32 steps", "decode tok/s, batch 1", "decode tok/s, batch 8",
                "prefill s", "plain vs 2 drafts", "train full | fwd+bwd+AdamW tokens/s", "train lora",
                "launch ddp", "launch fsdp2 | skipped", "fp8 tiny | logits vs unquantized",
                "fp8 tiny | decode tok/s", "Fp8Linear products: scaled_mm / dequantize fallback",
                "fp8 tiny channel | Fp8Linear products"):
        assert row in table, row
    assert "FAIL" not in table and "failed" not in table and "DIFFERENT" not in table


def test_full_size_configs_are_glm45v_wide():
    """What runs only on the GPU: GLM-4.5V's widths with 2 layers for parity, the MoE slice for
    the training step; transformers builds both and our config reader takes them."""
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    from vlm import VLMConfig

    for text, vision, dense_layers in ((*glm45v_widths(), 1), (SLICE_TEXT, SLICE_VISION, 0)):
        config = Glm4vMoeConfig(text_config=text, vision_config=vision, **SPECIAL)
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in Glm4vMoeForConditionalGeneration(config).state_dict().items()}
        ours = VLMConfig.from_dict(config.to_dict()).text
        heads = (ours.num_attention_heads, ours.num_key_value_heads, ours.head_dim)
        assert ours.hidden_size == 4096 and heads == (96, 8, 128)
        assert ours.num_hidden_layers == 2 and ours.first_k_dense_replace == dense_layers
        assert shapes["model.language_model.layers.1.mlp.experts.gate_up_proj"] == (128, 2 * 1408, 4096)
        assert ours.num_experts_per_tok == 8
        assert shapes["model.language_model.layers.0.self_attn.q_proj.weight"] == (96 * 128, 4096)
    text, vision = glm45v_widths()
    assert vision["hidden_size"] == 1536 and vision["depth"] == 2 and text["vocab_size"] == 151552
