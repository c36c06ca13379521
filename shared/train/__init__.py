"""Training: the loop's backend-neutral parts (see shared/trainer.py)."""
