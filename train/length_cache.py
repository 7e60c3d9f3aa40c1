"""The validation pass's results, kept next to the dataset so a rerun does not encode it again.

`trainer.Dataset` encodes every conversation once before training (to find unreadable media
and over-long samples, and to group batches by length), then again when it is batched. For the
default model's 14,000 conversations that first pass takes minutes, and a recipe starts the
trainer twice (calibration, then training) plus once per resume. The result of the pass, per
line, a length or the reason the record is bad, is a pure function of:

- the JSONL file's bytes;
- every referenced media file (path, size and modification time);
- the encoder: tokenizer, chat template, image and video settings, `max_length`, `thinking`.

Their hash is stored with the results in `.<data file name>.lengths.json` beside the data;
any change to one of them makes the cache miss, and the pass runs as before. A directory that
cannot be written to only means no cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .collate import Encoder
from .data import Conversation

log = logging.getLogger(__name__)

Result = int | str  # encoded length, or why the record cannot be trained on


def cache_path(data: Path) -> Path:
    return data.with_name(f".{data.name}.lengths.json")


def fingerprint(data: Path, conversations: Sequence[Conversation], encoder: Encoder) -> str | None:
    """Hash of everything the pass depends on; None when the processor cannot be described
    (then nothing is cached)."""
    processor = encoder.processor
    backend = getattr(processor.tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(processor, "image_config"):
        return None
    h = hashlib.sha256()
    root = data.resolve().parent
    try:
        with data.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        for conv in conversations:
            for _, media in conv.media:
                stat = (root / media).stat()
                h.update(f"{media}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    except OSError:  # a file vanished since it was read: no cache, the pass reports it
        return None
    settings = (backend.to_str(), processor.tokenizer.chat_template, repr(processor.image_config),
                repr(getattr(processor, "video_config", None)), encoder.max_length, encoder.thinking)
    h.update(json.dumps(settings, default=str).encode())
    return h.hexdigest()


def load(data: Path, key: str | None) -> dict[int, Result]:
    """Cached results by line number, or {} on a miss."""
    path = cache_path(data)
    if key is None or not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if saved.get("fingerprint") != key:
        return {}
    return {int(line): result for line, result in saved["results"].items()}


def save(data: Path, key: str | None, results: dict[int, Result]) -> None:
    """Atomic write (several processes may write the same content); never fails the run."""
    if key is None:
        return
    path = cache_path(data)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    record: dict[str, Any] = {"fingerprint": key, "results": {str(k): v for k, v in results.items()}}
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    except OSError as e:
        log.info("not caching the validation pass of %s: %s", data, e)
        tmp.unlink(missing_ok=True)
