"""Training: the `Trainer` loop (`train`), how a fresh run starts (`init_from`), checkpoints
and resume (`checkpoints`), schedules."""
