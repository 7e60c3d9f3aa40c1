import dataclasses
import math

import pytest
import torch

from recipes import mimetic
from recipes.recipe import model_config
from vlm.language_model import TextModel
from vlm.vlm import init_weights


def _attention_to_twin(model: TextModel, *, seed: int = 0) -> float:
    """Layer 0's mean attention from the last token to the earlier token with the same id,
    over random sequences of 24 distinct ids (chance 1/24), positions left unrotated."""
    g = torch.Generator().manual_seed(seed)
    attn, norm = model.layers[0].self_attn, model.layers[0].input_layernorm
    H, Hkv, hd = attn.num_attention_heads, attn.num_key_value_heads, attn.head_dim
    shares = []
    for _ in range(16):
        ids = torch.randperm(model.cfg.vocab_size, generator=g)[:24]
        twin = int(torch.randint(0, 23, (1,), generator=g))
        ids = torch.cat([ids[:23], ids[twin:twin + 1]])
        x = norm(model.embed_tokens(ids))
        q = attn.q_proj(x).view(24, H, hd)[-1]  # (H, hd)
        k = attn.k_proj(x).view(24, Hkv, hd).repeat_interleave(H // Hkv, 1)  # (24, H, hd)
        weights = torch.softmax((k * q).sum(-1) / math.sqrt(hd), dim=0)  # (24, H)
        shares.append(weights[twin].mean().item())
    return sum(shares) / len(shares)


def test_language_init_makes_attention_find_the_same_token_and_keeps_the_architecture():
    cfg = model_config("small").text
    torch.manual_seed(0)
    default = TextModel(cfg)
    init_weights(default)
    mimic = TextModel(cfg)
    mimic.load_state_dict(default.state_dict())
    mimetic.language(mimic, seed=0)
    assert mimic.state_dict().keys() == default.state_dict().keys()
    before, after = _attention_to_twin(default), _attention_to_twin(mimic)
    assert before < 2 / 24  # random init: about uniform
    assert after > 0.2  # ... mimetic: the twin among 24 gets a large share
    rotary = slice(0, cfg.rotary_dim)  # the rotating dimensions keep their init
    for a, b in zip(default.layers, mimic.layers):
        assert torch.equal(a.self_attn.q_proj.weight.view(cfg.num_attention_heads, cfg.head_dim, -1)[:, rotary],
                           b.self_attn.q_proj.weight.view(cfg.num_attention_heads, cfg.head_dim, -1)[:, rotary])


def test_language_init_refuses_a_model_whose_every_dimension_rotates():
    cfg = model_config("tiny").text
    model = TextModel(dataclasses.replace(cfg, partial_rotary_factor=1.0))
    with pytest.raises(ValueError, match="partial_rotary_factor 1.0"):
        mimetic.language(model, seed=0)
