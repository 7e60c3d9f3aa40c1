"""The reading stage's alignment: image tokens told which language-model tokens they show.

A language model trained from scratch has to learn each word's look on its own before it can
answer "where is the text X?" (`python -m recipes.looking ground`). The reading stage
(`recipes.reading`, `--align-to MODEL_DIR`) can instead put each merged token that shows text
near the input embedding of the token a grounding question would quote for it, so that what
is left to learn is one skill, matching. This module holds the labels (`piece_labels`: which
tokens each 28-px merged token shows, from `synth.text`'s known glyph centres), the loss and
its held-out measures (`align_accuracy` beside the picture-blind `align_baseline`), and the
model aligned to (`Alignment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from synth import text
from vlm.vlm import VLM

PIECES = 4  # language-model tokens labelled per merged token, at most


def piece_labels(picture: text.TextPicture, tokenizer, *, merge_px: int = 28, whole_words: bool = False) -> np.ndarray:
    """(rows, cols, PIECES) int64: per merged token (a `merge_px` square), the language-model
    tokens whose characters are centred in it, -1 padded.

    Each word is tokenized alone, without a leading space, as a grounding question quotes it
    (`Where is the text "Cancel"?`); a token belongs to every merged token that one of its
    characters is centred in. `whole_words`: a word's first token belongs to every merged token
    that any of its characters is centred in (the code `recipes.looking`'s ideal reader gives).
    """
    width, height = picture.image.size
    rows, cols = height // merge_px, width // merge_px
    found: dict[tuple[int, int], list[int]] = {}
    glyphs = iter(picture.glyphs)  # `text.draw` keeps one per non-space character, line by line
    for line in picture.lines:
        for word in line.split():
            places = [next(glyphs) for _ in word]
            encoded = tokenizer(word, add_special_tokens=False, return_offsets_mapping=True)
            spans = zip(encoded["input_ids"], encoded["offset_mapping"])
            for token, (start, end) in [(encoded["input_ids"][0], (0, len(word)))] if whole_words else spans:
                for g in places[start:end]:
                    r, c = int(g.y // merge_px), int(g.x // merge_px)
                    if 0 <= r < rows and 0 <= c < cols and token not in found.setdefault((r, c), []):
                        found[(r, c)].append(token)
    labels = np.full((rows, cols, PIECES), -1, dtype=np.int64)
    for (r, c), tokens in found.items():
        labels[r, c, :len(tokens[:PIECES])] = tokens[:PIECES]
    return labels


def align_loss(cosine: torch.Tensor, pieces_TK: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the language-model tokens each text-showing merged token shows (the
    mean over its tokens) against the whole vocabulary, logits cosine / `temperature`."""
    shows = pieces_TK[:, 0] >= 0
    if not shows.any():
        return cosine.sum() * 0.0
    log_p = (cosine[shows] / temperature).log_softmax(-1)
    pieces, valid = pieces_TK[shows].clamp_min(0), pieces_TK[shows] >= 0
    return -((log_p.gather(1, pieces) * valid).sum(1) / valid.sum(1)).mean()


def align_baseline(pieces_TK: torch.Tensor) -> float:
    """What `align_accuracy` a reader that ignores the picture gets: the share of text-showing
    tokens that show the most common token (a digit, on `synth.text` pictures: ~0.044)."""
    shown = pieces_TK[pieces_TK[:, 0] >= 0]
    if not len(shown):
        return 0.0
    counts = torch.bincount(torch.cat([row[row >= 0].unique() for row in shown]))
    return counts.max().item() / len(shown)


def align_accuracy(cosine: torch.Tensor, pieces_TK: torch.Tensor) -> float:
    """Of the merged tokens that show text, the share whose nearest embedding is one they show."""
    shows = pieces_TK[:, 0] >= 0
    nearest = cosine[shows].argmax(-1, keepdim=True)
    return (nearest == pieces_TK[shows]).any(1).float().mean().item()


@dataclass(frozen=True)
class Alignment:
    """The language model the tokens are aligned to: its tokenizer and input embeddings."""

    tokenizer: Any
    embeddings: torch.Tensor  # (vocab, hidden)

    @classmethod
    def of(cls, vlm: VLM) -> Alignment:
        return cls(vlm.processor.tokenizer, vlm.model.language_model.embed_tokens.weight.detach().float().cpu())
