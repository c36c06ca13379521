"""Text in, tokens out: the tokenizer and each task's data (E2E, raw text, instructions, labels)."""
