"""The training loop written once for both backends: flags, schedules, seeds, masks, logs."""
