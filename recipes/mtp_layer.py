"""A multi-token-prediction layer for a trained checkpoint, the network frozen: train, measure, ship.

    python -m recipes.mtp_layer --model assets/model --data TRAIN.jsonl --heldout HELDOUT.jsonl \
        --work runs/mtp --steps 300 [--out assets/model]

1. train: the project trainer with `--mtp-only --mtp-target model` (train/mtp.py): the layer is
   added (started from the last decoder layer and `lm_head`) and learns the main model's own
   distribution for token t+2, which is what speculative decoding accepts; nothing else moves.
   Resumed from the work directory's last checkpoint when the command runs again.
2. measure: greedy decoding of the held-out conversations' first user turns (the checkpoint's
   stop tokens, at most `--new` tokens) with 1..3 drafts per step: acceptance rate, tokens per
   verifying forward, and whether every answer equals plain decoding's.
3. ship (`--out`): checks that the trained checkpoint's network is bitwise the model's, writes
   `config.json` and the weights (atomically) and a "Multi-token prediction" section into the
   model card `README.md` (replacing an earlier one); `work/mtp.json` keeps the record.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vlm.generation import DraftStats, GenerationOptions, TokenStream

log = logging.getLogger(__name__)
SECTION = "## Multi-token prediction"


@dataclass
class Measure:
    """One decoding mode over a set of prompts."""

    draft_tokens: int
    tok_s: float = 0.0  # decoded tokens / decode seconds (prefill excluded)
    acceptance_rate: float = 0.0
    tokens_per_step: float = 0.0  # tokens committed per verifying forward
    identical: bool = True  # every answer equals plain decoding's (set by `compare`)
    outputs: list[list[int]] = field(default_factory=list, repr=False)


def decode_pass(model, prompts: list[dict], k: int, *, new: int, stop_ids: tuple[int, ...]) -> Measure:
    """Greedy batch-1 decoding of every prompt with `k` drafts per step (0: plain)."""
    measure, stats, tokens, seconds = Measure(k), DraftStats(), 0, 0.0
    for inputs in prompts:
        sampler = GenerationOptions().sampler(batch=1, vocab_size=model.cfg.text.vocab_size, device="cpu")
        stream = TokenStream(model, dict(inputs), max_new_tokens=new, sampler=sampler, stop_token_ids=stop_ids,
                             draft_tokens=k)
        measure.outputs.append([ids[0] for ids in stream])
        tokens, seconds = tokens + stream.decode_steps, seconds + stream.decode_s
        for name in ("drafted", "accepted", "verify_steps", "committed"):
            setattr(stats, name, getattr(stats, name) + getattr(stream.draft_stats, name))
    measure.tok_s = tokens / max(seconds, 1e-9)
    measure.acceptance_rate, measure.tokens_per_step = stats.acceptance_rate, stats.tokens_per_step
    return measure


def compare(model, prompts: list[dict], drafts: list[int], *, new: int, stop_ids: tuple[int, ...],
            repeats: int = 1) -> list[Measure]:
    """Plain decoding and each draft count; the best tok/s of `repeats` interleaved passes."""
    best: dict[int, Measure] = {}
    for _ in range(repeats):
        for k in [0, *drafts]:
            m = decode_pass(model, prompts, k, new=new, stop_ids=stop_ids)
            if k not in best or m.tok_s > best[k].tok_s:
                best[k] = m
    for k in drafts:
        best[k].identical = best[k].outputs == best[0].outputs
    return [best[k] for k in [0, *drafts]]


def conversation_prompts(vlm, path: Path, n: int) -> list[dict]:
    """Model inputs for the first user turn of the first `n` conversations of a JSONL file
    (media paths relative to the file, as the trainer reads them)."""
    from vlm import engine

    prompts = []
    for line in Path(path).read_text(encoding="utf-8").splitlines()[:n]:
        first = next(m for m in json.loads(line)["messages"] if m["role"] == "user")
        content = first["content"]
        if isinstance(content, list):
            content = [_absolute(part, Path(path).parent) for part in content]
        chat = engine.Chat.of([{"role": "user", "content": content}], images=None, videos=None, system=None,
                              thinking=None, stop=None, stream=False)
        prompts.append(engine.prepare(vlm.model, vlm.processor, chat, max_new_tokens=1).inputs)
    return prompts


def _absolute(part: dict, base: Path) -> dict:
    kind = part.get("type")
    if kind in ("image", "video") and isinstance(part.get(kind), str) and not Path(part[kind]).is_absolute():
        return {**part, kind: str(base / part[kind])}
    return part


def train(model: Path, data: Path, work: Path, *, steps: int, lr: float, batch_size: int, max_length: int) -> Path:
    from train.config import TrainConfig
    from train.trainer import Trainer

    output = work / "train"
    if (output / "config.json").is_file():  # the finished run's product
        return output
    cfg = TrainConfig(mode="sft", model=str(model), data=str(data), output=str(output), max_steps=steps, lr=lr,
                      warmup_steps=min(20, steps), batch_size=batch_size, max_length=max_length, mtp_only=True,
                      mtp_target="model", save_every=50, log_every=5, progress=False,
                      resume=(output / "checkpoints").is_dir())
    Trainer(cfg).train()
    return output


def check_frozen(trained, original) -> None:
    """The trained checkpoint's network (everything but the MTP layer) is bitwise the original."""
    theirs = original.model.state_dict()
    for name, value in trained.model.state_dict().items():
        if ".mtp_layers." in name:
            continue
        if name not in theirs or not torch.equal(value, theirs[name]):
            raise ValueError(f"{name} differs from the original model: the network was not frozen")


