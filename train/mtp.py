"""Training the multi-token-prediction layer (vlm/mtp.py): its targets, the MTP-only mode, and
distillation on the frozen model's own answers.

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

Own answers (`own_answers`, `distill_mtp`; recipes/mtp_layer.py): the frozen model answers prompts
greedily, one forward of prompt + answer caches its hidden states and next-token distributions,
and the layer learns on those alone. Speculative decoding accepts agreement with the model's own
output, which the data's answers only approximate; and with the hidden states cached a step
costs the MTP layer, not the network.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


# ---- self-distillation on the frozen model's own answers --------------------------------------------


@dataclass
class OwnAnswer:
    """A prompt and the frozen model's own greedy answer, with what the MTP layer learns from them.

    Position t (the main hidden state h_t with token t+1) predicts token t+2; it is scored for
    t = P-1 .. T-3 (P prompt tokens, T in all), the positions speculative decoding drafts from.
    `teacher` holds the main model's distribution for each of those tokens (float16, one row per
    scored position), which is what speculative decoding accepts.
    """

    input_ids: torch.Tensor  # (1, T) the prompt then the answer
    hidden: torch.Tensor  # (1, T, D) final-normed hidden states of the main model
    position_ids: torch.Tensor  # (3, 1, T) M-RoPE ids
    prompt_length: int
    teacher: torch.Tensor  # (T-1-P, V) float16

    @property
    def scored(self) -> torch.Tensor:
        at = torch.zeros_like(self.input_ids, dtype=torch.bool)
        at[0, self.prompt_length - 1 : -2] = True
        return at


_MEDIA = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


@torch.no_grad()
def own_answers(model: nn.Module, prompts: list[dict], *, max_new_tokens: int,
                stop_token_ids: tuple[int, ...]) -> list[OwnAnswer]:
    """The model's greedy answer to each prompt (processor inputs, batch 1), stop token included,
    and one forward of prompt + answer for its hidden states and next-token distributions.
    Answers of fewer than two tokens teach nothing and are left out."""
    from vlm.generation import GenerationOptions, generate_ids

    out = []
    for n, inputs in enumerate(prompts, 1):
        if n % 100 == 0:
            log.info("own answers: %d/%d prompts", n, len(prompts))
        prompt_BP = inputs["input_ids"]
        if prompt_BP.shape[0] != 1:
            raise ValueError(f"own_answers takes one prompt per input, got a batch of {prompt_BP.shape[0]}")
        new = generate_ids(model, dict(inputs), GenerationOptions(max_new_tokens=max_new_tokens, draft_tokens=0),
                           stop_token_ids=stop_token_ids)[0].clone()
        if len(new) < 2:
            continue
        ids_BT = torch.cat([prompt_BP, new[None]], dim=1)
        P = prompt_BP.shape[1]
        logits_at = torch.zeros_like(ids_BT, dtype=torch.bool)
        logits_at[0, P:-1] = True  # the main model's distribution for tokens P+1 .. T-1
        result = model(ids_BT, **{k: inputs[k] for k in _MEDIA if k in inputs}, logits_at=logits_at)
        out.append(OwnAnswer(ids_BT, result.hidden.clone(), result.position_ids.clone(), P,
                             result.logits.float().softmax(-1).half()))
    return out


def distill_mtp(model: nn.Module, answers: list[OwnAnswer], *, steps: int, lr: float = 1e-3, batch_size: int = 4,
                chain_weight: float = 0.0, seed: int = 0, bias_update_rate: float = 1e-3,
                log_every: int = 50) -> list[float]:
    """Train the first MTP layer of `model` (everything else untouched) on `answers`: AdamW on the
    soft cross-entropy against the main model's distribution, `batch_size` answers per step, the
    MTP block's MoE bias moved toward balance after each step (balance.py). The main model's
    hidden states are the cached ones, so a step costs the MTP layer alone. `chain_weight` > 0
    adds the second chained draft's loss (`answer_loss`). Returns the loss of every step."""
    from . import balance

    if not answers:
        raise ValueError("distill_mtp: no answers to learn from (every answer was shorter than two tokens)")
    if not has_mtp(model):
        raise ValueError("distill_mtp: the model has no multi-token-prediction layer (add one: vlm.mtp.add_mtp_layer)")
    params = list(model.language_model.mtp_layers.parameters())
    trainable = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    moe = balance_layers(balance.find_moe_layers(model), mtp_only=True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    was_training = model.training
    model.train()
    try:
        for step in range(steps):
            total, loads = 0.0, None
            for i in torch.randint(len(answers), (batch_size,), generator=generator).tolist():
                loss = answer_loss(model, answers[i], chain_weight=chain_weight) / batch_size
                loss.backward()
                total += loss.item()
                if moe:
                    load = balance.current_loads(moe)
                    loads = load if loads is None else loads + load
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if moe and bias_update_rate > 0:
                balance.update_biases(moe, loads, rate=bias_update_rate)
            losses.append(total)
            if log_every and (step + 1) % log_every == 0:
                log.info("mtp distillation step %d/%d: loss %.4f", step + 1, steps, sum(losses[-log_every:]) / log_every)
    finally:
        model.train(was_training)
        for p, flag in zip(model.parameters(), trainable):
            p.requires_grad_(flag)
    return losses


def answer_loss(model: nn.Module, a: OwnAnswer, *, chain_weight: float = 0.0) -> torch.Tensor:
    """Soft cross-entropy of the MTP layer's drafts against the main model on one answer.

    With `chain_weight`, the layer also runs a second time with its own output g_{t-1} in place of
    h_t, as a chained second draft does in speculative decoding (speculative.py), and that pass's
    loss is added with this weight. (At decode time the chained position attends to keys that the
    first pass wrote; here the second pass attends to its own: an approximation.)"""
    lm = model.language_model
    embeds_BTD = lm.embed_tokens(torch.roll(a.input_ids, -1, dims=1))
    head = lm.mtp_layers[0].shared_head
    teacher_nV = a.teacher.float()
    at_BT = a.scored
    g_BTD = lm.forward_mtp(embeds_BTD, a.hidden, a.position_ids)
    loss = _soft_cross_entropy(head(g_BTD[at_BT]), teacher_nV)
    if chain_weight and len(teacher_nV) > 1:
        hidden_BTD = torch.cat([a.hidden[:, :1], g_BTD[:, :-1]], dim=1)  # g_{t-1} at t
        chained_BT = at_BT.clone()
        chained_BT[0, a.prompt_length - 1] = False  # the first position has no g before it
        g2_BTD = lm.forward_mtp(embeds_BTD, hidden_BTD, a.position_ids)
        loss = loss + chain_weight * _soft_cross_entropy(head(g2_BTD[chained_BT]), teacher_nV[1:])
    return loss


def _soft_cross_entropy(logits_nV: torch.Tensor, probs_nV: torch.Tensor) -> torch.Tensor:
    return -(probs_nV * logits_nV.float().log_softmax(-1)).sum(-1).mean()
