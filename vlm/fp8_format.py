"""FP8 formats: the two layouts in which a checkpoint stores e4m3 weights `q` beside float scales,
and the `quantization_config` in `config.json` that says which one (`fp8_format`; README
"### FP8 checkpoints"):

- block-FP8 (`quant_method: "fp8"`, DeepSeek-V3's format; what `python -m vlm.quantize --fp8`
  writes): a quantized 2-D weight `W` (rows, cols) is stored as float8_e4m3fn `q` beside a float32
  `<key>_scale_inv` of shape (ceil(rows / 128), ceil(cols / 128)): W ~= q * scale_inv, one scale
  per 128 x 128 block (edge blocks are partial), and `quantization_config` = QUANTIZATION_CONFIG.
- compressed-tensors `float-quantized` (`quant_method: "compressed-tensors"`, llm-compressor's FP8
  schemes; Z.ai's GLM-4.5 / 4.5-Air / 4.5V -FP8 releases): `q` beside `<module>.weight_scale`,
  W ~= q * weight_scale, with one scale per output row (`weights.strategy` "channel", shape
  (rows, 1)), one per tensor ("tensor", shape (1,) or 0-d) or one per block ("block",
  `block_structure` [br, bc]). Its `ignore` names the modules it leaves unquantized; static activation scales
  (`<module>.input_scale`) are read past: a dequantized model computes in full precision, as
  transformers' `dequantize=True` does.

The layouts (`BlockFP8`, `ChannelFP8`, `TensorFP8`) say how the scales lie over a weight, for the
loader (fp8.py) and for `Fp8Linear` (fp8_linear.py); `FP8Format` is a validated config, and any
other config is an error that names what it found. Writing (`BlockFP8.quantize`) takes the
absolute maximum of each block to 448, the largest finite e4m3 value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

QUANTIZATION_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
SCALE_SUFFIX = "_scale_inv"  # block-FP8: `<weight key>_scale_inv`
CT_SCALE_SUFFIX = "_scale"  # compressed-tensors: `<module>.weight_scale`
CT_FORMAT = "float-quantized"
E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448.0
STRIP_ROWS = 128  # rows read and dequantized at a time where the scales do not dictate a strip
SCALE_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


# ---- how the scales lie over a weight ------------------------------------------------------------


@dataclass(frozen=True)
class BlockFP8:
    """One float scale per (block_rows x block_cols) block; the edge blocks are partial."""

    block_rows: int = 128
    block_cols: int = 128

    @property
    def strip_rows(self) -> int:
        return self.block_rows  # a strip never straddles two block-rows of scales

    def describe(self) -> str:
        return f"in {self.block_rows}x{self.block_cols} blocks"

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        rows, cols = shape
        return math.ceil(rows / self.block_rows), math.ceil(cols / self.block_cols)

    def strip_scale(self, scale: torch.Tensor, r0: int, r1: int, cols: int) -> torch.Tensor:
        """The scales of rows r0:r1 (inside one block-row), broadcastable to (r1 - r0, cols)."""
        return scale[r0 // self.block_rows].repeat_interleave(self.block_cols)[:cols]

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

    def rows_scale(self, scale: torch.Tensor, ids: torch.Tensor, cols: int) -> torch.Tensor:
        """The scales of rows `ids` (any rows, in any order), broadcastable to (len(ids), cols)."""
        return scale[ids // self.block_rows].repeat_interleave(self.block_cols, 1)[:, :cols]


@dataclass(frozen=True)
class ChannelFP8:
    """One float scale per output row: scale (rows, 1) (compressed-tensors' "channel" strategy)."""

    strip_rows: ClassVar[int] = STRIP_ROWS

    def describe(self) -> str:
        return "one per output row (strategy 'channel')"

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        return shape[0], 1

    def strip_scale(self, scale: torch.Tensor, r0: int, r1: int, cols: int) -> torch.Tensor:
        return scale.view(-1)[r0:r1, None]

    def dequantize(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (q.float() * scale.view(-1, 1)).to(dtype)

    def rows_scale(self, scale: torch.Tensor, ids: torch.Tensor, cols: int) -> torch.Tensor:
        return scale.view(-1)[ids, None]


@dataclass(frozen=True)
class TensorFP8:
    """One float scale for the whole weight: scale (1,) (compressed-tensors' "tensor" strategy)."""

    strip_rows: ClassVar[int] = STRIP_ROWS

    def describe(self) -> str:
        return "one for the whole tensor (strategy 'tensor')"

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int]:
        return (1,)

    def strip_scale(self, scale: torch.Tensor, r0: int, r1: int, cols: int) -> torch.Tensor:
        return scale.view(())

    def dequantize(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (q.float() * scale.view(())).to(dtype)

    def rows_scale(self, scale: torch.Tensor, ids: torch.Tensor, cols: int) -> torch.Tensor:
        return scale.view(())


Layout = BlockFP8 | ChannelFP8 | TensorFP8


# ---- what config.json declares -------------------------------------------------------------------


@dataclass(frozen=True)
class FP8Format:
    """A validated `quantization_config`: how the scales lie (`layout`), the scale keys' suffix
    after the weight key, the dtypes they may be stored in, the modules the config leaves
    unquantized (compressed-tensors' `ignore`: module names or `re:` regexes), whether static
    activation scales (`<module>.input_scale`) come along and whether a config group quantizes
    weights only (compressed-tensors' `input_activations: null`, W8A16)."""

    name: str  # for messages: which convention, which scales
    layout: Layout
    scale_suffix: str
    scale_dtypes: tuple[str, ...]
    ignore: tuple[str, ...] = ()
    input_scales: bool = False
    weight_only: bool = False

    def ignores(self, module: str) -> bool:
        """compressed-tensors' rule (an entry is a module name, or `re:` and a regex matched from the
        start), and an entry also matches a module whose name ends in `.entry`: `lm_head`, and the
        prefix-free names vLLM writes (`visual.blocks.0.attn.proj` for `model.visual.blocks.0.attn.proj`)."""
        for entry in self.ignore:
            if entry.startswith("re:"):
                if re.match(entry[3:], module):
                    return True
            elif module == entry or module.endswith("." + entry):
                return True
        return False

    def check_keep(self) -> None:
        """Can `fp8="keep"` run this config (fp8_linear.py)? Every layout, W8A8 only: its CUDA products
        quantize the activations on the fly (per token, or per token and 128 columns for blocks),
        which a weight-only config does not declare. Static activation scales are read past as on
        load: the dynamic per-token scales are at least as fine."""
        if self.weight_only:
            raise ValueError(f"fp8='keep' multiplies FP8 weights by activations quantized to FP8 on the fly (W8A8, on "
                             f"CUDA); this checkpoint is {self.name} with weight-only config groups (input_activations "
                             "null: activations in full precision, W8A16), which Fp8Linear does not compute: load it "
                             "with fp8='dequantize'")


def fp8_format(config: Mapping | None) -> FP8Format | None:
    """From a `config.json`'s top-level dict: None when it has no `quantization_config`; an error
    naming what it found for any configuration but the two this module reads."""
    raw = (config or {}).get("quantization_config")
    if raw is None:
        return None
    method = raw.get("quant_method") if isinstance(raw, Mapping) else None
    if method == "fp8":
        return _block_fp8_format(raw)
    if method == "compressed-tensors":
        return _compressed_tensors_format(raw)
    raise ValueError(f"quantization_config quant_method {method!r} is not supported; this loader reads 'fp8' (block-FP8: "
                     f"{QUANTIZATION_CONFIG}) and 'compressed-tensors' with format {CT_FORMAT!r} (FP8 weights with "
                     "tensor, channel or block scales)")


def _block_fp8_format(raw: Mapping) -> FP8Format:
    expected = {k: v for k, v in QUANTIZATION_CONFIG.items() if k != "weight_block_size"}
    for name, value in expected.items():
        if raw.get(name, value) != value:
            raise ValueError(f"quantization_config {name} {raw.get(name)!r} is not supported; expected {value!r} "
                             f"(the block-FP8 layout: {QUANTIZATION_CONFIG})")
    block = raw.get("weight_block_size")
    if not _two_positive_ints(block):
        raise ValueError(f"quantization_config weight_block_size {block!r} is not two positive integers, e.g. [128, 128]")
    return FP8Format("block-FP8 (quant_method 'fp8')", BlockFP8(*block), SCALE_SUFFIX, ("F32",))


def _compressed_tensors_format(raw: Mapping) -> FP8Format:
    if raw.get("format") != CT_FORMAT:
        raise _refused("format", raw.get("format"), repr(CT_FORMAT))
    if raw.get("quantization_status", "compressed") != "compressed":
        raise _refused("quantization_status", raw.get("quantization_status"), "'compressed'")
    for field in ("kv_cache_scheme", "sparsity_config", "transform_config"):  # each changes what the weights mean
        if raw.get(field):
            raise _refused(field, raw[field], "none")
    groups = raw.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise _refused("config_groups", groups, "one or more groups")
    layouts = {name: _ct_layout(f"config_groups.{name}", group) for name, group in groups.items()}
    if len(set(layouts.values())) > 1:
        found = {name: layout.describe() for name, layout in layouts.items()}
        raise _refused("config_groups", found, "one weight strategy for every group")
    layout = next(iter(layouts.values()))
    static_inputs = any((group.get("input_activations") or {}).get("dynamic") is False for group in groups.values())
    weight_only = any(group.get("input_activations") is None for group in groups.values())
    name = f"compressed-tensors {CT_FORMAT!r} with scales {layout.describe()}"
    return FP8Format(name, layout, CT_SCALE_SUFFIX, tuple(SCALE_DTYPES), tuple(raw.get("ignore") or ()), static_inputs,
                     weight_only)


def _ct_layout(where: str, group: Mapping) -> Layout:
    """One config group's weight layout; activations are not quantized by a dequantizing loader."""
    if group.get("format") not in (None, CT_FORMAT):
        raise _refused(f"{where}.format", group.get("format"), repr(CT_FORMAT))
    if group.get("output_activations") is not None:
        raise _refused(f"{where}.output_activations", group["output_activations"], "null")
    weights = group.get("weights") or {}
    defaults = {"symmetric": True, "dynamic": False}  # compressed-tensors' own, for a field left out
    for field, value in (("type", "float"), ("num_bits", 8), ("symmetric", True), ("dynamic", False)):
        if weights.get(field, defaults.get(field)) != value:
            raise _refused(f"{where}.weights.{field}", weights.get(field), repr(value))
    strategy = weights.get("strategy")
    if strategy == "channel":
        return ChannelFP8()
    if strategy == "tensor":
        return TensorFP8()
    if strategy == "block":
        if not _two_positive_ints(block := weights.get("block_structure")):
            raise _refused(f"{where}.weights.block_structure", block, "two positive integers, e.g. [128, 128]")
        return BlockFP8(*block)
    raise _refused(f"{where}.weights.strategy", strategy, "'tensor', 'channel' or 'block'")


def _refused(field: str, found: object, expected: str) -> ValueError:
    return ValueError(f"compressed-tensors quantization_config {field} {found!r} is not supported; expected {expected} "
                      f"(this loader reads format {CT_FORMAT!r}: symmetric FP8 e4m3 weights with tensor, channel or "
                      "block scales)")


def _two_positive_ints(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(b, int) and b > 0 for b in value)
