"""metrics.jsonl (one JSON object per line, and TensorBoard when installed) for the trainer."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Metrics:
    """metrics.jsonl (one JSON object per line) and TensorBoard when installed. On resume, lines
    after the checkpoint's step (written by the killed run) are dropped so the file shows one
    continuous curve."""

    def __init__(self, path: Path, *, enabled: bool, after_step: int) -> None:
        self.enabled = enabled
        self.file = None
        self.tb = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            kept = [line for line, record in metric_records(path) if record["step"] <= after_step]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
        self.file = path.open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def metric_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) for each line of metrics.jsonl. A last line that does not parse was torn by
    a crash mid-write: it is dropped with a warning. A bad line before it is an error: that is
    not what a crash leaves, and dropping it would lose data."""
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError(f"expected an object with an integer step, got {line[:80]!r}")
        except (ValueError, RecursionError) as err:
            if number == len(lines):
                log.warning("%s: dropping its torn last line %d (%r): %s", path, number, line[:80], err)
                break
            raise ValueError(f"{path} line {number} is not a metrics record ({err}); fix or remove it") from None
        records.append((line, record))
    return records
