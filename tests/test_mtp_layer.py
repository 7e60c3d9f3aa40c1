"""recipes.mtp_layer: shipping a trained MTP layer into a checkpoint keeps its network bitwise,
refuses a network that moved, and writes the card section once."""

from __future__ import annotations

import pytest
import torch

from recipes.mtp_layer import SECTION, card_section, ship
from vlm import VLM
from vlm.config import tiny
from vlm.mtp import add_mtp_layer


def _record():
    measure = {"draft_tokens": 1, "tok_s": 1.0, "acceptance_rate": 0.5, "tokens_per_step": 1.5, "identical": True}
    return {"layer": 3, "n_prompts": 4, "heldout": "h.jsonl", "new": 16,
            "train": {"steps": 2, "batch_size": 4, "lr": 1e-3, "data": "d.jsonl", "minutes": 1.0, "final_mtp_loss": 2.5},
            "measures": [{**measure, "draft_tokens": 0}, measure]}


def test_ship_writes_the_layer_and_one_card_section(tmp_path):
    base = VLM.from_config(tiny(), seed=0)
    out, trained_dir = tmp_path / "model", tmp_path / "trained"
    base.save_pretrained(out)
    (out / "README.md").write_text("# card\n\ntext\n")
    trained = VLM(add_mtp_layer(base.model, seed=1))
    trained.save_pretrained(trained_dir)
    for _ in range(2):  # shipping again replaces the section
        ship(trained_dir, out, card_section(_record()))
    card = (out / "README.md").read_text()
    assert card.count(SECTION) == 1 and card.startswith("# card\n\ntext\n") and "| 1 | 50.0% | 1.50 | yes |" in card
    shipped = VLM.from_pretrained(out).model.state_dict()
    for name, value in trained.model.state_dict().items():
        assert torch.equal(shipped[name], value), name


def test_ship_refuses_a_network_that_moved(tmp_path):
    base = VLM.from_config(tiny(), seed=0)
    base.save_pretrained(tmp_path / "model")
    model = add_mtp_layer(base.model)
    with torch.no_grad():
        model.language_model.layers[0].self_attn.q_proj.weight.add_(1e-3)
    VLM(model).save_pretrained(tmp_path / "trained")
    with pytest.raises(ValueError, match="language_model.layers.0.self_attn.q_proj.weight differs"):
        ship(tmp_path / "trained", tmp_path / "model", "x")
