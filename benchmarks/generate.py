"""Generation speed, side by side with transformers, on the same random weights (float32, same threads).

    .venv/bin/python -m benchmarks.generate                 # full run, prints a markdown table
    .venv/bin/python -m benchmarks.generate --quick         # fewer repeats, no transformers search
    .venv/bin/python -m benchmarks.generate --json out.json # also write the numbers (atomically)
    .venv/bin/python -m benchmarks.generate --mtp           # speculative decoding with the MTP layer
                                                            # (benchmarks/mtp_decode.py): with / without, acceptance

The checkpoint is the fixed configuration of issue 5, written by transformers' `save_pretrained`
with random weights into a temporary directory: text hidden 512, 8 layers, 8 heads, 2 KV heads,
dense intermediate 1536, 16 routed experts top-4 of width 256, 1 shared expert, vocab 8192,
M-RoPE [4, 6, 6]; vision depth 8, width 384, 6 heads, intermediate 1024, out 512. Special ids
are the project tokenizer's.

What is measured, and how:
- Decode tokens/s, batch 1, 64 new tokens after a 64-token prompt: ours from the engine's own
  decode clock; transformers' as (time of 64 new tokens - time of 1 new token) / 63, best
  over its experts implementations and cache kinds (its "fastest settings"). Also printed as a
  fraction of the memory-bandwidth bound: measured matrix-vector bandwidth / bytes of the
  weights one token reads (attention, dense MLP, router, top-k + shared experts, lm_head).
- Prefill of a 728x728 image plus 64 text tokens (676 vision tokens): one forward with an empty
  cache, last logits only; GFLOP/s from an analytic count of matmul and attention FLOPs,
  against the measured float32 matmul rate.
- Batch-8 decode throughput against batch 1.
- Loading: peak resident memory of `VLM.from_pretrained` in a fresh subprocess, against the
  checkpoint size (the resident memory of the imports alone is reported and subtracted).
Each timing is the best of `--repeats` runs, ours and transformers' interleaved: the machine
is shared, and the minimum is the least disturbed estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 8192
# The project tokenizer's ids (assets/model/tokenizer.json).
SPECIAL = dict(image_token_id=14, video_token_id=15, image_start_token_id=10, image_end_token_id=11,
               video_start_token_id=12, video_end_token_id=13)
TEXT = dict(vocab_size=VOCAB, hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
            head_dim=64, intermediate_size=1536, n_routed_experts=16, num_experts_per_tok=4, moe_intermediate_size=256,
            n_shared_experts=1, first_k_dense_replace=1, max_position_embeddings=8192, eos_token_id=[0, 7, 9],
            pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6],
                                             "partial_rotary_factor": 0.5})
VISION = dict(depth=8, hidden_size=384, num_heads=6, intermediate_size=1024, out_hidden_size=512, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, image_size=336)
PROMPT, NEW, IMAGE_SIDE, BATCH = 64, 64, 728, 8


@dataclass
class Results:
    threads: int
    checkpoint_mb: float
    matvec_gb_s: float
    matmul_gflop_s: float
    active_mb_per_token: float
    ours_decode_tok_s: float
    hf_decode_tok_s: float
    hf_best_settings: str
    ours_prefill_s: float
    hf_prefill_s: float
    prefill_gflop: float
    ours_batch8_tok_s: float
    load_peak_mb: float
    load_baseline_mb: float


# ---------------------------------------------------------------------------------------------
# Machine


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matvec_bandwidth_gb_s(repeats: int) -> float:
    """Read rate of one float32 matrix-vector product over a 256 MB matrix (far beyond the caches)."""
    w = torch.randn(16384, 4096)
    x = torch.randn(4096)
    return w.numel() * 4 / best_of(lambda: torch.mv(w, x), repeats) / 1e9


def matmul_gflop_s(repeats: int) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 2 * 1024**3 / best_of(lambda: a @ b, repeats) / 1e9


# ---------------------------------------------------------------------------------------------
# Checkpoint and inputs


def write_checkpoint(path: Path) -> None:
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    torch.manual_seed(0)
    config = Glm4vMoeConfig(text_config=TEXT, vision_config=VISION, **SPECIAL)
    Glm4vMoeForConditionalGeneration(config).save_pretrained(path)


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def text_inputs(batch: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(100, VOCAB, (batch, PROMPT), generator=generator)}


def image_inputs() -> dict[str, torch.Tensor]:
    """64 text tokens, then <|begin_of_image|>, 676 placeholders, <|end_of_image|>."""
    from vlm.images import preprocess_image
    from PIL import Image

    side = IMAGE_SIDE
    picture = Image.frombytes("RGB", (side, side), torch.randint(0, 256, (side * side * 3,), dtype=torch.uint8).numpy().tobytes())
    patches = preprocess_image(picture)
    t, h, w = patches.grid_thw
    n = t * h * w // 4
    text = text_inputs(1)["input_ids"][0].tolist()
    ids = torch.tensor([text + [SPECIAL["image_start_token_id"]] + [SPECIAL["image_token_id"]] * n
                        + [SPECIAL["image_end_token_id"]]])
    mm_types = (ids == SPECIAL["image_token_id"]).long()
    return {"input_ids": ids, "pixel_values": patches.pixel_values,
            "image_grid_thw": torch.tensor([patches.grid_thw]), "mm_token_type_ids": mm_types}


# ---------------------------------------------------------------------------------------------
# Ours


def ours_decode(model, batch: int) -> tuple[float, float]:
    """(decode tokens/s over the batch, prefill seconds) for NEW tokens per row, no stop ids."""
    from vlm.generation import TokenStream
    from vlm.sampling import Sampler, SamplingParams

    sampler = Sampler(SamplingParams(), batch=batch, vocab_size=VOCAB, device="cpu")
    stream = TokenStream(model, text_inputs(batch), max_new_tokens=NEW, sampler=sampler)
    steps = sum(1 for _ in stream)
    assert steps == NEW, steps
    return batch * stream.decode_steps / stream.decode_s, stream.prefill_s


def ours_prefill(model, inputs) -> None:
    from vlm.cache import KVCache

    text = model.cfg.text
    ids = inputs["input_ids"]
    cache = KVCache(text.num_hidden_layers, 1, ids.shape[1] + 1, text.num_key_value_heads, text.head_dim, "cpu",
                    torch.float32)
    with torch.inference_mode():
        model(ids, pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"], cache=cache,
              logits_to_keep=1)


def active_bytes_per_token(model) -> int:
    """Bytes of the weights one decoded token reads: all of the text model except the embedding
    table (one row) and the routed experts that were not picked (E - K of E)."""
    text = model.cfg.text
    total = 0
    for name, p in model.named_parameters():
        if name.startswith("visual."):
            continue
        size = p.numel() * p.element_size()
        if name.endswith("embed_tokens.weight") and p is not model.lm_head.weight:
            size = p.shape[1] * p.element_size()
        elif ".experts." in name:
            size = size * text.num_experts_per_tok // text.n_routed_experts
        total += size
    return total


def forward_flop(model, *, rows: int, tokens: int, patches_per_row: int, logit_rows: int) -> float:
    """Matmul + attention FLOPs (2 per multiply-add) of one forward over `rows` rows of `tokens`
    tokens, each row holding one image of `patches_per_row` patches, with the lm_head applied to
    `logit_rows` positions in all. Causal text attention counts its lower half only, the least
    any implementation must compute."""
    text, vision = model.cfg.text, model.cfg.vision
    T, patches = rows * tokens, rows * patches_per_row
    flop = 0.0
    for name, p in model.named_parameters():
        if p.ndim < 2 or name.endswith("embed_tokens.weight") or "position_embedding" in name:
            continue
        if name.startswith("visual."):
            n = patches // 4 if ("merger" in name or "downsample" in name) else patches
            flop += 2 * n * p.numel()
        elif name == "lm_head.weight":
            flop += 2 * logit_rows * p.numel()
        elif ".experts." in name:
            flop += 2 * T * p.numel() * text.num_experts_per_tok / text.n_routed_experts
        else:
            flop += 2 * T * p.numel()
    flop += rows * vision.depth * 4 * patches_per_row**2 * vision.hidden_size  # QK^T and PV per image, bidirectional
    flop += rows * text.num_hidden_layers * 2 * tokens**2 * text.num_attention_heads * text.head_dim  # causal: half
    return flop


def prefill_flop(model, inputs) -> float:
    """FLOPs of one prefill of `inputs` (one row, one image), logits at the last position."""
    return forward_flop(model, rows=1, tokens=inputs["input_ids"].shape[1],
                        patches_per_row=int(inputs["image_grid_thw"].prod(-1).sum()), logit_rows=1)


# ---------------------------------------------------------------------------------------------
# transformers


def hf_generate_s(model, inputs, new_tokens: int, settings: str) -> float:
    experts, cache = settings.split("+")
    model.set_experts_implementation(experts)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    if cache != "dynamic":
        kwargs["cache_implementation"] = cache
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, **kwargs)
    assert out.shape[1] == inputs["input_ids"].shape[1] + new_tokens
    return time.perf_counter() - start


def hf_decode_tok_s(model, settings: str, repeats: int) -> float:
    inputs = text_inputs(1)
    hf_generate_s(model, inputs, NEW, settings)  # warm-up (and static cache allocation)
    full = min(hf_generate_s(model, inputs, NEW, settings) for _ in range(repeats))
    first = min(hf_generate_s(model, inputs, 1, settings) for _ in range(repeats))
    return (NEW - 1) / max(full - first, 1e-9)


def hf_prefill(model, inputs) -> None:
    with torch.inference_mode():
        model(**inputs, use_cache=True, logits_to_keep=1)


# ---------------------------------------------------------------------------------------------
# Loading


_LOAD_SCRIPT = """
import re, sys, torch
torch.set_num_threads({threads})
sys.path.insert(0, {root!r})
from vlm import VLM
import transformers, safetensors.torch  # everything the load imports, before the baseline
from vlm.config import tiny
from vlm.model import VisionLanguageModel
with torch.device("meta"):  # the one-time library set-up of building any model (~150 MB here,
    VisionLanguageModel(tiny())  # the same for every checkpoint size) is not the checkpoint's cost
