"""The multi-token-prediction (MTP) layer of GLM-4.5 / GLM-4.5V: predicts token t+2 from the main
model's hidden state at t and the embedding of token t+1.

    g_t = mtp_block(eh_proj([enorm(embed(x_{t+1})) ; hnorm(h_t)]))      (concatenation: embedding first)
    logits_t = shared_head.head(shared_head.norm(g_t))                  -> x_{t+2}

What is unusual, and where it comes from (vLLM `glm4_moe_mtp.py`, SGLang's GLM-4.5 NextN, the
DeepSeek-V3 report §2.2 that the design follows):
- `h_t` is the main model's *final-normed* hidden state (what vLLM's target model returns and
  hands to its drafter); `hnorm` normalises it once more.
- `mtp_block` is an ordinary decoder layer with the layer index `num_hidden_layers + i` (so an MoE
  layer in GLM-4.5V) and its own attention over the MTP's own keys and values.
- The token embedding is the main model's `embed_tokens` (DeepSeek-V3 shares it; SGLang hands the
  target's embedding to the drafter). A checkpoint may also store a copy at
  `layers.{N}.embed_tokens.weight`; weights.py checks that it equals the main one.
- `shared_head.head` is the layer's own output matrix (vLLM loads it per layer; it starts as a
  copy of `lm_head` when a layer is added to a model that has none).
- On disk the layer is `model.language_model.layers.{num_hidden_layers + i}.*`, the block's
  tensors directly under it (no `mtp_block.` in the key); weights.py maps the names.
- The drafter can be chained: step j+1 takes g from step j in place of h (vLLM does the same);
  only the first step is what training optimises.
- A draft vocabulary (ours, FR-Spec arXiv 2502.14856; SGLang's `--speculative-token-map`): the
  token ids the drafter may propose, stored beside the weights as `draft_vocab.json`. Drafting
  then projects onto those rows of `shared_head.head` only (decode.py), which for a vocabulary of
  151k (GLM-4.5V) or 8k (ours) is most of a draft step's weight reads. It changes which tokens
  are drafted, never what is decoded: the main model verifies every draft.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

from .config import TextConfig, VLMConfig
from .layers import RMSNorm


class SharedHead(nn.Module):
    """The MTP layer's own final norm and vocabulary projection."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(g))


class MTPLayer(nn.Module):
    def __init__(self, cfg: TextConfig, index: int) -> None:
        """`index`: 0 for the first MTP layer (stored at layer `num_hidden_layers + index`)."""
        super().__init__()
        from .language_model import DecoderLayer  # language_model imports this module

        D = cfg.hidden_size
        self.enorm = RMSNorm(D, eps=cfg.rms_norm_eps)
        self.hnorm = RMSNorm(D, eps=cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * D, D, bias=False)
        # Its KV cache is its own (generation keeps one per MTP layer): cache slot `index`.
        self.mtp_block = DecoderLayer(cfg, cfg.num_hidden_layers + index, cache_layer=index)
        self.shared_head = SharedHead(cfg)
        # The draft vocabulary (sorted token ids, or None: every token); not a checkpoint tensor.
        self.register_buffer("draft_token_ids", None, persistent=False)

    def forward(self, embeds_BTD, hidden_BTD, cos, sin, mask, cache):
        """MTP hidden states g (B, T, D) from next-token embeddings and main hidden states."""
        x_BTD = self.eh_proj(torch.cat([self.enorm(embeds_BTD), self.hnorm(hidden_BTD)], dim=-1))
        return self.mtp_block(x_BTD, cos, sin, mask, cache)


def with_mtp_layers(cfg: VLMConfig, n: int = 1) -> VLMConfig:
    """`cfg` declaring `n` MTP layers (`num_nextn_predict_layers`, kept in text_config's extra)."""
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, extra={**cfg.text.extra, "num_nextn_predict_layers": n}))


