"""The synthetic data engine's command line: `python -m synth --out DIR --n N --seed S`.

Options map one to one onto `synth.dataset.SynthConfig`; the output layout is described there.
"""

from __future__ import annotations

import argparse
import logging
import os

from synth.dataset import KINDS, SynthConfig, parse_kinds, parse_languages, synthesize
from synth.vocab import LANGUAGES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory (data.jsonl, images/, videos/)")
    parser.add_argument("--n", type=int, required=True, help="number of samples (conversations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS)}; `kind:3` gives a kind 3 shares of the units")
    parser.add_argument("--viewport", default="both", choices=("desktop", "phone", "both"))
    parser.add_argument("--split", default="train", choices=("train", "heldout"))
    parser.add_argument("--grounding-turns", type=int, default=1,
                        help="grounding questions per conversation (the image is encoded once for all)")
    parser.add_argument("--languages", default=",".join(LANGUAGES),
                        help=f"comma-separated UI languages of the pages, from {','.join(LANGUAGES)}")
    parser.add_argument("--nothink", type=float, default=0.0,
                        help="share of conversations whose user turns end with /nothink (thinking off)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kinds = parse_kinds(args.kinds)
    config = SynthConfig(n=args.n, seed=args.seed, kinds=kinds, viewport=args.viewport, split=args.split,  # type: ignore[arg-type]
                         grounding_turns=args.grounding_turns, languages=parse_languages(args.languages),
                         nothink=args.nothink)
    synthesize(config, args.out, workers=args.workers, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
