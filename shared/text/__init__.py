"""Text data: tokenizer, datasets and their encodings (backend-neutral)."""
