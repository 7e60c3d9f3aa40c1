"""Part 1 of benchmarks.gpu: our logits and greedy tokens beside transformers' on one device.

Random checkpoints written by transformers (weights re-drawn larger than its init, as
tests/_model_utils.py does, so logits are O(1) and a tolerance means something), loaded by us
and by `Glm4vMoeForConditionalGeneration`. Two prompts: text + one image, and text + one video
(2 temporal groups with a timestamp token after each, transformers' layout). Each model pair is
loaded once per dtype:
- float32 (TF32 off: cuDNN convolutions default to it on CUDA): max |logit diff| against
  tests/test_model.py's 2e-4, and 32 greedy tokens (ours `generate_ids`, theirs
  `generate(do_sample=False)`, the config's stop ids in both) that must be equal;
- bfloat16: max |logit diff| against twice transformers' own bfloat16 error (its bfloat16
  logits against its float32 ones): each side may be that far off, in either direction.
Configs: the tests' tiny one (--quick); also benchmarks/generate.py's issue-5 config and
GLM-4.5V's real widths (vlm.config.glm45v()) with 2 layers, one dense and one MoE, and 2 vision
blocks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import tempfile
from pathlib import Path

import torch

from .generate import SPECIAL, TEXT, VISION

F32_TOL = 2e-4  # tests/test_model.py
# bfloat16: ours and transformers' logits may differ by twice transformers' own bfloat16 error
# (its bfloat16 logits against its float32 ones): each side may err by that much, in any direction.
BF16_TOL_FACTOR = 2.0
GREEDY_STEPS = 32
PATCH_DIM = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch

TINY_TEXT = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=3,
    n_shared_experts=1, n_group=2, topk_group=1, first_k_dense_replace=1, norm_topk_prob=False,
    routed_scaling_factor=1.5, eos_token_id=[0, 7, 9], pad_token_id=0,
    rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5, mrope_section=[1, 1, 2]),
)
TINY_VISION = dict(depth=2, hidden_size=32, num_heads=2, out_hidden_size=64, intermediate_size=40, image_size=56,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2)


# ---- checkpoints and inputs ---------------------------------------------------------------------


def redraw_weights(model: torch.nn.Module) -> None:
    """Draw `model`'s weights again, in place, from the global generator: norm weights 1 + 0.2 N,
    everything else N / sqrt(fan_in) (biases x 0.3), MoE correction biases 0.1 N. Larger than
    transformers' init (std 0.02 makes every logit ~0), so logits are O(1) and a tolerance on them
    means something. tests/_model_utils.py's reference models are drawn by it too."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 1.0) / max(1, p.shape[-1]) ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))


