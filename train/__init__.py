"""train: trainers on accelerate (from scratch, full fine-tune, LoRA via peft), the
conversation data pipeline and the fine-tuning CLI. The synthetic data engine is `synth`, the
default model's recipe `recipes`."""
