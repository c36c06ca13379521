"""Training: the loop, its arguments, schedules, seeding, logs (backend-neutral)."""
