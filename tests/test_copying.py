"""recipes.copying: its rows repeat at a distance that changes, training keeps the embeddings, the CLI."""

import random

import pytest
import torch

from recipes import copying
from vlm import VLM

# the tests train the default model for a few steps: on a shared 2-core machine two threads
# contend with any other job (the lr test's 48 steps: 200 s beside one with two threads, 7 s with one)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_rows_repeat_their_first_half_after_the_separator():
    vocabulary = list(range(100, 150))
    for n in (6, 24):
        ids = copying.rows(random.Random(n), vocabulary, 7, batch=5, n=n)
        assert ids.shape == (5, 2 * n + 1) and (ids[:, n] == 7).all()
        assert torch.equal(ids[:, :n], ids[:, n + 1:]) and set(ids[:, :n].flatten().tolist()) <= set(vocabulary)
        assert len({tuple(r) for r in ids[:, :n].tolist()}) == 5  # each row its own draw


def test_training_moves_the_model_but_not_the_embeddings_the_reader_is_aligned_to():
    vlm = VLM.from_pretrained()
    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    lines = []
    copied = copying.train(vlm, steps=2, every=1, batch=4, log_line=lines.append)
    after = vlm.model.state_dict()
    embeddings = "language_model.embed_tokens.weight"
    assert torch.equal(after[embeddings], before[embeddings])
    assert vlm.model.language_model.embed_tokens.weight.requires_grad  # frozen for the stage only
    assert not torch.equal(after["lm_head.weight"], before["lm_head.weight"])
    assert copied.steps == 2 and len(lines) == 2 and 0.0 <= copied.accuracy <= 1.0
    assert "held-out copy accuracy" in lines[-1]
    biases = [k for k in before if k.endswith("e_score_correction_bias") and "mtp" not in k]  # MTP: no forward
    moved = [(after[k] - before[k]).abs().max().item() for k in biases]
    assert biases and all(0 < m <= 2e-3 + 1e-6 for m in moved), moved  # two steps of 1e-3 toward balance


def test_without_a_balance_rate_the_routers_biases_stay():
    vlm = VLM.from_pretrained()
    before = {k: v.clone() for k, v in vlm.model.state_dict().items() if k.endswith("e_score_correction_bias")}
    lines = []
    copying.train(vlm, steps=1, every=1, batch=2, lengths=(3, 3), balance_rate=0.0, log_line=lines.append)
    assert all(torch.equal(vlm.model.state_dict()[k], v) for k, v in before.items())
    assert "expert load max/mean" in lines[0]


def test_a_stop_ends_the_run_after_that_step_and_measures_it_there():
    vlm = VLM.from_pretrained()
    calls, lines = [], []
    copied = copying.train(vlm, steps=10, every=4, batch=2, lengths=(3, 3), log_line=lines.append,
                           stop=lambda: calls.append(1) or len(calls) == 2)
    assert copied.steps == 2 and len(calls) == 2  # asked after steps 1 and 2, stopped after 2
    assert len(lines) == 1 and lines[0].startswith("step 2 ") and "stopped before step 10" in lines[0]
    assert copied.accuracy == pytest.approx(float(lines[0].split("copy accuracy ")[1].split(",")[0]), abs=5e-4)


def test_the_cli_names_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        copying.main(["--model", "assets/model", "--steps", "0"])
    assert exit_.value.code == 2 and "--steps 0: expected at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        copying.main(["--model", "assets/model", "--min-lr-ratio", "1.5"])
    assert exit_.value.code == 2 and "--min-lr-ratio 1.5: expected 0..1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        copying.main(["--model", "assets/model", "--balance-rate", "-1"])
    assert exit_.value.code == 2 and "--balance-rate -1.0: expected 0 or more" in capsys.readouterr().err


def test_the_lr_warms_up_then_stays_or_decays_to_its_floor(monkeypatch):
    seen: list[float] = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (seen.append(self.param_groups[0]["lr"]),
                                                                          step(self, *a, **k))[1])
    vlm = VLM.from_pretrained()
    copying.train(vlm, steps=24, every=24, batch=2, lengths=(3, 3), lr=1.0)
    assert seen[0] == pytest.approx(1 / 20) and seen[18] == pytest.approx(19 / 20) and seen[19:] == [1.0] * 5
    seen.clear()
    copying.train(vlm, steps=24, every=24, batch=2, lengths=(3, 3), lr=1.0, min_lr_ratio=0.1)
    assert seen[20] == pytest.approx(1.0) and seen[20] > seen[21] > seen[22] > seen[23] > 0.1
