"""`python -m demo [--model PATH] [--adapter DIR] [--host H] [--port P]`: the Gradio chat demo."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description="The Gradio chat demo.")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--adapter", type=Path, default=None, help="a LoRA adapter directory to apply")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    args = parser.parse_args(argv)

    import torch

    from demo.app import EXAMPLES_DIR, build_app
    from vlm import VLM

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        vlm = VLM.from_pretrained(args.model, device=device, adapter=args.adapter)
    except FileNotFoundError as err:  # no checkpoint there (or no default model yet): say so, no traceback
        parser.exit(2, f"{parser.prog}: {err}\n")
    title = f"glmv chat — {args.model.name if args.model else 'default model'}"
    build_app(vlm, title=title).queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, show_error=True, allowed_paths=[str(EXAMPLES_DIR)])


if __name__ == "__main__":
    main()
