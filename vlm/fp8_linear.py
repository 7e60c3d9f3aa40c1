"""`Fp8Linear`: a linear layer that keeps its block-FP8 weight (e4m3 + float32 block scales).

`VLM.from_pretrained(path, fp8="keep")` puts one in place of each `nn.Linear` whose weight the
checkpoint stores in e4m3 (`keep_fp8`; the MTP layer's included, under its released key
`layers.{num_hidden_layers}.`), so those weights take one byte each in memory. The
routed experts are stacked tensors run by `grouped_mm` (moe.py), which has no block-scaled FP8
form in torch 2.14: they are dequantized on load in both modes.

Compute: on a CUDA device of compute capability 9.x with CUDA >= 12.9 (cuBLAS block scaling),
and K a multiple of 512 and N of 128, the product runs as
`torch.nn.functional.scaled_mm` with BlockWise1x128 activations x BlockWise128x128 weights:
activations are quantized on the fly per token and per 128 columns (the "dynamic" activation
scheme of the block-FP8 config). The K % 512 rule follows the one layout torch's own tests
exercise (scale rows padded to a multiple of 4); other shapes take the fallback. Elsewhere
(CPU, other GPUs) the weight is dequantized for each call: half the memory, more time.
`reference_mm` is the kernel's arithmetic in float32, so the quantization and the scale layout
are checked on a CPU (tests/test_fp8.py). Each forward records the product it ran in
`last_path`; `python -m benchmarks.gpu --parts fp8` counts them and measures the CUDA path
(accuracy, memory, speed), which has not been run in this repository yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .fp8 import E4M3, E4M3_MAX, BlockFP8, scaled_weight_keys
from .weights import checkpoint_files, mtp_layer_key

ACTIVATION_BLOCK = 128  # 1 x 128 activation blocks: the only block-scaled pairing cuBLAS offers with 128 x 128 weights


class Fp8Linear(nn.Module):
    """y = x W^T + b with W kept as e4m3 `weight` (out, in) and float32 `weight_scale_inv` (checkpoint names)."""

    def __init__(self, in_features: int, out_features: int, *, layout: BlockFP8, bias_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.layout = layout
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=E4M3), requires_grad=False)
        scale_shape = layout.scale_shape((out_features, in_features))
        self.weight_scale_inv = nn.Parameter(torch.empty(scale_shape, dtype=torch.float32), requires_grad=False)
        self.bias = None if bias_dtype is None else nn.Parameter(torch.empty(out_features, dtype=bias_dtype))
        # Which product the last forward ran (None: none yet), so a benchmark knows rather than
        # guesses that the fast path ran. Setting it costs ~1.5 us a call on this CPU, less than
        # `uses_scaled_mm` itself, and nothing on the device.
        self.last_path: Literal["scaled_mm", "dequantize"] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if uses_scaled_mm(x, self.weight, self.layout):
            self.last_path = "scaled_mm"
            return block_scaled_linear(x, self.weight, self.weight_scale_inv, self.bias, mm=cuda_scaled_mm)
        self.last_path = "dequantize"
        return F.linear(x, self.layout.dequantize(self.weight, self.weight_scale_inv, x.dtype), self.bias)

    def weight_rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows `ids` of the dequantized weight, (len(ids), in_features) in `dtype`; the other rows
        stay e4m3 (decode.py's draft head: ~1k rows of a 151k-row vocabulary projection)."""
        cols = self.weight.shape[1]
        scale_nC = self.weight_scale_inv[ids // self.layout.block_rows]  # each row's block-row of scales
        scale_nK = scale_nC.repeat_interleave(self.layout.block_cols, 1)[:, :cols]
        return (self.weight[ids].float() * scale_nK).to(dtype)


def keep_fp8(model: nn.Module, directory: str | Path, layout: BlockFP8) -> int:
    """Swap (on the meta device, before loading) each `nn.Linear` whose checkpoint weight has a scale;
    returns how many were swapped."""
    scaled = scaled_weight_keys(checkpoint_files(directory))
    first_mtp = model.cfg.text.num_hidden_layers
    swapped = 0
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or mtp_layer_key(f"{name}.weight", first_mtp) not in scaled:
            continue
        bias_dtype = None if module.bias is None else module.bias.dtype
        with torch.device(module.weight.device):
            model.set_submodule(name, Fp8Linear(module.in_features, module.out_features, layout=layout, bias_dtype=bias_dtype))
        swapped += 1
    return swapped


def uses_scaled_mm(x: torch.Tensor, weight: torch.Tensor, layout: BlockFP8) -> bool:
    N, K = weight.shape
    if x.device.type != "cuda" or (layout.block_rows, layout.block_cols) != (128, 128) or K % 512 or N % 128:
        return False
    cuda = tuple(int(v) for v in (torch.version.cuda or "0.0").split(".")[:2])
    return torch.cuda.get_device_capability(x.device)[0] == 9 and cuda >= (12, 9)


def quantize_activations(x_MK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> e4m3 (M, K) and float32 scale (M, K/128): one scale per token per 128 columns."""
    M, K = x_MK.shape
    x_MBk = x_MK.float().view(M, K // ACTIVATION_BLOCK, ACTIVATION_BLOCK)
    scale_MB = x_MBk.abs().amax(-1).clamp(min=1e-12) / E4M3_MAX
    q_MK = (x_MBk / scale_MB[..., None]).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).view(M, K)
    return q_MK, scale_MB


def block_scaled_linear(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, bias: torch.Tensor | None, *, mm) -> torch.Tensor:
    """x (..., K) @ dequant(weight (N, K))^T + bias, with x quantized per 1x128 block; `mm` does the product."""
    *lead, K = x.shape
    q_MK, scale_MB = quantize_activations(x.reshape(-1, K))
    y_MN = mm(q_MK, scale_MB, weight, scale_inv, out_dtype=x.dtype)
    if bias is not None:
        y_MN = y_MN + bias
    return y_MN.view(*lead, weight.shape[0])


def cuda_scaled_mm(q_MK, scale_MB, weight_NK, scale_inv_nb, *, out_dtype: torch.dtype) -> torch.Tensor:
    """cuBLAS block-scaled GEMM. Operand b is W^T column-major; both scales are passed outer-dim-major
    (transposes of contiguous (K/128, M) and (N/128, K/128) tensors), the layout torch's tests use."""
    scale_a = scale_MB.t().contiguous().t()
    return F.scaled_mm(
        q_MK, weight_NK.t(), scale_a, F.ScalingType.BlockWise1x128, scale_inv_nb.contiguous().t(), F.ScalingType.BlockWise128x128,
        swizzle_a=F.SwizzleType.NO_SWIZZLE, swizzle_b=F.SwizzleType.NO_SWIZZLE, output_dtype=out_dtype,
    )


def reference_mm(q_MK, scale_MB, weight_NK, scale_inv_nb, *, out_dtype: torch.dtype) -> torch.Tensor:
    """What `cuda_scaled_mm` computes, in float32 on any device: sum over K blocks of
    (q_a * s_a) (q_w * s_w)^T."""
    layout = BlockFP8(128, 128)
    a_MK = (q_MK.float().view(*scale_MB.shape, ACTIVATION_BLOCK) * scale_MB[..., None]).view(q_MK.shape)
    return (a_MK @ layout.dequantize(weight_NK, scale_inv_nb).t()).to(out_dtype)
