"""The GPT-2 + LoRA model as data: config, parameter layout, checkpoints, file formats."""
