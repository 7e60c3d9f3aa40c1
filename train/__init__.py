"""train: trainers on accelerate (from scratch, full fine-tune, LoRA via peft), the
conversation data pipeline, the fine-tuning CLI and the synthetic GUI/video data engine."""