def card_section(record: dict) -> str:
    rows = "\n".join(f"| {m['draft_tokens']} | {m['acceptance_rate']:.1%} | {m['tokens_per_step']:.2f} | "
                     f"{'yes' if m['identical'] else 'NO'} |" for m in record["measures"][1:])
    t = record["train"]
    return f"""{SECTION}

One MTP layer (`num_nextn_predict_layers: 1`; tensors `model.language_model.layers.{record['layer']}.*`:
`enorm`, `hnorm`, `eh_proj`, a decoder block, `shared_head`) drafts tokens for speculative decoding
(`VLM.generate` uses it unless `draft_tokens=0`). It was trained afterwards on the frozen network
(bitwise unchanged): `python -m recipes.mtp_layer` ({t['steps']} steps of {t['batch_size']} conversations
from `{t['data']}`{record.get('data_note', '')}, AdamW lr {t['lr']}, self-distilled: it learns the main
model's distribution for token t+2; about {t['minutes']:.0f} min on this CPU; final MTP loss
{t['final_mtp_loss']:.3f}, a cross-entropy against the main model's distribution, its entropy included).

Greedy acceptance on {record['n_prompts']} held-out prompts (`{record['heldout']}`, first user turn, at most
{record['new']} new tokens):

| drafts per step | acceptance | tokens per verifying forward | answers identical to plain decoding |
|---|---|---|---|
{rows}

Decode speed with and without it: the README's benchmark table (`python -m benchmarks.generate --mtp`).
"""


def ship(trained_dir: Path, out: Path, section: str) -> None:
    from vlm import VLM
    from vlm.files import atomic_write
    from vlm.weights import save_weights

    trained = VLM.from_pretrained(trained_dir)
    original = VLM.from_pretrained(out, mtp=False)
    check_frozen(trained, original)
    trained.config.save(out)
    save_weights(trained.model, out)
    card = out / "README.md"
    text = card.read_text(encoding="utf-8") if card.exists() else ""
    text = text.split(f"\n{SECTION}\n")[0].rstrip() + "\n\n" + section
    atomic_write(card, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def training_summary(output: Path, cfg: dict) -> dict:
    """Steps, data, lr and an estimate of the training time from `metrics.jsonl` (each logged step's
    tokens/s over the tokens since the previous record)."""
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "tokens_per_s" in r]
    seconds, before = 0.0, 0
    for r in steps:
        seconds += (r["tokens"] - before) / max(r["tokens_per_s"], 1e-9)
        before = r["tokens"]
    return {"steps": steps[-1]["step"], "batch_size": cfg["batch_size"], "lr": cfg["lr"], "data": cfg["data"],
            "minutes": seconds / 60, "final_mtp_loss": [r for r in steps if "mtp_loss" in r][-1]["mtp_loss"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("assets/model"), help="the trained checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="training conversations (JSONL, the data engine's)")
    parser.add_argument("--heldout", type=Path, required=True, help="held-out conversations for the acceptance rate")
    parser.add_argument("--work", type=Path, default=Path("runs/mtp"), help="training run and record")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=3072)
    parser.add_argument("--n-prompts", type=int, default=40, help="held-out prompts measured")
    parser.add_argument("--new", type=int, default=128, help="max new tokens per answer")
    parser.add_argument("--out", type=Path, help="write the layer and the card section into this checkpoint")
    parser.add_argument("--data-note", default="", help="where the training data came from, for the card")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from vlm import VLM

    trained_dir = train(args.model, args.data, args.work, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                        max_length=args.max_length)
    vlm = VLM.from_pretrained(trained_dir)
    prompts = conversation_prompts(vlm, args.heldout, args.n_prompts)
    measures = compare(vlm.model, prompts, [1, 2, 3], new=args.new, stop_ids=vlm.stop_token_ids())
    cfg = json.loads((trained_dir / "train_config.json").read_text())
    record = {"layer": vlm.config.text.num_hidden_layers, "data_note": f" ({args.data_note})" if args.data_note else "", "n_prompts": len(prompts), "heldout": str(args.heldout),
              "new": args.new, "train": training_summary(trained_dir, cfg),
              "measures": [{k: v for k, v in asdict(m).items() if k != "outputs"} for m in measures]}
    (args.work / "mtp.json").write_text(json.dumps(record, indent=2) + "\n")
    for m in record["measures"]:
        log.info("draft_tokens %d: acceptance %.1f%%, %.2f tokens per forward, identical %s, %.1f tok/s",
                 m["draft_tokens"], 100 * m["acceptance_rate"], m["tokens_per_step"], m["identical"], m["tok_s"])
    if args.out is not None:
        ship(trained_dir, args.out, card_section(record))
        log.info("wrote the MTP layer and the card section into %s", args.out)


if __name__ == "__main__":
    main()
