"""Tiny datasets and checkpoints for the trainer tests.

`write_dataset` makes a JSONL of short image conversations with generated PNGs (colour questions,
so a tiny model can actually learn them). `reference_checkpoint` writes a tiny random GLM-4.5V
checkpoint with transformers' own `save_pretrained`, sized to the project tokenizer (vocabulary
and special ids), so our trainer, our model and transformers' model all read it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def write_dataset(directory: Path, n: int, *, name: str = "data.jsonl", extra_lines: list[str] = ()) -> Path:
    """`n` conversations (image of one colour + question -> the colour), images of 2-3 sizes."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    names = list(COLOURS)
    for i in range(n):
        colour = names[i % len(names)]
        image = directory / "images" / f"{i}.png"
        Image.new("RGB", (56 + 28 * (i % 3), 56), COLOURS[colour]).save(image)
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": [{"type": "image", "image": f"images/{i}.png"},
                                         {"type": "text", "text": "What colour is this?"}]},
            {"role": "assistant", "content": f"It is {colour}."}]}))
    path = directory / name
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path


def project_tokenizer():
    from vlm.processor import Processor

    return Processor.from_pretrained().tokenizer


def reference_model(*, seed: int = 0):
    """A random transformers GLM-4.5V (MoE) model on the project tokenizer's ids."""
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    tok = project_tokenizer()
    ids = {key: tok.convert_tokens_to_ids(token) for key, token in (
        ("image_token_id", "<|image|>"), ("video_token_id", "<|video|>"),
        ("image_start_token_id", "<|begin_of_image|>"), ("image_end_token_id", "<|end_of_image|>"),
        ("video_start_token_id", "<|begin_of_video|>"), ("video_end_token_id", "<|end_of_video|>"))}
    text = dict(vocab_size=len(tok), hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, moe_intermediate_size=24,
                n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1,
                first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=1.0,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5,
                                     mrope_section=[1, 1, 2]))
    vision = dict(depth=2, hidden_size=32, num_heads=2, out_hidden_size=48, intermediate_size=40,
                  image_size=56, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    torch.manual_seed(seed)
    model = Glm4vMoeForConditionalGeneration(Glm4vMoeConfig(text_config=text, vision_config=vision, **ids))
    with torch.no_grad():  # larger than transformers' std-0.02 init, so differences show
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 1.0 / p.shape[-1] ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn_like(b))
    return model.eval()


def reference_checkpoint(directory: Path) -> Path:
    reference_model().save_pretrained(directory)
    return directory


def metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
