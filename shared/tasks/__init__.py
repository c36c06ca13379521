"""Training tasks beyond E2E fine-tuning: their flags, data and evaluation (backend-neutral)."""
