"""Inference: the network and post-processing wired together (`detection`), decoding, NMS and
score voting (`postprocess`), test-time augmentation (`tta`)."""
