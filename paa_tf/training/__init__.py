"""Training: how a run starts (init_from), steps, checkpoints and schedules."""
