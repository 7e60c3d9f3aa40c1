"""`Fp8Linear`: a linear layer that keeps its FP8 weight, e4m3 beside float32 scales in any of
fp8_format.py's layouts: 128x128 blocks (block-FP8; compressed-tensors "block"), one scale per
output row (compressed-tensors "channel", Z.ai's -FP8 releases) or one per tensor ("tensor").

`VLM.from_pretrained(path, fp8="keep")` puts one in place of each `nn.Linear` whose weight the
checkpoint stores in e4m3 (`keep_fp8`: the language model's, the vision tower's and the MTP
layer's, the last under its released key `layers.{num_hidden_layers}.`), so those weights take one
byte each in memory. The routed experts are stacked tensors run by `grouped_mm` (moe.py), which
has no scaled FP8 form in torch 2.14: they are dequantized on load in both modes.

Compute: on a CUDA device of compute capability 9.x (H100, H200) the product runs as
`torch.nn.functional.scaled_mm`, the activations quantized to e4m3 on the fly (the "dynamic"
activation scheme both conventions declare), where the kernel takes the shapes:
- block scales, 128 x 128, with CUDA >= 12.9 (cuBLAS block scaling), K a multiple of 512 and N of
  128: BlockWise1x128 activations (one scale per token per 128 columns) x BlockWise128x128
  weights. The K % 512 rule follows the one layout torch's own tests exercise (scale rows padded
  to a multiple of 4).
- row scales (a per-tensor scale is one scale repeated over the rows), bfloat16 activations, K
  and N multiples of 16: RowWise x RowWise, one float32 scale per token (M, 1) and one per weight
  row (1, N); torch runs it in cuBLAS (>= 12.9) or its CUTLASS kernel. torch also has that
  kernel for 8.9 and 10.x and none for 12.x; only 9.x is enabled, the one lent here to measure.
Elsewhere (CPU, other GPUs, other shapes or dtypes) the weight is dequantized for each call: half
the memory, more time, and on a CPU the very numbers `fp8="dequantize"` gives.
`reference_mm` and `reference_rowwise_mm` are the kernels' arithmetic in float32, so the
quantization and the scale layouts are checked on a CPU (tests/test_fp8.py). Each forward records
the product it ran in `last_path`; `python -m benchmarks.gpu --parts fp8` counts them and measures
the CUDA paths (accuracy, memory, speed), which have not been run in this repository yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .fp8 import scaled_weight_keys
from .fp8_format import E4M3, E4M3_MAX, BlockFP8, FP8Format, Layout
from .weights import checkpoint_files, mtp_layer_key

ACTIVATION_BLOCK = 128  # 1 x 128 activation blocks: the only block-scaled pairing cuBLAS offers with 128 x 128 weights
ROWWISE_ALIGN = 16  # scaled_mm wants K and N multiples of 16 (mat_b's two dimensions)


class Fp8Linear(nn.Module):
    """y = x W^T + b with W ~= weight * scale: e4m3 `weight` (out, in) and float32 scales laid out as
    `layout` says, kept under the checkpoint's name `scale_name` (`weight_scale_inv` for block-FP8,
    `weight_scale` for compressed-tensors)."""

    def __init__(self, in_features: int, out_features: int, *, layout: Layout, scale_name: str,
                 bias_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.layout, self.scale_name = layout, scale_name
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=E4M3), requires_grad=False)
        scale = torch.empty(layout.scale_shape((out_features, in_features)), dtype=torch.float32)
        self.register_parameter(scale_name, nn.Parameter(scale, requires_grad=False))
        self.bias = None if bias_dtype is None else nn.Parameter(torch.empty(out_features, dtype=bias_dtype))
        # Which product the last forward ran (None: none yet), so a benchmark knows rather than
        # guesses that the fast path ran. Setting it costs ~1.5 us a call on this CPU, less than
        # `uses_scaled_mm` itself, and nothing on the device.
        self.last_path: Literal["scaled_mm", "dequantize"] | None = None

    @property
    def scale(self) -> torch.Tensor:
        return getattr(self, self.scale_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if uses_scaled_mm(x, self.weight, self.layout):
            self.last_path = "scaled_mm"
            if isinstance(self.layout, BlockFP8):
                return block_scaled_linear(x, self.weight, self.scale, self.bias, mm=cuda_scaled_mm)
            return rowwise_scaled_linear(x, self.weight, self.scale, self.bias, mm=cuda_rowwise_mm)
        self.last_path = "dequantize"
        return F.linear(x, self.layout.dequantize(self.weight, self.scale, x.dtype), self.bias)

    def weight_rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows `ids` of the dequantized weight, (len(ids), in_features) in `dtype`; the other rows
        stay e4m3 (decode.py's draft head: ~1k rows of a 151k-row vocabulary projection)."""
        scale = self.layout.rows_scale(self.scale, ids, self.weight.shape[1])
        return (self.weight[ids].float() * scale).to(dtype)


