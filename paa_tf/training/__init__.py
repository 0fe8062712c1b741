"""Training: the `Trainer` loop (`train`), checkpoints and resume (`checkpoints`), schedules."""
