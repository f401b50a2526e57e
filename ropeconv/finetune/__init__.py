"""Fine-tuning for a context extension: PoSE position sampling and a LoRA loop (peft, optional)."""
