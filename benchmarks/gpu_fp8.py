"""Part 6 of benchmarks.gpu: FP8 checkpoints on the device, e4m3 kept or dequantized, beside bf16.

A random checkpoint (gpu_parity's `write_random`, saved in the run's dtype) is written in both FP8
layouts (vlm/fp8_format.py): block-FP8 by `vlm.quantize.quantize_checkpoint`, and
compressed-tensors channel-wise (`write_channel_fp8`, the layout of Z.ai's -FP8 releases: one
scale per output row).
Each is loaded as below, one model in memory at a time:
- unquantized: the source checkpoint, the reference;
- dequantize / channel_dequantize: `fp8="dequantize"` (e4m3 weights turned into the run's dtype on load);
- keep / channel_keep: `fp8="keep"` (e4m3 `Fp8Linear`s; on CUDA 9.x `scaled_mm`, block-scaled
  where K % 512 == 0 and N % 128 == 0, row-wise for bfloat16 where K % 16 == 0 and N % 16 == 0;
  the weight dequantized per call elsewhere).
For each: the logits of one text + image prompt against the unquantized model's (relative L2,
top-1 agreement over every position), weight bytes (parameters + buffers) and, on CUDA, the
load's peak allocated memory, prefill seconds of that prompt and batch-1 decode tok/s (the speed
part's clocks), and how many `Fp8Linear`s ran `scaled_mm` or the fallback (their `last_path`).

Sizes: GLM-4.5V's widths with 2 layers and 2 vision blocks (gpu_parity's `glm45v_widths`), in
bfloat16. Block: 21 of its 28 quantized linears meet the block shapes (attention, the vision
blocks, the projector's first linear, the shared expert's gate and up); the 10944-wide MLPs
(layer 0's and the projector's) and the shared expert's down_proj (K = 1408) take the fallback.
Channel: all 28 meet the row-wise shapes. The routed experts are dequantized on load in every
mode (fp8_linear.py). --quick: the tests' tiny config in float32 on CPU, where every FP8 mode
dequantizes and keep must give dequantize's logits.

Checks, per layout: keep's weights are smaller than dequantize's (and its CUDA load peak);
scaled_mm ran on exactly the eligible linears where the device offers it (none elsewhere);
without scaled_mm, keep's logits equal dequantize's; and every logit is finite. The accuracy
against the unquantized model is recorded, not judged: the README's bounds (relative L2 < 5%,
top-1 >= 95%) are for a trained model, and random weights amplify e4m3's ~2.6% per-weight error
far more (README, FP8 section).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .generate import best_of
from .gpu_parity import TINY_TEXT, TINY_VISION, glm45v_widths, image_prompt, to, write_random
from .gpu_train import release

# mode -> (checkpoint, VLM.from_pretrained's fp8 argument)
MODES = {"unquantized": ("source", "dequantize"), "dequantize": ("fp8", "dequantize"), "keep": ("fp8", "keep"),
         "channel_dequantize": ("channel", "dequantize"), "channel_keep": ("channel", "keep")}
# layout -> (its keep mode, its dequantize mode, the record's name for whether the device runs its scaled_mm)
LAYOUTS = {"block": ("keep", "dequantize", "device_has_scaled_mm"),
           "channel": ("channel_keep", "channel_dequantize", "device_has_rowwise_mm")}
# compressed-tensors' float-quantized channel scheme as Z.ai's -FP8 releases declare it (README,
# "FP8 checkpoints"), and tests/test_fp8.py's `_ct_config("channel")`: per-row weight scales,
# dynamic per-token activations; lm_head and the routers left unquantized.
CHANNEL_CONFIG = {
    "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False},
        "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": True, "dynamic": True},
        "output_activations": None}},
    "ignore": ["lm_head", "re:.*mlp\\.gate$"],
}
# README, "FP8 checkpoints": the dequantized copy of the trained default model; not a bound here.
TRAINED_MODEL_BOUNDS = {"rel_l2": 0.05, "top1": 0.95}


def configs(quick: bool) -> tuple[str, dict, dict]:
    if quick:
        return "tiny", TINY_TEXT, TINY_VISION
    return "glm45v-widths-2-layers", *glm45v_widths()


def scaled_mm_shape(weight: torch.Tensor, layout) -> bool:
    """fp8_linear.uses_scaled_mm's shape rule, counted apart from the forward it predicts."""
    from vlm.fp8_format import BlockFP8

    N, K = weight.shape
    return K % 512 == 0 and N % 128 == 0 if isinstance(layout, BlockFP8) else K % 16 == 0 and N % 16 == 0


