"""Correctness, generation and training speed, and the trainer's launch on an accelerator, in one run.

    .venv/bin/python -m benchmarks.gpu --out runs/gpu --device cuda   # on a GPU: bfloat16 speeds
    .venv/bin/python -m benchmarks.gpu --out /tmp/gpu --quick         # toy sizes on CPU (CI)
    .venv/bin/python -m benchmarks.gpu --out runs/gpu --parts train launch   # some parts only

Writes OUT/gpu.json (every number) and OUT/gpu.md (a Markdown table), rewritten after each part
so a run cut short keeps what it measured. Six parts, each its own function; a part that raises
is recorded as failed with its error, and the others still run:
1. parity: ours beside `Glm4vMoeForConditionalGeneration` on random checkpoints, a text + image
   and a text + video prompt: float32 and bfloat16 logits, 32 greedy tokens
   (benchmarks/gpu_parity.py). --quick: the tests' tiny config; else also the issue-5 config and
   GLM-4.5V's real widths with 2 layers.
2. speed: benchmarks/generate.py's config and checkpoint (transformers' own init), the device's
   dtype (bfloat16 on cuda, float32 on cpu). Decode tok/s at batch 1 and 8 (ours: the engine's
   decode clock, which syncs once per step; theirs: (time of N new - time of 1 new) / (N - 1)),
   and prefill seconds of one image + 64 text tokens. Best of `repeats`, interleaved.
3. mtp: the shipped model (assets/model, with its MTP layer) on held-out synth.ui screens,
   greedy batch 1: plain vs `draft_tokens=2` decode tok/s and acceptance (recipes.mtp_layer's
   `compare`, which runs on whatever device the model and prompts are on).
4. train: one training step of a GLM-4.5V-wide MoE slice, full and LoRA, ours beside
   transformers' eager and grouped_mm experts: tokens/s, peak memory (benchmarks/gpu_train.py).
5. launch: `accelerate launch` of the real trainer with train/configs' FSDP2 (and DeepSpeed
   ZeRO-3 when installed) on one device: loss falls, checkpoint saved, resumed at its step
   (benchmarks/gpu_launch.py).
6. fp8: a random checkpoint at GLM-4.5V's widths (2 layers) quantized to block-FP8 by
   vlm.quantize and to compressed-tensors channel-FP8 (the -FP8 releases' layout), loaded
   unquantized, `fp8="dequantize"` and `fp8="keep"`: logits against the unquantized model, weight
   memory, prefill s and batch-1 decode tok/s, and how many Fp8Linears ran `scaled_mm` (block or
   row-wise) or the dequantizing fallback (benchmarks/gpu_fp8.py). --quick: tiny, float32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from . import gpu_fp8, gpu_launch, gpu_train
from .generate import TEXT, VISION, best_of, image_inputs, write_checkpoint
from .gpu_parity import TINY_TEXT, TINY_VISION, image_prompt, load_pair, parity, to, write_random

# transformers' experts and cache settings for its timings: a static cache auto-compiles on CUDA
# (minutes, past the 10-minute limit of one command), so the dynamic cache everywhere.
HF_EXPERTS = "grouped_mm"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---- 2. speed -------------------------------------------------------------------------------------


def ours_decode(model, ids_BT: torch.Tensor, new: int, device: str) -> tuple[float, float]:
    """(decode tok/s over all rows, prefill s): the stream's own clocks, greedy, no stop ids."""
    from vlm.generation import GenerationOptions, TokenStream

    sampler = GenerationOptions().sampler(batch=ids_BT.shape[0], vocab_size=model.cfg.text.vocab_size, device=device)
    stream = TokenStream(model, {"input_ids": ids_BT}, max_new_tokens=new, sampler=sampler)
    sync(device)
    steps = sum(1 for _ in stream)
    assert steps == new, steps
    return ids_BT.shape[0] * stream.decode_steps / stream.decode_s, stream.prefill_s


def hf_generate_s(model, ids_BT: torch.Tensor, new: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids_BT, attention_mask=torch.ones_like(ids_BT), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, pad_token_id=0)
    sync(device)
    assert out.shape[1] == ids_BT.shape[1] + new
    return time.perf_counter() - start


def hf_decode_tok_s(model, ids_BT: torch.Tensor, new: int, device: str) -> float:
    full = hf_generate_s(model, ids_BT, new, device)
    first = hf_generate_s(model, ids_BT, 1, device)
    return ids_BT.shape[0] * (new - 1) / max(full - first, 1e-9)


