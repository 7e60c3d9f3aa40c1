"""A dense label for grounding: where the language model should look while it writes a box.

Reading became learnable once every patch had a label (`recipes.reading`); grounding is still
one box per question, and the language model has to discover by itself that the box's digits
depend on the image tokens that show the quoted word. But the answer says where those tokens
are: the image tokens inside the answered box. This loss tells one attention head of one layer,
at every position of a box answer (`<|begin_of_box|>` up to the last digit), to put its weight
on them: minus the log of the attention mass that lands inside the box, among the keys the
head can see (its own conversation, up to itself). Nothing else changes: the head stays a
head, the architecture and the inference path are untouched.

    looking = BoxAttention(model, tokenizer, layer=4)    # hooks the layer's attention input
    logits = model(**batch.model_inputs(device)).logits
    loss = answer_loss + weight * looking.loss(batch)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from train.collate import Batch
from vlm.config import VLMConfig
from vlm.outputs import parse_boxes
from vlm.positions import placeholder_masks
from vlm.rotary import apply_rotary
from vlm.vision import token_positions


@dataclass(frozen=True)
class Targets:
    """The supervised queries: batch row, position, and which positions of the row to attend to."""

    rows: torch.Tensor  # (N,)
    queries: torch.Tensor  # (N,)
    keys: torch.Tensor  # (N, T) bool
    boxes: torch.Tensor  # (N, 4) the answered box, x1 y1 x2 y2 as fractions of the picture

    def __len__(self) -> int:
        return int(self.rows.numel())


def box_targets(batch: Batch, tokenizer: Any, config: VLMConfig, *, merge: int = 2) -> Targets:
    """Every box answer in `batch`'s targets: its positions, and the image tokens of the last
    picture before it (same conversation) whose 28-px square overlaps the answered box."""
    begin, end = (tokenizer.convert_tokens_to_ids(t) for t in ("<|begin_of_box|>", "<|end_of_box|>"))
    ids, segments, T = batch.input_ids, batch.segment_ids, batch.input_ids.shape[1]
    is_image, _ = placeholder_masks(ids, config)  # a video's frames use the image id too: not pictures here
    # per position: its picture (-1 for text) and its merged token's centre; the model fills
    # image tokens in flattened order, the order of `image_grid_thw` and `token_positions`
    grid = batch.image_grid_thw if batch.image_grid_thw is not None else torch.zeros(0, 3, dtype=torch.long)
    picture_of = torch.full(ids.shape, -1, dtype=torch.long)
    picture_of[is_image] = torch.repeat_interleave(torch.arange(len(grid)), (grid.prod(1) // merge**2).long())
    centre_of = torch.zeros(*ids.shape, 2)
    if len(grid):
        centre_of[is_image] = token_positions(grid, merge)
    learned = torch.zeros_like(ids, dtype=torch.bool)  # tokens the answer loss teaches (targets are shifted)
    learned[:, 1:] = batch.targets[:, :-1] == ids[:, 1:]
    rows, queries, keys, answered = [], [], [], []
    for b, t in zip(*((ids == begin) & learned).nonzero(as_tuple=True)):
        b, t = int(b), int(t)
        stop = t + 1
        while stop < T and int(ids[b, stop]) != end and segments[b, stop] == segments[b, t]:
            stop += 1
        boxes = parse_boxes(tokenizer.decode(ids[b, t:stop + 1].tolist()), anywhere=True)
        earlier = is_image[b] & (segments[b] == segments[b, t]) & (torch.arange(T) < t)
        if not boxes or not hasattr(boxes[0], "x2") or not earlier.any():
            continue
        last = int(picture_of[b, int(earlier.nonzero().max())])
        _, h, w = grid[last].tolist()
        half_x, half_y = merge / 2 / w, merge / 2 / h  # half a merged token, as a fraction of the picture
        box = boxes[0]
        x1, y1, x2, y2 = box.x1 / 1000, box.y1 / 1000, box.x2 / 1000, box.y2 / 1000
        x, y = centre_of[b].unbind(-1)
        inside = (earlier & (picture_of[b] == last) & (x + half_x > x1) & (x - half_x < x2)
                  & (y + half_y > y1) & (y - half_y < y2))
        if not inside.any():
            continue
        rows += [b] * (stop - t)
        queries += range(t, stop)
        keys += [inside] * (stop - t)
        answered += [(x1, y1, x2, y2)] * (stop - t)
    if not rows:
        return Targets(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                       torch.zeros(0, T, dtype=torch.bool), torch.zeros(0, 4))
    return Targets(torch.tensor(rows), torch.tensor(queries), torch.stack(keys), torch.tensor(answered))


class BoxAttention:
    """Keeps the input of one layer's attention in each forward, to score where its labelled
    head(s) look while box answers are written (`loss`, `masses`); `model` is a
    `vlm.model.Glm4vMoeModel`. `head` is one head or several, each labelled alike.

    `place_weight` > 0 adds a second label, on what the head carries rather than where it looks:
    a linear readout (`readout`, not part of the model: give its parameters to the optimiser)
    regresses the answered box (x1, y1, x2, y2, fractions of the picture) from each labelled
    head's output, and the loss adds `place_weight` times its mean squared error; `place_errors`
    logs its mean absolute error in the answer's 0-1000 units."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, layer: int, head: int | Sequence[int] = 0,
                 place_weight: float = 0.0) -> None:
        self.tokenizer, self.config = tokenizer, model.cfg
        layers = model.language_model.layers
        if not 0 <= layer < len(layers):
            raise ValueError(f"layer {layer}: expected 0..{len(layers) - 1}")
        self.attn = layers[layer].self_attn
        self.heads = (head,) if isinstance(head, int) else tuple(head)
        if not self.heads or not all(0 <= h < self.attn.num_attention_heads for h in self.heads):
            raise ValueError(f"head {head}: expected one or more of 0..{self.attn.num_attention_heads - 1}")
        if not (place_weight >= 0 and math.isfinite(place_weight)):
            raise ValueError(f"place_weight={place_weight}: expected a finite number >= 0")
        self.place_weight = place_weight
        self.readout = torch.nn.Linear(self.attn.head_dim, 4, device=self.attn.q_proj.weight.device) \
            if place_weight else None
        self.seen = None
        self.masses: list[float] = []
        self.place_errors: list[float] = []
        self._hook = self.attn.register_forward_pre_hook(self._keep)

    def close(self) -> None:
        """Unhook the layer and drop what it kept: the model runs as if the label never was."""
        self._hook.remove()
        self.seen = None

    def parameters(self) -> list[torch.nn.Parameter]:
        """The readout's parameters (none without `place_weight`): train them with the model."""
        return list(self.readout.parameters()) if self.readout is not None else []

    def _group(self, head: int) -> int:
        """The key-value group `head` reads (grouped-query attention)."""
        return head // (self.attn.num_attention_heads // self.attn.num_key_value_heads)

    def _keep(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x, cos, sin = args[:3]
        self.seen = (x, cos, sin)

    def attention(self, targets: Targets, segment_ids: torch.Tensor, head: int | None = None) -> torch.Tensor:
        """(N, T) log attention of `head` (the first labelled one by default) at each supervised
        query, over the keys it sees."""
        x, cos, sin = self.seen
        a, hd = self.attn, self.attn.head_dim
        head = self.heads[0] if head is None else head
        q_w, q_b = _rows(a.q_proj, head, hd)
        k_w, k_b = _rows(a.k_proj, self._group(head), hd)
        rows = targets.rows.to(x.device)
        q = torch.nn.functional.linear(x[rows, targets.queries.to(x.device)], q_w, q_b)  # (N, hd)
        q = apply_rotary(q, cos[rows, targets.queries.to(x.device)].to(q.dtype),
                         sin[rows, targets.queries.to(x.device)].to(q.dtype), a.layout)
        k = torch.nn.functional.linear(x, k_w, k_b)  # (B, T, hd)
        k = apply_rotary(k, cos.to(k.dtype), sin.to(k.dtype), a.layout)
        T = x.shape[1]
        scores = q.new_zeros(len(rows), T, dtype=torch.float32)
        for b in rows.unique().tolist():  # row by row: no (N, T, hd) copy of the keys
            at = rows == b
            scores[at] = (q[at] @ k[b].T).float() / math.sqrt(hd)
        segments = segment_ids.to(x.device)[rows]
        visible = (torch.arange(T, device=x.device)[None] <= targets.queries.to(x.device)[:, None]) & (
            segments == segments.gather(1, targets.queries.to(x.device)[:, None]))
        return scores.masked_fill(~visible, float("-inf")).log_softmax(-1)

    def output(self, targets: Targets, log_attention: torch.Tensor, head: int) -> torch.Tensor:
        """(N, head_dim) what `head` passes on at each supervised query: its attention over the
        values of its key-value group (before the output projection)."""
        x, hd = self.seen[0], self.attn.head_dim
        v_w, v_b = _rows(self.attn.v_proj, self._group(head), hd)
        rows = targets.rows.to(x.device)
        weights = log_attention.exp().to(x.dtype)
        out = x.new_zeros(len(rows), hd)
        for b in rows.unique().tolist():
            at = rows == b
            out[at] = weights[at] @ torch.nn.functional.linear(x[b], v_w, v_b)
        return out

    def loss(self, batch: Batch) -> torch.Tensor:
        """Mean over the box answers' positions (and the labelled heads) of -log(attention mass
        inside the box), plus `place_weight` times the readout's squared error; 0 without any box.
        Call it after the model's forward on `batch`. Each call's mean mass inside the box (1: all
        of it) is appended to `masses`, for logs."""
        if self.seen is None:
            raise RuntimeError("no forward seen yet: run the model on the batch first")
        targets = box_targets(batch, self.tokenizer, self.config)
        if not len(targets):
            return self.seen[0].new_zeros(())
        keys = targets.keys.to(self.seen[0].device)
        attention = [self.attention(targets, batch.segment_ids, head) for head in self.heads]
        inside = torch.stack([a.masked_fill(~keys, float("-inf")).logsumexp(-1) for a in attention])  # (heads, N)
        self.masses.append(inside.detach().exp().mean().item())
        loss = -inside.mean()
        if self.readout is None:
            return loss
        boxes = targets.boxes.to(self.seen[0].device)
        predicted = torch.stack([self.readout(self.output(targets, a, head).float())
                                 for a, head in zip(attention, self.heads)])  # (heads, N, 4)
        self.place_errors.append(1000 * (predicted.detach() - boxes).abs().mean().item())
        return loss + self.place_weight * (predicted - boxes).pow(2).mean()


def _rows(proj: torch.nn.Linear, i: int, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias rows of `proj` that make its `i`-th output slice of `size` (one head)."""
    rows = slice(i * size, (i + 1) * size)
    return proj.weight[rows], proj.bias[rows] if proj.bias is not None else None
