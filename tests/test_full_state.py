"""Checkpoints of an FSDP2-sharded model, on CPU: two processes over gloo shard the tiny model with
torch's `fully_shard` (what accelerate's `fsdp_version: 2` does, one unit per decoder layer and
vision block), train it beside an unsharded copy, and save and resume through the trainer's own
functions (`checkpoint.save_trainable` / `load_trainable`, `full_state.gather` for the final
save). accelerate itself runs FSDP on CUDA only, so the trainer's launch is not part of this.

Checked: the plain save fails on the sharded parameters (so the test runs the sharded path); the
checkpoint equals the unsharded model's (same names, same values, the optimiser's moments too);
a resume into freshly sharded models continues on the uninterrupted run's losses, exactly; the
final save loads back as the trained model; a LoRA adapter from the gathered tensors equals the
unsharded run's.
"""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = 2
STEPS = 4  # optimiser steps; the checkpoint is taken after SAVE_AT
SAVE_AT = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fresh_model(*, bias_seed: int):
    """The tiny model with the vision encoder frozen (frozen parameters are left out of the
    checkpoint) and non-zero MoE correction biases (a checkpoint tensor that is a buffer)."""
    from vlm import VLM
    from vlm.config import tiny

    model = VLM.from_config(tiny(), seed=0).model
    model.visual.requires_grad_(False)
    generator = torch.Generator().manual_seed(bias_seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
    return model


def _shard(model):
    from torch.distributed.fsdp import fully_shard

    from vlm.language_model import DecoderLayer
    from vlm.vision import Block

    for module in list(model.modules()):
        if isinstance(module, (DecoderLayer, Block)):
            fully_shard(module)
    fully_shard(model)
    return model


def _batch(step: int):
    """The global batch of `step`: (WORLD, T) token ids; process r trains on row r."""
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, 300, (WORLD, 24), generator=generator)


def _train_step(model, optimizer, ids) -> float:
    """Next-token loss on `ids` (mean over its tokens), backward, optimiser step; the loss."""
    logits = model(ids).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _sharded_step(model, optimizer, step: int, rank: int) -> float:
    """One step of the sharded model on this process's row; the mean loss over all rows (rows are
    of equal length, so FSDP's gradient average is the gradient of the global batch's mean)."""
    loss = torch.tensor(_train_step(model, optimizer, _batch(step)[rank:rank + 1]))
    dist.all_reduce(loss)
    return loss.item() / WORLD


def _full(model) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            for n, p in [*model.named_parameters(), *model.named_buffers()]}


def _worker(rank: int, port: int, out: str, optimizer_name: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        _check(rank, Path(out), optimizer_name)
    finally:
        dist.destroy_process_group()


def _check(rank: int, out: Path, optimizer_name: str) -> None:
    from safetensors.torch import load_file, save_file

    from train import checkpoint, full_state
    from train.optim import build_optimizer

    main = rank == 0

    def optimizer(model):
        return build_optimizer(model.named_parameters(), name=optimizer_name, lr=3e-3, weight_decay=0.1)

    reference = _fresh_model(bias_seed=1)  # unsharded: every row, in this process
    reference_opt = optimizer(reference)
    model = _shard(_fresh_model(bias_seed=1))
    opt = optimizer(model)
    assert full_state.is_sharded(model)

    losses, reference_losses = {}, {}
    for step in range(1, SAVE_AT + 1):
        losses[step] = _sharded_step(model, opt, step, rank)
        reference_losses[step] = _train_step(reference, reference_opt, _batch(step))
    assert losses == pytest.approx(reference_losses, abs=1e-5)

    # The trainer's former save: safetensors cannot write FSDP2's DTensor parameters.
    with pytest.raises(RuntimeError, match="invalid python storage"):
        save_file({n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters()},
                  str(out / f"plain-{rank}.safetensors"))

    sharded_dir, plain_dir = out / "sharded", out / "plain"
    if main:
        sharded_dir.mkdir()
        plain_dir.mkdir()
    dist.barrier()
    written = checkpoint.save_trainable(sharded_dir, model, opt, main=main)
    assert bool(written) == main  # gathered on rank 0 only
    if main:  # the unsharded run's checkpoint, by the same function's unsharded path
        checkpoint.save_trainable(plain_dir, reference, reference_opt, main=True)
    dist.barrier()

    # Near the unsharded run's tensors, not equal: the sharded run sums gradients in another order.
    # AdamW turns that into ~2e-5 on the key biases, whose gradient is zero up to rounding (softmax
    # ignores a shift shared by all keys); Muon's Newton-Schulz runs in bfloat16 on a matrix the
    # sharded matmul multiplies in pieces: 2.4e-4 after two steps here, where orthogonalising each
    # shard alone would be off by ~60% of an update (~2e-3).
    atol = {"adamw": 5e-5, "muon": 5e-4}[optimizer_name]
    saved, unsharded = (load_file(str(d / "trainable.safetensors")) for d in (sharded_dir, plain_dir))
    assert sorted(saved) == sorted(unsharded) == sorted(checkpoint.resume_names(reference))
    assert not any(name.startswith("visual.") for name in saved)  # frozen: not gathered, not saved
    assert any(name.endswith("e_score_correction_bias") for name in saved)
    truth = _full(model)
    for name, tensor in saved.items():
        assert torch.equal(tensor, truth[name]), name  # exactly the sharded model's full tensors
        torch.testing.assert_close(tensor, unsharded[name], atol=atol, rtol=0, msg=name)
    _check_optimizer_files(sharded_dir, plain_dir, reference)

    for step in range(SAVE_AT + 1, STEPS + 1):  # the uninterrupted run
        losses[step] = _sharded_step(model, opt, step, rank)

    # Resume into a freshly sharded model whose correction biases differ from the saved ones.
    resumed = _shard(_fresh_model(bias_seed=2))
    resumed_opt = optimizer(resumed)
    checkpoint.load_trainable(sharded_dir, resumed, resumed_opt)
    for name, tensor in _full(resumed).items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    resumed_losses = {step: _sharded_step(resumed, resumed_opt, step, rank) for step in range(SAVE_AT + 1, STEPS + 1)}
    # Step SAVE_AT + 2's loss depends on the optimiser's moments as well as the weights.
    assert resumed_losses == {step: losses[step] for step in range(SAVE_AT + 1, STEPS + 1)}

    # The final save (sft): every tensor gathered, written in the released layout on rank 0.
    from vlm import VLM

    tensors = full_state.gather(model, main=main)
    if main:
        VLM(model).save_pretrained(out / "final", tensors=tensors)
    dist.barrier()
    loaded = VLM.from_pretrained(out / "final").model
    truth = _full(model)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, truth[name]), name


