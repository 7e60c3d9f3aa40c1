"""Training the multi-token-prediction layer (vlm/mtp.py): its targets, and the MTP-only mode.

The MTP loss at position t predicts token t+2 from the main model's hidden state at t and the
embedding of token t+1. With targets already shifted (`targets[t]` = token t+1, IGNORE where
nothing is learned), position t is scored when `targets[t+1]` is learned and t, t+1 sit in the
same packed sample: the assistant's tokens, as for the main loss, one position earlier. The loss
is a token mean over the global batch with its own count, times `mtp_loss_weight`. With
`mtp_target="model"` the target is the main model's own distribution for that token (soft
cross-entropy): what speculative decoding accepts is agreement with the main model, not the data.

MTP-only mode (`mtp_only`): every parameter outside `language_model.mtp_layers` is frozen, the
main loss is still computed (and logged) but carries no gradient, and only the MTP block's MoE
biases are moved by the balance updates (the frozen network's routing must not drift).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from vlm.mtp import add_mtp_layer

from .collate import IGNORE

log = logging.getLogger(__name__)

MTP_PREFIX = "language_model.mtp_layers."


def mtp_targets(targets_BT: torch.Tensor, segment_ids_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(at_BT: the positions the MTP loss scores, (n,) their target ids: token t+2)."""
    following_BT = targets_BT[:, 1:]
    same_BT = (segment_ids_BT[:, :-1] == segment_ids_BT[:, 1:]) & (segment_ids_BT[:, :-1] > 0)
    scored_BT = (following_BT != IGNORE) & same_BT
    at_BT = torch.zeros_like(targets_BT, dtype=torch.bool)
    at_BT[:, :-1] = scored_BT
    return at_BT, following_BT[scored_BT]


def teacher_probs(logits_nV: torch.Tensor, scored_BT: torch.Tensor, at_BT: torch.Tensor) -> torch.Tensor:
    """The main model's next-token distribution (detached, float32) at t+1 for every MTP position
    t in `at_BT`; `logits_nV` are its logits at `scored_BT`, in row-major order (which holds every
    t+1, since the MTP scores t only where token t+2 is learned)."""
    next_BT = torch.zeros_like(at_BT)
    next_BT[:, 1:] = at_BT[:, :-1]
    return logits_nV[next_BT[scored_BT]].detach().float().softmax(-1)


def has_mtp(model: nn.Module) -> bool:
    return len(model.language_model.mtp_layers) > 0


def prepare_mtp_only(vlm) -> nn.Module:
    """Give `vlm` an MTP layer when it has none (logged), freeze everything else; returns the model."""
    if not has_mtp(vlm.model):
        vlm.model = add_mtp_layer(vlm.model)
        vlm.config = vlm.model.cfg
        log.info("added a multi-token-prediction layer (started from the last layer and lm_head)")
    for name, param in vlm.model.named_parameters():
        param.requires_grad_(name.startswith(MTP_PREFIX))
    return vlm.model


def balance_layers(layers: list, *, mtp_only: bool) -> list:
    """The MoE layers whose biases a run updates: all, or in MTP-only mode the MTP block's."""
    return [layer for layer in layers if layer.name.startswith(MTP_PREFIX)] if mtp_only else layers
