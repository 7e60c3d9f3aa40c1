"""Part 4 of benchmarks.gpu: one training step of a GLM-4.5V-wide MoE slice, ours beside transformers.

The slice: text hidden 4096, 96 query / 8 KV heads of 128, two layers, both MoE (128 routed
experts top-8 of width 1408, one shared expert), bfloat16 weights; a vocabulary of 8192 (the
project tokenizer's), so the lm_head (at GLM-4.5V's 151,552 it would be ~2x a MoE layer's FLOPs)
does not hide the MoE layers being compared; a tiny vision tower that a text-only batch never
reaches. 4 rows x 1024 random text tokens. One checkpoint, transformers' own initialisation,
loaded by both.

The loop is benchmarks/train_throughput.py's `Runner` (forward, token-mean cross-entropy over
every next token, backward, fused AdamW over the parameters that train), in two modes:
- full: every parameter trains;
- lora: peft adapters of rank 16 on the language model's q/k/v/o (train.config.LoraOptions'
  default "attention" preset), through `train.lora.wrap` for ours (the trainer's path) and
  peft's `get_peft_model` with the same module names for transformers'.
Transformers runs with each of train_throughput.IMPLEMENTATIONS (eager, grouped_mm). One model
is in memory at a time; each is timed as the best of `steps` steps after one warm-up step, with
its peak allocated memory (weights, gradients, optimiser state, activations; None on CPU).
The goal (issue 21): ours >= 3x transformers' eager step.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .generate import forward_flop
from .gpu_parity import free
from .train_throughput import IMPLEMENTATIONS, Runner, text_batch, write_checkpoint

GOAL_VS_EAGER = 3.0
SLICE_TEXT = dict(
    vocab_size=8192, hidden_size=4096, intermediate_size=10944, num_hidden_layers=2, num_attention_heads=96,
    num_key_value_heads=8, head_dim=128, n_routed_experts=128, num_experts_per_tok=8, moe_intermediate_size=1408,
    n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=0, norm_topk_prob=True,
    routed_scaling_factor=1.0,
    max_position_embeddings=4096, eos_token_id=[0], pad_token_id=0,
    rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5, mrope_section=[8, 12, 12]),
)
SLICE_VISION = dict(depth=1, hidden_size=64, num_heads=2, out_hidden_size=4096, intermediate_size=64, image_size=56,
                    patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
# --quick: the same shape of model at toy widths (every layer MoE, shared expert, top-k > 1).
QUICK_TEXT = SLICE_TEXT | dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16, n_routed_experts=8, num_experts_per_tok=2,
                               moe_intermediate_size=32, max_position_embeddings=512,
                               rope_parameters=SLICE_TEXT["rope_parameters"] | dict(mrope_section=[1, 1, 2]))
QUICK_VISION = SLICE_VISION | dict(hidden_size=32, out_hidden_size=64, intermediate_size=40)


def lora_options():
    from train.config import LoraOptions

    return LoraOptions()  # the trainer's defaults: rank 16, alpha 32, attention


def load_ours(path: Path, device: str, dtype: torch.dtype, mode: str) -> torch.nn.Module:
    from train import lora
    from vlm import VLM

    model = VLM.from_pretrained(path, device=device, dtype=dtype).model
    if mode == "full":
        return model
    torch.manual_seed(0)  # the adapters' initial draw, in module order: the same as transformers' below
    return lora.wrap(model, lora_options())


def load_theirs(path: Path, device: str, dtype: torch.dtype, mode: str, experts: str, targets: list[str]):
    from peft import LoraConfig, get_peft_model
    from transformers import Glm4vMoeForConditionalGeneration

    model = Glm4vMoeForConditionalGeneration.from_pretrained(path, dtype=dtype, device_map=device)
    model.set_experts_implementation(experts)
    if mode == "full":
        return model
    options = lora_options()
    config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout, bias="none",
                        target_modules=[f"model.{name}" for name in targets])  # ours' names, transformers' prefix
    torch.manual_seed(0)
    return get_peft_model(model, config)


def measure(runner: Runner, batch: dict, steps: int, device: str) -> dict:
    """Best step time over `steps` after a warm-up, tokens/s, peak memory since the model loaded."""
    runner.step(batch)
    for _ in range(steps):
        runner.step(batch)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else None
    tokens = batch["input_ids"].numel()
    return {"step_s": runner.best_s, "tok_s": tokens / runner.best_s, "peak_gib": peak, "loss": runner.last_loss}


def release(device: str) -> None:
    """Free the last model's memory and start the peak counter again."""
    free(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def train_step(device: str, dtype: torch.dtype, *, quick: bool) -> dict:
    """{"full": {...}, "lora": {...}}: per model its step s, tokens/s, peak GiB and last loss,
    and ours against transformers' eager and its fastest implementation."""
    from train.lora import target_module_names

    text, vision = (QUICK_TEXT, QUICK_VISION) if quick else (SLICE_TEXT, SLICE_VISION)
    rows, seq, steps = (2, 64, 2) if quick else (4, 1024, 3)
    batch = {k: v.to(device) for k, v in text_batch(rows, seq, text["vocab_size"]).items()}
    record = {"dtype": str(dtype).removeprefix("torch."), "rows": rows, "seq": seq, "steps": steps,
              "layers": text["num_hidden_layers"], "hidden": text["hidden_size"], "experts": text["n_routed_experts"],
              "top_k": text["num_experts_per_tok"], "expert_width": text["moe_intermediate_size"],
              "goal_vs_eager": GOAL_VS_EAGER}
    release(device)
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp), text=text, vision=vision, device=device, dtype=dtype)
        release(device)
        for mode in ("full", "lora"):
            ours = load_ours(Path(tmp), device, dtype, mode)
            if mode == "full":
                targets = target_module_names(ours, lora_options())
                record["step_tflop"] = 3 * forward_flop(ours, rows=rows, tokens=seq, patches_per_row=0,
                                                        logit_rows=rows * seq) / 1e12
            results = {"ours": measure(Runner("ours", ours, ("input_ids",)), batch, steps, device)}
            del ours
            release(device)
            for experts in IMPLEMENTATIONS:
                theirs = load_theirs(Path(tmp), device, dtype, mode, experts, targets)
                results[f"hf_{experts}"] = measure(Runner(experts, theirs, ("input_ids",)), batch, steps, device)
                del theirs
                release(device)
            fastest = max(IMPLEMENTATIONS, key=lambda e: results[f"hf_{e}"]["tok_s"])
            results |= {"hf_fastest": fastest, "vs_eager": results["ours"]["tok_s"] / results["hf_eager"]["tok_s"],
                        "vs_fastest": results["ours"]["tok_s"] / results[f"hf_{fastest}"]["tok_s"],
                        # the same steps from the same weights (and adapters): the same loss, up to rounding
                        "loss_diff_vs_eager": abs(results["ours"]["loss"] - results["hf_eager"]["loss"])}
            record[mode] = results
    return record


