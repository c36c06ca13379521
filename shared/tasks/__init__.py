"""The non-E2E training tasks (pretraining, classification, instruction and preference tuning)."""
