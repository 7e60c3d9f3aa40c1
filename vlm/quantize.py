"""Write a checkpoint in the block-FP8 layout (fp8_format.py) from a bf16 / fp16 / fp32 one.

    python -m vlm.quantize --fp8 SRC DST [--max-shard-bytes N]

Tensors stream one at a time from SRC; shards fill up to `--max-shard-bytes` (our default 5 GiB,
as `save_pretrained`) and are written as they fill. Everything goes to a staging directory beside
DST that is renamed to DST at the end, so DST is either complete or absent; an existing,
non-empty DST is refused. Files other than the weights and config.json (tokenizer, processor,
chat template, generation config) are copied unchanged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .fp8 import is_quantizable
from .fp8_format import QUANTIZATION_CONFIG, SCALE_SUFFIX, BlockFP8
from .weights import INDEX_FILE, SINGLE_FILE, _shard, checkpoint_files

logger = logging.getLogger(__name__)

SOURCE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def quantize_checkpoint(source: str | os.PathLike, destination: str | os.PathLike, *,
                        max_shard_bytes: int = 5 * 1024**3) -> Path:
    """Write `source` to `destination` in the block-FP8 layout; returns `destination`."""
    source, destination = Path(source), Path(destination)
    config = _source_config(source)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise FileExistsError(f"{destination} already exists and is not empty; give a new directory")
    staging = destination.with_name(f".{destination.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write(source, staging, config, max_shard_bytes)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if destination.exists():
        destination.rmdir()  # empty (checked above)
    os.replace(staging, destination)
    logger.info("wrote the block-FP8 layout of %s to %s", source, destination)
    return destination


def _write(source: Path, staging: Path, config: dict, max_shard_bytes: int) -> None:
    layout = BlockFP8(*QUANTIZATION_CONFIG["weight_block_size"])
    parts = []
    for i, shard in enumerate(_shard(_quantized_tensors(source, layout), max_shard_bytes)):
        path = staging / f"part-{i}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        parts.append((path, {key: t.numel() * t.element_size() for key, t in shard.items()}))
    _name_shards(staging, parts)
    config = {**config, "quantization_config": QUANTIZATION_CONFIG}
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    _copy_other_files(source, staging)


def _source_config(source: Path) -> dict:
    file = source / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{str(source)!r} is not a checkpoint directory: it has no config.json")
    config = json.loads(file.read_text())
    if "quantization_config" in config:
        raise ValueError(f"{source} is already quantized (quantization_config {config['quantization_config']}); "
                         "quantize a bf16 / fp16 / fp32 checkpoint")
    return config


def _quantized_tensors(source: Path, layout: BlockFP8) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) in the source's order; a quantizable weight becomes e4m3 + its `_scale_inv`."""
    for file in checkpoint_files(source):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                if not is_quantizable(key, tuple(tensor.shape)):
                    yield key, tensor
                    continue
                if tensor.dtype not in SOURCE_DTYPES:
                    raise ValueError(f"tensor {key!r} in {file} is {tensor.dtype}; expected one of {SOURCE_DTYPES}")
                q, scale_inv = layout.quantize(tensor)
                yield key, q
                yield key + SCALE_SUFFIX, scale_inv


def _name_shards(staging: Path, parts: list[tuple[Path, dict[str, int]]]) -> None:
    """Rename the parts to transformers' names and write the index when there is more than one."""
    if len(parts) == 1:
        os.replace(parts[0][0], staging / SINGLE_FILE)
        return
    names = [f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors" for i in range(len(parts))]
    for (path, _), name in zip(parts, names):
        os.replace(path, staging / name)
    index = {
        "metadata": {"total_size": sum(n for _, sizes in parts for n in sizes.values())},
        "weight_map": {key: name for (_, sizes), name in zip(parts, names) for key in sizes},
    }
    (staging / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _copy_other_files(source: Path, staging: Path) -> None:
    weights = {p.name for p in checkpoint_files(source)} | {INDEX_FILE, SINGLE_FILE, "config.json"}
    for path in sorted(source.iterdir()):
        if path.name in weights or path.name.startswith("."):
            continue
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, staging / path.name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vlm.quantize", description=__doc__.splitlines()[0])
    parser.add_argument("--fp8", action="store_true", required=True,
                        help="block-FP8: e4m3 weights with float32 128x128 block scales (the only format so far)")
    parser.add_argument("source", help="checkpoint directory in bf16 / fp16 / fp32")
    parser.add_argument("destination", help="new directory to write (must not exist or be empty)")
    parser.add_argument("--max-shard-bytes", type=int, default=5 * 1024**3, help="largest shard file (default 5 GiB)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quantize_checkpoint(args.source, args.destination, max_shard_bytes=args.max_shard_bytes)


if __name__ == "__main__":
    main()
