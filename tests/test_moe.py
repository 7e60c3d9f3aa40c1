"""The MoE layer: equals a per-token dense loop (forward and gradients), equals the transformers
module, uses the correction bias for selection only, and records per-expert load."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vlm.config import tiny
from vlm.moe import MoE

CFG = dataclasses.replace(
    tiny().text, n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=2, n_group=2, topk_group=1,
    norm_topk_prob=False, routed_scaling_factor=1.5,
)


def _moe(cfg=CFG, seed=0) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
        moe.gate.e_score_correction_bias.copy_(0.2 * torch.randn(cfg.n_routed_experts))
    return moe


def _per_token_loop(moe: MoE, x_TD: torch.Tensor) -> torch.Tensor:
    """The definition, one token at a time, no batching tricks."""
    cfg = CFG
    E, K, G = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_group
    outs = []
    for x in x_TD:
        scores = torch.sigmoid(moe.gate.weight.float() @ x.float())
        biased = scores + moe.gate.e_score_correction_bias
        groups = [sorted(biased[g * E // G:(g + 1) * E // G].tolist(), reverse=True) for g in range(G)]
        group_rank = sorted(range(G), key=lambda g: -(groups[g][0] + groups[g][1]))[: cfg.topk_group]
        allowed = [e for e in range(E) if e // (E // G) in group_rank]
        chosen = sorted(allowed, key=lambda e: -biased[e].item())[:K]
        weights = scores[chosen]
        if cfg.norm_topk_prob:
            weights = weights / weights.sum()
        weights = weights * cfg.routed_scaling_factor
        y = moe.shared_experts(x)
        for w, e in zip(weights, chosen):
            gate_up = moe.experts.gate_up_proj[e]
            gate, up = (gate_up @ x).chunk(2)
            y = y + w * (moe.experts.down_proj[e] @ (F.silu(gate) * up))
        outs.append(y)
    return torch.stack(outs)


def test_moe_equals_a_per_token_dense_loop_forward_and_backward():
    moe = _moe()
    x = torch.randn(2, 7, CFG.hidden_size, requires_grad=True)
    out = moe(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    got_grads = [p.grad.clone() for p in moe.parameters()] + [x.grad.clone()]
    moe.zero_grad()
    x.grad = None
    expected = _per_token_loop(moe, x.view(-1, CFG.hidden_size)).view_as(out)
    expected.backward(grad)
    want_grads = [p.grad for p in moe.parameters()] + [x.grad]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_backward_accepts_an_expanded_gradient():
    moe = _moe()
    x = torch.randn(5, CFG.hidden_size, requires_grad=True)
    moe(x).sum().backward()  # grouped_mm on CPU rejects stride-0 grads unless we make them contiguous
    assert moe.experts.gate_up_proj.grad.abs().sum() > 0


def test_moe_equals_the_transformers_module():
    from transformers import Glm4vMoeConfig
    from transformers.models.glm4v_moe.modeling_glm4v_moe import Glm4vMoeTextMoE

    from _model_utils import MOE_TEXT

    text = {**MOE_TEXT, "hidden_size": CFG.hidden_size, "moe_intermediate_size": CFG.moe_intermediate_size}
    ref = Glm4vMoeTextMoE(Glm4vMoeConfig(text_config=text).text_config).eval()
    ours = _moe()
    with torch.no_grad():
        ref.gate.weight.copy_(ours.gate.weight)
        ref.gate.e_score_correction_bias.copy_(ours.gate.e_score_correction_bias)
        ref.experts.gate_up_proj.copy_(ours.experts.gate_up_proj)
        ref.experts.down_proj.copy_(ours.experts.down_proj)
        ref.shared_experts.load_state_dict(ours.shared_experts.state_dict())
        x = torch.randn(3, 5, CFG.hidden_size)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_correction_bias_selects_but_does_not_weight():
    moe = _moe()
    with torch.no_grad():
        moe.gate.e_score_correction_bias.zero_()
        moe.gate.e_score_correction_bias[5] = 100.0  # group of expert 5 always wins, 5 always chosen
    x = torch.randn(6, CFG.hidden_size)
    scores, ids, weights = moe.gate(x)
    assert (ids == 5).any(-1).all()
    assert ids.ge(4).all()  # only experts of the winning group (4..7)
    slot = (ids == 5).float().argmax(-1)
    torch.testing.assert_close(weights.gather(1, slot[:, None])[:, 0], scores[:, 5] * CFG.routed_scaling_factor)


def test_tokens_per_expert_and_recorded_routing():
    moe = _moe()
    moe.record_routing = True
    x = torch.randn(4, 6, CFG.hidden_size)
    moe(x)
    ids = moe.last_topk_ids
    assert ids.shape == (24, CFG.num_experts_per_tok)
    assert moe.last_scores.shape == (24, CFG.n_routed_experts) and moe.last_scores.dtype == torch.float32
    assert moe.tokens_per_expert.tolist() == torch.bincount(ids.flatten(), minlength=8).tolist()
    assert int(moe.tokens_per_expert.sum()) == 24 * CFG.num_experts_per_tok
    assert "tokens_per_expert" not in moe.state_dict() and "gate.e_score_correction_bias" in moe.state_dict()


@pytest.mark.parametrize("norm", [True, False])
def test_normalised_weights_sum_to_the_scaling_factor(norm):
    moe = _moe(dataclasses.replace(CFG, norm_topk_prob=norm))
    _, _, weights = moe.gate(torch.randn(5, CFG.hidden_size))
    sums = weights.sum(-1)
    if norm:
        torch.testing.assert_close(sums, torch.full_like(sums, CFG.routed_scaling_factor))
    else:
        assert (sums < CFG.num_experts_per_tok * CFG.routed_scaling_factor).all() and not torch.allclose(sums, sums[:1].expand_as(sums))


def test_tokens_per_expert_leaves_out_what_count_only_masks():
    moe = _moe()
    moe.record_routing = True
    real = torch.rand(24) > 0.3
    moe.count_only = real
    moe(torch.randn(4, 6, CFG.hidden_size))
    kept = moe.last_topk_ids[real]
    assert moe.tokens_per_expert.tolist() == torch.bincount(kept.flatten(), minlength=8).tolist()
    assert int(moe.tokens_per_expert.sum()) == int(real.sum()) * CFG.num_experts_per_tok
