"""Optimiser grouping (Muon only on 2-D hidden matrices) and the warmup + cosine schedule."""

import math

import pytest
import torch
from torch import nn

from train.optim import MuonAdamW, build_optimizer, build_scheduler, lr_multiplier


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(16, 8)
        self.q_proj = nn.Linear(8, 8)  # weight -> Muon, bias -> AdamW
        self.norm = nn.LayerNorm(8)
        self.experts = nn.Module()
        self.experts.gate_up_proj = nn.Parameter(torch.randn(4, 8, 16) * 0.1)  # 3-D -> AdamW
        self.lm_head = nn.Linear(8, 16, bias=False)  # 2-D but the output classifier -> AdamW

    def forward(self, ids):
        x = self.norm(self.q_proj(self.embed_tokens(ids)))
        x = x + (x @ self.experts.gate_up_proj[0])[..., :8]
        return self.lm_head(x)


def test_muon_takes_only_hidden_matrices():
    model = Toy()
    opt = build_optimizer(model.named_parameters(), name="muon", lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, MuonAdamW)
    muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert names == {"q_proj.weight"}
    adam = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
    assert len(muon | adam) == len(list(model.parameters())) and not muon & adam


def test_muon_adamw_trains_and_round_trips_its_state():
    torch.manual_seed(0)
    model = Toy()
    opt = build_optimizer(model.named_parameters(), name="muon", lr=5e-2, weight_decay=0.0)
    sched = build_scheduler(opt, warmup_steps=2, max_steps=20, min_lr_ratio=0.1)
    ids = torch.randint(0, 16, (4, 6))
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step(); sched.step(); opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # The scheduler's lr reaches the inner optimisers (their groups are the same dicts).
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(5e-2 * lr_multiplier(20, warmup_steps=2, max_steps=20, min_lr_ratio=0.1))
    fresh = build_optimizer(Toy().named_parameters(), name="muon", lr=1e-2, weight_decay=0.0)
    fresh.load_state_dict(opt.state_dict())
    assert torch.equal(fresh.muon.state_dict()["state"][0]["momentum_buffer"],
                       opt.muon.state_dict()["state"][0]["momentum_buffer"])


def test_schedule_reaches_the_inner_optimisers_after_a_state_load():
    """accelerate's `prepare` reloads the optimiser state on every run; the scheduler created
    before it must still drive the optimisers that step (it once froze them at the warm-up lr)."""
    opt = build_optimizer(Toy().named_parameters(), name="muon", lr=1e-2, weight_decay=0.0)
    sched = build_scheduler(opt, warmup_steps=4, max_steps=10, min_lr_ratio=0.1)
    opt.load_state_dict(opt.state_dict())
    for _ in range(6):
        opt.step(); sched.step()
    expected = 1e-2 * lr_multiplier(6, warmup_steps=4, max_steps=10, min_lr_ratio=0.1)
    inner = opt.muon.param_groups + opt.adamw.param_groups
    assert [g["lr"] for g in inner] == pytest.approx([expected] * len(inner))
    assert all(any(g is h for h in opt.param_groups) for g in inner)


def test_adamw_only_and_frozen_parameters_are_left_out():
    model = Toy()
    model.lm_head.weight.requires_grad_(False)
    opt = build_optimizer(model.named_parameters(), name="adamw", lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    params = [p for g in opt.param_groups for p in g["params"]]
    assert all(p is not model.lm_head.weight for p in params)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.norm.weight) not in decayed and id(model.q_proj.bias) not in decayed
    assert id(model.q_proj.weight) in decayed


def test_bad_optimizer_name_and_nothing_to_train_are_errors():
    with pytest.raises(ValueError, match="'sgd'"):
        build_optimizer(Toy().named_parameters(), name="sgd", lr=1e-3, weight_decay=0.0)
    frozen = Toy().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen.named_parameters(), name="adamw", lr=1e-3, weight_decay=0.0)


def test_schedule_warms_up_then_decays_by_cosine_to_the_floor():
    kw = dict(warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    warm = [lr_multiplier(s, **kw) for s in range(4)]
    assert warm == sorted(warm) and warm[0] > 0 and warm[-1] < 1
    assert lr_multiplier(4, **kw) == pytest.approx(1.0)
    assert lr_multiplier(9, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(14, **kw) == pytest.approx(0.1)
    decay = [lr_multiplier(s, **kw) for s in range(4, 15)]
    assert decay == sorted(decay, reverse=True)
