"""The ONLY file that knows checkpoint key names: load and save the released safetensors layout.
(`adapter.py` maps LoRA adapter keys with `checkpoint_key` / `module_name` from here.)

Layout (what transformers' `save_pretrained` writes for GLM-4.5V / GLM-4.1V): our module names
with a `model.` prefix (except `lm_head`), experts ONE BY ONE
(`mlp.experts.{e}.{gate,up,down}_proj.weight`) while in memory they are stacked
(`experts.gate_up_proj` (E, 2F, D) = [gate; up], `experts.down_proj` (E, D, F)).

Loading: the model is built on the meta device, materialised once with `to_empty`, and every
tensor is read straight into its place with `readinto` at the offset the safetensors header
gives: no second copy of the model, and no memory-mapped pages counted in the process's
resident memory (reading through a mapping keeps every touched page resident, which doubled
the peak). A tensor stored in another dtype goes through one temporary, one tensor at a time. A missing, unexpected or mis-shaped tensor is an error naming the key and the
file. The multi-token-prediction layers `config.json` declares (`num_nextn_predict_layers` layers
from index `num_hidden_layers` on, mtp.py) load into `language_model.mtp_layers` (key names:
`mtp_layer_key`), or are skipped when the model is built without them; any other layer past the
network is an error, so a config that says fewer layers than the checkpoint stores cannot run a
cut network.
An FP8 checkpoint (fp8.py: block-FP8 or compressed-tensors) has its e4m3 weights dequantized into
place, 128 rows at a time.
Saving: one `model.safetensors`, or shards plus `model.safetensors.index.json` when larger than
`max_shard_bytes`. A save over an existing checkpoint switches from the old weights to the new at
one rename (see `save_weights`), so an interrupted save leaves the old checkpoint or the new one.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import VLMConfig
from .fp8 import FP8Checkpoint, is_scale_key
from .files import atomic_write, fsync_dir

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
_EXPERTS = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<proj>gate_up_proj|down_proj)$")
_MTP = re.compile(r"^(?P<prefix>language_model)\.mtp_layers\.(?P<index>\d+)\.(?:mtp_block\.)?(?P<rest>.+)$")
_MTP_EMBED = re.compile(r"^model\.language_model\.layers\.(?P<layer>\d+)\.embed_tokens\.weight$")


@dataclass(frozen=True)
class Binding:
    """Where one checkpoint tensor lives in the model: a named tensor and an index into it."""

    name: str  # parameter / buffer name in the model
    index: tuple  # () for the whole tensor, else (expert, row slice)
    shape: tuple[int, ...]


def checkpoint_key(name: str) -> str:
    """Our module/tensor name -> the released key (`model.` before everything but `lm_head`)."""
    return name if name.startswith("lm_head.") else f"model.{name}"


def module_name(key: str) -> str:
    """The inverse of `checkpoint_key`: a released name -> ours (names already ours pass through)."""
    return key.removeprefix("model.")


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters (tied ones once) and persistent buffers, by name."""
    tensors = dict(model.named_parameters())
    for module_name, module in model.named_modules():
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer_name not in module._non_persistent_buffers_set:
                tensors[f"{module_name}.{buffer_name}" if module_name else buffer_name] = buffer
    return tensors


def mtp_layer_key(name: str, num_hidden_layers: int) -> str:
    """An MTP layer's name -> its released key: the layer sits at index `num_hidden_layers + i`,
    its decoder block's tensors directly under it (`mtp_layers.0.mtp_block.self_attn...` ->
    `layers.{N}.self_attn...`; `mtp_layers.0.eh_proj...` -> `layers.{N}.eh_proj...`)."""
    match = _MTP.match(name)
    if match is None:
        return checkpoint_key(name)
    layer = num_hidden_layers + int(match["index"])
    return checkpoint_key(f"{match['prefix']}.layers.{layer}.{match['rest']}")


