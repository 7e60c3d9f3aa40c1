"""A checkpoint as a few files, for a transfer that limits their number and size, and back.

A machine lent for a GPU run hands back only a few files of limited size (8 of at most 16 MiB
where this recipe's GPU run is made), and a checkpoint directory is 14 or more: weights,
config, index, tokenizer, chat template, three processor settings, generation config and card.
`pack` writes the weight files as they are (shards, with `--max-shard-mb`), all the small files
in one `checkpoint.tar`, and the run's record `eval.json` beside them; `unpack` rebuilds the
checkpoint directory from such a folder and returns the record. No compression: the weights,
the bulk, do not compress, and a plain tar is read by every tool.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

from vlm.files import atomic_write
from vlm.weights import INDEX_FILE, SINGLE_FILE, checkpoint_files

ARCHIVE = "checkpoint.tar"
RECORD = "eval.json"


def pack(checkpoint: Path, dest: Path, *, record: dict[str, Any], max_file_bytes: int | None = None) -> list[Path]:
    """Write `checkpoint`'s weight files, `checkpoint.tar` (its other files) and `record` as
    `eval.json` into `dest`; returns the files written. Raises if one exceeds `max_file_bytes`."""
    weights = checkpoint_files(checkpoint)
    others = sorted(f for f in checkpoint.iterdir()
                    if f.is_file() and not f.name.startswith(".") and f not in weights)
    dest.mkdir(parents=True, exist_ok=True)
    written = [atomic_write(dest / f.name, lambda tmp, f=f: shutil.copyfile(f, tmp)) for f in weights]

    def write_archive(tmp: Path) -> None:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for f in others:
                tar.add(f, arcname=f.name)

    written.append(atomic_write(dest / ARCHIVE, write_archive))
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    written.append(atomic_write(dest / RECORD, lambda tmp: tmp.write_text(text, encoding="utf-8")))
    too_big = [f"{f.name} ({f.stat().st_size:,} bytes)" for f in written
               if max_file_bytes is not None and f.stat().st_size > max_file_bytes]
    if too_big:
        raise ValueError(f"packed files over {max_file_bytes:,} bytes in {dest}: {', '.join(too_big)}")
    return written


def unpack(source: Path, checkpoint: Path) -> dict[str, Any]:
    """Rebuild the checkpoint directory a `pack` folder holds into `checkpoint` (which may be
    `source` itself); returns its record (`eval.json`)."""
    archive, record = source / ARCHIVE, source / RECORD
    for needed in (archive, record):
        if not needed.is_file():
            raise FileNotFoundError(f"{source} is not a packed checkpoint: it has no {needed.name}")
    checkpoint.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(checkpoint, filter="data")  # "data": no paths outside `checkpoint`, no links out
    if INDEX_FILE not in names:  # one weight file: an index left from earlier shards would shadow it
        (checkpoint / INDEX_FILE).unlink(missing_ok=True)
    weights = [f.name for f in checkpoint_files(checkpoint)] if INDEX_FILE in names else [SINGLE_FILE]
    missing = [name for name in weights if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{source}: weight files {missing} named by its checkpoint are missing")
    for name in weights:
        if (source / name).resolve() != (checkpoint / name).resolve():
            atomic_write(checkpoint / name, lambda tmp, name=name: shutil.copyfile(source / name, tmp))
    return json.loads(record.read_text(encoding="utf-8"))
