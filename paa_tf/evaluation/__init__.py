"""Evaluation on a split: running a checkpoint or an export (`evaluate`), the undecoded
evaluation input (`inputs`) and pycocotools scoring (`coco_scoring`, no TensorFlow)."""
