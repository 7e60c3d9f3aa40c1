"""The whole network: embed -> encode images/videos -> place them -> decode -> lm_head.

Inputs follow the reference's conventions (flat block-major patches, (n, 3) grids, left padding
through `attention_mask`), but token types come from the ids, so no `mm_token_type_ids` argument
exists, and an image and a video may share one prompt. Images and video frames are encoded in
ONE packed vision call. Module attribute names follow the checkpoint keys without the leading
`model.` (`visual.blocks.0.attn.qkv`, `language_model.layers.1.mlp.gate`, `lm_head`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .cache import KVCache
from .config import VLMConfig
from .language_model import TextModel
from .positions import mrope_positions, placeholder_masks
from .vision import VisionEncoder


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T or logits_to_keep, vocab), or (n, vocab) with logits_at
    rope_deltas: torch.Tensor | None  # (B,) when positions were computed here (prefill / training)
    hidden: torch.Tensor | None = None  # (B, T, D) final-normed hidden states (what an MTP layer reads)
    position_ids: torch.Tensor | None = None  # (3, B, T) the M-RoPE ids used
    mtp_logits: torch.Tensor | None = None  # (n, vocab) the MTP layer's logits at `mtp_logits_at` (token t+2)


class VisionLanguageModel(nn.Module):
    def __init__(self, cfg: VLMConfig, *, mtp: bool = True) -> None:
        """`mtp=False` leaves out the multi-token-prediction layers the config declares."""
        super().__init__()
        self.cfg = cfg
        self.visual = VisionEncoder(cfg.vision)
        self.language_model = TextModel(cfg.text, num_mtp_layers=cfg.text.num_nextn_predict_layers if mtp else 0)
        self.lm_head = nn.Linear(cfg.text.hidden_size, cfg.text.vocab_size, bias=False)
        if cfg.text.tie_word_embeddings:
            self.lm_head.weight = self.language_model.embed_tokens.weight

    def cast(self, dtype: torch.dtype) -> VisionLanguageModel:
        """`.to(dtype)` that keeps the routing bias in float32 (its ~1e-3 updates vanish in bf16)."""
        self.to(dtype)
        for name, buffer in list(self.named_buffers()):
            if name.endswith("e_score_correction_bias"):
                module = self.get_submodule(name.rsplit(".", 1)[0])
                module.e_score_correction_bias = buffer.float()
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        *,
        segment_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
        logits_at: torch.Tensor | None = None,
        mtp_logits_at: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Logits for `input_ids` (B, T). With a non-empty `cache`, `position_ids` (3, B, T) are
        required (`real tokens so far + rope_delta`, see positions.py). `logits_to_keep=n > 0`
        runs the lm_head on the last n positions only; `logits_at`, a (B, T) bool mask, on the
        masked positions only, returned as (n, vocab) in row-major order (training computes the
        loss on the assistant's tokens: the rest need no vocabulary projection). `mtp_logits_at`, a
        (B, T) bool mask, also runs the first MTP layer (embedding of token t+1 with the hidden state
        at t; no cache) and returns its logits for token t+2 at the masked positions."""
        for name, where in (("logits_at", logits_at), ("mtp_logits_at", mtp_logits_at)):
            if where is not None and (where.shape != input_ids.shape or where.dtype != torch.bool):
                raise ValueError(f"{name}: expected a bool mask of shape {tuple(input_ids.shape)}, got "
                                 f"{where.dtype} {tuple(where.shape)}")
        x_BTD = self.language_model.embed_tokens(input_ids)
        decoding = cache is not None and cache.length > 0 and pixel_values is None and pixel_values_videos is None
        if not decoding:  # a generated placeholder id is plain text, not a missing image
            x_BTD = self.place_vision(
                input_ids, x_BTD, self.encode_vision(pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
            )
        rope_deltas = None
        if position_ids is None:
            if cache is not None and cache.length > 0:
                raise ValueError("decoding with a non-empty KV cache needs position_ids (3, B, T): position + rope_delta")
            positions = mrope_positions(
                input_ids, self.cfg, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                attention_mask=attention_mask, segment_ids=segment_ids,
            )
            position_ids, rope_deltas = positions.ids_3BT, positions.rope_deltas_B
        hidden_BTD = self.language_model(
            x_BTD, position_ids, attention_mask=attention_mask, segment_ids=segment_ids, cache=cache
        )
        h_BTD = hidden_BTD
        if logits_at is not None:
            h_BTD = h_BTD[logits_at]
        elif logits_to_keep > 0:
            h_BTD = h_BTD[:, -logits_to_keep:]
        mtp_logits = None
        if mtp_logits_at is not None:
            mtp_logits = self.mtp_logits(input_ids, hidden_BTD, position_ids, mtp_logits_at,
                                         attention_mask=attention_mask, segment_ids=segment_ids)
        return ModelOutput(logits=self.lm_head(h_BTD), rope_deltas=rope_deltas, hidden=hidden_BTD,
                           position_ids=position_ids, mtp_logits=mtp_logits)

    def mtp_logits(self, input_ids, hidden_BTD, position_ids, at_BT, *, attention_mask=None, segment_ids=None):
        """The first MTP layer's logits (n, vocab) for token t+2 at the positions `at_BT`; the
        embedding of token t+1 comes from `input_ids` (the last position wraps round to the row's first token: leave it out of `at_BT`)."""
        lm = self.language_model
        next_BT = torch.roll(input_ids, -1, dims=1)
        g_BTD = lm.forward_mtp(lm.embed_tokens(next_BT), hidden_BTD, position_ids,
                               attention_mask=attention_mask, segment_ids=segment_ids)
        return lm.mtp_layers[0].shared_head(g_BTD[at_BT])

    def encode_vision(
        self,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        pixel_values_videos: torch.Tensor | None,
        video_grid_thw: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(image tokens, video tokens), each (n, D) or None; one packed encoder call for both."""
        parts = []
        for name, pixels, grid in (("image", pixel_values, image_grid_thw), ("video", pixel_values_videos, video_grid_thw)):
            if (pixels is None) != (grid is None):
                raise ValueError(f"{name}: pixel values and grid_thw must be given together")
            if pixels is not None:
                parts.append((pixels, grid))
        if not parts:
            return None, None
        dtype = self.visual.patch_embed.proj.weight.dtype
        tokens = self.visual(torch.cat([p.to(dtype) for p, _ in parts]), torch.cat([g for _, g in parts]))
        merge2 = self.cfg.vision.spatial_merge_size**2
        counts = [int(g.prod(-1).sum()) // merge2 for _, g in parts]
        split = list(tokens.split(counts))
        image = split.pop(0) if pixel_values is not None else None
        video = split.pop(0) if pixel_values_videos is not None else None
        return image, video

    def place_vision(
        self, input_ids: torch.Tensor, x_BTD: torch.Tensor, features: tuple[torch.Tensor | None, torch.Tensor | None]
    ) -> torch.Tensor:
        """Replace placeholder embeddings, in order, by vision tokens; counts must match exactly."""
        for name, mask_BT, feats in zip(("image", "video"), placeholder_masks(input_ids, self.cfg), features):
            n_tokens, n_features = int(mask_BT.sum()), 0 if feats is None else feats.shape[0]
            if n_tokens != n_features:
                raise ValueError(
                    f"{n_tokens} {name} placeholder tokens in input_ids but {n_features} {name} features "
                    f"from the grids; they must be equal"
                )
            if n_tokens:
                x_BTD = x_BTD.masked_scatter(mask_BT[..., None], feats.to(x_BTD.dtype))
        return x_BTD