def _lora_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        _check_lora(rank, Path(out))
    finally:
        dist.destroy_process_group()


def _check_lora(rank: int, out: Path) -> None:
    """The trainer's LoRA saves (checkpoint and final): the adapter from the gathered trainable
    tensors of a sharded peft model equals the unsharded run's adapter."""
    import copy

    from safetensors.torch import load_file

    from train import checkpoint, full_state, lora
    from train.config import LoraOptions
    from train.optim import build_optimizer
    from vlm.adapter import WEIGHTS_FILE, save_adapter

    main = rank == 0
    torch.manual_seed(3)  # the adapters' random A matrices
    reference = lora.wrap(_fresh_model(bias_seed=1), LoraOptions(r=4, alpha=8, embeddings=True))
    model = _shard(copy.deepcopy(reference))
    opts = [build_optimizer(m.named_parameters(), name="adamw", lr=3e-3, weight_decay=0.1) for m in (model, reference)]
    for step in (1, 2):
        _sharded_step(model, opts[0], step, rank)
        _train_step(reference, opts[1], _batch(step))
    with pytest.raises(RuntimeError, match="invalid python storage"):  # peft's own state dict: shards
        save_adapter(model, out / f"ungathered-{rank}")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    tensors = full_state.gather(model, trainable, main=main)  # the final save's gather
    assert sorted(tensors) == (sorted(trainable) if main else [])
    if main:
        save_adapter(model, out / "sharded", state_dict=tensors)
        save_adapter(reference, out / "plain")
    written = checkpoint.save_trainable(out, model, opts[0], main=main)  # the checkpoint's gather
    dist.barrier()
    sharded, plain = (load_file(str(out / d / WEIGHTS_FILE)) for d in ("sharded", "plain"))
    assert sorted(sharded) == sorted(plain)
    assert any("lora_B" in k for k in sharded) and any("embed_tokens" in k for k in sharded)
    for key, value in plain.items():
        torch.testing.assert_close(sharded[key], value, atol=5e-5, rtol=0, msg=key)
        assert value.abs().max() > 0, key  # trained: lora_B starts at zero
    if main:
        assert all(torch.equal(written[n], tensors[n]) for n in trainable)


def _check_optimizer_files(sharded_dir: Path, plain_dir: Path, reference) -> None:
    """The sharded optimiser file (keyed by parameter name) holds the unsharded run's moments."""
    from train.checkpoint import load_state

    sharded = load_state(sharded_dir / "optimizer.pt")
    plain = load_state(plain_dir / "optimizer.pt")
    parts = [plain["muon"], plain["adamw"]] if "muon" in plain else [plain]
    trainable = [n for n, p in reference.named_parameters() if p.requires_grad]
    assert sorted(sharded["state"]) == sorted(trainable)
    by_name = {}
    reference_params = dict(reference.named_parameters())
    for part, optimizer_params in zip(parts, _groups(reference, len(parts))):
        ids = [i for group in part["param_groups"] for i in group["params"]]
        for i, param in zip(ids, optimizer_params):
            by_name[next(n for n, p in reference_params.items() if p is param)] = part["state"][i]
    assert sorted(by_name) == sorted(sharded["state"])
    for name, state in by_name.items():
        assert sorted(state) == sorted(sharded["state"][name]), name
        for key, value in state.items():
            torch.testing.assert_close(sharded["state"][name][key], value, atol=1e-5, rtol=1e-3, msg=f"{name} {key}")


def _groups(reference, count: int):
    """The reference optimiser's parameters in saved order, per inner optimiser (built again:
    `build_optimizer` is deterministic in its grouping)."""
    from train.optim import build_optimizer

    opt = build_optimizer(reference.named_parameters(), name="muon" if count == 2 else "adamw", lr=1.0,
                          weight_decay=0.1)
    parts = [opt.muon, opt.adamw] if count == 2 else [opt]
    return [[p for group in part.param_groups for p in group["params"]] for part in parts]


@pytest.mark.slow  # ~15 s each: two processes train the tiny model
@pytest.mark.parametrize("optimizer_name", ["adamw", "muon"])
def test_a_sharded_checkpoint_equals_the_unsharded_one_and_resumes_on_the_same_losses(tmp_path, optimizer_name):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), optimizer_name), nprocs=WORLD, join=True)


@pytest.mark.slow
def test_a_sharded_lora_adapter_equals_the_unsharded_one(tmp_path):
    mp.spawn(_lora_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
