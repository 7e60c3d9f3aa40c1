"""The one trainer, on `accelerate`: pretrain / full fine-tune (sft) / LoRA.

What is unusual here, and why:

* **Token-mean loss over the global batch.** Each micro-batch's summed cross-entropy is divided
  by the number of target tokens of the *whole* optimiser step (all micro-batches, all
  processes), so gradient accumulation and the process count change nothing: a 2-process run
  computes the same loss and update as a 1-process run with the same global batch.
  (DDP averages gradients over processes, hence the `* num_processes`.)
* **Data order independent of the process count.** `collate.epoch_order` depends only on the
  seed and epoch; each step takes the next `global_batch` samples and process r takes its slice.
  The data position (epoch, index) is part of every checkpoint.
* **The scheduler is not passed to `accelerator.prepare`**: accelerate's wrapper steps it once
  per process, which would make the learning rate depend on the process count.
* **MoE balance** is applied after each optimiser step from the expert loads summed over the
  step's micro-batches and all processes (see balance.py), so biases stay identical everywhere.

Precision: float32 on CPU; bf16 autocast (`mixed_precision="bf16"`) with float32 master weights
on GPU (the loss is taken in float32). Each step's logged time ends after a CUDA synchronise, so
`tokens_per_s`, and the step plans made from it, count the whole step. Multi-GPU / multi-node: see `train/configs/` (FSDP2 and DeepSpeed accelerate configs).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm

from vlm.adapter import save_adapter

from . import balance, checkpoint, full_state, length_cache, lora
from .collate import IGNORE, Encoder, Sample, epoch_order, pack
from .config import TrainConfig
from .data import BadRecords, Conversation, read_conversations
from .model import (apply_freeze, copy_processor_files, load_model, load_processor, processor_dir,
                    set_gradient_checkpointing, set_record_routing)
from .metrics import Metrics
from .box_attention import BoxAttention
from .mtp import balance_layers, has_mtp, mtp_targets, prepare_mtp_only, teacher_probs
from .optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    losses: dict[int, float]  # step -> training loss (token mean over the global batch)
    eval_losses: dict[int, float]
    bad_records: BadRecords
    output: Path


class Dataset:
    """Validated conversations with their encoded lengths; bad records skipped and counted."""

    def __init__(self, path: str, encoder: Encoder, *, bad: BadRecords) -> None:
        self.encoder = encoder
        self.conversations: list[Conversation] = []
        self.lengths: list[int] = []
        # One encoding pass up front: finds unreadable media and over-long samples before
        # training starts, and gives the lengths that batches are grouped by. Its results are
        # cached beside the data (`length_cache`), so a rerun or resume skips it.
        conversations = read_conversations(path, bad=bad)
        key = length_cache.fingerprint(Path(path), conversations, encoder)
        cached = length_cache.load(Path(path), key)
        results: dict[int, length_cache.Result] = {}
        for conv in conversations:
            result = cached.get(conv.line)
            if result is None:
                try:
                    result = len(encoder.encode(conv.messages, tools=conv.tools))
                except ValueError as e:
                    result = str(e)
            results[conv.line] = result
            if isinstance(result, str):
                bad.add(path, conv.line, result)
                continue
            self.conversations.append(conv)
            self.lengths.append(result)
        if results != cached:
            length_cache.save(Path(path), key, results)
        if not self.conversations:
            raise ValueError(f"dataset {path!r}: every record is bad ({len(bad)})")

    def __len__(self) -> int:
        return len(self.conversations)

    def sample(self, i: int) -> Sample:
        conversation = self.conversations[i]
        return self.encoder.encode(conversation.messages, tools=conversation.tools)


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        cpu = not torch.cuda.is_available()
        sharded = [name for name in ("FSDP", "DEEPSPEED")
                   if os.environ.get(f"ACCELERATE_USE_{name}", "").lower() in ("1", "true")]
        if sharded and cfg.box_attention_weight:
            raise ValueError(f"box_attention_weight={cfg.box_attention_weight} scores one head from the layer's "
                             f"full q/k weights outside its forward; under {sharded[0]} they are sharded there. "
                             "Train it with DDP or one device, or set box_attention_weight=0")
        if cpu and sharded:  # accelerate would quietly fall back to replicated DDP on CPU
            raise RuntimeError(f"the accelerate config asks for {sharded[0]}, which needs CUDA devices; none is "
                               "available. On CPU use train/configs/cpu_2proc.yaml (DDP over gloo)")
        zero_stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
        if "DEEPSPEED" in sharded and zero_stage == "3":  # each rank holds an empty placeholder per parameter
            raise RuntimeError("the accelerate config asks for DeepSpeed ZeRO stage 3, whose partitioned parameters "
                               "this trainer does not gather for its checkpoints yet (the saves would hold empty "
                               "tensors). Use train/configs/fsdp2.yaml (sharded, gathered on save), ZeRO stage 1-2, "
                               "or DDP")
        self.accelerator = Accelerator(
            cpu=cpu, mixed_precision="no" if cpu else "bf16",
            # Unused parameters happen legitimately (a text-only micro-batch never reaches the
            # vision encoder); biases are kept in sync by identical updates, not broadcasts.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)],
        )
        set_seed(cfg.seed)
        self.output = Path(cfg.output)
        self.processor = load_processor(cfg.model)
        self.vlm = load_model(cfg, self.processor)
        model = self.vlm.model
        self.trainable_by_part = apply_freeze(model, cfg)
        if cfg.mtp_only:
            model = prepare_mtp_only(self.vlm)
        self.mtp_weight = cfg.mtp_loss_weight if has_mtp(model) else 0.0
        layers = len(model.language_model.layers)
        self.box_attention = (BoxAttention(model, self.processor.tokenizer, layer=cfg.box_attention_layer % layers)
                              if cfg.box_attention_weight else None)
        set_gradient_checkpointing(model, cfg.gradient_checkpointing)
        set_record_routing(model, cfg.seq_aux_loss_coef > 0)
        self.moe_layers = balance_layers(balance.find_moe_layers(model), mtp_only=cfg.mtp_only)
        if cfg.mode == "lora":
            model = lora.wrap(model, cfg.lora, base_path=cfg.model)
            self._main_log(lora.describe(model))
        model.train()
        optimizer = build_optimizer(model.named_parameters(), name=cfg.optimizer, lr=cfg.lr,
                                    weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(optimizer, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                                         min_lr_ratio=cfg.min_lr_ratio)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

        self.bad = BadRecords(strict=cfg.strict)
        encoder = Encoder(self.processor, max_length=cfg.max_length, thinking=cfg.thinking)
        self.train_data = Dataset(cfg.data, encoder, bad=self.bad)
        self.eval_data = Dataset(cfg.eval_data, encoder, bad=self.bad) if cfg.eval_data else None
        if len(self.bad):
            self._main_log(self.bad.summary(), level=logging.WARNING)
        world = self.accelerator.num_processes
        self.global_batch = cfg.batch_size * cfg.grad_accum * world
        if len(self.train_data) < self.global_batch:
            raise ValueError(f"{len(self.train_data)} usable samples < one global batch of {self.global_batch} "
                             f"(batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x {world} processes)")
        self.state = checkpoint.TrainerState(step=0, epoch=0, index=0, tokens=0)

    # ---- the loop ---------------------------------------------------------------------------

    def train(self, *, on_step: Callable[[int, float], None] | None = None,
              stop: Callable[[], bool] | None = None) -> TrainResult:
        """Run to `max_steps` (resuming first when `cfg.resume`). `on_step(step, loss)` is
        called after each optimiser step on every process. `stop()` is asked after each step
        too (on every process): when it says True on any, the run ends there as it would at
        `max_steps` (a checkpoint, the final save), its schedule still the one of `max_steps`,
        so a resume continues it."""
        cfg, acc = self.cfg, self.accelerator
        if cfg.resume:
            self._resume()
        elif checkpoint.latest(self.output) is not None:
            raise FileExistsError(f"{self.output} already holds checkpoints of a run: pass --resume to "
                                  "continue it, or choose another --output")
        metrics = Metrics(self.output / "metrics.jsonl", enabled=acc.is_main_process, after_step=self.state.step)
        bar = tqdm(total=cfg.max_steps, initial=self.state.step, disable=not (cfg.progress and acc.is_main_process),
                   desc=cfg.mode, dynamic_ncols=True)
        losses, eval_losses = {}, {}
        while self.state.step < cfg.max_steps:
            started = time.perf_counter()
            loss, tokens, loads, mtp_loss = self._step(self._next_batches())
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or math.inf)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.moe_layers and cfg.bias_update_rate > 0:
                balance.update_biases(self.moe_layers, loads, rate=cfg.bias_update_rate)
            self.state = checkpoint.TrainerState(step=self.state.step + 1, epoch=self.state.epoch,
                                                 index=self.state.index, tokens=self.state.tokens + tokens)
            if acc.device.type == "cuda":  # CUDA runs the optimiser step asynchronously: time all of it
                torch.cuda.synchronize(acc.device)
            step, elapsed = self.state.step, time.perf_counter() - started
            losses[step] = loss
            lr = self.optimizer.param_groups[0]["lr"]
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                record = {"step": step, "loss": loss, "lr": lr, "tokens_per_s": tokens / elapsed,
                          "tokens": self.state.tokens, "grad_norm": float(grad_norm), "epoch": self.state.epoch}
                record.update(balance.load_stats(self.moe_layers, loads))
                if self.mtp_weight:
                    record["mtp_loss"] = mtp_loss
                if self.box_attention is not None and self.box_attention.masses:
                    record["box_attention_mass"] = self.box_attention.masses[-1]
                metrics.write(record)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens / elapsed:.0f}")
            bar.update(1)
            last = step == cfg.max_steps or self._stopping(stop)
            if self.eval_data is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or last):
                eval_losses[step] = self.evaluate()
                metrics.write({"step": step, "eval_loss": eval_losses[step]})
            if (cfg.save_every and step % cfg.save_every == 0) or last:
                self.save_checkpoint()
            if on_step is not None:
                on_step(step, loss)
            if last:
                break
        bar.close()
        metrics.close()
        self.save_final()
        if len(self.bad):
            self._main_log(self.bad.summary(), level=logging.WARNING)
        return TrainResult(losses, eval_losses, self.bad, self.output)

    def _stopping(self, stop: Callable[[], bool] | None) -> bool:
        """Does `stop` end the run here? Asked on every process, decided for all at once (each
        reads its own clock; a process that stopped alone would leave the others waiting)."""
        if stop is None:
            return False
        if stop():
            self.accelerator.set_trigger()
        return self.accelerator.check_trigger()

    def _next_batches(self) -> list[list[Sample]]:
        """This process's micro-batches (lists of samples) for the next optimiser step."""
        cfg, acc = self.cfg, self.accelerator
        epoch, index = self.state.epoch, self.state.index
        order = self._order(epoch)
        if index + self.global_batch > len(order):  # drop the ragged tail: every step is full
            epoch, index = epoch + 1, 0
            order = self._order(epoch)
        chosen = order[index:index + self.global_batch]
        self.state = checkpoint.TrainerState(step=self.state.step, epoch=epoch,
                                             index=index + self.global_batch, tokens=self.state.tokens)
        per_process = cfg.batch_size * cfg.grad_accum
        mine = chosen[acc.process_index * per_process:(acc.process_index + 1) * per_process]
        return [[self.train_data.sample(i) for i in mine[k:k + cfg.batch_size]]
                for k in range(0, per_process, cfg.batch_size)]

    def _order(self, epoch: int) -> list[int]:
        return epoch_order(self.train_data.lengths, global_batch=self.global_batch, seed=self.cfg.seed,
                           epoch=epoch, group_by_length=self.cfg.group_by_length)

    def _step(self, micro: list[list[Sample]]) -> tuple[float, int, torch.Tensor, float]:
        """Forward/backward over the micro-batches; returns the global token-mean loss, the
        global token count, the (layers, experts) loads summed over the step and the MTP loss."""
        acc, cfg = self.accelerator, self.cfg
        batches = [pack(samples, row_length=cfg.row_length, pad_id=self._pad_id) for samples in micro]
        local = torch.tensor([float(sum(b.num_target_tokens for b in batches)), float(sum(b.num_tokens for b in batches)),
                              float(sum(len(mtp_targets(b.targets, b.segment_ids)[1]) for b in batches))],
                             device=acc.device)
        global_targets, global_tokens, global_mtp = acc.reduce(local, reduction="sum").tolist()
        scale = acc.num_processes / max(global_targets, 1.0)
        mtp_scale = self.mtp_weight * acc.num_processes / max(global_mtp, 1.0)
        ce_total, mtp_total = torch.zeros((), device=acc.device), torch.zeros((), device=acc.device)
        loads = torch.zeros(len(self.moe_layers), self._num_experts(), dtype=torch.float64)
        try:
            for i, batch in enumerate(batches):
                sync = i == len(batches) - 1
                with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                    ce_sum, mtp_sum = self._loss_sum(batch)
                    loss = ce_sum * scale + mtp_sum * mtp_scale
                    if cfg.seq_aux_loss_coef > 0 and self.moe_layers:
                        loss = loss + cfg.seq_aux_loss_coef * self._aux_loss(batch) / len(batches)
                    if self.box_attention is not None:
                        loss = loss + cfg.box_attention_weight * self.box_attention.loss(batch) / len(batches)
                    acc.backward(loss)
                ce_total += ce_sum.detach()
                mtp_total += mtp_sum.detach()
                loads += balance.current_loads(self.moe_layers)
        finally:
            self._count_only(None)
        ce_global, mtp_global = acc.reduce(torch.stack([ce_total, mtp_total]), reduction="sum").tolist()
        loads = acc.reduce(loads.to(acc.device), reduction="sum").cpu() if acc.num_processes > 1 else loads
        return ce_global / max(global_targets, 1.0), int(global_tokens), loads, mtp_global / max(global_mtp, 1.0)

    def _loss_sum(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over the batch's target tokens, and the MTP layer's
        summed cross-entropy for token t+2 (train/mtp.py; zero without it), float32."""
        device = self.accelerator.device
        targets = batch.targets.to(device)
        scored = targets != IGNORE  # the lm_head runs on these positions only
        mtp_at, mtp_ids = mtp_targets(targets, batch.segment_ids.to(device)) if self.mtp_weight else (None, None)
        self._count_only(batch)
        out = self.model(**batch.model_inputs(device), logits_at=scored, mtp_logits_at=mtp_at)
        ce = F.cross_entropy(out.logits.float(), targets[scored], reduction="sum")
        if mtp_at is None:
            return ce, torch.zeros((), device=device)
        if self.cfg.mtp_target == "model":  # the main model's distribution for token t+2 (at t+1)
            mtp_ids = teacher_probs(out.logits, scored, mtp_at)
        return ce, F.cross_entropy(out.mtp_logits.float(), mtp_ids, reduction="sum")

    def _count_only(self, batch) -> None:
        """Expert loads (for the bias update) count `batch`'s real tokens, not its padding; the
        mask stays set through backward (gradient checkpointing re-runs the MoE forward).
        None: count every token (reset after each step and eval, so other inputs never meet a stale mask)."""
        real = None if batch is None else (batch.segment_ids > 0).flatten().to(self.accelerator.device)
        for layer in self.moe_layers:
            layer.module.count_only = real

    def _aux_loss(self, batch) -> torch.Tensor:
        B, T = batch.segment_ids.shape
        # Sequences unique across rows: row b's segment k becomes b*(T+1)+k.
        rows = torch.arange(B)[:, None] * (T + 1)
        seq_N = torch.where(batch.segment_ids > 0, batch.segment_ids + rows, 0).flatten().to(self.accelerator.device)
        terms = [balance.sequence_balance_loss(layer.module.last_scores, layer.module.last_topk_ids, seq_N)
                 for layer in self.moe_layers]
        return torch.stack(terms).mean()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-mean loss over the whole eval set (samples sharded over processes)."""
        acc, cfg = self.accelerator, self.cfg
        self.model.eval()
        mine = list(range(acc.process_index, len(self.eval_data), acc.num_processes))
        totals = torch.zeros(2, device=acc.device)
        try:
            for k in range(0, len(mine), cfg.batch_size):
                batch = pack([self.eval_data.sample(i) for i in mine[k:k + cfg.batch_size]],
                             row_length=cfg.row_length, pad_id=self._pad_id)
                totals += torch.stack([self._loss_sum(batch)[0],
                                       torch.tensor(float(batch.num_target_tokens), device=acc.device)])
        finally:
            self._count_only(None)
        self.model.train()
        ce, n = acc.reduce(totals, reduction="sum").tolist()
        return ce / max(n, 1.0)

    # ---- saving and resuming ----------------------------------------------------------------

    def save_checkpoint(self) -> None:
        acc, step = self.accelerator, self.state.step
        if acc.is_main_process:
            staging = checkpoint.begin(self.output, step)
        acc.wait_for_everyone()
        staging = checkpoint.staging_dir(self.output, step)
        checkpoint.save_rng(staging, acc.process_index)
        model = acc.unwrap_model(self.model)
        # Every process takes part (FSDP2 gathers the shards); the main process writes.
        tensors = checkpoint.save_trainable(staging, model, self.optimizer, main=acc.is_main_process)
        if acc.is_main_process:
            torch.save(self.scheduler.state_dict(), staging / "scheduler.pt")
            self.state.save(staging / "trainer_state.json")
            self.cfg.save(staging / "train_config.json")
            (staging / "world_size").write_text(f"{acc.num_processes}\n")
            if self.cfg.mode == "lora":
                save_adapter(model, staging / "adapter", state_dict=tensors if full_state.is_sharded(model) else None)
        acc.wait_for_everyone()
        if acc.is_main_process:
            checkpoint.commit(self.output, step, keep_last=self.cfg.keep_last)
        acc.wait_for_everyone()

    def _resume(self) -> None:
        directory = checkpoint.latest(self.output)
        if directory is None:
            self._main_log(f"--resume: no checkpoint in {self.output / 'checkpoints'}; starting fresh")
            return
        saved = TrainConfig.load(directory / "train_config.json")
        if saved.data != self.cfg.data or saved.mode != self.cfg.mode or saved.seed != self.cfg.seed:
            raise ValueError(f"{directory} belongs to another run (mode/data/seed differ): "
                             f"saved {saved.mode}, {saved.data!r}, seed {saved.seed}")
        world = int((directory / "world_size").read_text())
        if world != self.accelerator.num_processes:
            raise ValueError(f"{directory} was written by {world} processes; resume with the same count "
                             f"(now {self.accelerator.num_processes})")
        checkpoint.load_trainable(directory, self.accelerator.unwrap_model(self.model), self.optimizer)
        self.scheduler.load_state_dict(checkpoint.load_state(directory / "scheduler.pt"))
        checkpoint.load_rng(directory, self.accelerator.process_index)
        self.state = checkpoint.TrainerState.load(directory / "trainer_state.json")
        self._main_log(f"resumed from {directory} at step {self.state.step}")

    def save_final(self) -> None:
        """The run's product in OUTPUT/: a peft adapter (lora) or a checkpoint in the released
        layout with the processor files (pretrain / sft). Sharded (FSDP2), every process first
        takes part in gathering the full tensors onto the main process."""
        acc = self.accelerator
        acc.wait_for_everyone()
        model = acc.unwrap_model(self.model)
        tensors = None
        if full_state.is_sharded(model):
            trainable = [n for n, p in model.named_parameters() if p.requires_grad]
            tensors = full_state.gather(model, trainable if self.cfg.mode == "lora" else None,
                                        main=acc.is_main_process)
        if acc.is_main_process:
            if self.cfg.mode == "lora":
                save_adapter(model, self.output, state_dict=tensors)
            else:
                type(self.vlm)(model).save_pretrained(self.output, tensors=tensors)
                copy_processor_files(processor_dir(self.cfg.model), self.output)
            self.cfg.save(self.output / "train_config.json")
        acc.wait_for_everyone()

    # ---- small helpers ----------------------------------------------------------------------

    @property
    def _pad_id(self) -> int:
        pad = self.processor.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    def _num_experts(self) -> int:
        return self.moe_layers[0].bias_E.numel() if self.moe_layers else 0

    def _main_log(self, message: str, level: int = logging.INFO) -> None:
        if self.accelerator.is_main_process:
            log.log(level, message)
