"""Does a model look at its images? Loss with each conversation's own media vs another's.

    python -m recipes.reliance --model PATH --data DIR/data.jsonl [--n 24] [--kinds grounding,video]

For up to `n` conversations of each kind in a `python -m synth` JSONL, the mean loss of the
assistant tokens (as the trainer counts it) with the conversation's own image or video, and
with the media of the next conversation of the same kind that shows something else in its
place. A model that reads the screen answers much worse about the wrong screenshot; one that
answers from the question's text alone loses the same with either, a gap of ~0 nats. Accuracy cannot tell these apart on
synthetic pages, whose layouts are predictable from the question (`the "Home" link in the
navigation bar` is near the top left); this can, from a few dozen forward passes.

The last line printed is `gap: <nats>` over every kind.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from train.collate import IGNORE, Encoder, pack
from train.data import parse_record
from vlm import VLM
from vlm.processor import Processor

MEDIA = ("image", "video")


@dataclass(frozen=True)
class Reliance:
    kind: str
    n: int
    own: float  # mean assistant-token loss with the conversation's own media (nats)
    swapped: float  # ... with the next same-kind conversation's (different) media

    @property
    def gap(self) -> float:
        return self.swapped - self.own


def _media_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for m in messages if isinstance(m["content"], list) for p in m["content"] if p["type"] in MEDIA]


def conversation_loss(model: Any, encoder: Encoder, messages: list[dict[str, Any]]) -> float:
    """Mean cross-entropy of the assistant tokens, as the trainer scores them."""
    sample = encoder.encode(messages)
    batch = pack([sample], row_length=len(sample))
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(**batch.model_inputs(device)).logits[0].float()
    scored = batch.targets[0] != IGNORE
    return torch.nn.functional.cross_entropy(logits[scored.to(device)], batch.targets[0][scored].to(device)).item()


def measure(model: Any, processor: Any, records: Sequence[dict[str, Any]], *, root: Path, n: int,
            kinds: Sequence[str] | None = None, max_length: int = 8192) -> list[Reliance]:
    """Own-media and swapped-media loss per kind, over the first `n` conversations of each kind
    that carry exactly one image or video (the data engine's shape)."""
    encoder = Encoder(processor, max_length=max_length)
    by_kind: dict[str, list[list[dict[str, Any]]]] = {}
    for record in records:
        kind = record.get("meta", {}).get("kind", "?")
        if kinds is not None and kind not in kinds:
            continue
        messages = parse_record(record, root=root)
        if len(_media_parts(messages)) == 1 and len(by_kind.setdefault(kind, [])) < n:
            by_kind[kind].append(messages)
    results = []
    for kind, conversations in sorted(by_kind.items()):
        own, swapped = [], []
        for i, messages in enumerate(conversations):
            mine = _media_parts(messages)[0]
            later = conversations[i + 1:] + conversations[:i]  # the next one showing something else
            other = next((p for c in later for p in _media_parts(c) if p != mine and p["type"] == mine["type"]), None)
            if other is None:
                continue
            own.append(conversation_loss(model, encoder, messages))
            moved = json.loads(json.dumps(messages))
            _media_parts(moved)[0].update(other)
            swapped.append(conversation_loss(model, encoder, moved))
        if swapped:
            results.append(Reliance(kind, len(swapped), sum(own) / len(own), sum(swapped) / len(swapped)))
    return results


def report(results: Sequence[Reliance]) -> str:
    lines = [f"{r.kind}: n={r.n} own {r.own:.4f} swapped {r.swapped:.4f} gap {r.gap:+.4f} nats" for r in results]
    total = sum(r.n for r in results)
    gap = sum(r.gap * r.n for r in results) / total if total else 0.0
    return "\n".join([*lines, f"gap: {gap:.4f}"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recipes.reliance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--data", required=True, help="a python -m synth data.jsonl (media paths relative to it)")
    parser.add_argument("--n", type=int, default=24, help="conversations per kind")
    parser.add_argument("--kinds", default=None, help="comma-separated kinds (default: every kind in the file)")
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error(f"--n {args.n}: at least 2 conversations per kind are needed to swap media")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = Path(args.data)
    records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    kinds = [k.strip() for k in args.kinds.split(",")] if args.kinds else None
    model = VLM.from_pretrained(args.model).model.eval()
    results = measure(model, Processor.from_pretrained(args.model), records, root=data.parent, n=args.n, kinds=kinds)
    if not results:
        raise SystemExit(f"{data}: no kind has two conversations with different single images or videos")
    print(report(results))


if __name__ == "__main__":
    main()