def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
vlm = VLM.from_pretrained({path!r})
print(before, status("VmHWM"))
"""


def load_peak_mb(path: Path, threads: int) -> tuple[float, float]:
    """(peak RSS during the load minus the RSS before it, the RSS before it), MB, in a fresh process.
    The peak is reset after the imports (Linux `clear_refs`), so their own transient peak is not counted."""
    script = _LOAD_SCRIPT.format(threads=threads, root=str(ROOT), path=str(path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before_kb, after_kb = map(int, out.stdout.split()[-2:])
    return (after_kb - before_kb) / 1024, before_kb / 1024


# ---------------------------------------------------------------------------------------------


def run(*, threads: int, repeats: int, hf_settings: list[str]) -> Results:
    from transformers import Glm4vMoeForConditionalGeneration

    from vlm import VLM

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        write_checkpoint(path)
        size_mb = checkpoint_bytes(path) / 1e6
        load_mb, baseline_mb = load_peak_mb(path, threads)
        ours = VLM.from_pretrained(path).model
        hf = Glm4vMoeForConditionalGeneration.from_pretrained(path, torch_dtype=torch.float32).eval()

    bandwidth, matmul = matvec_bandwidth_gb_s(repeats), matmul_gflop_s(repeats)

    # transformers' fastest settings for decoding, then ours and theirs interleaved.
    hf_rates = {s: hf_decode_tok_s(hf, s, 1) for s in hf_settings}
    best = max(hf_rates, key=hf_rates.get)
    ours_rate, hf_rate = 0.0, hf_rates[best]
    for _ in range(repeats):
        ours_rate = max(ours_rate, ours_decode(ours, 1)[0])
        hf_rate = max(hf_rate, hf_decode_tok_s(hf, best, 1))
    batch8 = max(ours_decode(ours, BATCH)[0] for _ in range(max(1, repeats // 2)))

    image = image_inputs()
    ours_prefill_s = best_of(lambda: ours_prefill(ours, image), repeats)
    hf.set_experts_implementation(best.split("+")[0])
    hf_prefill_s = best_of(lambda: hf_prefill(hf, image), repeats)

    return Results(
        threads=threads, checkpoint_mb=size_mb, matvec_gb_s=bandwidth, matmul_gflop_s=matmul,
        active_mb_per_token=active_bytes_per_token(ours) / 1e6, ours_decode_tok_s=ours_rate, hf_decode_tok_s=hf_rate,
        hf_best_settings=best, ours_prefill_s=ours_prefill_s, hf_prefill_s=hf_prefill_s,
        prefill_gflop=prefill_flop(ours, image) / 1e9, ours_batch8_tok_s=batch8, load_peak_mb=load_mb,
        load_baseline_mb=baseline_mb,
    )


def table(r: Results) -> str:
    bound = r.matvec_gb_s * 1e3 / r.active_mb_per_token
    rows = [
        ("decode tok/s, batch 1 (64 new after 64)", f"{r.ours_decode_tok_s:.1f}", f"{r.hf_decode_tok_s:.1f}",
         f"{r.ours_decode_tok_s / r.hf_decode_tok_s:.2f}x (goal 2.5x)"),
        ("  fraction of bandwidth bound", f"{r.ours_decode_tok_s / bound:.0%}", f"{r.hf_decode_tok_s / bound:.0%}",
         f"bound {bound:.0f} tok/s = {r.matvec_gb_s:.1f} GB/s / {r.active_mb_per_token:.1f} MB"),
        ("prefill 728x728 image + 64 text, s", f"{r.ours_prefill_s:.3f}", f"{r.hf_prefill_s:.3f}",
         f"{r.hf_prefill_s / r.ours_prefill_s:.2f}x (goal 1.3x)"),
        ("  achieved GFLOP/s", f"{r.prefill_gflop / r.ours_prefill_s:.1f}", f"{r.prefill_gflop / r.hf_prefill_s:.1f}",
         f"matmul peak {r.matmul_gflop_s:.1f} GFLOP/s ({r.prefill_gflop:.1f} GFLOP)"),
        ("decode tok/s, batch 8 (all rows)", f"{r.ours_batch8_tok_s:.1f}", "",
         f"{r.ours_batch8_tok_s / r.ours_decode_tok_s:.2f}x batch 1 (goal 4x)"),
        ("load: peak RSS above imports, MB", f"{r.load_peak_mb:.0f}", "",
         f"{r.load_peak_mb / r.checkpoint_mb:.2f}x checkpoint {r.checkpoint_mb:.0f} MB (goal <= 1.25x)"),
    ]
    lines = [f"float32, {r.threads} threads; transformers' fastest: {r.hf_best_settings}; imports alone "
             f"{r.load_baseline_mb:.0f} MB RSS", "", "| measure | ours | transformers | ratio / note |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats, transformers with grouped_mm + static only")
    parser.add_argument("--json", type=Path, help="also write the numbers here (atomic)")
    mtp = parser.add_argument_group("--mtp: speculative decoding (benchmarks/mtp_decode.py)")
    mtp.add_argument("--mtp", action="store_true", help="decode tok/s with and without the MTP layer, acceptance")
    mtp.add_argument("--draft-tokens", default="1,2,3", help="draft counts to compare with plain decoding")
    mtp.add_argument("--new", type=int, default=128, help="max new tokens per shipped-model answer")
    mtp.add_argument("--prompts", type=Path, help="JSONL conversations for the shipped model (default: synth.ui)")
    mtp.add_argument("--n-prompts", type=int, default=8, help="prompts for the shipped model")
    mtp.add_argument("--train-steps", type=int, default=150, help="self-distillation steps of the config's MTP")
    args = parser.parse_args(argv)
    if args.mtp:
        from .mtp_decode import run as run_mtp

        text, record = run_mtp(threads=args.threads, drafts=[int(k) for k in args.draft_tokens.split(",")],
                               repeats=2 if args.quick else args.repeats, new=args.new, prompts_path=args.prompts,
                               n_prompts=args.n_prompts, train_steps=args.train_steps)
        print(text)
        if args.json:
            tmp = args.json.with_suffix(args.json.suffix + ".tmp")
            tmp.write_text(json.dumps(record, indent=2))
            os.replace(tmp, args.json)
        return
    settings = [f"{e}+{c}" for e in ("eager", "grouped_mm", "batched_mm") for c in ("dynamic", "static")]
    if args.quick:
        args.repeats, settings = 2, ["grouped_mm+static"]
    results = run(threads=args.threads, repeats=args.repeats, hf_settings=settings)
    print(table(results))
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(results), indent=2))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
