"""`python -m demo [--model PATH] [--adapter DIR] [--host H] [--port P]`: the Gradio chat demo."""

from __future__ import annotations

import argparse

from demo.cli import add_model_arguments, load_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description="The Gradio chat demo.")
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)

    from demo.app import EXAMPLES_DIR, build_app

    vlm = load_model(parser, args)
    title = f"glmv chat — {args.model.name if args.model else 'default model'}"
    build_app(vlm, title=title).queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, show_error=True, allowed_paths=[str(EXAMPLES_DIR)])


if __name__ == "__main__":
    main()
