"""Loss-free MoE balance: the bias update drives routing toward balance; the sequence loss."""

import pytest
import torch
from torch import nn

from train.balance import current_loads, find_moe_layers, load_stats, sequence_balance_loss, update_biases


class FakeMoE(nn.Module):
    """Routes like GLM-4.5: top-k of sigmoid(scores) + bias, records tokens_per_expert."""

    def __init__(self, num_experts=8, top_k=2):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Module()
        self.gate.register_buffer("e_score_correction_bias", torch.zeros(num_experts))
        self.register_buffer("tokens_per_expert", torch.zeros(num_experts, dtype=torch.long), persistent=False)

    def forward(self, logits_NE):
        biased = logits_NE.sigmoid() + self.gate.e_score_correction_bias
        ids = biased.topk(self.top_k, dim=-1).indices
        self.tokens_per_expert = torch.bincount(ids.flatten(), minlength=logits_NE.shape[1])
        return ids


def test_bias_updates_balance_a_skewed_router():
    torch.manual_seed(0)
    model = nn.ModuleDict({"layer": FakeMoE()})
    (layer,) = find_moe_layers(model)
    skew = torch.linspace(2, -2, 8)  # expert 0 is always preferred
    first = None
    for _ in range(300):
        model["layer"](torch.randn(256, 8) * 0.5 + skew)
        loads = current_loads([layer])
        ratio = load_stats([layer], loads)["moe/max_over_mean"]
        first = first if first is not None else ratio
        update_biases([layer], loads, rate=1e-2)
    assert first > 3.0 and ratio < 1.3
    bias = layer.bias_E
    assert bias[0] < 0 < bias[-1]  # the favoured expert was pushed down, the starved one up


def test_one_update_moves_each_bias_by_rate_toward_the_mean():
    layer = find_moe_layers(nn.ModuleDict({"m": FakeMoE(num_experts=4)}))[0]
    update_biases([layer], torch.tensor([[6.0, 2.0, 0.0, 4.0]]), rate=1e-3)  # mean 3
    assert torch.allclose(layer.bias_E, torch.tensor([-1e-3, 1e-3, 1e-3, -1e-3]))
    with pytest.raises(ValueError, match="2 load rows for 1 MoE layers"):
        update_biases([layer], torch.zeros(2, 4), rate=1e-3)


def test_sequence_loss_is_one_when_balanced_and_matches_a_per_sequence_loop():
    E, K = 4, 2
    uniform = torch.full((8, E), 0.5)
    ids = torch.tensor([[0, 1], [2, 3]] * 4)
    seg = torch.tensor([1, 1, 1, 1, 2, 2, 2, 2])
    assert sequence_balance_loss(uniform, ids, seg).item() == pytest.approx(1.0)

    torch.manual_seed(0)
    scores = torch.rand(10, E)
    ids = scores.topk(K, dim=-1).indices
    seg = torch.tensor([1, 1, 1, 0, 2, 2, 2, 2, 2, 0])
    expected = []
    for s in (1, 2):
        sel = seg == s
        T = sel.sum()
        f = torch.bincount(ids[sel].flatten(), minlength=E) * E / (K * T)
        P = (scores[sel] / scores[sel].sum(-1, keepdim=True)).mean(0)
        expected.append((f * P).sum())
    assert sequence_balance_loss(scores, ids, seg).item() == pytest.approx(torch.stack(expected).mean().item())
