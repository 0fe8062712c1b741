"""Experiments built from whole trainings: the paper's Table 1 ablation rows (`ablation`)."""
