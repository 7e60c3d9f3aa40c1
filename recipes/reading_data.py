"""The reading stage's pictures and labels (`recipes.reading`): `synth.text` pictures in the
encoder's patch order, each patch's characters, each merged token's language-model tokens,
as one batch (`make_batch`), an endless training stream (`Batches`) and held-out sets per text
size (`size_tests`)."""

from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

from recipes.alignment import piece_labels
from synth import text
from vlm.images import ImageConfig, preprocess_image
from vlm.vision import patch_coordinates

if TYPE_CHECKING:  # the stage's settings; recipes.reading imports this module
    from recipes.reading import ReadingConfig

# Held-out text by the height it reaches the encoder at, (page font px, scale) each: a reading
# stage is judged per size, as the mean over all sizes hides that small text lags large
LARGE = ((18, 30), (1.0, 1.0))
SIZES: dict[str, tuple[tuple[int, int], tuple[float, float]]] = {
    "5-9px": ((11, 15), (0.5, 0.6)),  # body text in a 1280x720 screenshot at the recipe's budget
    "9-14px": ((15, 20), (0.6, 0.7)),  # headings there; body text on a phone
    "18-30px": LARGE,  # `recipes.learnability word` draws its words 27 px high
}


@dataclass(frozen=True)
class Batch:
    pixel_values: torch.Tensor  # (N, patch_dim)
    grid_thw: torch.Tensor  # (n, 3)
    labels_NS: torch.Tensor  # (N, slots) per patch, block-major like the patches
    pieces_TK: torch.Tensor | None = None  # (N / 4, PIECES) token ids per merged token, -1 padded
    words_TK: torch.Tensor | None = None  # (N / 4, PIECES) the first token of each word it shows, -1 padded

    def to(self, device: torch.device | str) -> Batch:
        pieces, words = (None if t is None else t.to(device) for t in (self.pieces_TK, self.words_TK))
        return Batch(self.pixel_values.to(device), self.grid_thw.to(device), self.labels_NS.to(device), pieces, words)


def make_batch(rng: random.Random, n: int, cfg: ReadingConfig, *, large: bool = False, tokenizer=None) -> Batch:
    """`n` fresh pictures from `rng`: patches in the encoder's order and their labels (`large`:
    text drawn at LARGE sizes instead of `cfg`'s; `tokenizer`: also the language-model tokens
    each merged token shows and the first token of each word it shows, `piece_labels`)."""
    font_px, scale = LARGE if large else (cfg.font_px, cfg.scale)
    width, height = cfg.size
    image_cfg = ImageConfig(max_pixels=2 * width * height)  # the picture is already its input size
    patches, labels, pieces, words = [], [], [], []
    grid = torch.tensor([[1, height // 14, width // 14]])
    rows, cols, _, _ = patch_coordinates(grid, 2)
    token_rows, token_cols = rows[::4] // 2, cols[::4] // 2  # each merged token's first patch
    for _ in range(n):
        picture = text.draw(rng, size=cfg.size, scale=scale, font_px=font_px)
        vp = preprocess_image(picture.image, image_cfg)
        if tuple(vp.grid_thw) != tuple(grid[0].tolist()):
            raise ValueError(f"picture size {cfg.size} is not a multiple of 28 pixels (grid {vp.grid_thw})")
        patches.append(vp.pixel_values)
        labels.append(torch.from_numpy(text.patch_labels(picture, slots=cfg.slots))[rows, cols])
        if tokenizer is not None:
            pieces.append(torch.from_numpy(piece_labels(picture, tokenizer))[token_rows, token_cols])
            words.append(torch.from_numpy(piece_labels(picture, tokenizer, whole_words=True))[token_rows, token_cols])
    return Batch(torch.cat(patches), grid.repeat(n, 1), torch.cat(labels), *(torch.cat(t) if t else None
                                                                             for t in (pieces, words)))


class Batches(torch.utils.data.IterableDataset):
    """An endless stream of training batches; each DataLoader worker draws its own seed stream.

    The DataLoader takes batches from its workers in turn, so worker i's k-th batch is step
    k * workers + i + 1: the curriculum switches at the same step for any number of workers.
    """

    def __init__(self, cfg: ReadingConfig, tokenizer=None) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(f"reading/train/{self.cfg.seed}/{worker}")
        for k in itertools.count():
            step = k * workers + worker + 1
            yield make_batch(rng, self.cfg.batch_size, self.cfg, large=step <= self.cfg.large_steps,
                             tokenizer=self.tokenizer)


def size_tests(cfg: ReadingConfig) -> dict[str, Batch]:
    """Held-out pictures per text size (`SIZES`), from their own seed stream."""
    return {name: make_batch(random.Random(f"reading/test/{cfg.seed}/{name}"), cfg.n_test,
                             dataclasses.replace(cfg, font_px=font_px, scale=scale))
            for name, (font_px, scale) in SIZES.items()}