def device_has_scaled_mm(device: str, dtype: torch.dtype, layout) -> bool:
    """Does fp8_linear take scaled_mm on `device` for `dtype` activations and a shape that qualifies
    (compute capability, CUDA; the row-wise product wants bfloat16)?"""
    from vlm.fp8_format import E4M3
    from vlm.fp8_linear import uses_scaled_mm

    x, weight = torch.empty(1, 512, device=device, dtype=dtype), torch.empty(128, 512, dtype=E4M3, device=device)
    return uses_scaled_mm(x, weight, layout)


def write_channel_fp8(source: Path, destination: Path, device: str) -> Path:
    """`source` in compressed-tensors' channel layout, as tests/test_fp8.py writes its fixture: each
    weight vlm.quantize quantizes (`is_quantizable`: the vision tower's too) becomes e4m3 beside a
    float32 `weight_scale` (rows, 1), each row's absolute maximum mapped to 448 (computed on
    `device`); config.json gets CHANNEL_CONFIG; the other files are copied."""
    from vlm.fp8 import is_quantizable
    from vlm.fp8_format import CT_SCALE_SUFFIX, E4M3, E4M3_MAX
    from vlm.weights import INDEX_FILE, checkpoint_files

    files = checkpoint_files(source)
    tensors = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                if not is_quantizable(key, tuple(tensor.shape)):
                    tensors[key] = tensor
                    continue
                w = tensor.to(device, torch.float32)
                amax = w.abs().amax(dim=1, keepdim=True)
                scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
                tensors[key] = (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).cpu()
                tensors[key + CT_SCALE_SUFFIX] = scale.cpu()
    destination.mkdir(parents=True)
    save_file(tensors, str(destination / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    (destination / "config.json").write_text(json.dumps({**config, "quantization_config": CHANNEL_CONFIG}, indent=2))
    for path in source.iterdir():
        if path.is_file() and path not in files and path.name not in ("config.json", INDEX_FILE):
            shutil.copy2(path, destination / path.name)
    return destination


def products_run(model: torch.nn.Module) -> dict[str, int]:
    """How many Fp8Linears ran each product in the last forward, and how many have scaled_mm's shapes."""
    from vlm.fp8_linear import Fp8Linear

    linears = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    ran = Counter(m.last_path for m in linears)
    return {"fp8_linears": len(linears), "scaled_mm_shapes": sum(scaled_mm_shape(m.weight, m.layout) for m in linears),
            "ran_scaled_mm": ran["scaled_mm"], "ran_dequantize": ran["dequantize"], "not_run": ran[None]}


def load(path: Path, fp8: Literal["dequantize", "keep"], device: str, dtype: torch.dtype):
    """(model, memory): weight GiB, and on CUDA the load's peak above what was allocated before it."""
    from vlm import VLM

    release(device)
    before = torch.cuda.memory_allocated(device) if device.startswith("cuda") else 0
    vlm = VLM.from_pretrained(path, device=device, dtype=dtype, fp8=fp8)
    tensors = [*vlm.model.parameters(), *vlm.model.buffers()]
    memory = {"weight_gib": sum(t.numel() * t.element_size() for t in tensors) / 2**30,
              "load_peak_gib": (torch.cuda.max_memory_allocated(device) - before) / 2**30
              if device.startswith("cuda") else None}
    return vlm.model, memory


def guarded(errors: dict[str, str], stage: str, fn):
    """fn(), or None with its error kept under `stage`: this path has never run on a GPU, and one
    failing stage (say scaled_mm at one decode row) should not lose the others' numbers."""
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 (recorded, and the part goes on)
        errors[stage] = f"{type(error).__name__}: {error}"
        return None


def measure(model, image: dict, ids_BT: torch.Tensor, device: str, *, new: int,
            repeats: int) -> tuple[dict, torch.Tensor | None]:
    """(numbers, float32 CPU logits of `image` or None): products run, prefill s, batch-1 decode
    tok/s, and the error of any stage that failed."""
    from .gpu import ours_decode, ours_prefill  # here, not at the top: gpu.py imports this module

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(**{k: v for k, v in image.items() if k != "mm_token_type_ids"}).logits.float().cpu()

    def prefill() -> float:
        return best_of(lambda: ours_prefill(model, image, device), repeats)

    def decode() -> float:
        ours_decode(model, ids_BT, new, device)  # warm-up
        return max(ours_decode(model, ids_BT, new, device)[0] for _ in range(repeats))

    errors: dict[str, str] = {}
    logits = guarded(errors, "forward", forward)
    record = products_run(model)  # the forward above ran every linear, vision tower included
    record["prefill_s"] = guarded(errors, "prefill", prefill)
    record["decode_b1_tok_s"] = guarded(errors, "decode", decode)
    return record | {"errors": errors}, logits


def accuracy(logits: torch.Tensor, reference: torch.Tensor) -> dict:
    """Relative L2 of the whole logit tensor, top-1 agreement over positions, largest difference."""
    return {"rel_l2": ((logits - reference).norm() / reference.norm()).item(),
            "top1": (logits.argmax(-1) == reference.argmax(-1)).float().mean().item(),
            "max_abs_diff": (logits - reference).abs().max().item()}


def checks(record: dict, logits: dict[str, torch.Tensor | None], cuda: bool) -> dict[str, bool]:
    result = {
        "no_errors": not any(record[mode]["errors"] for mode in MODES),
        "logits_finite": all(t is not None and bool(t.isfinite().all()) for t in logits.values()),
    }
    for layout, (keep_mode, dequantize_mode, supported) in LAYOUTS.items():
        keep, dequantize = record[keep_mode], record[dequantize_mode]
        name = "" if layout == "block" else f"{layout}_"  # the block checks keep their first names
        result[f"{name}keep_weights_smaller"] = keep["weight_gib"] < dequantize["weight_gib"]
        result[f"{name}scaled_mm_where_eligible"] = (
            keep["ran_scaled_mm"] == (keep["scaled_mm_shapes"] if record[supported] else 0) and keep["not_run"] == 0)
        if cuda:
            result[f"{name}keep_load_peak_smaller"] = keep["load_peak_gib"] < dequantize["load_peak_gib"]
        if keep["ran_scaled_mm"] == 0 and result["logits_finite"]:  # both modes multiply the same dequantized weights
            result[f"{name}keep_equals_dequantize"] = torch.equal(logits[keep_mode], logits[dequantize_mode])
    return result


def fp8(device: str, dtype: torch.dtype, *, quick: bool) -> dict:
    """Per mode: accuracy against the unquantized model, memory, prefill s, decode tok/s, paths; the checks."""
    from vlm.fp8_format import BlockFP8, ChannelFP8
    from vlm.quantize import quantize_checkpoint

    name, text, vision = configs(quick)
    prompt, new, repeats = (16, 8, 1) if quick else (64, 64, 3)
    cuda = device.startswith("cuda")
    image = to(image_prompt(text["vocab_size"], (1, 16, 16)), device, dtype)
    ids = torch.randint(100, text["vocab_size"], (1, prompt), generator=torch.Generator().manual_seed(1)).to(device)
    record = {"config": name, "dtype": str(dtype).removeprefix("torch."), "prompt": prompt, "new": new,
              "repeats": repeats, "prefill_tokens": image["input_ids"].shape[1], "torch": torch.__version__,
              "cuda": torch.version.cuda, "capability": torch.cuda.get_device_capability(device) if cuda else None,
              "device_has_scaled_mm": device_has_scaled_mm(device, dtype, BlockFP8()),
              "device_has_rowwise_mm": device_has_scaled_mm(device, dtype, ChannelFP8()),
              "trained_model_bounds": TRAINED_MODEL_BOUNDS}
    logits = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_random(Path(tmp) / "source", text, vision, device=device, dtype=dtype)
        quantize_checkpoint(Path(tmp) / "source", Path(tmp) / "fp8")
        write_channel_fp8(Path(tmp) / "source", Path(tmp) / "channel", device)
        for mode, (checkpoint, fp8_mode) in MODES.items():
            model, memory = load(Path(tmp) / checkpoint, fp8_mode, device, dtype)
            numbers, logits[mode] = measure(model, image, ids, device, new=new, repeats=repeats)
            record[mode] = memory | numbers
            del model  # freed by the next load's release
    release(device)
    comparisons = [(mode, "unquantized") for mode in MODES if mode != "unquantized"]
    comparisons += [(keep, dequantize) for keep, dequantize, _ in LAYOUTS.values()]
    for mode, reference in comparisons:
        if logits[mode] is not None and logits[reference] is not None:
            record[f"{mode}_vs_{reference}"] = accuracy(logits[mode], logits[reference])
    record["checks"] = checks(record, logits, cuda)
    record["pass"] = all(record["checks"].values())
    return record


def number(value: float | None, spec: str) -> str:
    return "error" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None, of: str) -> str:
    return "" if a is None or b is None else f"{a / b:.2f}x {of}"


def closeness(part: dict, name: str) -> str:
    c = part.get(name)
    return "error" if c is None else f"{c['rel_l2']:.2%}, {c['top1']:.1%}"


def table_rows(part: dict) -> list[str]:
    """Markdown table rows for `fp8`'s record, per layout: keep in the "ours" column, the others beside it."""
    if not part["ok"]:
        return []
    failed = [k for k, v in part["checks"].items() if not v]
    verdict = "pass" if part["pass"] else "FAIL: " + ", ".join(failed)
    rows = []
    for layout, (keep_mode, dequantize_mode, _) in LAYOUTS.items():
        name = f"fp8 {part['config']}" if layout == "block" else f"fp8 {part['config']} {layout}"
        rows += layout_rows(part, f"| {name} |", keep_mode, dequantize_mode, verdict)
    rows += [f"| fp8 {part['config']} | {mode} {stage} | failed | | {error.splitlines()[0][:200]} |"
             for mode in MODES for stage, error in part[mode]["errors"].items()]
    return rows


def layout_rows(part: dict, head: str, keep_mode: str, dequantize_mode: str, verdict: str) -> list[str]:
    keep, dequantize, plain = part[keep_mode], part[dequantize_mode], part["unquantized"]
    bounds = TRAINED_MODEL_BOUNDS
    memory = f"{keep['weight_gib']:.3g}"
    others = f"dequantize {dequantize['weight_gib']:.3g}, unquantized {plain['weight_gib']:.3g}"
    if keep["load_peak_gib"] is not None:
        memory += f"; peak {keep['load_peak_gib']:.3g}"
        others += f"; peaks {dequantize['load_peak_gib']:.3g}, {plain['load_peak_gib']:.3g}"
    decode, prefill = "decode_b1_tok_s", "prefill_s"
    shapes = "K%512, N%128" if keep_mode == "keep" else "K%16, N%16; bfloat16 only"
    return [
        f"{head} logits vs unquantized {part['dtype']}: rel L2, top-1 ({part['prefill_tokens']} positions) | "
        f"keep {closeness(part, f'{keep_mode}_vs_unquantized')} | "
        f"dequantize {closeness(part, f'{dequantize_mode}_vs_unquantized')} | "
        f"random weights: recorded, not judged (trained-model bounds {bounds['rel_l2']:.0%}, {bounds['top1']:.0%}); "
        f"keep vs dequantize {closeness(part, f'{keep_mode}_vs_{dequantize_mode}')} |",
        f"{head} weight GiB (params + buffers; CUDA load peak) | keep {memory} | {others} | "
        f"{ratio(keep['weight_gib'], dequantize['weight_gib'], 'dequantize')} |",
        f"{head} decode tok/s, batch 1, {part['new']} new after {part['prompt']} | "
        f"keep {number(keep[decode], '.1f')} | "
        f"dequantize {number(dequantize[decode], '.1f')}, unquantized {number(plain[decode], '.1f')} | "
        f"{ratio(keep[decode], plain[decode], 'unquantized')} |",
        f"{head} prefill s, image + text, {part['prefill_tokens']} tokens | keep {number(keep[prefill], '.4f')} | "
        f"dequantize {number(dequantize[prefill], '.4f')}, unquantized {number(plain[prefill], '.4f')} | "
        f"{ratio(plain[prefill], keep[prefill], 'unquantized')} |",
        f"{head} Fp8Linear products: scaled_mm / dequantize fallback (of {keep['fp8_linears']}; "
        f"{keep['scaled_mm_shapes']} with {shapes}) | {keep['ran_scaled_mm']} / {keep['ran_dequantize']} | "
        f"torch {part['torch']}, CUDA {part['cuda']}, capability {part['capability']} | {verdict} |",
    ]
