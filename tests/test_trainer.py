"""The trainer end to end on a tiny model: the loss falls; a run killed mid-way and resumed
continues the same loss curve; two processes (gloo, CPU) equal one process with the same
global batch; bad records are skipped, counted and reported by line."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_utils import metrics, write_dataset
from train.config import TrainConfig
from train.data import BadRecordError
from train.metrics import Metrics as _Metrics
from train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path, data, **overrides):
    base = dict(mode="sft", model="tiny", data=str(data), output=str(tmp_path / "out"), max_steps=6, lr=3e-3,
                batch_size=2, grad_accum=2, max_length=256, progress=False, seed=0)
    return TrainConfig(**{**base, **overrides})


@pytest.mark.slow
def test_loss_falls_and_the_run_writes_a_loadable_checkpoint(tmp_path):
    data = write_dataset(tmp_path, 8)
    cfg = _config(tmp_path, data, max_steps=14, batch_size=4, grad_accum=1, lr=1e-2, optimizer="muon",
                  warmup_steps=2)
    trainer = Trainer(cfg)
    result = trainer.train()
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert losses[-1] < 0.6 * losses[0], losses
    # The optimisers that step follow the schedule (through accelerate's wrapper, which reloads
    # the optimiser state in `prepare`): each group ends at the cosine floor, not at a warm-up lr.
    inner = trainer.optimizer.optimizer.muon.param_groups + trainer.optimizer.optimizer.adamw.param_groups
    assert [g["lr"] for g in inner] == pytest.approx([cfg.lr * cfg.min_lr_ratio] * len(inner))
    rows = metrics(Path(cfg.output))
    assert [r["step"] for r in rows] == list(range(1, 15))
    assert all(r["moe/max_over_mean"] >= 1.0 for r in rows)  # per-layer expert load is logged

    from vlm import VLM

    trained = VLM.from_pretrained(cfg.output)
    assert trained.processor is not None  # tokenizer files shipped with the weights
    biases = [b for n, b in trained.model.named_buffers() if n.endswith("e_score_correction_bias")]
    assert biases and all(b.abs().max() > 0 for b in biases)  # loss-free balance moved them


@pytest.mark.slow
def test_killed_run_resumes_on_the_same_loss_curve(tmp_path):
    data = write_dataset(tmp_path, 10)  # 10 samples, global batch 4: the run crosses epochs
    reference = Trainer(_config(tmp_path / "a", data)).train().losses

    class Killed(Exception):
        pass

    def kill_at_4(step, loss):
        if step == 4:
            raise Killed

    cfg = _config(tmp_path / "b", data, save_every=3, keep_last=1)
    with pytest.raises(Killed):
        Trainer(cfg).train(on_step=kill_at_4)
    with open(Path(cfg.output) / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.2')  # the power went while the killed run wrote a line
    resumed = Trainer(dataclasses.replace(cfg, resume=True)).train().losses
    assert sorted(resumed) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), (step, resumed, reference)
    # metrics.jsonl shows one continuous curve (the killed run's step 4 line was dropped).
    rows = metrics(Path(cfg.output))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == pytest.approx([reference[s] for s in range(1, 7)], abs=1e-6)


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    data = write_dataset(tmp_path, 8)
    one = Trainer(_config(tmp_path / "one", data, max_steps=3, batch_size=2, grad_accum=2)).train().losses
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    # On a machine without GPUs `accelerate launch` starts ONE process unless --multi_gpu asks for
    # its torchrun launcher; the trainer then runs gloo on CPU.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "train", "sft",
           "--model", "tiny", "--data", str(data), "--output", str(out), "--max-steps", "3", "--lr", "3e-3",
           "--batch-size", "2", "--grad-accum", "1", "--max-length", "256", "--no-progress"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}
    assert sorted(two) == [1, 2, 3]
    for step in (1, 2, 3):
        assert two[step] == pytest.approx(one[step], abs=1e-5), (two, one)


def test_bad_records_are_skipped_counted_and_reported_by_line(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    long_answer = "word " * 400
    extra = [
        json.dumps({"messages": [{"role": "user", "content": [{"type": "image", "image": "broken.png"}]},
                                 {"role": "assistant", "content": "x"}]}),  # line 5: unreadable image
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": long_answer}]}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),  # line 7: no assistant turn
        json.dumps({"messages": [{"role": "user", "content": [{"type": "image", "image": "gone.png"}]},
                                 {"role": "assistant", "content": "x"}]}),  # line 8: missing file
    ]
    data = write_dataset(tmp_path, 4, extra_lines=extra)
    trainer = Trainer(_config(tmp_path, data, max_steps=1, batch_size=4, grad_accum=1))
    assert len(trainer.train_data) == 4
    reasons = {line: reason for _, line, reason in trainer.bad.items}
    assert sorted(reasons) == [5, 6, 7, 8]
    assert reasons[5].startswith("unreadable media") and reasons[6].startswith("too long")
    assert reasons[7].startswith("no assistant turn") and reasons[8].startswith("missing file")
    assert "4 bad record(s) skipped" in trainer.bad.summary()
    # Strict: the first bad record found is fatal (shape checks run before media decoding).
    with pytest.raises(BadRecordError, match=r"data.jsonl:7: no assistant turn"):
        Trainer(_config(tmp_path / "strict", data, strict=True))


def test_a_fresh_run_refuses_an_output_that_holds_checkpoints(tmp_path):
    data = write_dataset(tmp_path, 4)
    cfg = _config(tmp_path, data, max_steps=1, batch_size=4, grad_accum=1)
    Trainer(cfg).train()
    with pytest.raises(FileExistsError, match="pass --resume"):
        Trainer(cfg).train()


def test_a_stop_ends_the_run_with_the_checkpoint_and_final_save_of_a_finished_one(tmp_path):
    from safetensors.torch import load_file

    from train import checkpoint
    from vlm import VLM

    data = write_dataset(tmp_path, 4)
    cfg = _config(tmp_path, data, max_steps=6, batch_size=4, grad_accum=1, save_every=4)
    asked = []
    result = Trainer(cfg).train(stop=lambda: asked.append(1) or len(asked) == 2)
    assert sorted(result.losses) == [1, 2] and len(asked) == 2  # asked after each step, ended after the second
    out = Path(cfg.output)
    latest = checkpoint.latest(out)
    assert latest.name == "step-000002" and checkpoint.TrainerState.load(latest / "trainer_state.json").step == 2
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert TrainConfig.load(out / "train_config.json").max_steps == 6  # the schedule is still the planned one
    final = VLM.from_pretrained(out).model.state_dict()  # the final save, as at max_steps
    assert all(torch.equal(final[name], tensor) for name, tensor in load_file(latest / "trainable.safetensors").items())
    resumed = Trainer(dataclasses.replace(cfg, resume=True)).train()
    assert sorted(resumed.losses) == [3, 4, 5, 6]


def test_sequence_balance_loss_reaches_the_router_under_gradient_checkpointing(tmp_path):
    data = write_dataset(tmp_path, 4)

    def router_grad(coef):
        cfg = _config(tmp_path / str(coef), data, max_steps=1, batch_size=4, grad_accum=1, seq_aux_loss_coef=coef,
                      gradient_checkpointing=True)
        trainer = Trainer(cfg)
        loss, _, _, _ = trainer._step(trainer._next_batches())
        assert torch.isfinite(torch.tensor(loss))
        return trainer.accelerator.unwrap_model(trainer.model).language_model.layers[1].mlp.gate.weight.grad.clone()

    without, with_aux = router_grad(0.0), router_grad(0.5)
    assert (with_aux - without).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["FSDP", "DEEPSPEED"])
def test_a_sharded_config_on_cpu_is_refused_not_run_as_ddp(tmp_path, monkeypatch, name):
    # `accelerate launch --config_file train/configs/fsdp2.yaml` sets this; on CPU accelerate
    # would silently train replicated DDP instead.
    monkeypatch.setenv(f"ACCELERATE_USE_{name}", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=f"asks for {name}, which needs CUDA devices"):
        Trainer(_config(tmp_path, write_dataset(tmp_path, 4)))


def test_deepspeed_zero3_is_refused_because_its_checkpoints_would_be_empty(tmp_path, monkeypatch):
    # accelerate launch --config_file train/configs/deepspeed_zero3.yaml sets both
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match="ZeRO stage 3, whose partitioned parameters"):
        Trainer(_config(tmp_path, write_dataset(tmp_path, 4)))


def test_expert_loads_count_real_tokens_not_padding(tmp_path):
    # rows of 40 tokens hold one 31-35 token sample each: rows of different lengths, padded
    trainer = Trainer(_config(tmp_path, write_dataset(tmp_path, 8), batch_size=4, grad_accum=1, max_length=40))
    micro = trainer._next_batches()
    lengths = [len(s) for s in micro[0]]
    assert len(set(lengths)) > 1
    _, tokens, loads_LE, _ = trainer._step(micro)
    k = trainer.vlm.config.text.num_experts_per_tok
    assert tokens == sum(lengths)
    assert loads_LE.sum(1).tolist() == [tokens * k] * len(trainer.moe_layers)
    assert all(layer.module.count_only is None for layer in trainer.moe_layers)  # no stale mask after the step


def test_the_validation_pass_is_cached_until_the_data_media_or_encoder_change(tmp_path, monkeypatch):
    from train.collate import Encoder
    from train.data import BadRecords
    from train.length_cache import cache_path
    from train.trainer import Dataset
    from vlm.processor import Processor

    long_answer = json.dumps({"messages": [{"role": "user", "content": "hi"},
                                           {"role": "assistant", "content": "word " * 400}]})
    data = write_dataset(tmp_path, 5, extra_lines=[long_answer])
    processor = Processor.from_pretrained()
    encoded = []
    real_encode = Encoder.encode
    monkeypatch.setattr(Encoder, "encode", lambda self, messages, **kw: encoded.append(1) or real_encode(self, messages, **kw))

    def dataset(max_length=256):
        bad = BadRecords()
        encoded.clear()
        ds = Dataset(str(data), Encoder(processor, max_length=max_length), bad=bad)
        return ds, [(line, reason) for _, line, reason in bad.items], len(encoded)

    first, bad_first, calls = dataset()
    assert calls == 6 and cache_path(data).is_file() and [line for line, _ in bad_first] == [6]
    again, bad_again, calls = dataset()
    assert calls == 0 and again.lengths == first.lengths and bad_again == bad_first  # same result, no encoding
    assert [again.sample(i).input_ids.numel() for i in range(len(again))] == first.lengths

    stat = (tmp_path / "images" / "2.png").stat()  # a media file changed: everything is encoded again
    os.utime(tmp_path / "images" / "2.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert dataset()[2] == 6 and dataset()[2] == 0
    assert dataset(max_length=4096)[1] == [] and dataset(max_length=4096)[2] == 0  # the encoder changed
    data.write_text(data.read_text().replace("What colour", "Which colour"))  # the data changed
    assert dataset()[2] == 6


def _metrics_file(tmp_path, *lines):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(line + "\n" for line in lines[:-1]) + lines[-1])
    return path


@pytest.mark.parametrize("torn", ['{"step": 4, "lo', '{"step": 4, "loss": 1.5}}', "\x00\x00\x00", '{"loss": 2.0}',
                                  '{"step": "4"}', "[" * 50_000])
def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, caplog, torn):
    path = _metrics_file(tmp_path, '{"step": 1, "loss": 3.0}', '{"step": 2, "loss": 2.5}', '{"step": 3, "loss": 2.4}', torn)
    _Metrics(path, enabled=True, after_step=2).close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert "torn last line 4" in caplog.text


def test_a_bad_metrics_line_before_the_last_is_an_error_not_a_loss(tmp_path):
    path = _metrics_file(tmp_path, '{"step": 1, "loss": 3.0}', '{"step": 2, "lo', '{"step": 3, "loss": 2.4}')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a metrics record"):
        _Metrics(path, enabled=True, after_step=3)
    assert path.read_text().count("\n") == 2  # untouched


def test_the_box_attention_label_is_trained_and_logged(tmp_path):
    """With the label on, every step logs the head's attention mass inside the answered boxes,
    and training on it moves that mass into the boxes."""
    import random

    from recipes import looking_data

    rng = random.Random(0)
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(8):
        ex = looking_data.example("locate", rng)
        ex.image.save(tmp_path / "images" / f"{i}.png")
        (question, answer), = ex.turns
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": [{"type": "image", "image": f"images/{i}.png"}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": answer}]}))
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    cfg = _config(tmp_path, data, max_steps=10, batch_size=4, grad_accum=1, lr=1e-2, warmup_steps=0,
                  box_attention_weight=5.0)
    Trainer(cfg).train()
    masses = [r["box_attention_mass"] for r in metrics(Path(cfg.output))]
    assert len(masses) == 10 and all(0 < m < 1 for m in masses)
    assert sum(masses[-3:]) > 1.5 * sum(masses[:3]), masses


def test_the_box_attention_label_refuses_lora_and_checkpointing(tmp_path):
    for bad in (dict(mode="lora", model="x"), dict(gradient_checkpointing=True)):
        with pytest.raises(ValueError, match="box_attention_weight"):
            _config(tmp_path, tmp_path / "d.jsonl", box_attention_weight=1.0, **bad)


@pytest.mark.parametrize("name", ["FSDP", "DEEPSPEED"])
def test_the_box_attention_label_refuses_sharded_weights(tmp_path, monkeypatch, name):
    monkeypatch.setenv(f"ACCELERATE_USE_{name}", "true")
    with pytest.raises(ValueError, match=f"box_attention_weight=1.0 .* under {name}"):
        Trainer(_config(tmp_path, write_dataset(tmp_path, 4), box_attention_weight=1.0))
