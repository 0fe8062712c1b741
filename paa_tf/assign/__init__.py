"""Anchor assignment: PAA and the baselines of the ablations, behind one call.

`assign(config, ...)` dispatches on `config.method` ('paa' | 'iou' | 'atss') and
returns an `AssignResult` of per-anchor targets. No gradient flows through it.
Lower-level entry points: `paa_candidates_and_gmm` (PAA with its candidates,
costs and GMM fits, for visualisation), `iou_assign`, `atss_assign`.
"""

import tensorflow as tf

from paa_tf import config as config_lib
from paa_tf.assign.baselines import atss_assign, iou_assign
from paa_tf.assign.labels import BACKGROUND, IGNORE, AssignResult, PaaDiagnostics
from paa_tf.assign.paa import paa_assign, paa_candidates_and_gmm

METHODS = config_lib.choices("assign.method")

__all__ = ["BACKGROUND", "IGNORE", "METHODS", "AssignResult", "PaaDiagnostics", "assign",
           "atss_assign", "iou_assign", "paa_assign", "paa_candidates_and_gmm"]


def assign(config, anchors, level_ids, num_levels, gt_boxes, gt_classes, cls_logits, pred_boxes,
           plus_one=False, loss_config=None):
    """Per-anchor training targets of a batch.

    Works eagerly, inside `tf.function` and inside `strategy.run` (per-replica
    batch); all shapes must be static. PAA's EM always runs XLA-compiled.

    Args:
      config: `paa_tf.config.AssignConfig` (fields: method, candidate_iou,
        low_quality, topk, score_lambda, separation, fnp_count, fsr_threshold,
        single_candidate, no_component0, max_gt_per_batch, iou_positive,
        iou_negative, atss_topk).
      anchors: float32 [A, 4] yxyx pixels.
      level_ids: int32 [A] pyramid level of each anchor, static (NumPy), sorted.
      num_levels: python int.
      gt_boxes: float32 [B, M, 4] yxyx pixels; padded rows -1.
      gt_classes: int32 [B, M] in 0..C-1; padded rows -1.
      cls_logits: float [B, A, C] class logits (detached here).
      pred_boxes: float [B, A, 4] decoded predicted boxes, yxyx (detached here).
      plus_one: IoUs with the "+1" pixel convention (authors' code).
      loss_config: `paa_tf.config.LossConfig`; PAA's anchor score (Eq. 3) is the training
        loss, so it uses the loss's `focal_alpha` and `focal_gamma` (default `LossConfig()`).
    Returns:
      `AssignResult` (labels int32 [B, A], matched_boxes float32 [B, A, 4],
      positive_mask bool [B, A], matched_gt int32 [B, A], num_positives_per_gt
      int32 [B, M]).
    """
    method = config.method
    gt_boxes = tf.stop_gradient(tf.convert_to_tensor(gt_boxes, tf.float32))
    if method == "paa":
        return paa_assign(config, anchors, level_ids, num_levels, gt_boxes, gt_classes,
                          cls_logits, pred_boxes, plus_one, loss_config)
    if method == "iou":
        return iou_assign(config, anchors, gt_boxes, gt_classes, plus_one)
    if method == "atss":
        return atss_assign(config, anchors, level_ids, num_levels, gt_boxes, gt_classes,
                           plus_one)
    raise ValueError(f"assign.method must be one of {METHODS}, got {method!r}")
