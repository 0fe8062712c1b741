"""Inference: a `PAADetector` and the post-processing wired together, once.

`detect` is the one place where the network's raw outputs meet `paa_tf.inference.postprocess`:
evaluation, prediction pictures and the exported SavedModel all call it; test-time
augmentation calls `candidates`, its pre-NMS half. Both take a pre-processed padded batch and
use that size's anchors (`PAADetector.anchors_for` for a static size, else computed from the
runtime shape), so the square canvas, every orientation bucket (`paa_tf.data.buckets`) and the
export's per-image padding run the same code.

The batch arrives pre-processed at the evaluation scale (`data.eval_shorter_side`) by the one
inference pre-processing (`paa_tf.data.inference_preprocess`), which the evaluation input
pipeline, test-time augmentation, `paa_predict`, `paa_visualize` and the export all call.
"""

import numpy as np
import tensorflow as tf

from paa_tf.inference import postprocess
from paa_tf.ops.anchors import generate_anchors_tf


def _anchors(model, images):
    """(anchors [A, 4] yxyx, per-level sizes) of the padded batch `images`: the model's cache
    for a static (H, W); computed from the runtime shape when H or W is dynamic (the export
    pads each image to its own multiple of 32)."""
    height, width = images.shape[1:3]
    if height is not None and width is not None:
        anchors, level_ids = model.anchors_for(height, width)
        return anchors, postprocess.level_sizes_from_ids(level_ids)
    cfg = model.config.model
    shape = tf.shape(images)
    return generate_anchors_tf(shape[1], shape[2], cfg.min_level, cfg.max_level,
                               octave_base_scale=cfg.octave_base_scale,
                               center_offset=cfg.anchor_center_offset, plus_one=cfg.plus_one)


def _run(model, images):
    """(float32 head outputs, anchors [A, 4] yxyx, level sizes) of a padded batch."""
    anchors, level_sizes = _anchors(model, images)
    outputs = model(images, training=False)
    # Post-processing in float32, whatever the compute dtype of the network.
    outputs = {k: tf.cast(v, tf.float32) for k, v in outputs.items()}
    return outputs, anchors, level_sizes


def detect(model, images, image_info, params):
    """Final detections of a pre-processed batch.

    Args:
      model: a `PAADetector`.
      images: float32 [B, H, W, 3] normalised and padded (H, W static, or dynamic multiples of
        32 in the export).
      image_info: float32 [B, 4, 2] (rows: original size, scaled size, scale, offset).
      params: `postprocess.PostprocessParams`.
    Returns:
      `postprocess.postprocess`'s dict: `detection_boxes` [B, D, 4] yxyx original pixels,
      `detection_scores` [B, D], `detection_classes` int32 [B, D] contiguous (-1 pads),
      `num_detections` int32 [B].
    """
    outputs, anchors, level_sizes = _run(model, images)
    return postprocess.postprocess(outputs["cls_logits"], outputs["box_deltas"],
                                   outputs.get("iou_logits"), anchors, image_info,
                                   level_sizes=level_sizes, params=params)


def candidates(model, images, image_info, params):
    """Pre-NMS candidates of a pre-processed batch (`postprocess.select_candidates`), for
    merging test-time views before NMS (`postprocess.merge_tta`). Arguments as `detect`."""
    outputs, anchors, level_sizes = _run(model, images)
    return postprocess.select_candidates(outputs["cls_logits"], outputs["box_deltas"],
                                         outputs.get("iou_logits"), anchors, level_sizes,
                                         image_info, params)


def make_predict_fn(config, model, params=None):
    """`predict_fn(batch) -> detections` (`detect`'s dict) over batches of pre-processed images.

    `batch` holds `image` float32 [B, H, W, 3] and `image_info` [B, 4, 2]. One `tf.function`
    is traced per padded shape (the square canvas, or each orientation bucket of
    `data.buckets`); `params` defaults to `PostprocessParams.from_config(config)`.
    """
    params = postprocess.PostprocessParams.from_config(config) if params is None else params
    traced = {}

    def predict_fn(batch):
        height, width = (int(s) for s in np.shape(batch["image"])[1:3])
        if (height, width) not in traced:
            traced[(height, width)] = tf.function(
                lambda images, image_info: detect(model, images, image_info, params),
                input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32),
                                 tf.TensorSpec([None, 4, 2], tf.float32)])
        return traced[(height, width)](batch["image"], batch["image_info"])

    return predict_fn