def ours_prefill(model, inputs: dict, device: str) -> None:
    from vlm.cache import KVCache

    text, ids = model.cfg.text, inputs["input_ids"]
    cache = KVCache(text.num_hidden_layers, 1, ids.shape[1] + 1, text.num_key_value_heads, text.head_dim, device,
                    next(model.parameters()).dtype)
    with torch.inference_mode():
        model(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"}, cache=cache, logits_to_keep=1)
    sync(device)


def hf_prefill(model, inputs: dict, device: str) -> None:
    with torch.inference_mode():
        model(**inputs, use_cache=True, logits_to_keep=1)
    sync(device)


def speed(device: str, dtype: torch.dtype, *, quick: bool) -> dict:
    """Decode tok/s at batch 1 and 8, prefill s; ours and transformers' on the same weights."""
    text, vision = (TINY_TEXT, TINY_VISION) if quick else (TEXT, VISION)
    prompt, new, repeats = (16, 8, 1) if quick else (64, 64, 3)
    with tempfile.TemporaryDirectory() as tmp:
        if quick:
            write_random(Path(tmp), text, vision)
        else:
            write_checkpoint(Path(tmp))  # benchmarks/generate.py's: the same weights as the CPU table
        ours, theirs = load_pair(Path(tmp), device, dtype)
    theirs.set_experts_implementation(HF_EXPERTS)
    model = ours.model
    generator = torch.Generator().manual_seed(1)
    record = {"dtype": str(dtype).removeprefix("torch."), "prompt": prompt, "new": new, "repeats": repeats,
              "hf_settings": f"{HF_EXPERTS}+dynamic"}
    for batch in (1, 8):
        ids = torch.randint(100, text["vocab_size"], (batch, prompt), generator=generator).to(device)
        ours_decode(model, ids, new, device)  # warm-up (kernels, allocator)
        hf_generate_s(theirs, ids, new, device)
        mine = theirs_rate = 0.0
        for _ in range(repeats):
            mine = max(mine, ours_decode(model, ids, new, device)[0])
            theirs_rate = max(theirs_rate, hf_decode_tok_s(theirs, ids, new, device))
        record[f"ours_decode_b{batch}_tok_s"], record[f"hf_decode_b{batch}_tok_s"] = mine, theirs_rate
    image = to(image_prompt(text["vocab_size"], (1, 4, 4)) if quick else image_inputs(), device, dtype)
    record["prefill_tokens"] = image["input_ids"].shape[1]
    record["ours_prefill_s"] = best_of(lambda: ours_prefill(model, image, device), repeats)
    record["hf_prefill_s"] = best_of(lambda: hf_prefill(theirs, image, device), repeats)
    return record


# ---- 3. MTP on the shipped model ------------------------------------------------------------------


def mtp(device: str, dtype: torch.dtype, *, quick: bool) -> dict:
    from recipes.mtp_layer import compare
    from vlm import VLM

    from .mtp_decode import shipped_prompts

    shipped = VLM.from_pretrained(device=device, dtype=dtype)
    if not len(shipped.model.language_model.mtp_layers):
        return {"skipped": "assets/model has no MTP layer"}
    n, new, repeats = (1, 8, 1) if quick else (8, 128, 3)
    prompts = [to(p, device, dtype) for p in shipped_prompts(shipped, None, n)]
    plain, drafted = compare(shipped.model, prompts, [2], new=new, stop_ids=shipped.stop_token_ids(), repeats=repeats)
    return {"prompts": n, "max_new": new, "repeats": repeats, "plain_tok_s": plain.tok_s, "mtp2_tok_s": drafted.tok_s,
            "speedup": drafted.tok_s / plain.tok_s, "acceptance_rate": drafted.acceptance_rate,
            "tokens_per_step": drafted.tokens_per_step, "identical": drafted.identical}


# ---- report ---------------------------------------------------------------------------------------


def attempt(fn, *args, **kwargs) -> dict:
    """{"ok": True, "seconds": ..., ...numbers} or {"ok": False, "error": ...}: one failing part does
    not stop the others."""
    start = time.perf_counter()
    try:
        record = {"ok": True, **fn(*args, **kwargs)}
    except Exception as error:  # noqa: BLE001 (recorded, and the run goes on)
        record = {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    return record | {"seconds": time.perf_counter() - start}


def verdict(passed: bool) -> str:
    return "pass" if passed else "FAIL"


def table(record: dict) -> str:
    lines = [f"device: {record['device_name']}, {record['date']}, torch {record['torch']}, "
             f"speed dtype {record['dtype']}, quick={record['quick']}; `{record['command']}`", "",
             "| part | measure | ours | transformers | result |", "|---|---|---|---|---|"]
    parts = [part for part in PARTS if part in record]
    for part in parts:
        if not record[part]["ok"]:
            lines.append(f"| {part} | failed | | | {record[part]['error'].splitlines()[0][:200]} |")
    p = record.get("parity", {})
    for name, c in p.get("configs", {}).items():
        lines += [f"| parity {name} | float32 logits max abs diff | {c['f32_max_diff']:.2e} | | "
                  f"{verdict(c['f32_pass'])} (tol {p['f32_tol']:.0e}) |",
                  f"| parity {name} | bfloat16 logits max abs diff | {c['bf16_max_diff']:.2e} | | "
                  f"{verdict(c['bf16_pass'])} (tol {c['bf16_tol']:.2e} = {p['bf16_tol_factor']:g} x theirs vs float32; "
                  f"ours vs float32 {c['ours_bf16_vs_f32']:.2e}; max logit {c['max_abs_logit']:.2f}) |",
                  f"| parity {name} | greedy tokens, {p['greedy_steps']} steps, float32 | {len(c['greedy_ours'])} | "
                  f"{len(c['greedy_theirs'])} | {'equal' if c['greedy_equal'] else 'DIFFERENT'} |"]
    s = record.get("speed", {})
    if s.get("ok"):
        for b in (1, 8):
            mine, theirs = s[f"ours_decode_b{b}_tok_s"], s[f"hf_decode_b{b}_tok_s"]
            lines.append(f"| speed | decode tok/s, batch {b}, {s['new']} new after {s['prompt']} | {mine:.1f} | "
                         f"{theirs:.1f} | {mine / theirs:.2f}x |")
        lines.append(f"| speed | prefill s, image + text, {s['prefill_tokens']} tokens | {s['ours_prefill_s']:.4f} | "
                     f"{s['hf_prefill_s']:.4f} | {s['hf_prefill_s'] / s['ours_prefill_s']:.2f}x |")
    m = record.get("mtp", {})
    if m.get("skipped"):
        lines.append(f"| mtp | skipped | | | {m['skipped']} |")
    elif m.get("ok"):
        lines.append(f"| mtp | shipped model, batch 1 decode tok/s, plain vs 2 drafts ({m['prompts']} prompts) | "
                     f"{m['mtp2_tok_s']:.1f} | {m['plain_tok_s']:.1f} (ours, plain) | {m['speedup']:.2f}x, "
                     f"acceptance {m['acceptance_rate']:.1%}, {m['tokens_per_step']:.2f} tokens/forward, "
                     f"{'identical' if m['identical'] else 'NOT identical'} |")
    if "train" in record:
        lines += gpu_train.table_rows(record["train"])
    if "launch" in record:
        lines += gpu_launch.table_rows(record["launch"])
    if "fp8" in record:
        lines += gpu_fp8.table_rows(record["fp8"])
    return "\n".join(lines)


PARTS = ("parity", "speed", "mtp", "train", "launch", "fp8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for gpu.json and gpu.md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes, few steps: the same code paths in seconds")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run, in order")
    args = parser.parse_args(argv)
    device = args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    record = {"device": device, "device_name": name, "dtype": str(dtype).removeprefix("torch."), "quick": args.quick,
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "command": "python -m benchmarks.gpu " + " ".join(argv if argv is not None else sys.argv[1:])}
    runs = {"parity": lambda: parity(device, quick=args.quick), "speed": lambda: speed(device, dtype, quick=args.quick),
            "mtp": lambda: mtp(device, dtype, quick=args.quick),
            "train": lambda: gpu_train.train_step(device, dtype, quick=args.quick),
            "launch": lambda: gpu_launch.launch(device, quick=args.quick),
            "fp8": lambda: gpu_fp8.fp8(device, dtype, quick=args.quick)}
    args.out.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        record[part] = attempt(runs[part])
        (args.out / "gpu.json").write_text(json.dumps(record, indent=2))  # after each part: a cut-short run keeps it
        (args.out / "gpu.md").write_text(table(record) + "\n")
    print(table(record))


if __name__ == "__main__":
    main()
