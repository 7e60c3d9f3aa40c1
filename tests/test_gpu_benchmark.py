"""The GPU benchmark's --quick run on CPU: every part reports real numbers, float32 parity holds,
greedy tokens equal transformers', and the Markdown table has each row."""

import json
import math

import pytest

from benchmarks.gpu import F32_TOL, main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quick_run_reports_every_part(tmp_path):
    main(["--out", str(tmp_path), "--quick", "--device", "cpu"])
    record = json.loads((tmp_path / "gpu.json").read_text())
    for part in ("parity", "speed", "mtp"):
        assert record[part]["ok"], record[part].get("traceback")

    tiny = record["parity"]["configs"]["tiny"]
    assert math.isfinite(tiny["f32_max_diff"]) and tiny["f32_max_diff"] < F32_TOL and tiny["f32_pass"]
    assert math.isfinite(tiny["bf16_max_diff"]) and tiny["bf16_pass"]
    assert tiny["max_abs_logit"] > 0.5  # logits are not all ~0: the tolerances mean something
    assert tiny["greedy_equal"] and len(tiny["greedy_ours"]) == record["parity"]["greedy_steps"]

    speed = record["speed"]
    for key in ("ours_decode_b1_tok_s", "hf_decode_b1_tok_s", "ours_decode_b8_tok_s", "hf_decode_b8_tok_s",
                "ours_prefill_s", "hf_prefill_s"):
        assert math.isfinite(speed[key]) and speed[key] > 0, key

    mtp = record["mtp"]
    assert mtp["plain_tok_s"] > 0 and mtp["mtp2_tok_s"] > 0 and 0 <= mtp["acceptance_rate"] <= 1
    assert mtp["identical"]  # greedy drafting commits the same tokens as plain decoding

    table = (tmp_path / "gpu.md").read_text()
    for row in ("float32 logits max abs diff", "bfloat16 logits max abs diff", "greedy tokens, 32 steps",
                "decode tok/s, batch 1", "decode tok/s, batch 8", "prefill s", "plain vs 2 drafts"):
        assert row in table, row
    assert "FAIL" not in table and "failed" not in table