def bindings(model: nn.Module) -> dict[str, Binding]:
    """Checkpoint key -> Binding, in checkpoint order, for every tensor the checkpoint holds."""
    out: dict[str, Binding] = {}
    first_mtp = model.cfg.text.num_hidden_layers
    for name, tensor in model_tensors(model).items():
        match = _EXPERTS.match(name)
        if match is None:
            out[mtp_layer_key(name, first_mtp)] = Binding(name, (), tuple(tensor.shape))
            continue
        prefix = mtp_layer_key(match["prefix"], first_mtp)
        E, rows, cols = tensor.shape
        for e in range(E):
            if match["proj"] == "gate_up_proj":
                F_ = rows // 2
                out[f"{prefix}.{e}.gate_proj.weight"] = Binding(name, (e, slice(0, F_)), (F_, cols))
                out[f"{prefix}.{e}.up_proj.weight"] = Binding(name, (e, slice(F_, rows)), (F_, cols))
            else:
                out[f"{prefix}.{e}.down_proj.weight"] = Binding(name, (e,), (rows, cols))
    return out


def checkpoint_files(directory: str | os.PathLike) -> list[Path]:
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.exists():
        try:
            names = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
            raise ValueError(f"{index} is not a safetensors index with a weight_map of file names: {err!r}") from None
        if not all(isinstance(name, str) and "/" not in name and name not in ("", ".", "..") for name in names):
            raise ValueError(f"{index} names a weight file outside {directory}: {sorted(map(str, names))[:3]}")
        return [directory / name for name in sorted(names)]
    single = directory / SINGLE_FILE
    if single.exists():
        return [single]
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")


def checkpoint_dtype(directory: str | os.PathLike) -> torch.dtype:
    """The dtype of the first floating tensor stored (what `dtype=None` loads as)."""
    for file in checkpoint_files(directory):
        with _open(file) as f:
            for key in f.keys():
                dtype = DTYPES.get(f.get_slice(key).get_dtype())
                if dtype is not None and "e_score_correction_bias" not in key and not is_scale_key(key):
                    return dtype
    return torch.float32


def load_weights(model: nn.Module, directory: str | os.PathLike, *, device: torch.device | str, cfg: VLMConfig) -> None:
    """Materialise a meta-built `model` on `device` and fill every tensor from the checkpoint."""
    model.to_empty(device=device)
    for module in model.modules():  # non-persistent buffers are state, not weights: start at zero
        for name in module._non_persistent_buffers_set:
            if (buffer := getattr(module, name)) is not None:  # None: unset (mtp.py's draft vocabulary)
                buffer.zero_()
    expected = bindings(model)
    tensors = model_tensors(model)
    seen: set[str] = set()
    fp8 = FP8Checkpoint.open(directory, checkpoint_files(directory))  # None unless quantized (fp8.py)
    skipped: list[str] = []
    embed_copies: dict[str, torch.Tensor] = {}
    has_mtp = len(model.language_model.mtp_layers) > 0
    with torch.no_grad():
        for file in checkpoint_files(directory):
            with _open(file) as f, open(file, "rb") as raw:
                offsets = _data_offsets(raw, file)
                for key in f.keys():
                    binding = expected.get(key)
                    if binding is None:
                        if fp8 is not None and fp8.is_scale(key):
                            continue
                        if has_mtp and _MTP_EMBED.match(key) and _is_declared_mtp_layer(key, cfg, file):
                            embed_copies[key] = _read_copy(raw, offsets[key], tensors["language_model.embed_tokens.weight"], key, file)
                            continue
                        if not has_mtp and _is_declared_mtp_layer(key, cfg, file):
                            skipped.append(key)
                            continue
                        raise ValueError(f"unexpected tensor {key!r} in {file} (not part of a {cfg.model_type} model)")
                    shape = tuple(f.get_slice(key).get_shape())
                    if fp8 is not None:
                        shape = fp8.held_shape(key, shape)  # a 0-d per-tensor scale is held as (1,)
                    if shape != binding.shape:
                        raise ValueError(f"tensor {key!r} in {file} has shape {list(shape)}, expected {list(binding.shape)}")
                    target = tensors[binding.name]
                    target = target[binding.index] if binding.index else target
                    read = fp8.read_into if fp8 is not None and fp8.is_quantized(key) else _read_into
                    read(raw, offsets[key], target, key, file)
                    seen.add(key)
    _check_mtp_layers(skipped, directory)
    missing = [key for key in expected if key not in seen]
    if missing:
        where = ", ".join(str(p) for p in checkpoint_files(directory))
        raise ValueError(f"missing tensor {missing[0]!r} ({len(missing)} missing in all) in {where}")
    for key, copy in embed_copies.items():  # the MTP layer reads the main embedding (mtp.py)
        if not torch.equal(copy, tensors["language_model.embed_tokens.weight"]):
            raise ValueError(f"{key!r} in {directory} differs from model.language_model.embed_tokens.weight; this "
                             "loader shares the main embedding with the multi-token-prediction layer, as GLM-4.5 trains it")


