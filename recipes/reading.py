"""Stage 1 of the default model: its vision encoder learns to read, told what every patch shows.

    python -m recipes.reading --out runs/reading/encoder.safetensors [--minutes 8] [--align-to MODEL_DIR]

A ViT trained from scratch with one label per picture stays at chance on "which of 8 words"
once the word may sit at any pixel offset: it has to learn every glyph at every sub-patch
offset, and one label per picture says almost nothing about that. A label per patch does
(../shared/studies/reading.md): here every 14-px patch is told the characters centred in it
(up to `slots`, left to right, or NONE), on `synth.text` pictures drawn at UI sizes and resized
as screenshots are. Heads used only in this stage:

- a patch head on each patch's features (after `post_layernorm`), so the blocks learn glyphs;
- a token head on each merged, language-model-facing token, predicting its 2x2 patches'
  labels, so the downsample and projector carry what the patches read to the language model;
- a position head on each merged token, regressing where the token sits in the picture (x, y
  from 0 to 1): the labels above are shift-invariant and train position out of the tokens,
  but grounding answers with coordinates, so the tokens must keep saying where they are
  (`place="dims"`: no head, the token's first two coordinates hold it);
- a norm for every merged token (`token_norm`): the language model reads its image tokens
  through RMSNorm, so a place code of fixed size inside tokens of very different sizes arrives
  as noise. This was the lever for boxing: `python -m recipes.looking locate` from a random
  language model learns nothing in 200 steps from tokens of norm 25 +- 18, and 0.29 nats / 44%
  from tokens of norm 4.5 +- 0.9 (the ideal reader: 0.10 nats);
- with `train(..., align=Alignment.of(start))` (`--align-to DIR`), an alignment to the language
  model the encoder will sit under (`recipes.alignment`): each merged token that shows text
  scores every row of that model's input embeddings by cosine and is told which of its tokens
  it shows; with `ideal_weight` (`--ideal-weight`) also pulled toward the ideal reader's token
  (`ideal_tokens`: the code `recipes.looking --oracle-words embeddings` gives, 3 x the unit
  embedding of the first token of every word it shows, its place, a constant), reported as
  `ideal_cosine`. 20 minutes of it at weight 1, from a 75-minute reader, left that cosine at
  0.27-0.28 (aligned 0.52 -> 0.54); it is off by default.

Loss: cross-entropy over all slots, NONE weighted `none_weight` (most slots are empty), plus
`position_weight` times the position's mean squared error, plus `token_norm_weight` times the
mean of (|token| / `token_norm` - 1)^2, plus `centre_weight` times the share
of the tokens' energy in their mean (the part every token shares, `shared_share`): tokens that
differ by a small part of one large shared vector are tokens a language model trained from
scratch does not learn to tell apart (`python -m recipes.looking`), plus `align_weight` times
the alignment's cross-entropy. Held-out position is reported as R^2 (1: the tokens say exactly
where they are; 0: no better than the picture's centre), the alignment as the share of
text-showing tokens whose nearest embedding is one of their own tokens.
`--init mimetic` starts attention local (Trockman & Kolter 2023, arXiv 2305.09828) without
changing the architecture. The encoder's weights (our module names, `VisionEncoder`'s
state dict) are written with safetensors; `recipes.default_model` starts its vision tower from
them and `recipes.learnability --encoder` measures what they transfer.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from recipes import mimetic
from recipes.alignment import Alignment, align_accuracy, align_baseline, align_loss
from recipes.reading_data import Batch, Batches, make_batch, size_tests
from recipes.recipe import model_config
from synth import text
from vlm.config import VisionConfig
from vlm.vision import VisionEncoder, token_positions
from vlm.vlm import VLM, init_weights

log = logging.getLogger(__name__)
Init = Literal["default", "mimetic"]


@dataclass(frozen=True, kw_only=True)
class ReadingConfig:
    """The stage's settings; the defaults are the ones the shipped recipe uses."""

    seed: int = 0
    init: Init = "mimetic"
    size: tuple[int, int] = (224, 112)  # picture width x height in input pixels: 16 x 8 patches
    # input pixels per page pixel (1280x720 at the recipe's 728x420 is 0.57, a phone screen ~1.0)
    scale: tuple[float, float] = (0.5, 1.0)
    # page font sizes, body text to headings: text reaches the encoder 5.5-36 px high (a
    # 5.5-22 px range did not carry over to 27 px words in `recipes.learnability word`)
    font_px: tuple[int, int] = (11, 36)
    # curriculum: the first `large_steps` batches draw LARGE text (page 18-30 px at scale 1), the
    # study's setting, where glyphs are learned fastest; then the whole range above. Measured from
    # scratch with every loss on (2 CPU cores): without it held-out character accuracy was 0.038 at
    # step 1500 and 0.052 after 25 min; with 1000 large steps (and align_weight 0.3, so two changes
    # at once) 0.158 after 14 min (1267 steps)
    large_steps: int = 1000
    # the first share of the budget (of the steps or the minutes, whichever ends the run) trains
    # the character heads alone; the position, centre and alignment losses join after. Measured
    # (2 CPU cores, 32 min, the first 2200 of 3308 steps alone): characters 0.60 per patch, aligned
    # 0.30 (baseline 0.04), position R^2 0.96/0.94, shared 0.016; with every loss from step 1 and
    # no large-text curriculum, 0.05 after 25 min (aligned at its baseline)
    glyph_share: float = 2 / 3
    slots: int = 3  # characters per patch
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 20
    none_weight: float = 0.25
    token_weight: float = 0.5  # the merged-token head's share of the loss
    # where each merged token sits (x, y in 0..1 of the picture), regressed from it: reading
    # alone trains position out of the tokens (held-out R^2 0.10 / -0.03 after 20 min), and a
    # language model cannot box what its tokens do not locate
    position_weight: float = 10.0
    # where the position lives: "head", any direction a learned linear head reads; "dims", the
    # merged token's first two coordinates themselves, PLACE_SCALE * (x - 0.5) and (y - 0.5), as
    # `recipes.looking`'s ideal reader has it. With `token_norm` it is what lets a language model
    # box a word (`recipes.looking locate`, 200 steps from a random language model: dims + norm 4
    # gap 0.29 nats, 44% (seed 1: 0.18, 31%); head + norm 4 0.000, 6%; dims alone 0.000, 12%)
    place: Literal["head", "dims"] = "dims"
    # the share of the tokens' energy that every token shares (the batch's mean token; 0.68 after
    # reading alone): a language model from scratch does not learn to pick out tokens that differ
    # by a small part of a large shared vector (`python -m recipes.looking side`: chance after 400 steps; learned in 80 once
    # the shared part is removed), so the stage trains it away
    centre_weight: float = 1.0
    # the norm every merged token is told to have (0: not trained): reading alone leaves them at
    # 25-43 with a spread of 18-116 (text embeddings: 0.3), so after the language model's RMSNorm a
    # place code of fixed size is drowned by the content's varying size; the ideal reader's tokens
    # are ~3.3 each. `token_norm_weight` times the mean of (|token| / token_norm - 1)^2
    token_norm: float = 4.0
    token_norm_weight: float = 1.0
    # with `train(..., align=...)`: the alignment's cross-entropy (`recipes.alignment`), logits
    # cosine / `align_temperature`
    align_weight: float = 1.0
    align_temperature: float = 0.1
    # with `align`: weight of the distance from each merged token to the ideal reader's token
    # (`ideal_tokens`: what `recipes.looking --oracle-words embeddings` gives), over its squared size
    ideal_weight: float = 0.0
    n_test: int = 128


