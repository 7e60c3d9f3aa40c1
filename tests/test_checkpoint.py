"""Checkpoint files: atomic commit, keep-last-N, RNG round trip."""

import random

import numpy as np
import pytest
import torch

from train import checkpoint as ckpt


def _save(output, step, keep_last=2):
    staging = ckpt.begin(output, step)
    ckpt.TrainerState(step=step, epoch=0, index=step * 4, tokens=step * 100).save(staging / "trainer_state.json")
    return ckpt.commit(output, step, keep_last=keep_last)


def test_commit_is_atomic_and_an_unfinished_save_is_invisible(tmp_path):
    _save(tmp_path, 1)
    staging = ckpt.begin(tmp_path, 2)  # a run killed while writing step 2
    (staging / "optimizer.pt").write_bytes(b"half")
    assert ckpt.latest(tmp_path) == ckpt.step_dir(tmp_path, 1)
    # The next attempt at step 2 starts from a clean staging directory.
    staging = ckpt.begin(tmp_path, 2)
    assert list(staging.iterdir()) == []
    ckpt.TrainerState(step=2, epoch=0, index=8, tokens=200).save(staging / "trainer_state.json")
    final = ckpt.commit(tmp_path, 2, keep_last=2)
    assert ckpt.latest(tmp_path) == final and not staging.exists()
    assert ckpt.TrainerState.load(final / "trainer_state.json").index == 8


def test_keep_last_n_and_resaving_a_step(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep_last=2)
    assert [s for s, _ in ckpt.all_steps(tmp_path)] == [3, 4]
    _save(tmp_path, 4, keep_last=2)  # overwriting an existing step replaces it whole
    assert [s for s, _ in ckpt.all_steps(tmp_path)] == [3, 4]
    assert sorted(p.name for p in ckpt.checkpoints_dir(tmp_path).iterdir()) == ["step-000003", "step-000004"]
    with pytest.raises(ValueError, match="keep_last=0"):
        ckpt.prune(tmp_path, keep_last=0)


def test_rng_states_round_trip(tmp_path):
    torch.manual_seed(3); random.seed(3); np.random.seed(3)
    ckpt.save_rng(tmp_path, rank=0)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99); random.seed(99); np.random.seed(99)
    ckpt.load_rng(tmp_path, rank=0)
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
    with pytest.raises(FileNotFoundError, match="rng-1.pt"):
        ckpt.load_rng(tmp_path, rank=1)


def test_real_optimizer_and_scheduler_states_load_without_unpickling_code(tmp_path):
    from train.optim import build_optimizer, build_scheduler

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    for name in ("adamw", "muon"):
        optimizer = build_optimizer(model.named_parameters(), name=name, lr=1e-3, weight_decay=0.1)
        scheduler = build_scheduler(optimizer, warmup_steps=2, max_steps=10, min_lr_ratio=0.1)
        model(torch.randn(4, 8)).sum().backward()
        optimizer.step(); scheduler.step()
        torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")
        again = build_optimizer(model.named_parameters(), name=name, lr=1e-3, weight_decay=0.1)
        again_scheduler = build_scheduler(again, warmup_steps=2, max_steps=10, min_lr_ratio=0.1)
        again.load_state_dict(ckpt.load_state(tmp_path / "optimizer.pt"))  # the trainer's order
        again_scheduler.load_state_dict(ckpt.load_state(tmp_path / "scheduler.pt"))
        assert str(again.state_dict()) == str(optimizer.state_dict())
        assert again_scheduler.state_dict() == scheduler.state_dict()


class _Payload:
    """Unpickling this object would create a file: a stand-in for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng-0.pt"])
def test_a_checkpoint_file_that_would_run_code_is_refused(tmp_path, name):
    marker = tmp_path / "code-ran"
    torch.save({"state": {}, "param_groups": [], "x": _Payload(marker)}, tmp_path / name)
    load = (lambda: ckpt.load_rng(tmp_path, rank=0)) if name.startswith("rng") else (lambda: ckpt.load_state(tmp_path / name))
    with pytest.raises(ValueError, match=rf"{name} holds more than tensors and plain data.*open"):
        load()
    assert not marker.exists()
