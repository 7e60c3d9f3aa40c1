"""Training the MTP layer: its targets, the joint loss (balance counts its routing, its gradient
reaches the network), and the MTP-only mode on a frozen model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _train_utils import metrics, write_dataset
from train.collate import IGNORE
from train.config import TrainConfig
from train.mtp import MTP_PREFIX, mtp_targets
from train.trainer import Trainer


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path, data, **overrides):
    base = dict(mode="sft", model="tiny", data=str(data), output=str(tmp_path / "out"), max_steps=1, lr=3e-3,
                batch_size=4, grad_accum=1, max_length=256, progress=False, seed=0)
    return TrainConfig(**{**base, **overrides})


def test_targets_are_token_t_plus_2_inside_one_sample():
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 0]])
    targets = torch.tensor([[IGNORE, IGNORE, 8, 9, IGNORE, 11, IGNORE, IGNORE]])  # targets[t] = ids[t+1] or IGNORE
    segments = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 0]])
    at, wanted = mtp_targets(targets, segments)
    # t=1 -> 8 (= targets[2]); t=2 -> 9; t=3 would read targets[4] of sample 2: not scored; t=4 -> 11
    assert at[0].nonzero().flatten().tolist() == [1, 2, 4]
    assert wanted.tolist() == [8, 9, 11]
    assert all(wanted[i] == ids[0, t + 2] for i, t in enumerate([1, 2, 4]))


def test_teacher_distribution_is_the_main_models_at_t_plus_1():
    from train.mtp import teacher_probs

    targets = torch.tensor([[IGNORE, 7, 8, 9, IGNORE], [IGNORE, IGNORE, 4, 5, 6]])
    segments = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    scored = targets != IGNORE
    logits = torch.randn(int(scored.sum()), 11)
    at, _ = mtp_targets(targets, segments)
    probs = teacher_probs(logits, scored, at)
    # MTP positions (0,0),(0,1),(0,2),(1,1),(1,2) read the main logits at (0,1),(0,2),(0,3),(1,2),(1,3)
    rows = {tuple(pos): i for i, pos in enumerate(scored.nonzero().tolist())}
    expected = [rows[(b, t + 1)] for b, t in at.nonzero().tolist()]
    torch.testing.assert_close(probs, logits[expected].softmax(-1))


def _with_mtp(tmp_path, data):
    """A tiny checkpoint that has an MTP layer (one MTP-only step adds and saves it)."""
    cfg = _config(tmp_path / "seed", data, mtp_only=True, max_steps=1)
    Trainer(cfg).train()
    return cfg.output


def test_joint_loss_trains_the_network_too_and_balance_counts_the_mtp_block(tmp_path):
    data = write_dataset(tmp_path, 4)
    model_dir = _with_mtp(tmp_path, data)

    def step(weight):
        trainer = Trainer(_config(tmp_path / str(weight), data, model=model_dir, mtp_loss_weight=weight))
        assert any(layer.name.startswith(MTP_PREFIX) for layer in trainer.moe_layers)
        _, tokens, loads, mtp_loss = trainer._step(trainer._next_batches())
        model = trainer.accelerator.unwrap_model(trainer.model)
        return model, tokens, loads, mtp_loss, trainer

    model0, _, _, loss0, _ = step(0.0)
    model1, tokens, loads, loss1, trainer = step(0.5)
    assert loss0 == 0.0 and loss1 > 0.0
    assert model0.language_model.mtp_layers[0].eh_proj.weight.grad is None
    assert model1.language_model.mtp_layers[0].eh_proj.weight.grad.abs().sum() > 0
    main = lambda m: m.language_model.layers[1].self_attn.q_proj.weight.grad  # noqa: E731
    assert (main(model1) - main(model0)).abs().max() > 1e-7  # the MTP loss reaches the network
    k = trainer.vlm.config.text.num_experts_per_tok
    assert loads.sum(1).tolist() == [tokens * k] * len(trainer.moe_layers)  # MTP block included, padding not


@pytest.mark.slow
def test_mtp_only_trains_the_layer_and_nothing_else(tmp_path):
    data = write_dataset(tmp_path, 8)
    cfg = _config(tmp_path, data, mtp_only=True, max_steps=8, lr=1e-2)
    trainer = Trainer(cfg)
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]
              if not n.endswith("tokens_per_expert")}
    trainer.train()
    after = dict([*model.named_parameters(), *model.named_buffers()])
    for name, value in before.items():
        if not name.startswith(MTP_PREFIX):
            assert torch.equal(after[name], value), name  # the frozen network, routing biases included
    assert not torch.equal(after[MTP_PREFIX + "0.eh_proj.weight"], before[MTP_PREFIX + "0.eh_proj.weight"])
    bias = MTP_PREFIX + "0.mtp_block.mlp.gate.e_score_correction_bias"
    assert not torch.equal(after[bias], before[bias])  # its balance updates run
    rows = [r for r in metrics(Path(cfg.output)) if "mtp_loss" in r]
    assert len(rows) == 8 and rows[-1]["mtp_loss"] < rows[0]["mtp_loss"]

    from vlm import VLM

    saved = VLM.from_pretrained(cfg.output)
    assert saved.config.text.num_nextn_predict_layers == 1 and len(saved.model.language_model.mtp_layers) == 1


def test_mtp_only_refuses_what_cannot_work(tmp_path):
    with pytest.raises(ValueError, match="mtp_only trains the MTP layer .* mtp_loss_weight=0.0"):
        _config(tmp_path, "x.jsonl", mtp_only=True, mtp_loss_weight=0.0)
    with pytest.raises(ValueError, match="mtp_loss_weight=-1.0: expected a number >= 0"):
        _config(tmp_path, "x.jsonl", mtp_loss_weight=-1.0)
