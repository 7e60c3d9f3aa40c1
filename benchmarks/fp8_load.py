"""Peak memory of loading a block-FP8 checkpoint, against the loaded model's own size.

    .venv/bin/python -m benchmarks.fp8_load [--json out.json]

The checkpoint is benchmarks/generate.py's (random weights written by transformers, float32,
~70M parameters), quantized by `python -m vlm.quantize --fp8`. Each load runs in a fresh
process; the peak resident memory (VmHWM) is reset after the imports (Linux `clear_refs`), so
what is reported is the load's own cost: peak minus the resident memory before it. A loader that
held the checkpoint and the model at once would show ~1.5x the model (float32 from FP8) or 2x
(same dtype); ours dequantizes 128 rows at a time into the model's tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.generate import ROOT, write_checkpoint

_LOAD_SCRIPT = """
import re, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from vlm import VLM
import safetensors.torch
from vlm.config import tiny
from vlm.model import VisionLanguageModel
with torch.device("meta"):  # one-time library set-up, the same for any checkpoint
    VisionLanguageModel(tiny())
def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
vlm = VLM.from_pretrained({path!r}, dtype=getattr(torch, {dtype!r}), fp8={fp8!r})
tensors = [*vlm.model.parameters(), *vlm.model.buffers()]
print(before, status("VmHWM"), sum(t.numel() * t.element_size() for t in tensors))
"""

CASES = (  # (name, checkpoint, dtype, fp8 mode)
    ("float32 checkpoint -> float32", "source", "float32", "dequantize"),
    ("FP8 checkpoint -> float32", "fp8", "float32", "dequantize"),
    ("FP8 checkpoint -> bfloat16", "fp8", "bfloat16", "dequantize"),
    ("FP8 checkpoint, e4m3 kept (CPU)", "fp8", "bfloat16", "keep"),
)


def load_peak(path: Path, *, dtype: str, fp8: str) -> dict[str, float]:
    """Peak RSS of the load above the RSS before it, and the loaded model's bytes, in MB (fresh process)."""
    script = _LOAD_SCRIPT.format(root=str(ROOT), path=str(path), dtype=dtype, fp8=fp8)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    before_kb, peak_kb, model_bytes = map(int, out.stdout.split()[-3:])
    return {"load_peak_mb": (peak_kb - before_kb) / 1024, "model_mb": model_bytes / 1024**2}


def run() -> list[dict]:
    from vlm.quantize import quantize_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        paths = {"source": Path(tmp) / "source", "fp8": Path(tmp) / "fp8"}
        write_checkpoint(paths["source"])
        quantize_checkpoint(paths["source"], paths["fp8"])
        rows = []
        for name, checkpoint, dtype, fp8 in CASES:
            size = sum(f.stat().st_size for f in paths[checkpoint].glob("*.safetensors")) / 1024**2
            rows.append({"case": name, "checkpoint_mb": size, **load_peak(paths[checkpoint], dtype=dtype, fp8=fp8)})
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fp8_load", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows here (atomically)")
    args = parser.parse_args()
    rows = run()
    print("| load | checkpoint MB | model MB | peak above imports MB | peak / model |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['checkpoint_mb']:.0f} | {r['model_mb']:.0f} | {r['load_peak_mb']:.0f} | "
              f"{r['load_peak_mb'] / r['model_mb']:.2f} |")
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
