"""FP8 checkpoints: e4m3 weights beside float scales, the two conventions that store them, and
the reader that dequantizes them into place.

`config.json`'s `quantization_config` says which convention a checkpoint uses (`fp8_format`):

- block-FP8 (`quant_method: "fp8"`, DeepSeek-V3's format; what `python -m vlm.quantize --fp8`
  writes): a quantized 2-D weight `W` (rows, cols) is stored as float8_e4m3fn `q` beside a float32
  `<key>_scale_inv` of shape (ceil(rows / 128), ceil(cols / 128)): W ~= q * scale_inv, one scale
  per 128 x 128 block (edge blocks are partial), and `quantization_config` = QUANTIZATION_CONFIG.
- compressed-tensors `float-quantized` (`quant_method: "compressed-tensors"`, llm-compressor's FP8
  schemes; Z.ai's GLM-4.5 / 4.5-Air / 4.5V -FP8 releases, README "FP8 checkpoints"): `q` beside
  `<module>.weight_scale`, W ~= q * weight_scale, with one scale per output row (`weights.strategy`
  "channel", shape (rows, 1)), one per tensor ("tensor", shape (1,)) or one per block ("block",
  `block_structure` [br, bc]). Its `ignore` names the modules it leaves unquantized; static
  activation scales (`<module>.input_scale`) are read past: a dequantized model computes in full
  precision, as transformers' `dequantize=True` does.

The quantizer (`quantize`) keeps embeddings, lm_head, norms, biases, the router `gate.weight` and
`e_score_correction_bias` in the source dtype (`is_quantizable`), and so do the MTP layer's
`eh_proj` and `shared_head.head` (its decoder block is quantized like any other layer).

Reading is driven by the files, not by a list of module names: a weight is dequantized when its
scale is there, and an e4m3 weight without one is an error. On load (`FP8Checkpoint.read_into`) a
weight is read 128 rows at a time (for blocks, the rows of one block-row of scales) and written
dequantized straight into the model's tensor: the peak is the model plus one strip, never the
model twice. The arithmetic is `(q.float() * scale).to(dtype)`, the same as transformers'
`Fp8Dequantize` and compressed-tensors' float32-scale dequantization, so the loaders give
bit-identical weights. Writing (`BlockFP8.quantize`) takes the absolute maximum of each block to
448, the largest finite e4m3 value. The module that keeps e4m3 weights for compute is
`fp8_linear.py` (any of the three layouts; `FP8Format.check_keep` says which configs it runs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from .config import VLMConfig

logger = logging.getLogger(__name__)

QUANTIZATION_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
SCALE_SUFFIX = "_scale_inv"  # block-FP8: `<weight key>_scale_inv`
CT_SCALE_SUFFIX = "_scale"  # compressed-tensors: `<module>.weight_scale`
CT_INPUT_SCALE = ".input_scale"  # compressed-tensors' static activation scale, one per module
CT_FORMAT = "float-quantized"
E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448.0
STRIP_ROWS = 128  # rows read and dequantized at a time where the scales do not dictate a strip
SCALE_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
# Never quantized by `quantize` (block-FP8 checkpoints keep these in bf16; Z.ai's compressed-tensors
# releases `ignore` lm_head and the routers too): lookup tables, the output head and the router,
# whose float32 logits pick the experts. Nor the MTP layer's `eh_proj` and
# `shared_head.head`, which the servers that load this layout build unquantized: vLLM's
# models/glm4_moe_mtp.py and deepseek_mtp.py and SGLang's models/glm4_moe_nextn.py and
# deepseek_nextn.py make `eh_proj` a plain `nn.Linear` (no quant_config) and look every checkpoint
# tensor up among their parameters, so an `eh_proj.weight_scale_inv` would not load; the head is
# a `ParallelLMHead`, which vLLM's `Fp8Config.get_quant_method` (layers/quantization/fp8.py)
# leaves unquantized like `lm_head`, and SGLang's deepseek_nextn.py skips for the target's
# `lm_head`. (Z.ai's compressed-tensors releases do store a head scale, `weight_scale`, which vLLM
# PR #32101 skips.) A checkpoint with them in e4m3 still loads.
UNQUANTIZED = ("embed_tokens.", "position_embedding.", "lm_head.", ".mlp.gate.", ".eh_proj.", ".shared_head.head.")


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


def dequantized(config: VLMConfig) -> VLMConfig:
    """The same config without `quantization_config`: what a model dequantized on load saves."""
    return dataclasses.replace(config, extra={k: v for k, v in config.extra.items() if k != "quantization_config"})


def is_scale_key(key: str) -> bool:
    """Does `key` name a scale of either convention (never a model tensor)?"""
    return key.endswith((SCALE_SUFFIX, CT_SCALE_SUFFIX))


def scaled_weight_keys(files: list[Path], scale_suffix: str = SCALE_SUFFIX) -> set[str]:
    """Keys of the weights that have a scale (`<weight key><scale_suffix>`) in the checkpoint (from the headers alone)."""
    ending = ".weight" + scale_suffix
    return {key.removesuffix(scale_suffix) for file in files for key in _header(file) if key.endswith(ending)}


def is_quantizable(key: str, shape: tuple[int, ...]) -> bool:
    """Does the block-FP8 layout `quantize` writes store checkpoint tensor `key` in e4m3? Linear weights only."""
    return len(shape) == 2 and key.endswith(".weight") and not any(part in key for part in UNQUANTIZED)


# ---- the reader ----------------------------------------------------------------------------------


class FP8Checkpoint:
    """The scales of an FP8 checkpoint directory, checked against their weights, read once.

    `scales` maps each quantized weight's key to its scale as float32 (block-FP8: one float per
    16,384 weights, ~26 MB for GLM-4.5V's 106B; per-channel: one per row, ~165 MB).
    `skipped` holds the static activation scales a dequantized model does not use.
    """

    def __init__(self, fmt: FP8Format, scales: dict[str, torch.Tensor], skipped: frozenset[str] = frozenset()) -> None:
        self.format = fmt
        self.layout = fmt.layout
        self.scales = scales
        self.skipped = skipped

    @classmethod
    def open(cls, directory: str | os.PathLike, files: list[Path]) -> FP8Checkpoint | None:
        """None unless `directory/config.json` has a `quantization_config` (see `fp8_format`)."""
        fmt = fp8_format(json.loads((Path(directory) / "config.json").read_text()))
        if fmt is None:
            return None
        headers = {key: (file, info) for file in files for key, info in _header(file).items()}
        scale_ending = ".weight" + fmt.scale_suffix
        scales, skipped = {}, set()
        for key, (file, info) in headers.items():
            if fmt.input_scales and key.endswith(CT_INPUT_SCALE):
                skipped.add(key)
            elif key.endswith(scale_ending):
                weight_key = key.removesuffix(fmt.scale_suffix)
                if weight_key not in headers:
                    raise ValueError(f"tensor {key!r} in {file} scales {weight_key!r}, which the checkpoint does not hold")
                if fmt.ignores(module := weight_key.removesuffix(".weight")):
                    raise ValueError(f"config.json's quantization_config ignores {module!r} (leaves it unquantized), but "
                                     f"{file} stores a scale {key!r} for it: the config and the weights disagree")
                _check_pair(fmt, key, info, weight_key, *headers[weight_key])
                scales[weight_key] = _read_scale(file, key, info)
            elif info["dtype"] == "F8_E4M3" and key + fmt.scale_suffix not in headers:
                raise ValueError(f"tensor {key!r} in {file} is F8_E4M3 but the checkpoint has no {key + fmt.scale_suffix!r} "
                                 f"to dequantize it with ({fmt.name})")
        if skipped:
            logger.info("%s: %d static activation scales (input_scale) not applied: the dequantized model computes in "
                        "full precision", directory, len(skipped))
        return cls(fmt, scales, frozenset(skipped))

    def is_scale(self, key: str) -> bool:
        """Is `key` a tensor this reader accounts for (a weight's scale, or a skipped activation scale)?"""
        return key in self.skipped or (key.endswith(self.format.scale_suffix)
                                       and key.removesuffix(self.format.scale_suffix) in self.scales)

    def is_quantized(self, key: str) -> bool:
        return key in self.scales

    def read_into(self, raw, where: tuple[object, int, int], target: torch.Tensor, key: str, file: Path) -> None:
        """Fill `target` from the e4m3 bytes of `key` at `where` = (_, start, end) in the open file `raw`:
        as they are when `target` is e4m3 (kept for `Fp8Linear`), else dequantized one strip at a time."""
        _, start, end = where
        rows, cols = target.shape
        if end - start != rows * cols:
            raise ValueError(f"tensor {key!r} in {file} holds {end - start} bytes, expected {rows * cols} (e4m3, {rows}x{cols})")
        strip_rows = rows if target.dtype == E4M3 else self.layout.strip_rows
        scale = self.scales[key]
        for r0 in range(0, rows, strip_rows):
            r1 = min(r0 + strip_rows, rows)
            q = _read_rows(raw, start + r0 * cols, r1 - r0, cols, key, file)
            if target.dtype == E4M3:
                target[r0:r1].copy_(q)
                continue
            target[r0:r1].copy_((q.float() * self.layout.strip_scale(scale, r0, r1, cols)).to(target.dtype))


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
    scale = torch.empty(info["shape"], dtype=SCALE_DTYPES[info["dtype"]])
    with open(file, "rb") as raw:
        raw.seek(start)
        if raw.readinto(memoryview(scale.view(-1).view(torch.uint8).numpy())) != end - start:
            raise ValueError(f"cannot read tensor {key!r} from {file}: the file is truncated")
    return scale.float()


def _check_pair(fmt: FP8Format, key: str, info: dict, weight_key: str, weight_file: Path, weight_info: dict) -> None:
    """A scale must be of the format's dtypes and shape for an e4m3 (rows, cols) weight."""
    shape, weight_shape = tuple(info["shape"]), tuple(weight_info["shape"])
    if weight_info["dtype"] != "F8_E4M3" or len(weight_shape) != 2:
        raise ValueError(f"tensor {weight_key!r} in {weight_file} has a scale {key!r} but is {weight_info['dtype']} "
                         f"{list(weight_shape)}; expected a 2-D F8_E4M3 weight")
    expected = fmt.layout.scale_shape(weight_shape)
    if isinstance(fmt.layout, TensorFP8) and shape == ():
        shape = (1,)  # a 0-d scale is the same one number
    if info["dtype"] not in fmt.scale_dtypes or shape != expected:
        dtypes = " or ".join(fmt.scale_dtypes)
        raise ValueError(f"tensor {key!r} is {info['dtype']} {list(info['shape'])}, expected {dtypes} {list(expected)} for "
                         f"weight {weight_key!r} of shape {list(weight_shape)} {fmt.layout.describe()} ({fmt.name})")


def _read_rows(raw, offset: int, rows: int, cols: int, key: str, file: Path) -> torch.Tensor:
    buffer = torch.empty(rows, cols, dtype=torch.uint8)
    raw.seek(offset)
    if raw.readinto(memoryview(buffer.view(-1).numpy())) != rows * cols:
        raise ValueError(f"cannot read tensor {key!r} from {file}: the file is truncated")
    return buffer.view(E4M3)
