"""Loading FP8 checkpoints: each weight's scale read and checked against its e4m3 weight, and the
weight dequantized into place (or kept as it is, for `Fp8Linear`). The two layouts and the
`quantization_config` that names them are in fp8_format.py.

The quantizer (`quantize`) keeps embeddings, lm_head, norms, biases, the router `gate.weight` and
`e_score_correction_bias` in the source dtype (`is_quantizable`), and so do the MTP layer's
`eh_proj` and `shared_head.head` (its decoder block is quantized like any other layer).

Reading is driven by the files, not by a list of module names: a weight is dequantized when its
scale is there, and an e4m3 weight without one is an error. On load (`FP8Checkpoint.read_into`) a
weight is read 128 rows at a time (for blocks, the rows of one block-row of scales) and written
dequantized straight into the model's tensor: the peak is the model plus one strip, never the
model twice. The arithmetic is `(q.float() * scale).to(dtype)`, the same as transformers'
`Fp8Dequantize` and compressed-tensors' float32-scale dequantization, so the loaders give
bit-identical weights. The module that keeps e4m3 weights for compute is `fp8_linear.py` (any of
the three layouts; `FP8Format.check_keep` says which configs it runs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch

from .config import VLMConfig
from .fp8_format import CT_SCALE_SUFFIX, E4M3, SCALE_DTYPES, SCALE_SUFFIX, FP8Format, Layout, TensorFP8, fp8_format

logger = logging.getLogger(__name__)

CT_INPUT_SCALE = ".input_scale"  # compressed-tensors' static activation scale, one per module

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


# ---- keys and configs ----------------------------------------------------------------------------


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

    def held_shape(self, key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape a model holds checkpoint tensor `key`, stored as `shape`, in: the same, but (1,)
        for a per-tensor weight scale stored 0-d (fp8="keep" keeps it as `TensorFP8.scale_shape`)."""
        suffix = self.format.scale_suffix
        weight_scale = key.endswith(suffix) and key.removesuffix(suffix) in self.scales
        return _one_number(self.layout, shape) if weight_scale else shape

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
    if info["dtype"] not in fmt.scale_dtypes or _one_number(fmt.layout, shape) != expected:
        dtypes = " or ".join(fmt.scale_dtypes)
        raise ValueError(f"tensor {key!r} is {info['dtype']} {list(info['shape'])}, expected {dtypes} {list(expected)} for "
                         f"weight {weight_key!r} of shape {list(weight_shape)} {fmt.layout.describe()} ({fmt.name})")


def _one_number(layout: Layout, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A per-tensor scale stored 0-d is the same one number as `TensorFP8`'s (1,)."""
    return (1,) if isinstance(layout, TensorFP8) and shape == () else shape


def _read_rows(raw, offset: int, rows: int, cols: int, key: str, file: Path) -> torch.Tensor:
    buffer = torch.empty(rows, cols, dtype=torch.uint8)
    raw.seek(offset)
    if raw.readinto(memoryview(buffer.view(-1).numpy())) != rows * cols:
        raise ValueError(f"cannot read tensor {key!r} from {file}: the file is truncated")
    return buffer.view(E4M3)