def keep_fp8(model: nn.Module, directory: str | Path, fmt: FP8Format) -> int:
    """Swap (on the meta device, before loading) each `nn.Linear` whose checkpoint weight has a scale;
    returns how many were swapped."""
    scaled = scaled_weight_keys(checkpoint_files(directory), fmt.scale_suffix)
    first_mtp = model.cfg.text.num_hidden_layers
    swapped = 0
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or mtp_layer_key(f"{name}.weight", first_mtp) not in scaled:
            continue
        bias_dtype = None if module.bias is None else module.bias.dtype
        with torch.device(module.weight.device):
            kept = Fp8Linear(module.in_features, module.out_features, layout=fmt.layout,
                             scale_name="weight" + fmt.scale_suffix, bias_dtype=bias_dtype)
        model.set_submodule(name, kept)
        swapped += 1
    return swapped


def uses_scaled_mm(x: torch.Tensor, weight: torch.Tensor, layout: Layout) -> bool:
    """Does `Fp8Linear` run `x` through scaled_mm (else it dequantizes the weight)?"""
    N, K = weight.shape
    if x.device.type != "cuda" or torch.cuda.get_device_capability(x.device)[0] != 9:
        return False
    if not isinstance(layout, BlockFP8):
        return x.dtype == torch.bfloat16 and K % ROWWISE_ALIGN == 0 and N % ROWWISE_ALIGN == 0
    cuda = tuple(int(v) for v in (torch.version.cuda or "0.0").split(".")[:2])
    return (layout.block_rows, layout.block_cols) == (128, 128) and K % 512 == 0 and N % 128 == 0 and cuda >= (12, 9)


def quantize_activations(x_MK: torch.Tensor, block: int = ACTIVATION_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> e4m3 (M, K) and float32 scale (M, K/block): one scale per token per `block` columns
    (block = K: one per token), each block's absolute maximum mapped to 448."""
    M, K = x_MK.shape
    x_MBk = x_MK.float().view(M, K // block, block)
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


def rowwise_scaled_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, *, mm) -> torch.Tensor:
    """x (..., K) @ dequant(weight (N, K))^T + bias, with one weight scale per row (`scale` (N, 1), or
    (1,) for the whole tensor) and x quantized per token; `mm` does the product."""
    *lead, K = x.shape
    N = weight.shape[0]
    q_MK, scale_M1 = quantize_activations(x.reshape(-1, K), block=K)
    scale_1N = scale.reshape(1, -1).expand(1, N).contiguous()  # a per-tensor scale repeated over the rows
    y_MN = mm(q_MK, scale_M1, weight, scale_1N, out_dtype=x.dtype)
    if bias is not None:
        y_MN = y_MN + bias
    return y_MN.view(*lead, N)


def cuda_scaled_mm(q_MK, scale_MB, weight_NK, scale_inv_nb, *, out_dtype: torch.dtype) -> torch.Tensor:
    """cuBLAS block-scaled GEMM. Operand b is W^T column-major; both scales are passed outer-dim-major
    (transposes of contiguous (K/128, M) and (N/128, K/128) tensors), the layout torch's tests use."""
    scale_a = scale_MB.t().contiguous().t()
    return F.scaled_mm(
        q_MK, weight_NK.t(), scale_a, F.ScalingType.BlockWise1x128, scale_inv_nb.contiguous().t(), F.ScalingType.BlockWise128x128,
        swizzle_a=F.SwizzleType.NO_SWIZZLE, swizzle_b=F.SwizzleType.NO_SWIZZLE, output_dtype=out_dtype,
    )


def cuda_rowwise_mm(q_MK, scale_M1, weight_NK, scale_1N, *, out_dtype: torch.dtype) -> torch.Tensor:
    """Row-wise scaled GEMM: operand a row-major, b = W^T column-major (the one pairing sm90 takes),
    scales (M, 1) and (1, N) float32 and contiguous, as torch's ScaledBlas.cpp checks them."""
    return F.scaled_mm(q_MK, weight_NK.t(), scale_M1, F.ScalingType.RowWise, scale_1N, F.ScalingType.RowWise,
                       output_dtype=out_dtype)


def reference_mm(q_MK, scale_MB, weight_NK, scale_inv_nb, *, out_dtype: torch.dtype) -> torch.Tensor:
    """What `cuda_scaled_mm` computes, in float32 on any device: sum over K blocks of
    (q_a * s_a) (q_w * s_w)^T."""
    layout = BlockFP8(128, 128)
    a_MK = (q_MK.float().view(*scale_MB.shape, ACTIVATION_BLOCK) * scale_MB[..., None]).view(q_MK.shape)
    return (a_MK @ layout.dequantize(weight_NK, scale_inv_nb).t()).to(out_dtype)


def reference_rowwise_mm(q_MK, scale_M1, weight_NK, scale_1N, *, out_dtype: torch.dtype) -> torch.Tensor:
    """What `cuda_rowwise_mm` computes, in float32 on any device: the e4m3 products summed unscaled,
    then each output scaled once by its token's and its weight row's scale (the kernel's epilogue)."""
    return ((q_MK.float() @ weight_NK.float().t()) * scale_M1 * scale_1N).to(out_dtype)