@torch.no_grad()
def init_mtp_from_main(model: nn.Module, *, std: float = 0.02, seed: int = 0) -> None:
    """Start every MTP layer from the trained network: block = a copy of the last decoder layer,
    shared head = copies of the final norm and `lm_head`, norms at one, `eh_proj` small random
    (seeded). A copied block and head make the first steps of training predict from a sensible
    representation instead of noise."""
    lm = model.language_model
    generator = torch.Generator().manual_seed(seed)
    cfg = lm.cfg
    for layer in lm.mtp_layers:
        if cfg.is_moe_layer(cfg.num_hidden_layers - 1) == cfg.is_moe_layer(cfg.num_hidden_layers):
            layer.mtp_block.load_state_dict(lm.layers[-1].state_dict())
        else:  # a dense last layer cannot seed an MoE block (or the reverse): small random weights
            for name, tensor in layer.mtp_block.named_parameters():
                tensor.copy_(torch.ones_like(tensor) if name.endswith("norm.weight") else
                             torch.randn(tensor.shape, generator=generator).to(tensor.dtype) * std if tensor.ndim > 1
                             else torch.zeros_like(tensor))
        layer.shared_head.norm.weight.copy_(lm.norm.weight)
        layer.shared_head.head.weight.copy_(model.lm_head.weight)
        layer.enorm.weight.fill_(1.0)
        layer.hnorm.weight.fill_(1.0)
        w = layer.eh_proj.weight
        w.copy_(torch.randn(w.shape, generator=generator, dtype=torch.float32).to(w.dtype) * std)


def add_mtp_layer(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """A copy of `model` (a VisionLanguageModel without MTP layers) with one MTP layer, started by
    `init_mtp_from_main`; its config declares `num_nextn_predict_layers: 1`."""
    if len(model.language_model.mtp_layers):
        raise ValueError("the model already has a multi-token-prediction layer")
    weight = model.lm_head.weight
    out = type(model)(with_mtp_layers(model.cfg, 1)).to(device=weight.device, dtype=weight.dtype)
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(".mtp_layers." not in name for name in missing):
        raise ValueError(f"cannot copy the network: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, buffer in model.named_buffers():  # the routing bias stays float32 (VisionLanguageModel.cast)
        if name.endswith("e_score_correction_bias"):
            out.get_submodule(name.rsplit(".", 1)[0]).e_score_correction_bias = buffer.clone()
    init_mtp_from_main(out, seed=seed)
    return out.train(model.training)


DRAFT_VOCAB_FILE = "draft_vocab.json"


def set_draft_vocab(model: nn.Module, token_ids) -> None:
    """Restrict drafting to `token_ids` (any iterable of distinct ids in the vocabulary), or lift
    the restriction with None."""
    layers = model.language_model.mtp_layers
    if not len(layers):
        raise ValueError("set_draft_vocab: the model has no multi-token-prediction layer")
    if token_ids is None:
        layers[0].draft_token_ids = None
        return
    ids = sorted(int(i) for i in token_ids)
    vocab = model.cfg.text.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    repeats = len(set(ids)) != len(ids)
    if not ids or bad or repeats:
        raise ValueError(f"draft vocabulary: expected distinct token ids in [0, {vocab}), got {len(ids)} ids"
                         + (f" with {bad[:5]} out of range" if bad else "") + (" with repeats" if repeats else ""))
    layers[0].draft_token_ids = torch.tensor(ids, dtype=torch.long, device=model.lm_head.weight.device)


def draft_vocab(model: nn.Module) -> list[int] | None:
    layers = model.language_model.mtp_layers
    ids = layers[0].draft_token_ids if len(layers) else None
    return None if ids is None else ids.tolist()


def load_draft_vocab(model: nn.Module, directory: str | os.PathLike) -> None:
    """Read `draft_vocab.json` of a checkpoint into a model with an MTP layer (nothing when absent)."""
    file = Path(directory) / DRAFT_VOCAB_FILE
    if not file.is_file() or not len(model.language_model.mtp_layers):
        return
    record = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(record, dict) or not isinstance(record.get("token_ids"), list):
        raise ValueError(f"{file}: expected a JSON object with a 'token_ids' list")
    try:
        set_draft_vocab(model, record["token_ids"])
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None


def save_draft_vocab(model: nn.Module, directory: str | os.PathLike, *, note: str | None = None) -> None:
    """Write the model's draft vocabulary as `draft_vocab.json` (atomically), or remove a stale file
    when it has none."""
    from .files import atomic_write

    file = Path(directory) / DRAFT_VOCAB_FILE
    ids = draft_vocab(model)
    if ids is None:
        file.unlink(missing_ok=True)
        return
    if note is None and file.is_file():
        note = json.loads(file.read_text(encoding="utf-8")).get("note")
    record = {"token_ids": ids} | ({"note": note} if note else {})
    atomic_write(file, lambda tmp: tmp.write_text(json.dumps(record) + "\n", encoding="utf-8"))