def table_rows(part: dict) -> list[str]:
    """Markdown table rows for `train_step`'s record."""
    if not part["ok"]:
        return []
    shape = (f"{part['layers']} MoE layers, hidden {part['hidden']}, {part['experts']} experts top-{part['top_k']} "
             f"width {part['expert_width']}, {part['rows']}x{part['seq']} tokens, {part['dtype']}")
    lines = []
    for mode in ("full", "lora"):
        r = part[mode]
        ours = r["ours"]
        theirs = ", ".join(f"{r[f'hf_{e}']['tok_s']:.0f} ({e})" for e in IMPLEMENTATIONS)
        verdict = "pass" if r["vs_eager"] >= part["goal_vs_eager"] else "below goal"
        lines.append(f"| train {mode} | fwd+bwd+AdamW tokens/s ({shape}) | {ours['tok_s']:.0f} | {theirs} | "
                     f"{r['vs_eager']:.2f}x eager ({verdict}, goal {part['goal_vs_eager']:g}x), "
                     f"{r['vs_fastest']:.2f}x {r['hf_fastest']}; last loss {ours['loss']:.4f} vs "
                     f"{r['hf_eager']['loss']:.4f} (eager) |")
        if ours["peak_gib"] is not None:
            theirs = ", ".join(f"{r[f'hf_{e}']['peak_gib']:.1f} ({e})" for e in IMPLEMENTATIONS)
            lines.append(f"| train {mode} | peak memory GiB | {ours['peak_gib']:.1f} | {theirs} | |")
    full = part["full"]["ours"]
    lines.append(f"| train full | ours TFLOP/s ({part['step_tflop']:.3g} TFLOP a step, forward x 3) | "
                 f"{part['step_tflop'] / full['step_s']:.3g} | | |")
    return lines