def write_random(path: Path, text: dict, vision: dict, *, device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
    """A transformers checkpoint with weights of std 1/sqrt(fan_in) and a non-zero routing bias,
    drawn on `device` (billions of parameters take seconds on a GPU) and saved in `dtype`."""
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = Glm4vMoeForConditionalGeneration(Glm4vMoeConfig(text_config=text, vision_config=vision, **SPECIAL))
    redraw_weights(model)
    model.to(dtype).save_pretrained(path)
    del model
    free(device)


def glm45v_widths(layers: int = 2, vision_depth: int = 2) -> tuple[dict, dict]:
    """transformers' text and vision config dicts of the released GLM-4.5V (vlm.config.glm45v():
    hidden 4096, 96 heads of 128, 8 KV heads, 128 experts top-8 of width 1408, vocabulary 151,552,
    vision 1536 wide) with `layers` layers (layer 0 dense, the rest MoE) and `vision_depth` blocks."""
    from vlm.config import glm45v

    config = glm45v()
    config = dataclasses.replace(config, text=dataclasses.replace(config.text, num_hidden_layers=layers),
                                 vision=dataclasses.replace(config.vision, depth=vision_depth))
    raw = config.to_dict()
    return raw["text_config"], raw["vision_config"]


def parity_configs(quick: bool) -> dict[str, tuple[dict, dict, torch.dtype]]:
    """name -> (text, vision, checkpoint dtype). GLM-4.5V's widths are saved in bfloat16 (half the
    disk and load time; float32 parity then compares the two models on bfloat16-exact weights)."""
    configs = {"tiny": (TINY_TEXT, TINY_VISION, torch.float32)}
    if not quick:
        configs["issue-5"] = (TEXT, VISION, torch.float32)
        configs["glm45v-widths-2-layers"] = (*glm45v_widths(), torch.bfloat16)
    return configs


def words(vocab: int, n: int, generator: torch.Generator) -> list[int]:
    return torch.randint(100, vocab, (n,), generator=generator).tolist()


def image_prompt(vocab: int, grid: tuple[int, int, int], *, text: int = 8) -> dict[str, torch.Tensor]:
    """`text` random tokens, then <|begin_of_image|>, t*h*w/4 placeholders, <|end_of_image|>, 2 more tokens."""
    generator = torch.Generator().manual_seed(1)
    t, h, w = grid
    before, after = words(vocab, text, generator), words(vocab, 2, generator)
    image = [SPECIAL["image_start_token_id"], *[SPECIAL["image_token_id"]] * (t * h * w // 4),
             SPECIAL["image_end_token_id"]]
    ids = torch.tensor([before + image + after])
    return {"input_ids": ids, "pixel_values": torch.randn(t * h * w, PATCH_DIM, generator=generator),
            "image_grid_thw": torch.tensor([grid]), "mm_token_type_ids": (ids == SPECIAL["image_token_id"]).long()}


def video_prompt(vocab: int, grid: tuple[int, int, int], *, text: int = 8) -> dict[str, torch.Tensor]:
    """transformers' video layout: <|begin_of_video|>, per temporal group (2 frames) <|begin_of_image|>,
    h*w/4 `<|image|>` placeholders, <|end_of_image|> and a timestamp token, <|end_of_video|>; random
    text around it. `mm_token_type_ids` marks placeholders inside a video with 2."""
    generator = torch.Generator().manual_seed(2)
    t, h, w = grid
    before, after, stamps = words(vocab, text, generator), words(vocab, 2, generator), words(vocab, t, generator)
    video = [SPECIAL["video_start_token_id"]]
    for stamp in stamps:
        video += [SPECIAL["image_start_token_id"], *[SPECIAL["image_token_id"]] * (h * w // 4),
                  SPECIAL["image_end_token_id"], stamp]
    ids = torch.tensor([before + video + [SPECIAL["video_end_token_id"]] + after])
    return {"input_ids": ids, "pixel_values_videos": torch.randn(t * h * w, PATCH_DIM, generator=generator),
            "video_grid_thw": torch.tensor([grid]), "mm_token_type_ids": 2 * (ids == SPECIAL["image_token_id"]).long()}


def prompts(vocab: int) -> dict[str, dict[str, torch.Tensor]]:
    """One image (1 x 16 x 16 patches: 64 tokens) and one video (2 temporal groups of 8 x 8: 32 tokens)."""
    return {"image": image_prompt(vocab, (1, 16, 16)), "video": video_prompt(vocab, (2, 8, 8))}


def to(inputs: dict, device: str, dtype: torch.dtype | None = None) -> dict:
    """Inputs on `device`; floating ones (pixels) in `dtype` when given."""
    return {k: v.to(device, dtype) if dtype is not None and v.is_floating_point() else v.to(device)
            for k, v in inputs.items()}


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def load_pair(path: Path, device: str, dtype: torch.dtype):
    from transformers import Glm4vMoeForConditionalGeneration

    from vlm import VLM

    ours = VLM.from_pretrained(path, device=device, dtype=dtype)
    theirs = Glm4vMoeForConditionalGeneration.from_pretrained(path, dtype=dtype, device_map=device).eval()
    return ours, theirs


@contextlib.contextmanager
def ieee_float32():
    """float32 that is float32 on CUDA too: cuDNN convolutions (transformers' patch embedding)
    default to TF32, ~1e-3 relative error, which would swamp a 2e-4 logit tolerance. The legacy
    switches: torch 2.14's getters raise once the new `fp32_precision` API has set cuDNN's."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


# ---- parity ----------------------------------------------------------------------------------------


def run_pair(path: Path, inputs: dict[str, dict], device: str, dtype: torch.dtype, *, greedy: bool) -> dict:
    """One load of both models in `dtype`; per prompt, both logits (float32, on CPU) and, with
    `greedy`, both greedy continuations (ours `generate_ids`, theirs `generate(do_sample=False)`)."""
    from vlm.generation import GenerationOptions, generate_ids

    ours, theirs = load_pair(path, device, dtype)
    stops = ours.config.text.eos_token_ids
    options = GenerationOptions(max_new_tokens=GREEDY_STEPS, draft_tokens=0)
    out = {}
    for name, prompt in inputs.items():
        batch = to(prompt, device, dtype)
        with torch.inference_mode():
            mine = ours.model(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"}).logits.float().cpu()
            ref = theirs(**batch).logits.float().cpu()
        out[name] = {"ours": mine, "theirs": ref}
        if greedy:
            mine_ids = generate_ids(ours.model, batch, options, stop_token_ids=stops, pad_token_id=0)
            with torch.inference_mode():
                ref_ids = theirs.generate(**batch, max_new_tokens=GREEDY_STEPS, do_sample=False,
                                          eos_token_id=list(stops), pad_token_id=0)
            out[name] |= {"ours_ids": mine_ids[0].tolist(), "theirs_ids": ref_ids[0, batch["input_ids"].shape[1]:].tolist()}
    del ours, theirs
    free(device)
    return out


def compare(f32: dict, bf16: dict) -> dict:
    """The numbers of one prompt from its float32 and bfloat16 runs."""
    ours32, ref32, ours16, ref16 = f32["ours"], f32["theirs"], bf16["ours"], bf16["theirs"]
    diff32, diff16 = (ours32 - ref32).abs().max().item(), (ours16 - ref16).abs().max().item()
    theirs_error = (ref16 - ref32).abs().max().item()
    return {
        "max_abs_logit": ref32.abs().max().item(), "f32_max_diff": diff32, "f32_pass": diff32 < F32_TOL,
        "bf16_max_diff": diff16, "bf16_tol": BF16_TOL_FACTOR * theirs_error,
        "bf16_pass": diff16 <= BF16_TOL_FACTOR * theirs_error,
        "ours_bf16_vs_f32": (ours16 - ref32).abs().max().item(), "theirs_bf16_vs_f32": theirs_error,
        "greedy_equal": f32["ours_ids"] == f32["theirs_ids"], "greedy_ours": f32["ours_ids"],
        "greedy_theirs": f32["theirs_ids"],
    }


def parity(device: str, *, quick: bool) -> dict:
    """{"configs": {"<config>/<image|video>": numbers}}: logits in float32 and bfloat16, greedy tokens."""
    record = {"f32_tol": F32_TOL, "bf16_tol_factor": BF16_TOL_FACTOR, "greedy_steps": GREEDY_STEPS, "configs": {}}
    for name, (text, vision, saved) in parity_configs(quick).items():
        inputs = prompts(text["vocab_size"])
        with tempfile.TemporaryDirectory() as tmp:
            write_random(Path(tmp), text, vision, device=device, dtype=saved)
            with ieee_float32():
                f32 = run_pair(Path(tmp), inputs, device, torch.float32, greedy=True)
            bf16 = run_pair(Path(tmp), inputs, device, torch.bfloat16, greedy=False)
        for prompt in inputs:
            record["configs"][f"{name}/{prompt}"] = compare(f32[prompt], bf16[prompt])
    return record


