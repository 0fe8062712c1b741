"""IoU pre-assignment of anchors to ground truths (docs/PAA.md, Step A).

Every anchor goes to its best GT by IoU when that IoU reaches a threshold;
a low-quality rescue then gives each GT's best anchors (ties included) a GT
even when they are below the threshold. The two references differ in whom a
rescued anchor goes to:

* 'kk' (authors' code, maskrcnn-benchmark `Matcher`): the anchor's own argmax GT.
  Only anchors below the threshold change.
* 'mm' (mmdetection `MaxIoUAssigner`, `gt_max_assign_all`): the GT it is best for,
  looping over GTs in index order, so the last such GT wins, and this overrides
  anchors that were already matched to another GT.

GTs whose best IoU is 0 (zero-area or out-of-image boxes) do not rescue: with
both references such a GT would claim every anchor with IoU 0. The data pipeline drops
them (docs/CONVENTIONS.md, "Data filters"); this guard only keeps a bad box from flooding an image.
"""

import tensorflow as tf

from paa_tf import config as config_lib
from paa_tf.ops import boxes as box_ops


def gt_valid_mask(gt_classes):
    """bool [B, M]: real GTs (padded rows have class -1)."""
    return tf.convert_to_tensor(gt_classes) >= 0


def anchor_gt_iou(anchors, gt_boxes, gt_classes, plus_one=False):
    """IoU of every GT with every anchor, -1 for padded GTs.

    Args:
      anchors: float32 [A, 4] yxyx.
      gt_boxes: float32 [B, M, 4] yxyx.
      gt_classes: int32 [B, M], -1 for padding.
    Returns:
      float32 [B, M, A].
    """
    iou = box_ops.pairwise_iou(gt_boxes, anchors, plus_one=plus_one)
    valid = gt_valid_mask(gt_classes)[:, :, None]
    return tf.where(valid, iou, -tf.ones_like(iou))


def match_anchors(iou, threshold, low_quality="kk", allow_low_quality=True):
    """Assign each anchor to at most one GT.

    Args:
      iou: float32 [B, M, A] from `anchor_gt_iou` (-1 rows are padded GTs).
      threshold: anchors with best IoU >= threshold are matched to their best GT.
      low_quality: 'kk' or 'mm' rescue (see module docstring).
      allow_low_quality: False disables the rescue.
    Returns:
      matched_gt: int32 [B, A], GT index or -1.
      best_iou: float32 [B, A], IoU with the anchor's argmax GT (-1 if there is no GT).
    """
    if low_quality not in config_lib.choices("assign.low_quality"):
        raise ValueError(f"assign.low_quality must be one of "
                         f"{config_lib.choices('assign.low_quality')}, got {low_quality!r}")
    num_gt = tf.shape(iou)[1]
    best_iou = tf.reduce_max(iou, axis=1)  # [B, A]
    # argmax with ties to the smallest GT index, deterministic on every backend.
    gt_index = tf.range(num_gt)[None, :, None]
    is_best = iou >= best_iou[:, None, :]
    best_gt = tf.reduce_min(tf.where(is_best, gt_index, num_gt), axis=1)
    has_gt = best_iou >= 0.0
    matched = tf.where(tf.logical_and(has_gt, best_iou >= threshold), best_gt, -1)
    if not allow_low_quality:
        return tf.cast(matched, tf.int32), best_iou

    gt_best = tf.reduce_max(iou, axis=2, keepdims=True)  # [B, M, 1]
    # Exact equality, as both references compare against the row maximum.
    is_gt_best = tf.logical_and(iou == gt_best, gt_best > 0.0)  # [B, M, A]
    rescued = tf.reduce_any(is_gt_best, axis=1)  # [B, A]
    if low_quality == "kk":
        matched = tf.where(rescued, best_gt, matched)
    else:
        last_gt = tf.reduce_max(tf.where(is_gt_best, gt_index, -1), axis=1)
        matched = tf.where(rescued, last_gt, matched)
    return tf.cast(matched, tf.int32), best_iou
