"""The block-FP8 checkpoint layout (Z.ai's GLM-4.5 / 4.5V FP8 releases, DeepSeek-V3's format).

A quantized 2-D weight `W` (rows, cols) is stored as float8_e4m3fn `q` beside a float32
`<key>_scale_inv` of shape (ceil(rows / 128), ceil(cols / 128)): W ~= q * scale_inv, one scale
per 128 x 128 block (edge blocks are partial). `config.json` says so with `quantization_config`
= QUANTIZATION_CONFIG. Embeddings, lm_head, norms, biases, the router `gate.weight` and
`e_score_correction_bias` stay in the source dtype (`is_quantizable`), and so do the MTP layer's
`eh_proj` and `shared_head.head` (its decoder block is quantized like any other layer).

Reading is driven by the files, not by a list of module names: a weight is dequantized when its
`_scale_inv` is there. On load (`FP8Checkpoint.read_into`) a weight is read 128 rows at a time,
the rows of one block-row of scales, and written dequantized straight into the model's tensor:
the peak is the model plus one strip, never the model twice. The arithmetic is
`(q.float() * scale).to(dtype)`, the same as transformers' `Fp8Dequantize`, so both loaders give
bit-identical weights. Writing (`quantize`) takes the absolute maximum of each block to 448, the
largest finite e4m3 value. The module that keeps e4m3 weights for compute is `fp8_linear.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import VLMConfig

QUANTIZATION_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
SCALE_SUFFIX = "_scale_inv"
E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448.0
# Never quantized (the released FP8 checkpoints keep these in bf16): lookup tables, the output
# head and the router, whose float32 logits pick the experts. Nor the MTP layer's `eh_proj` and
# `shared_head.head`, which the servers that load this layout build unquantized: vLLM's
# models/glm4_moe_mtp.py and deepseek_mtp.py and SGLang's models/glm4_moe_nextn.py and
# deepseek_nextn.py make `eh_proj` a plain `nn.Linear` (no quant_config) and look every checkpoint
# tensor up among their parameters, so an `eh_proj.weight_scale_inv` would not load; the head is
# a `ParallelLMHead`, which vLLM's `Fp8Config.get_quant_method` (layers/quantization/fp8.py)
# leaves unquantized like `lm_head`, and SGLang's deepseek_nextn.py skips for the target's
# `lm_head`. (Z.ai's GLM-4.6-FP8 does store a head scale, named `weight_scale`, which vLLM PR
# #32101 skips: another format than this one.) A checkpoint with them in e4m3 still loads.
UNQUANTIZED = ("embed_tokens.", "position_embedding.", "lm_head.", ".mlp.gate.", ".eh_proj.", ".shared_head.head.")


@dataclass(frozen=True)
class BlockFP8:
    """A validated `quantization_config`: e4m3 weights, one float32 scale per block."""

    block_rows: int = 128
    block_cols: int = 128

    @classmethod
    def of(cls, config: Mapping | None) -> BlockFP8 | None:
        """From a `config.json`'s top-level dict: None when it has no `quantization_config`."""
        raw = (config or {}).get("quantization_config")
        if raw is None:
            return None
        expected = {k: v for k, v in QUANTIZATION_CONFIG.items() if k != "weight_block_size"}
        for name, value in expected.items():
            if raw.get(name, value) != value:
                raise ValueError(f"quantization_config {name} {raw.get(name)!r} is not supported; expected {value!r} "
                                 f"(the block-FP8 layout: {QUANTIZATION_CONFIG})")
        block = raw.get("weight_block_size")
        if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
            raise ValueError(f"quantization_config weight_block_size {block!r} is not two positive integers, e.g. [128, 128]")
        return cls(*block)

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        rows, cols = shape
        return math.ceil(rows / self.block_rows), math.ceil(cols / self.block_cols)

    def quantize(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) float -> (e4m3 (rows, cols), float32 scale_inv (ceil(rows/br), ceil(cols/bc)))."""
        rows, cols = weight.shape
        R, C = self.scale_shape(weight.shape)
        padded = weight.new_zeros(R * self.block_rows, C * self.block_cols, dtype=torch.float32)
        padded[:rows, :cols] = weight.float()
        blocks = padded.view(R, self.block_rows, C, self.block_cols)  # (R, br, C, bc)
        amax_RC = blocks.abs().amax(dim=(1, 3))
        scale_inv_RC = torch.where(amax_RC > 0, amax_RC / E4M3_MAX, torch.ones_like(amax_RC))
        q = (blocks / scale_inv_RC[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
        return q.view(R * self.block_rows, C * self.block_cols)[:rows, :cols].contiguous(), scale_inv_RC

    def dequantize(self, q: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """e4m3 (rows, cols) and its scales -> (rows, cols) in `dtype` (whole tensor; see `read_into` for strips)."""
        rows, cols = q.shape
        scale = scale_inv.repeat_interleave(self.block_rows, 0)[:rows].repeat_interleave(self.block_cols, 1)[:, :cols]
        return (q.float() * scale.float()).to(dtype)


def dequantized(config: VLMConfig) -> VLMConfig:
    """The same config without `quantization_config`: what a model dequantized on load saves."""
    return dataclasses.replace(config, extra={k: v for k, v in config.extra.items() if k != "quantization_config"})


def scaled_weight_keys(files: list[Path]) -> set[str]:
    """Keys of the weights that have a `_scale_inv` in the checkpoint (from the headers alone)."""
    return {key.removesuffix(SCALE_SUFFIX) for file in files for key in _header(file) if key.endswith(SCALE_SUFFIX)}


def is_quantizable(key: str, shape: tuple[int, ...]) -> bool:
    """Does the released layout store checkpoint tensor `key` in e4m3? Linear weights only."""
    return len(shape) == 2 and key.endswith(".weight") and not any(part in key for part in UNQUANTIZED)


class FP8Checkpoint:
    """The scales of a block-FP8 checkpoint directory, checked against their weights, read once.

    `scales` maps each quantized weight's key to its float32 scale_inv (one float per 16,384
    weights: ~26 MB for GLM-4.5V's 106B).
    """

    def __init__(self, layout: BlockFP8, scales: dict[str, torch.Tensor]) -> None:
        self.layout = layout
        self.scales = scales

    @classmethod
    def open(cls, directory: str | os.PathLike, files: list[Path]) -> FP8Checkpoint | None:
        """None unless `directory/config.json` has a block-FP8 `quantization_config`."""
        layout = BlockFP8.of(json.loads((Path(directory) / "config.json").read_text()))
        if layout is None:
            return None
        headers = {key: (file, info) for file in files for key, info in _header(file).items()}
        scales = {}
        for key, (file, info) in headers.items():
            if not key.endswith(SCALE_SUFFIX):
                continue
            weight_key = key.removesuffix(SCALE_SUFFIX)
            if weight_key not in headers:
                raise ValueError(f"tensor {key!r} in {file} scales {weight_key!r}, which the checkpoint does not hold")
            _check_pair(layout, key, info, weight_key, *headers[weight_key])
            scales[weight_key] = _read_scale(file, key, info)
        return cls(layout, scales)

    def is_scale(self, key: str) -> bool:
        return key.endswith(SCALE_SUFFIX) and key.removesuffix(SCALE_SUFFIX) in self.scales

    def is_quantized(self, key: str) -> bool:
        return key in self.scales

    def read_into(self, raw, where: tuple[object, int, int], target: torch.Tensor, key: str, file: Path) -> None:
        """Fill `target` from the e4m3 bytes of `key` at `where` = (_, start, end) in the open file `raw`:
        as they are when `target` is e4m3 (kept for `Fp8Linear`), else dequantized one block-row at a time."""
        _, start, end = where
        rows, cols = target.shape
        if end - start != rows * cols:
            raise ValueError(f"tensor {key!r} in {file} holds {end - start} bytes, expected {rows * cols} (e4m3, {rows}x{cols})")
        strip_rows = rows if target.dtype == E4M3 else self.layout.block_rows
        scale = self.scales[key]
        for r0 in range(0, rows, strip_rows):
            r1 = min(r0 + strip_rows, rows)
            q = _read_rows(raw, start + r0 * cols, r1 - r0, cols, key, file)
            if target.dtype == E4M3:
                target[r0:r1].copy_(q)
                continue
            scale_row = scale[r0 // self.layout.block_rows].repeat_interleave(self.layout.block_cols)[:cols]
            target[r0:r1].copy_((q.float() * scale_row).to(target.dtype))


# ---- helpers --------------------------------------------------------------------------------------


def _header(file: Path) -> dict[str, dict]:
    """key -> {"dtype", "shape", "data_offsets" (absolute: the header's length is added)}."""
    try:
        with open(file, "rb") as raw:
            length = int.from_bytes(raw.read(8), "little")
            header = json.loads(raw.read(length))
    except (OSError, ValueError) as error:  # ValueError covers JSON and UTF-8 decoding
        raise ValueError(f"cannot read the safetensors header of {file}: {error}") from error
    header.pop("__metadata__", None)
    for info in header.values():
        info["data_offsets"] = [8 + length + offset for offset in info["data_offsets"]]
    return header


def _read_scale(file: Path, key: str, info: dict) -> torch.Tensor:
    """A plain read, not a memory map: touching a few bytes of a mapped file keeps whole
    read-ahead windows resident (53 MB for 700 scales of a 100 MB checkpoint)."""
    start, end = info["data_offsets"]
    scale = torch.empty(info["shape"], dtype=torch.float32)
    with open(file, "rb") as raw:
        raw.seek(start)
        if raw.readinto(memoryview(scale.view(-1).view(torch.uint8).numpy())) != end - start:
            raise ValueError(f"cannot read tensor {key!r} from {file}: the file is truncated")
    return scale


def _check_pair(layout: BlockFP8, key: str, info: dict, weight_key: str, weight_file: Path, weight_info: dict) -> None:
    """A scale must be float32 and (ceil(rows/br), ceil(cols/bc)) for an e4m3 (rows, cols) weight."""
    shape, weight_shape = tuple(info["shape"]), tuple(weight_info["shape"])
    if weight_info["dtype"] != "F8_E4M3" or len(weight_shape) != 2:
        raise ValueError(f"tensor {weight_key!r} in {weight_file} has a scale {key!r} but is {weight_info['dtype']} "
                         f"{list(weight_shape)}; expected a 2-D F8_E4M3 weight")
    expected = layout.scale_shape(weight_shape)
    if info["dtype"] != "F32" or shape != expected:
        raise ValueError(
            f"tensor {key!r} is {info['dtype']} {list(shape)}, expected F32 {list(expected)} for weight {weight_key!r} "
            f"of shape {list(weight_shape)} in {layout.block_rows}x{layout.block_cols} blocks"
        )


def _read_rows(raw, offset: int, rows: int, cols: int, key: str, file: Path) -> torch.Tensor:
    buffer = torch.empty(rows, cols, dtype=torch.uint8)
    raw.seek(offset)
    if raw.readinto(memoryview(buffer.view(-1).numpy())) != rows * cols:
        raise ValueError(f"cannot read tensor {key!r} from {file}: the file is truncated")
    return buffer.view(E4M3)
