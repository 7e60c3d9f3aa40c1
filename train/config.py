"""Typed training configuration.

One frozen dataclass, `TrainConfig`, holds every option of a run; the CLI (`train/__main__.py`)
builds it from flags and the trainer never mutates it. Presets are plain functions (`sft()`,
`pretrain()`, `lora()`) that fill in sensible defaults for each mode. The config is written into
every checkpoint (`train_config.json`) so a resumed run can check it continues the same run.

Batch sizes are counted in *samples*: one optimiser step sees
`batch_size * grad_accum * num_processes` conversations (the global batch), packed into rows.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Mode = Literal["pretrain", "sft", "lora"]
OptimizerName = Literal["adamw", "muon"]
LoraTargets = Literal["attention", "attention_mlp", "all_linear"]


@dataclass(frozen=True, kw_only=True)
class LoraOptions:
    """peft LoRA settings; used only in mode `lora`."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: LoraTargets = "attention"  # which linears get adapters (see train/lora.py)
    vision: bool = False  # also wrap the vision encoder's linears
    # Also train the token embeddings and lm_head in full (peft `modules_to_save`). Tokens the base
    # never saw keep their random initial rows, which no low-rank adapter elsewhere can put to use:
    # new words in the data (a tool's name, the values to copy) need their own rows learned.
    embeddings: bool = False
    # Continue training an adapter saved earlier (a directory in peft's layout, e.g. a previous
    # run's output) instead of starting from zero adapters; its rank, targets and `embeddings` must
    # be the ones above.
    start: str | None = None

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora r={self.r}: expected an integer >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout={self.dropout}: expected 0 <= dropout < 1")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Every option of one training run. Units are in the names where they matter."""

    mode: Mode = "sft"
    model: str | None = None  # checkpoint directory; None = the embedded default model
    from_scratch: bool = False  # use only `model`'s config.json and start from random weights
    data: str = ""  # training JSONL
    eval_data: str | None = None  # optional eval JSONL, evaluated every `eval_every` steps
    output: str = "runs/out"

    # Schedule. A step is one optimiser step over the global batch.
    max_steps: int = 100
    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 0  # linear warmup from 0 to lr over this many steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    optimizer: OptimizerName = "adamw"  # "muon": Muon on 2-D hidden matrices, AdamW on the rest

    # Batching.
    batch_size: int = 4  # samples per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimiser step per process
    max_length: int = 2048  # tokens per sample; longer samples are bad records
    pack_length: int = 0  # tokens per packed row; 0 = max_length
    group_by_length: bool = True
    seed: int = 0

    # What trains.
    freeze_vision: bool = False
    freeze_projector: bool = False
    freeze_language: bool = False
    lora: LoraOptions = field(default_factory=LoraOptions)
    gradient_checkpointing: bool = False

    # Multi-token prediction (vlm/mtp.py; train/mtp.py): when the model has an MTP layer, its
    # loss (token t+2 from the hidden state at t and token t+1, on assistant tokens) is added with
    # this weight (GLM-4.5: 0.3, later 0.1); 0 leaves the layer untrained.
    mtp_loss_weight: float = 0.3
    mtp_only: bool = False  # train only the MTP layer on the frozen model (adds one if there is none)
    # What the MTP layer learns at t: "data", token t+2 of the conversation; "model", the main
    # model's own distribution for it (self-distillation: what speculative decoding accepts).
    mtp_target: Literal["data", "model"] = "data"

    # Box attention (train/box_attention.py): while a box answer is written, one head of one layer
    # is told to look at the image tokens inside the answered box; 0 turns it off.
    box_attention_weight: float = 0.0
    box_attention_layer: int = -2  # counted from the end when negative

    # MoE balance (GLM-4.5 / DeepSeek-V3 loss-free balancing).
    bias_update_rate: float = 1e-3  # bias += rate * sign(mean_load - load) after each step
    seq_aux_loss_coef: float = 0.0  # optional sequence-level balance loss; GLM-4.5 used 1e-4

    # Bookkeeping.
    log_every: int = 1
    eval_every: int = 0  # 0 = only at the end when eval_data is set
    save_every: int = 0  # 0 = only at the end
    keep_last: int = 2  # checkpoints kept on disk
    resume: bool = False  # continue from the newest checkpoint in `output`
    strict: bool = False  # a bad record is fatal instead of skipped
    thinking: bool | None = None  # chat-template thinking switch for user turns (None: template default)
    progress: bool = True  # tqdm bar on the main process

    def __post_init__(self) -> None:
        positive = {"max_steps": self.max_steps, "batch_size": self.batch_size,
                    "grad_accum": self.grad_accum, "max_length": self.max_length,
                    "keep_last": self.keep_last, "log_every": self.log_every}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name}={value}: expected an integer >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: expected a positive learning rate")
        if self.warmup_steps < 0 or self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps}: expected 0..max_steps ({self.max_steps})")
        if self.pack_length and self.pack_length < self.max_length:
            raise ValueError(f"pack_length={self.pack_length} < max_length={self.max_length}: "
                             "a row must hold at least one sample of the maximum length")
        if self.mode == "lora" and self.from_scratch:
            raise ValueError("mode 'lora' with from_scratch: adapters on random weights make no sense")
        if self.mtp_loss_weight < 0 or self.mtp_loss_weight != self.mtp_loss_weight:
            raise ValueError(f"mtp_loss_weight={self.mtp_loss_weight}: expected a number >= 0")
        if self.mtp_target not in ("data", "model"):
            raise ValueError(f"mtp_target={self.mtp_target!r}: expected 'data' or 'model'")
        if self.mtp_only and (self.mode == "lora" or self.mtp_loss_weight == 0 or self.from_scratch):
            raise ValueError(f"mtp_only trains the MTP layer of a trained model with its loss: not with mode "
                             f"{self.mode!r}, from_scratch={self.from_scratch}, mtp_loss_weight={self.mtp_loss_weight}")
        if not (self.box_attention_weight >= 0 and math.isfinite(self.box_attention_weight)):
            raise ValueError(f"box_attention_weight={self.box_attention_weight}: expected a finite number >= 0")
        if self.box_attention_weight and (self.mode == "lora" or self.gradient_checkpointing):
            raise ValueError("box_attention_weight scores the head from the layer's kept input with the base "
                             "weights: not with mode 'lora' (adapted weights) or gradient_checkpointing (the input "
                             "is recomputed, not kept)")
        if self.freeze_vision and self.freeze_projector and self.freeze_language and self.mode != "lora":
            raise ValueError("every part is frozen: nothing would train")

    @property
    def row_length(self) -> int:
        return self.pack_length or self.max_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        raw = dict(raw)
        raw["lora"] = LoraOptions(**raw.get("lora", {}))
        return cls(**raw)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def sft(**overrides: Any) -> TrainConfig:
    """Full fine-tune of a released or default checkpoint on conversations."""
    return TrainConfig(**{"mode": "sft", "lr": 1e-5, "warmup_steps": 0, **overrides})


def pretrain(**overrides: Any) -> TrainConfig:
    """Train a new model (usually `from_scratch`); every part trains, Muon on hidden matrices."""
    return TrainConfig(**{"mode": "pretrain", "lr": 3e-4, "optimizer": "muon",
                          "weight_decay": 0.1, **overrides})


def lora(**overrides: Any) -> TrainConfig:
    """LoRA adapters on a frozen checkpoint."""
    return TrainConfig(**{"mode": "lora", "lr": 2e-4, "warmup_steps": 0, **overrides})
