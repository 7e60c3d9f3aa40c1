"""`python -m vlm.inspect CONFIG_DIR [--json]`: parameter counts, sizes and every checkpoint tensor.

Runs on the meta device: the full GLM-4.5V (106B) is described in seconds with no real memory.
Active parameters = total minus, per MoE layer, the (n_routed_experts - num_experts_per_tok)
routed experts a token does not use. Sizes are weights only (no quantisation scales).
CONFIG_DIR may also be a preset name: glm45v, glm41v, tiny.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

import torch

from . import config as presets
from .config import VLMConfig
from .model import VisionLanguageModel
from .weights import bindings

PRESETS = {"glm45v": presets.glm45v, "glm41v": presets.glm41v, "tiny": presets.tiny}


@dataclass(frozen=True)
class Summary:
    total_params: int
    active_params: int
    tensors: dict[str, list[int]]  # checkpoint key -> shape, in checkpoint order

    def bytes_at(self, bits: int) -> int:
        return self.total_params * bits // 8


def summarize(cfg: VLMConfig) -> Summary:
    with torch.device("meta"):
        model = VisionLanguageModel(cfg)
    tensors = {key: list(b.shape) for key, b in bindings(model).items()}
    total = sum(math.prod(shape) for shape in tensors.values())
    text = cfg.text
    moe_layers = sum(text.is_moe_layer(i) for i in range(text.num_hidden_layers))
    per_expert = 3 * text.hidden_size * text.moe_intermediate_size
    unused = moe_layers * (text.n_routed_experts - text.num_experts_per_tok) * per_expert
    return Summary(total_params=total, active_params=total - unused, tensors=tensors)


def _load(target: str) -> VLMConfig:
    return PRESETS[target]() if target in PRESETS else VLMConfig.load(target)


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.1f}{suffix}{unit}" if suffix else f"{n:.0f}{unit}"
        n /= 1000
    return f"{n:.1f}P{unit}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vlm.inspect", description=__doc__.splitlines()[0])
    parser.add_argument("config_dir", help="directory with config.json, or a preset: " + ", ".join(PRESETS))
    parser.add_argument("--json", action="store_true", help="print {total_params, active_params, tensors}")
    args = parser.parse_args(argv)
    cfg = _load(args.config_dir)
    summary = summarize(cfg)
    if args.json:
        print(json.dumps({"total_params": summary.total_params, "active_params": summary.active_params, "tensors": summary.tensors}))
        return
    print(f"model_type      {cfg.model_type}")
    print(f"total params    {summary.total_params:,} ({_human(summary.total_params)})")
    print(f"active params   {summary.active_params:,} ({_human(summary.active_params)}) per token")
    for name, bits in (("bf16", 16), ("fp8", 8), ("int4", 4)):
        print(f"weights @ {name:<5} {_human(summary.bytes_at(bits), 'B')}")
    print(f"tensors         {len(summary.tensors)}")
    for key, shape in summary.tensors.items():
        print(f"  {key}  {shape}")


if __name__ == "__main__":
    main()