PLACE_SCALE = 3.0  # place="dims": a token's x - 0.5 and y - 0.5 in its first two coordinates, times this
WORD_CODE = 3.0  # the ideal reader's size of a word's code (a unit embedding) in each token it covers


def ideal_tokens(words_TK: torch.Tensor, unit_embeddings: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """(T, out) the ideal reader's tokens (`recipes.looking`'s `WordOracle`): WORD_CODE times the
    unit input embedding of the first token of every word a token shows, its place in the first
    two coordinates (PLACE_SCALE * (x - 0.5), (y - 0.5)) and 1 in the third."""
    shown = (words_TK >= 0).unsqueeze(-1).to(unit_embeddings.dtype)
    target = WORD_CODE * (unit_embeddings[words_TK.clamp_min(0)] * shown).sum(1)
    place = token_positions(grid_thw).to(target.device)
    return target + F.pad(torch.cat([PLACE_SCALE * (place - 0.5), torch.ones_like(place[:, :1])], 1),
                          (0, target.shape[1] - 3))


class Reader(nn.Module):
    """The encoder and the reading heads; `embeddings` (vocab, out_hidden_size), a language
    model's input embeddings, frozen: what the alignment scores merged tokens against; `place`
    as `ReadingConfig.place`."""

    def __init__(self, encoder: VisionEncoder, slots: int, embeddings: torch.Tensor | None = None,
                 place: Literal["head", "dims"] = "dims") -> None:
        super().__init__()
        if place not in ("head", "dims"):
            raise ValueError(f"place={place!r}: expected 'head' or 'dims'")
        self.encoder = encoder
        self.slots = slots
        if embeddings is not None and embeddings.shape[1] != encoder.cfg.out_hidden_size:
            raise ValueError(f"embeddings of width {embeddings.shape[1]}: expected the encoder's "
                             f"out_hidden_size {encoder.cfg.out_hidden_size}")
        self.register_buffer("embeddings", None if embeddings is None else F.normalize(embeddings.float(), dim=-1),
                             persistent=False)
        vc = encoder.cfg
        merge = vc.spatial_merge_size ** 2
        self.patch_head = nn.Linear(vc.hidden_size, slots * text.CLASSES)
        self.token_head = nn.Linear(vc.out_hidden_size, merge * slots * text.CLASSES)
        self.position_head = nn.Linear(vc.out_hidden_size, 2) if place == "head" else None
        for head in filter(None, (self.patch_head, self.token_head, self.position_head)):
            nn.init.normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        self._features: torch.Tensor | None = None
        encoder.post_layernorm.register_forward_hook(self._keep_features)

    def _keep_features(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._features = output

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> Reading:
        tokens = self.encoder(pixel_values, grid_thw)  # (N / 4, out)
        features, self._features = self._features, None
        C = text.CLASSES
        return Reading(self.patch_head(features).view(-1, self.slots, C),
                       self.token_head(tokens).view(-1, self.slots, C),  # 4 patches per token, in block order
                       self.position(tokens), shared_share(tokens), tokens.float().norm(dim=-1),
                       None if self.embeddings is None else F.normalize(tokens.float(), dim=-1) @ self.embeddings.T,
                       tokens)

    def position(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.position_head is None:  # place="dims"
            return tokens[:, :2] / PLACE_SCALE + 0.5
        return self.position_head(tokens)


@dataclass(frozen=True)
class Reading:
    patch: torch.Tensor  # (N, slots, C) logits per patch
    token: torch.Tensor  # (N, slots, C) logits per patch, from its merged token
    position: torch.Tensor  # (N / 4, 2) each merged token's (x, y), 0..1
    shared: torch.Tensor  # () the share of the tokens' energy in their mean
    norms: torch.Tensor  # (N / 4,) each merged token's norm
    cosine: torch.Tensor | None = None  # (N / 4, vocab) each merged token against each embedding
    tokens: torch.Tensor | None = None  # (N / 4, out) the merged tokens themselves


def shared_share(tokens: torch.Tensor) -> torch.Tensor:
    """|mean token|^2 / mean |token|^2: 1 when every token is the same vector, 0 when they are centred."""
    tokens = tokens.float()
    return tokens.mean(0).pow(2).sum() / tokens.pow(2).sum(-1).mean().clamp_min(1e-12)


def position_r2(predicted: torch.Tensor, grid_thw: torch.Tensor) -> tuple[float, float]:
    """Held-out R^2 of (x, y): 1 is exact, 0 no better than always the mean."""
    truth = token_positions(grid_thw).to(predicted.device)
    residual = ((predicted.float() - truth) ** 2).sum(0)
    spread = ((truth - truth.mean(0)) ** 2).sum(0)
    r2 = 1 - residual / spread
    return round(r2[0].item(), 4), round(r2[1].item(), 4)


def loss_fn(logits: torch.Tensor, labels_NS: torch.Tensor, none_weight: float) -> torch.Tensor:
    weight = torch.ones(text.CLASSES, device=logits.device)
    weight[text.NONE] = none_weight
    return F.cross_entropy(logits.reshape(-1, text.CLASSES).float(), labels_NS.reshape(-1), weight=weight)


def char_accuracy(logits: torch.Tensor, labels_NS: torch.Tensor) -> float:
    """Of the slots that hold a character, the share predicted exactly."""
    has_char = labels_NS != text.NONE
    return (logits.argmax(-1)[has_char] == labels_NS[has_char]).float().mean().item()


def new_encoder(vision: VisionConfig, *, init: Init, seed: int) -> VisionEncoder:
    if init not in ("default", "mimetic"):
        raise ValueError(f"init {init!r}: expected 'default' or 'mimetic'")
    torch.manual_seed(seed)
    encoder = VisionEncoder(vision)
    init_weights(encoder)
    if init == "mimetic":
        mimetic.vision(encoder, seed=seed)
    return encoder


@dataclass(frozen=True)
class Scores:
    patch: float  # held-out character accuracy of the patch head
    token: float  # ... of the token head
    position_r2: tuple[float, float]  # (x, y)
    shared: float  # the share of the tokens' energy in their mean
    align: float | None = None  # text-showing tokens nearest one of their language-model tokens
    norm: tuple[float, float] = (0.0, 0.0)  # the merged tokens' norm: mean, standard deviation
    ideal: float | None = None  # text-showing tokens' mean cosine with the ideal reader's (`ideal_tokens`)


def evaluate(reader: Reader, test: Batch) -> Scores:
    reader.eval()
    with torch.no_grad():
        out = reader(test.pixel_values, test.grid_thw)
    reader.train()
    aligned = None if out.cosine is None or test.pieces_TK is None else round(align_accuracy(out.cosine, test.pieces_TK), 4)
    ideal = None
    if reader.embeddings is not None and test.words_TK is not None:
        shows = test.words_TK[:, 0] >= 0
        target = ideal_tokens(test.words_TK, reader.embeddings, test.grid_thw)
        ideal = round(F.cosine_similarity(out.tokens.float()[shows], target[shows], dim=-1).mean().item(), 4)
    return Scores(char_accuracy(out.patch, test.labels_NS), char_accuracy(out.token, test.labels_NS),
                  position_r2(out.position, test.grid_thw), round(out.shared.item(), 4), aligned,
                  (round(out.norms.mean().item(), 3), round(out.norms.std().item(), 3)), ideal)


def glyph_phase(share: float, done_steps: int, steps: int | None, elapsed: float, minutes: float | None) -> bool:
    """Is the run still in its first `share` (characters alone), by steps or by time, whichever
    budget it has used more of?"""
    used = max(done_steps / steps if steps else 0.0, elapsed / (60 * minutes) if minutes else 0.0)
    return used < share


def train(vision: VisionConfig, cfg: ReadingConfig, *, steps: int | None = None, minutes: float | None = None,
          device: str = "cpu", workers: int = 0, every: int = 100, start_from: Path | None = None,
          align: Alignment | None = None,
          log_line: Callable[[str], object] = log.info) -> tuple[VisionEncoder, dict[str, float]]:
    """Train for `steps` optimiser steps or `minutes` of wall time, whichever ends first;
    `start_from`: an earlier stage's encoder weights (`save_module`) instead of `cfg.init`'s;
    `align`: the language model whose embeddings the tokens align to (`cfg.align_weight`).

    Returns the encoder (on CPU) and the final held-out numbers.
    """
    if steps is None and minutes is None:
        raise ValueError("give steps or minutes")
    encoder = new_encoder(vision, init=cfg.init, seed=cfg.seed)
    if start_from is not None:
        load_module(encoder, start_from)
    aligning = align is not None and cfg.align_weight > 0
    tokenizer = align.tokenizer if aligning else None
    reader = Reader(encoder, cfg.slots, align.embeddings if aligning else None, place=cfg.place).to(device)
    test = make_batch(random.Random(f"reading/test/{cfg.seed}"), cfg.n_test, cfg, tokenizer=tokenizer).to(device)
    baseline = None if test.pieces_TK is None else round(align_baseline(test.pieces_TK.cpu()), 4)
    by_size = {name: batch.to(device) for name, batch in size_tests(cfg).items()}
    optimizer = torch.optim.AdamW(reader.parameters(), lr=cfg.lr, weight_decay=0.01, fused=True)
    loader = torch.utils.data.DataLoader(Batches(cfg, tokenizer), batch_size=None, num_workers=workers,
                                         persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    start, step = time.monotonic(), 0
    for step, batch in enumerate(loader, start=1):
        batch = batch.to(device)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, step / cfg.warmup)
        with autocast:
            out = reader(batch.pixel_values, batch.grid_thw)
        loss = (loss_fn(out.patch, batch.labels_NS, cfg.none_weight)
                + cfg.token_weight * loss_fn(out.token, batch.labels_NS, cfg.none_weight))
        if not glyph_phase(cfg.glyph_share, step - 1, steps, time.monotonic() - start, minutes):
            loss = (loss + cfg.position_weight * F.mse_loss(out.position.float(), token_positions(batch.grid_thw))
                    + cfg.centre_weight * out.shared)
            if cfg.token_norm > 0:
                loss = loss + cfg.token_norm_weight * (out.norms / cfg.token_norm - 1).pow(2).mean()
            if aligning:
                loss = loss + cfg.align_weight * align_loss(out.cosine, batch.pieces_TK, cfg.align_temperature)
            if aligning and cfg.ideal_weight > 0:
                target = ideal_tokens(batch.words_TK, reader.embeddings, batch.grid_thw)
                miss = (out.tokens.float() - target).pow(2).sum(-1) / target.pow(2).sum(-1)
                loss = loss + cfg.ideal_weight * miss.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reader.parameters(), 1.0)
        optimizer.step()
        elapsed = time.monotonic() - start
        done = (steps is not None and step >= steps) or (minutes is not None and elapsed >= 60 * minutes)
        if step % every == 0 and not done:
            sizes = ", ".join(f"{name} {evaluate(reader, batch).patch:.3f}" for name, batch in by_size.items())
            s = evaluate(reader, test)
            log_line(f"step {step} ({elapsed:.0f} s): loss {loss.item():.3f}, held-out char accuracy patch "
                     f"{s.patch:.3f} token {s.token:.3f}, position R^2 x {s.position_r2[0]:.3f} y "
                     f"{s.position_r2[1]:.3f}, shared {s.shared:.3f}, norm {s.norm[0]:.2f}+-{s.norm[1]:.2f}, aligned {s.align} (baseline {baseline}), ideal {s.ideal}; "
                     f"patch by text height: {sizes}")
        if done:
            break
    s = evaluate(reader, test)
    result = {"steps": step, "seconds": round(time.monotonic() - start, 1), "patch_char_accuracy": round(s.patch, 4),
              "token_char_accuracy": round(s.token, 4), "position_r2_x": s.position_r2[0],
              "position_r2_y": s.position_r2[1], "shared_share": s.shared, "aligned": s.align,
              "aligned_baseline": baseline, "ideal_cosine": s.ideal, "token_norm_mean": s.norm[0], "token_norm_std": s.norm[1],
              "loss": round(loss.item(), 4)}
    for name, batch in by_size.items():
        s = evaluate(reader, batch)
        result[f"patch_char_accuracy_{name}"] = round(s.patch, 4)
        result[f"token_char_accuracy_{name}"] = round(s.token, 4)
    log_line(f"done: {result}")
    return reader.encoder.cpu(), result


def save_module(module: nn.Module, path: Path, metadata: dict[str, object]) -> None:
    """A stage's module (encoder, language model) as safetensors, atomically, with its record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    tensors = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(partial), metadata={k: str(v) for k, v in metadata.items()})
    os.replace(partial, path)


def load_module(module: nn.Module, path: Path) -> None:
    """Load weights written by `save_module`; every tensor must match by name and shape."""
    state = load_file(str(path))
    own = module.state_dict()
    wrong = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if wrong or set(state) - set(own):
        raise ValueError(f"{path} does not hold this {type(module).__name__}'s weights: mismatched {wrong[:5]}, "
                         f"unexpected {sorted(set(state) - set(own))[:5]}")
    module.load_state_dict(state)


def main(argv: list[str] | None = None) -> int:
    from recipes.recipe import model_config  # the CLI's size presets; the recipe imports this module

    p = argparse.ArgumentParser(prog="python -m recipes.reading", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="encoder weights, .safetensors")
    p.add_argument("--size", choices=("small", "tiny"), default="small")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-time budget (default 8 when --steps is not given; with both, whichever ends first)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps")
    p.add_argument("--init", choices=("default", "mimetic"), default="mimetic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers drawing pictures")
    p.add_argument("--every", type=int, default=100)
    d = ReadingConfig()
    p.add_argument("--font-px", type=int, nargs=2, default=d.font_px, metavar=("MIN", "MAX"), help="page font sizes")
    p.add_argument("--scale", type=float, nargs=2, default=d.scale, metavar=("MIN", "MAX"),
                   help="input pixels per page pixel (the screenshot's resize)")
    p.add_argument("--large-steps", type=int, default=d.large_steps,
                   help="curriculum: the first steps draw large text (page 18-30 px at scale 1)")
    p.add_argument("--glyph-share", type=float, default=d.glyph_share,
                   help="the first share of the budget trains the character heads alone (position, centre, "
                        "alignment after)")
    p.add_argument("--position-weight", type=float, default=d.position_weight,
                   help="weight of the tokens' position loss (0: off)")
    p.add_argument("--place", choices=("head", "dims"), default=d.place,
                   help="position read by a learned head, or held in the tokens' first two coordinates")
    p.add_argument("--token-norm", type=float, default=d.token_norm,
                   help="the norm every merged token is told to have (0: not trained)")
    p.add_argument("--centre-weight", type=float, default=d.centre_weight,
                   help="weight of the tokens' shared share (0: off)")
    p.add_argument("--start-from", type=Path, default=None, help="continue from these encoder weights")
    p.add_argument("--align-to", type=Path, default=None,
                   help="a checkpoint whose tokenizer and input embeddings the merged tokens align to")
    p.add_argument("--align-weight", type=float, default=d.align_weight, help="weight of the alignment (0: off)")
    p.add_argument("--ideal-weight", type=float, default=d.ideal_weight,
                   help="with --align-to: weight of the tokens' distance to the ideal reader's (0: off)")
    args = p.parse_args(argv)
    for flag in ("position_weight", "centre_weight", "align_weight", "token_norm", "ideal_weight"):
        value = getattr(args, flag)
        if not (math.isfinite(value) and value >= 0):
            p.error(f"--{flag.replace('_', '-')} {value}: expected a finite number >= 0")
    if not 0 <= args.glyph_share < 1:
        p.error(f"--glyph-share {args.glyph_share}: expected a share in [0, 1)")
    for flag in ("large_steps",):
        if getattr(args, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected 0 or more")
    if not (0 < args.font_px[0] <= args.font_px[1] and 0 < args.scale[0] <= args.scale[1] <= 4):
        p.error(f"--font-px {args.font_px} / --scale {args.scale}: expected 0 < MIN <= MAX (scale at most 4)")
    if args.steps is not None and args.steps < 1 or args.minutes is not None and not args.minutes > 0:
        p.error(f"--steps {args.steps} / --minutes {args.minutes}: expected a positive budget")
    if args.steps is None and args.minutes is None:
        args.minutes = 8.0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = ReadingConfig(seed=args.seed, init=args.init, batch_size=args.batch_size, font_px=tuple(args.font_px),
                        scale=tuple(args.scale), large_steps=args.large_steps, glyph_share=args.glyph_share,
                        position_weight=args.position_weight, place=args.place, centre_weight=args.centre_weight,
                        token_norm=args.token_norm, align_weight=args.align_weight, ideal_weight=args.ideal_weight)
    vision, align = model_config(args.size).vision, None
    if args.align_to is not None:
        target = VLM.from_pretrained(args.align_to)
        vision, align = target.config.vision, Alignment.of(target)
    encoder, result = train(vision, cfg, steps=args.steps, minutes=args.minutes, device=args.device,
                            workers=args.workers, every=args.every, start_from=args.start_from, align=align)
    save_module(encoder, args.out, {**asdict(cfg), **result})
    print(f"wrote {args.out}: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
