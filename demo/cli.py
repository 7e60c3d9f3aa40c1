"""What `python -m demo` and `python -m demo.serve` share: the model options and loading them."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--adapter", type=Path, default=None, help="a LoRA adapter directory to apply")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def load_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The `VLM` the options name; a missing checkpoint ends the program with its message, no traceback."""
    import torch

    from vlm import VLM

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return VLM.from_pretrained(args.model, device=device, adapter=args.adapter)
    except FileNotFoundError as err:  # no checkpoint there (or no default model yet)
        parser.exit(2, f"{parser.prog}: {err}\n")