def save_weights(model: nn.Module, directory: str | os.PathLike, *, max_shard_bytes: int = 5 * 1024**3,
                 tensors: Mapping[str, torch.Tensor] | None = None) -> list[Path]:
    """Write the released layout; returns the files written. `tensors` (by the model's parameter
    and buffer names) replaces the model's own: a sharded (FSDP2) model's full tensors, gathered
    first; the model still gives the names and shapes.

    Loaders read the index when there is one, else the single file; the new weights become
    the ones read at one atomic step, the commit: the index's rename (shards), or the single
    file's rename or the old index's removal (one file). New shards never overwrite files the
    live index names (a second name set, `-b`, alternates with the plain one), and stale files
    are removed only after the commit.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards = list(_shard(_checkpoint_tensors(model, tensors), max_shard_bytes))
    live = _live_files(directory)
    names = [SINGLE_FILE] if len(shards) == 1 else _shard_names(len(shards), avoid=live)
    written = [atomic_write(directory / name, lambda tmp, shard=shard: save_file(shard, str(tmp), metadata={"format": "pt"}))
               for name, shard in zip(names, shards)]
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for s in shards for t in s.values())},
            "weight_map": {key: name for name, shard in zip(names, shards) for key in shard},
        }
        written.append(atomic_write(directory / INDEX_FILE, lambda tmp: tmp.write_text(json.dumps(index, indent=2) + "\n")))
    else:
        (directory / INDEX_FILE).unlink(missing_ok=True)  # the commit when switching from shards
    for stale in directory.glob("model*.safetensors"):
        if stale.name not in names:
            stale.unlink()
    fsync_dir(directory)
    logger.info("saved %d tensors in %d file(s) to %s", sum(len(s) for s in shards), len(shards), directory)
    return written


def _live_files(directory: Path) -> set[str]:
    """The weight files a loader reads from `directory` now (none when it holds no checkpoint)."""
    try:
        return {file.name for file in checkpoint_files(directory)}
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def _shard_names(count: int, *, avoid: set[str]) -> list[str]:
    plain = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    return [name.replace(".safetensors", "-b.safetensors") for name in plain] if avoid & set(plain) else plain


# ---- helpers --------------------------------------------------------------------------------------


def _checkpoint_tensors(model: nn.Module, tensors: Mapping[str, torch.Tensor] | None = None
                        ) -> Iterator[tuple[str, torch.Tensor]]:
    tensors = model_tensors(model) if tensors is None else tensors
    for key, binding in bindings(model).items():
        if binding.name not in tensors:
            raise KeyError(f"tensors given to save have no {binding.name!r} (checkpoint key {key!r})")
        tensor = tensors[binding.name].detach()
        yield key, (tensor[binding.index] if binding.index else tensor).contiguous()


def _shard(items: Iterator[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
    shard: dict[str, torch.Tensor] = {}
    size = 0
    for key, tensor in items:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_bytes:
            yield shard
            shard, size = {}, 0
        shard[key] = tensor
        size += nbytes
    yield shard


def _open(file: Path):
    if not file.exists():
        raise FileNotFoundError(f"checkpoint file {file} does not exist")
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except Exception as error:  # safetensors raises its own error type for bad headers
        raise ValueError(f"cannot read safetensors file {file}: {error}") from error


def _data_offsets(raw, file: Path) -> dict[str, tuple[torch.dtype | None, int, int]]:
    """key -> (stored dtype, absolute start, end) from the safetensors header (already validated by safe_open)."""
    header_len = int.from_bytes(raw.read(8), "little")
    header = json.loads(raw.read(header_len))
    base = 8 + header_len
    return {key: (DTYPES.get(info["dtype"]), base + info["data_offsets"][0], base + info["data_offsets"][1])
            for key, info in header.items() if key != "__metadata__"}


def _read_into(raw, where: tuple[torch.dtype | None, int, int], target: torch.Tensor, key: str, file: Path) -> None:
    dtype, start, end = where
    if dtype is None:
        raise ValueError(f"tensor {key!r} in {file} has a dtype this loader does not read")
    direct = dtype == target.dtype and target.is_contiguous() and target.device.type == "cpu"
    buffer = target if direct else torch.empty(target.shape, dtype=dtype)
    view = memoryview(buffer.view(-1).view(torch.uint8).numpy())
    if view.nbytes != end - start:
        raise ValueError(f"tensor {key!r} in {file} holds {end - start} bytes, expected {view.nbytes}")
    raw.seek(start)
    if raw.readinto(view) != view.nbytes:
        raise ValueError(f"cannot read tensor {key!r} from {file}: the file is truncated")
    if not direct:
        target.copy_(buffer)


def _read_copy(raw, where, like: torch.Tensor, key: str, file: Path) -> torch.Tensor:
    """A stored tensor read into a new CPU tensor shaped and typed like `like`."""
    copy = torch.empty(like.shape, dtype=like.dtype)
    _read_into(raw, where, copy, key, file)
    return copy


def has_mtp_layers(directory: str | os.PathLike, cfg: VLMConfig) -> bool:
    """Whether the checkpoint stores every MTP layer `config.json` declares (their `eh_proj`).
    transformers drops the layer on load, so a checkpoint it saved declares one and stores none."""
    n = cfg.text.num_nextn_predict_layers
    if n == 0:
        return False
    wanted = {f"model.language_model.layers.{cfg.text.num_hidden_layers + i}.eh_proj.weight" for i in range(n)}
    for file in checkpoint_files(directory):
        with _open(file) as f:
            wanted -= set(f.keys())
    return not wanted


def _check_mtp_layers(skipped: list[str], directory: str | os.PathLike) -> None:
    """Every skipped layer must be a real multi-token-prediction layer (it has the `eh_proj` that
    only those have): else config.json says fewer layers than the checkpoint's network has."""
    layers: dict[str, set[str]] = {}
    for key in skipped:
        prefix, _, rest = key.partition(".layers.")
        index, _, name = rest.partition(".")
        layers.setdefault(f"{prefix}.layers.{index}", set()).add(name)
    for layer, names in layers.items():
        if "eh_proj.weight" not in names:
            raise ValueError(f"{layer} in {directory} sits where config.json declares a multi-token-prediction layer "
                             f"(num_nextn_predict_layers) but has no eh_proj.weight: it is a layer of the network, "
                             f"and config.json's num_hidden_layers is too small")


def _is_declared_mtp_layer(key: str, cfg: VLMConfig, file: Path) -> bool:
    """True for a tensor of a multi-token-prediction layer the config declares (we do not run
    them); a layer past those is an error naming the key: the config and the weights disagree."""
    match = re.match(r"^model\.(?:language_model\.)?layers\.(\d+)\.", key)
    if match is None:
        return False
    layer, first = int(match[1]), cfg.text.num_hidden_layers
    if layer < first:
        return False
    mtp = cfg.text.num_nextn_predict_layers
    if layer < first + mtp:
        return True
    raise ValueError(
        f"tensor {key!r} in {file} belongs to layer {layer}, but config.json declares num_hidden_layers={first} "
        f"and num_nextn_predict_layers={mtp}, so the checkpoint may store layers 0..{first + mtp - 1} only: the "
        f"config describes fewer layers than the checkpoint holds")
