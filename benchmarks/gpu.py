"""Correctness and generation speed on an accelerator, beside transformers, in one run.

    .venv/bin/python -m benchmarks.gpu --out runs/gpu --device cuda   # on a GPU: bfloat16 speeds
    .venv/bin/python -m benchmarks.gpu --out /tmp/gpu --quick         # toy sizes on CPU (CI)

Writes OUT/gpu.json (every number) and OUT/gpu.md (a Markdown table). Three parts, each its own
function; a part that raises is recorded as failed with its error, and the others still run:
1. parity: random checkpoints written by transformers (weights re-drawn larger than its init,
   as tests/_model_utils.py does, so logits are O(1) and a tolerance means something), loaded by
   us and by `Glm4vMoeForConditionalGeneration` on the device. Logits of one text + image prompt:
   float32 max |diff| (tolerance 2e-4, tests/test_model.py's), bfloat16 max |diff| (tolerance
   twice transformers' own bfloat16 error against its float32 logits: each side may be that far
   off, in either direction), and greedy tokens for 32 steps, float32 (ours `generate_ids`, theirs
   `generate(do_sample=False)`, the config's stop ids in both). Without --quick it runs on the
   tests' tiny config and on benchmarks/generate.py's issue-5 config.
2. speed: benchmarks/generate.py's config and checkpoint (transformers' own init), the device's
   dtype (bfloat16 on cuda, float32 on cpu). Decode tok/s at batch 1 and 8 (ours: the engine's
   decode clock, which syncs once per step; theirs: (time of N new - time of 1 new) / (N - 1)),
   and prefill seconds of one image + 64 text tokens. Best of `repeats`, interleaved.
3. mtp: the shipped model (assets/model, with its MTP layer) on held-out synth.ui screens,
   greedy batch 1: plain vs `draft_tokens=2` decode tok/s and acceptance (recipes.mtp_layer's
   `compare`, which runs on whatever device the model and prompts are on).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

import torch

from .generate import SPECIAL, TEXT, VISION, best_of, image_inputs, write_checkpoint

F32_TOL = 2e-4  # tests/test_model.py
# bfloat16: ours and transformers' logits may differ by twice transformers' own bfloat16 error
# (its bfloat16 logits against its float32 ones): each side may err by that much, in any direction.
BF16_TOL_FACTOR = 2.0
GREEDY_STEPS = 32
# transformers' experts and cache settings for its timings: a static cache auto-compiles on CUDA
# (minutes, past the 10-minute limit of one command), so the dynamic cache everywhere.
HF_EXPERTS = "grouped_mm"

TINY_TEXT = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=3,
    n_shared_experts=1, n_group=2, topk_group=1, first_k_dense_replace=1, norm_topk_prob=False,
    routed_scaling_factor=1.5, eos_token_id=[0, 7, 9], pad_token_id=0,
    rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5, mrope_section=[1, 1, 2]),
)
TINY_VISION = dict(depth=2, hidden_size=32, num_heads=2, out_hidden_size=64, intermediate_size=40, image_size=56,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---- checkpoints and inputs ---------------------------------------------------------------------


def write_random(path: Path, text: dict, vision: dict) -> None:
    """A transformers checkpoint with weights of std 1/sqrt(fan_in) and a non-zero routing bias."""
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    torch.manual_seed(0)
    model = Glm4vMoeForConditionalGeneration(Glm4vMoeConfig(text_config=text, vision_config=vision, **SPECIAL))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 1.0) / max(1, p.shape[-1]) ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))
    model.save_pretrained(path)


def image_prompt(vocab: int, grid: tuple[int, int, int], *, text: int = 8) -> dict[str, torch.Tensor]:
    """`text` random tokens, then <|begin_of_image|>, t*h*w/4 placeholders, <|end_of_image|>, 2 more tokens."""
    generator = torch.Generator().manual_seed(1)
    t, h, w = grid
    words = torch.randint(100, vocab, (text + 2,), generator=generator).tolist()
    image = [SPECIAL["image_start_token_id"], *[SPECIAL["image_token_id"]] * (t * h * w // 4),
             SPECIAL["image_end_token_id"]]
    ids = torch.tensor([words[:text] + image + words[text:]])
    patch_dim = 3 * 2 * 14 * 14
    return {"input_ids": ids, "pixel_values": torch.randn(t * h * w, patch_dim, generator=generator),
            "image_grid_thw": torch.tensor([grid]), "mm_token_type_ids": (ids == SPECIAL["image_token_id"]).long()}


def to(inputs: dict, device: str, dtype: torch.dtype | None = None) -> dict:
    """Inputs on `device`; floating ones (pixels) in `dtype` when given."""
    return {k: v.to(device, dtype) if dtype is not None and v.is_floating_point() else v.to(device)
            for k, v in inputs.items()}


def load_pair(path: Path, device: str, dtype: torch.dtype):
    from transformers import Glm4vMoeForConditionalGeneration

    from vlm import VLM

    ours = VLM.from_pretrained(path, device=device, dtype=dtype)
    theirs = Glm4vMoeForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
    return ours, theirs


# ---- 1. parity ------------------------------------------------------------------------------------


def logits_pair(path: Path, inputs: dict, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    ours, theirs = load_pair(path, device, dtype)
    batch = to(inputs, device, dtype)
    with torch.inference_mode():
        mine = ours.model(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"}).logits.float().cpu()
        ref = theirs(**batch).logits.float().cpu()
    return mine, ref


def greedy_equal(path: Path, inputs: dict, device: str) -> tuple[bool, list[int], list[int]]:
    from vlm.generation import GenerationOptions, generate_ids

    ours, theirs = load_pair(path, device, torch.float32)
    batch = to(inputs, device)
    stops = ours.config.text.eos_token_ids
    options = GenerationOptions(max_new_tokens=GREEDY_STEPS, draft_tokens=0)
    mine = generate_ids(ours.model, batch, options, stop_token_ids=stops, pad_token_id=0)[0].tolist()
    with torch.inference_mode():
        out = theirs.generate(**batch, max_new_tokens=GREEDY_STEPS, do_sample=False, eos_token_id=list(stops),
                              pad_token_id=0)
    ref = out[0, batch["input_ids"].shape[1]:].tolist()
    return mine == ref, mine, ref


def parity(device: str, *, quick: bool) -> dict:
    configs = {"tiny": (TINY_TEXT, TINY_VISION, (1, 4, 4))}
    if not quick:
        configs["issue-5"] = (TEXT, VISION, (1, 16, 16))
    record = {"f32_tol": F32_TOL, "bf16_tol_factor": BF16_TOL_FACTOR, "greedy_steps": GREEDY_STEPS, "configs": {}}
    for name, (text, vision, grid) in configs.items():
        with tempfile.TemporaryDirectory() as tmp:
            write_random(Path(tmp), text, vision)
            inputs = image_prompt(text["vocab_size"], grid)
            ours32, ref32 = logits_pair(Path(tmp), inputs, device, torch.float32)
            ours16, ref16 = logits_pair(Path(tmp), inputs, device, torch.bfloat16)
            equal, mine, ref = greedy_equal(Path(tmp), inputs, device)
        f32, bf16 = (ours32 - ref32).abs().max().item(), (ours16 - ref16).abs().max().item()
        theirs_error = (ref16 - ref32).abs().max().item()
        record["configs"][name] = {
            "max_abs_logit": ref32.abs().max().item(), "f32_max_diff": f32, "f32_pass": f32 < F32_TOL,
            "bf16_max_diff": bf16, "bf16_tol": BF16_TOL_FACTOR * theirs_error,
            "bf16_pass": bf16 <= BF16_TOL_FACTOR * theirs_error,
            "ours_bf16_vs_f32": (ours16 - ref32).abs().max().item(), "theirs_bf16_vs_f32": theirs_error,
            "greedy_equal": equal, "greedy_ours": mine, "greedy_theirs": ref,
        }
    return record


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
    lines = [f"device: {record['device_name']}, speed dtype {record['dtype']}, quick={record['quick']}", "",
             "| part | measure | ours | transformers | result |", "|---|---|---|---|---|"]
    for part in ("parity", "speed", "mtp"):
        if not record[part]["ok"]:
            lines.append(f"| {part} | failed | | | {record[part]['error'].splitlines()[0][:200]} |")
    p = record["parity"]
    for name, c in p.get("configs", {}).items():
        lines += [f"| parity {name} | float32 logits max abs diff | {c['f32_max_diff']:.2e} | | "
                  f"{verdict(c['f32_pass'])} (tol {p['f32_tol']:.0e}) |",
                  f"| parity {name} | bfloat16 logits max abs diff | {c['bf16_max_diff']:.2e} | | "
                  f"{verdict(c['bf16_pass'])} (tol {c['bf16_tol']:.2e} = {p['bf16_tol_factor']:g} x theirs vs float32; "
                  f"ours vs float32 {c['ours_bf16_vs_f32']:.2e}; max logit {c['max_abs_logit']:.2f}) |",
                  f"| parity {name} | greedy tokens, {p['greedy_steps']} steps, float32 | {len(c['greedy_ours'])} | "
                  f"{len(c['greedy_theirs'])} | {'equal' if c['greedy_equal'] else 'DIFFERENT'} |"]
    s = record["speed"]
    if s["ok"]:
        for b in (1, 8):
            mine, theirs = s[f"ours_decode_b{b}_tok_s"], s[f"hf_decode_b{b}_tok_s"]
            lines.append(f"| speed | decode tok/s, batch {b}, {s['new']} new after {s['prompt']} | {mine:.1f} | "
                         f"{theirs:.1f} | {mine / theirs:.2f}x |")
        lines.append(f"| speed | prefill s, image + text, {s['prefill_tokens']} tokens | {s['ours_prefill_s']:.4f} | "
                     f"{s['hf_prefill_s']:.4f} | {s['hf_prefill_s'] / s['ours_prefill_s']:.2f}x |")
    m = record["mtp"]
    if m.get("skipped"):
        lines.append(f"| mtp | skipped | | | {m['skipped']} |")
    elif m["ok"]:
        lines.append(f"| mtp | shipped model, batch 1 decode tok/s, plain vs 2 drafts ({m['prompts']} prompts) | "
                     f"{m['mtp2_tok_s']:.1f} | {m['plain_tok_s']:.1f} (ours, plain) | {m['speedup']:.2f}x, "
                     f"acceptance {m['acceptance_rate']:.1%}, {m['tokens_per_step']:.2f} tokens/forward, "
                     f"{'identical' if m['identical'] else 'NOT identical'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for gpu.json and gpu.md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes, few steps: the same code paths in seconds")
    args = parser.parse_args(argv)
    device = args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    record = {"device": device, "device_name": name, "dtype": str(dtype).removeprefix("torch."), "quick": args.quick,
              "torch": torch.__version__}
    record["parity"] = attempt(parity, device, quick=args.quick)
    record["speed"] = attempt(speed, device, dtype, quick=args.quick)
    record["mtp"] = attempt(mtp, device, dtype, quick=args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(record, indent=2))
    (args.out / "gpu.md").write_text(table(record) + "\n")
    print(table(record))


if __name__ == "__main__":
    main()
