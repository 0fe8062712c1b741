"""Training: the `Trainer` loop (`train`), how a fresh run starts (`init_from`), checkpoints
and resume (`checkpoints`), which checkpoints train on (`good_checkpoints`, `divergence`), one
writer per run folder (`run_lock`), schedules."""
