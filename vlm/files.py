"""Durable file writes: write beside, fsync, rename.

A rename within one directory is atomic on POSIX, so a reader sees the old file or the new one,
never a half-written one; the fsyncs (of the file before the rename, of the directory after it)
make the new file survive a power loss once the call returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` for a temporary name beside `path`, fsync it and rename it to `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make renames and unlinks in `path` durable."""
    fsync_file(path)
