"""`python -m train sft|pretrain|lora|merge ...`: the fine-tuning CLI.

    python -m train lora --data shots.jsonl --output runs/lora --max-steps 200
    python -m train merge --adapter runs/lora --output runs/merged   # --model BASE: default, the adapter's
    accelerate launch --num_processes 2 -m train sft --model BASE --data d.jsonl --output runs/sft

Each training command starts from its preset (`train.config.sft()`, `pretrain()`, `lora()`);
the defaults shown by `--help` are that preset's. Run `python -m train COMMAND --help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from .config import LoraOptions, TrainConfig, lora, pretrain, sft

PRESETS = {"sft": sft, "pretrain": pretrain, "lora": lora}
DESCRIPTIONS = {
    "sft": "Full fine-tune of a checkpoint on conversations (every unfrozen parameter trains).",
    "pretrain": "Train a model, usually from scratch (--from-scratch, or --model tiny for a preset).",
    "lora": "Train LoRA adapters (peft) on a frozen checkpoint; writes a standard peft adapter.",
}


def _training_parser(sub: argparse._SubParsersAction, mode: str) -> None:
    d = PRESETS[mode]()
    p = sub.add_parser(mode, help=DESCRIPTIONS[mode], description=DESCRIPTIONS[mode],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=d.model, help="checkpoint directory in the released layout, or the name "
                   "of a vlm.config preset ('tiny') built from scratch for the project tokenizer; "
                   "unset: the embedded default model in assets/model")
    g.add_argument("--from-scratch", action="store_true", help="use only --model's config.json; random weights")
    g.add_argument("--data", required=True, help="training JSONL, one conversation per line (OpenAI-style "
                   "messages, or ShareGPT/LLaMA-Factory with <image>/<video> markers); media paths are "
                   "relative to the file")
    g.add_argument("--eval-data", default=d.eval_data, help="optional eval JSONL (token-mean loss)")
    g.add_argument("--output", required=True, help="run directory: final weights or adapter, metrics.jsonl, "
                   "checkpoints/")
    g.add_argument("--strict", action="store_true", help="a bad record is fatal (default: skipped, counted "
                   "and reported with its line number)")
    g.add_argument("--thinking", choices=("default", "on", "off"), default="default",
                   help="chat-template thinking switch for user turns ('off' appends /nothink)")

    g = p.add_argument_group("schedule")
    g.add_argument("--max-steps", type=int, default=d.max_steps, help="optimiser steps")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="cosine floor as a fraction of --lr")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warmup steps")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="decoupled weight decay on matrices")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max global gradient norm; 0 = off")
    g.add_argument("--optimizer", choices=("adamw", "muon"), default=d.optimizer,
                   help="'muon': torch.optim.Muon on 2-D hidden matrices, AdamW on the rest (incl. 3-D experts)")

    g = p.add_argument_group("batching")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="conversations per micro-batch per process")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimiser step")
    g.add_argument("--max-length", type=int, default=d.max_length, help="max tokens per conversation "
                   "(vision tokens included); longer ones are bad records")
    g.add_argument("--pack-length", type=int, default=d.pack_length, help="tokens per packed row; 0 = --max-length")
    g.add_argument("--no-group-by-length", action="store_true", help="plain shuffle instead of length grouping")
    g.add_argument("--seed", type=int, default=d.seed, help="data order and initialisation seed")

    g = p.add_argument_group("what trains")
    g.add_argument("--freeze-vision", action="store_true", help="freeze the vision encoder")
    g.add_argument("--freeze-projector", action="store_true", help="freeze the projector (visual.merger)")
    g.add_argument("--freeze-language", action="store_true", help="freeze the language model and lm_head")
    g.add_argument("--mtp-loss-weight", type=float, default=d.mtp_loss_weight,
                   help="weight of the multi-token-prediction loss when the model has an MTP layer; 0 = off")
    g.add_argument("--mtp-only", action="store_true", help="train only the MTP layer on the frozen model "
                   "(one is added, started from the last layer and lm_head, when the checkpoint has none)")
    g.add_argument("--mtp-target", choices=("data", "model"), default=d.mtp_target,
                   help="the MTP layer learns token t+2 of the data, or the main model's own distribution for it")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute blocks in backward (less memory)")
    g.add_argument("--bias-update-rate", type=float, default=d.bias_update_rate,
                   help="MoE loss-free balance: bias += rate * sign(mean_load - load) after each step; 0 = off")
    g.add_argument("--seq-aux-loss-coef", type=float, default=d.seq_aux_loss_coef,
                   help="optional sequence-level MoE balance loss weight (GLM-4.5 used 1e-4)")
    if mode == "lora":
        _lora_arguments(p.add_argument_group("LoRA"), d)

    g = p.add_argument_group("bookkeeping")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics.jsonl lines")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between evals; 0 = at the end only")
    g.add_argument("--save-every", type=int, default=d.save_every, help="steps between checkpoints; 0 = at the end")
    g.add_argument("--keep-last", type=int, default=d.keep_last, help="checkpoints kept on disk")
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output "
                   "(model, optimiser, scheduler, RNG, data position, expert biases)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _lora_arguments(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--lora-r", type=int, default=d.lora.r, help="adapter rank")
    g.add_argument("--lora-alpha", type=int, default=d.lora.alpha, help="adapter scale numerator (scale = alpha / r)")
    g.add_argument("--lora-dropout", type=float, default=d.lora.dropout, help="dropout on the adapter input")
    g.add_argument("--lora-targets", choices=("attention", "attention_mlp", "all_linear"), default=d.lora.targets,
                   help="attention: q/k/v/o; attention_mlp: + dense and shared-expert MLPs; all_linear: every "
                   "linear but lm_head and the router (routed experts are never wrapped)")
    g.add_argument("--lora-vision", action="store_true", help="also wrap the vision encoder's linears")
    g.add_argument("--lora-embeddings", action="store_true",
                   help="also train the token embeddings and lm_head in full (new tokens need their own rows)")
    g.add_argument("--lora-start", default=None, metavar="ADAPTER",
                   help="continue training this adapter directory (its rank, targets and embeddings as given here)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{sft,pretrain,lora,merge}")
    for mode in PRESETS:
        _training_parser(sub, mode)
    m = sub.add_parser("merge", help="fold a LoRA adapter into its base and save a full checkpoint",
                       description="Fold a LoRA adapter into its base model and write a full checkpoint in "
                       "the released layout (plus the base's tokenizer files).")
    m.add_argument("--model", default=None, help="base checkpoint directory the adapter was trained on "
                   "(default: the base its adapter_config.json records; none recorded: the embedded default model)")
    m.add_argument("--adapter", required=True, help="adapter directory (adapter_config.json + "
                   "adapter_model.safetensors)")
    m.add_argument("--output", required=True, help="where to write the merged checkpoint")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = PRESETS[args.command]()
    lora_options = base.lora
    if args.command == "lora":
        lora_options = LoraOptions(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                                   targets=args.lora_targets, vision=args.lora_vision,
                                   embeddings=args.lora_embeddings, start=args.lora_start)
    return dataclasses.replace(
        base, model=args.model, from_scratch=args.from_scratch, data=args.data, eval_data=args.eval_data,
        output=args.output, max_steps=args.max_steps, lr=args.lr, min_lr_ratio=args.min_lr_ratio,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        optimizer=args.optimizer, batch_size=args.batch_size, grad_accum=args.grad_accum,
        max_length=args.max_length, pack_length=args.pack_length, group_by_length=not args.no_group_by_length,
        seed=args.seed, freeze_vision=args.freeze_vision, freeze_projector=args.freeze_projector,
        freeze_language=args.freeze_language, lora=lora_options, gradient_checkpointing=args.gradient_checkpointing,
        bias_update_rate=args.bias_update_rate, seq_aux_loss_coef=args.seq_aux_loss_coef,
        mtp_loss_weight=args.mtp_loss_weight, mtp_only=args.mtp_only, mtp_target=args.mtp_target,
        log_every=args.log_every, eval_every=args.eval_every, save_every=args.save_every,
        keep_last=args.keep_last, resume=args.resume, strict=args.strict,
        thinking={"default": None, "on": True, "off": False}[args.thinking], progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "merge":
        from .lora import merge_checkpoint
        try:
            out = merge_checkpoint(model=args.model, adapter=args.adapter, output=args.output)
        except (FileNotFoundError, ValueError) as err:
            build_parser().exit(2, f"python -m train merge: {err}\n")
        print(f"merged checkpoint written to {out}")
        return 0
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        build_parser().error(str(e))
    from .trainer import Trainer  # heavy imports only once the arguments are valid
    trainer = Trainer(cfg)
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        last = max(result.losses) if result.losses else None
        print(f"done: {cfg.max_steps} steps, final loss {result.losses[last]:.4f}" if last else "done: nothing to do")
        print(f"output: {result.output}  ({'adapter' if cfg.mode == 'lora' else 'checkpoint'}, metrics.jsonl)")
        print(result.bad_records.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
