"""recipes.mtp_layer: training a layer on the shipped model's own answers, shipping it into a
checkpoint keeps its network bitwise, refuses a network that moved, and writes the card section once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recipes.mtp_layer import (SECTION, answer_vocabulary, card_section, check_frozen, conversations, data_answer_ids,
                                ship, train)
from vlm import VLM
from vlm.config import tiny
from vlm.mtp import add_mtp_layer, draft_vocab, set_draft_vocab


def _record():
    measure = {"draft_tokens": 1, "tok_s": 1.0, "acceptance_rate": 0.5, "tokens_per_step": 1.5, "identical": True}
    return {"layer": 3, "n_prompts": 4, "heldout": "h.jsonl", "new": 16,
            "train": {"steps": 2, "batch_size": 4, "lr": 1e-3, "data": "d.jsonl", "answers": 3, "answer_tokens": 5.0,
                      "answer_minutes": 0.5, "minutes": 1.0, "final_mtp_loss": 2.5,
                      "draft_vocab": {"size": 40, "distinct_answer_tokens": 37, "distinct_data_tokens": 50,
                                      "coverage": 1.0}},
            "measures": [{**measure, "draft_tokens": 0}, measure]}


def test_ship_writes_the_layer_and_one_card_section(tmp_path):
    base = VLM.from_config(tiny(), seed=0)
    out, trained_dir = tmp_path / "model", tmp_path / "trained"
    base.save_pretrained(out)
    (out / "README.md").write_text("# card\n\ntext\n")
    trained = VLM(add_mtp_layer(base.model, seed=1))
    set_draft_vocab(trained.model, [3, 1, 2])
    trained.save_pretrained(trained_dir)
    for _ in range(2):  # shipping again replaces the section
        ship(trained_dir, out, card_section(_record()))
    card = (out / "README.md").read_text()
    assert card.count(SECTION) == 1 and card.startswith("# card\n\ntext\n") and "| 1 | 50.0% | 1.50 | yes |" in card
    words = " ".join(card.split())  # the card's paragraphs are wrapped
    assert "a vocabulary of 40 tokens" in words and "the 37 distinct tokens of those answers" in words
    assert "most frequent of the 50 in the training conversations' assistant turns" in words
    assert max(len(line) for line in card.splitlines() if not line.startswith("|")) <= 100
    assert draft_vocab(VLM.from_pretrained(out).model) == [1, 2, 3]
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


@pytest.mark.slow
def test_train_learns_from_the_shipped_models_own_answers(tmp_path):
    """The recipe's steps 1-2 on the real shipped model and two drawn screens: a fresh layer, the
    network bitwise the original, the record written; a second call reuses the finished run."""
    import json

    from synth.ui import UIConfig, generate

    data = generate(UIConfig(n=2, seed=3, split="train"), tmp_path / "ui", progress=False) / "data.jsonl"
    out = train(Path("assets/model"), data, tmp_path / "work", answers=2, steps=2, lr=1e-3, batch_size=2, new=8)
    record = json.loads((out / "distillation.json").read_text())
    assert record["answers"] == 2 and record["steps"] == 2 and 2 <= record["answer_tokens"] <= 8
    assert record["final_mtp_loss"] > 0
    trained = VLM.from_pretrained(out)
    assert len(trained.model.language_model.mtp_layers) == 1
    # the draft vocabulary: every token of the two answers and of the data's answers (fewer than
    # 1024 in all) and the stop tokens
    vocab = draft_vocab(trained.model)
    data_tokens = {t for ids in data_answer_ids(trained, conversations(data)[:2]) for t in ids}
    assert set(trained.stop_token_ids()) | data_tokens <= set(vocab) and record["draft_vocab"]["coverage"] == 1.0
    assert record["draft_vocab"]["size"] == len(vocab) and record["draft_vocab"]["distinct_data_tokens"] == len(data_tokens)
    check_frozen(trained, VLM.from_pretrained("assets/model", mtp=False))
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert train(Path("assets/model"), data, tmp_path / "work", answers=2, steps=2, lr=1e-3, batch_size=2, new=8) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_the_draft_vocabulary_ranks_own_answers_before_the_datas_and_keeps_stop_tokens():
    from train.mtp import OwnAnswer

    def answer(ids):
        return OwnAnswer(torch.tensor([[1, 2, *ids]]), torch.zeros(1), torch.zeros(1), 2, torch.zeros(1))

    own = [answer([10, 10, 11]), answer([10, 12])]
    data = [[20, 20, 20, 10], [21]]
    vocab = answer_vocabulary(own, 4, always=(0,), data_answers=data)
    assert vocab["token_ids"] == [0, 10, 11, 12, 20]  # own answers' three, then the data's most frequent
    assert vocab["distinct_answer_tokens"] == 3 and vocab["distinct_data_tokens"] == 3 and vocab["coverage"] == 1.0
    assert answer_vocabulary(own, 2, data_answers=data)["coverage"] == 4 / 5  # 12 left out
    assert answer_vocabulary(own, 0) is None


def test_several_data_files_are_mixed_by_a_seeded_shuffle_each_with_its_own_media_folder(tmp_path):
    import json
    import random

    files = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        rows = [{"messages": [{"role": "user", "content": f"{name}{i}"}]} for i in range(5)]
        (tmp_path / name / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(tmp_path / name / "data.jsonl")
    one = conversations(files[0])
    assert [c["messages"][0]["content"] for c, _ in one] == [f"a{i}" for i in range(5)]  # one file: its order
    mixed = conversations(files)
    expected = [(f"{n}{i}", tmp_path / n) for n in "ab" for i in range(5)]
    random.Random(0).shuffle(expected)
    assert [(c["messages"][0]["content"], folder) for c, folder in mixed] == expected
