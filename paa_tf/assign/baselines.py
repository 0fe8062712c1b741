"""Baseline assigners for the ablations of the paper's Table 1.

* `iou_assign`: RetinaNet's IoU hard assignment (Lin et al. 2017): best-GT IoU
  >= `iou_positive` (0.5) positive, < `iou_negative` (0.4) background, in between
  ignored; with the low-quality rescue of the reference codebases (their RetinaNet
  matchers allow low-quality matches), so every GT keeps its best anchors.
* `atss_assign`: ATSS (Zhang et al. 2020): per GT and level the `atss_topk` anchors
  whose centres are closest to the GT centre; IoU threshold = mean + standard
  deviation (unbiased, as `torch.std`) of those candidates' IoUs; positives are
  candidates with IoU >= threshold whose centre lies inside the GT (margin 0.01 px);
  an anchor positive for several GTs goes to the one of highest IoU (ties: smaller
  GT index). Everything else is background; nothing is ignored.

Both return `AssignResult` like PAA and use neither the class logits nor the
predictions (they are model-independent).
"""

import numpy as np
import tensorflow as tf

from paa_tf.assign import iou_match
from paa_tf.assign.labels import BACKGROUND, IGNORE, AssignResult
from paa_tf.assign.paa import batch_size, level_bounds
from paa_tf.assign.paa import option as _option


def _result(labels, matched_gt, gt_boxes, gt_classes):
    """AssignResult from labels [B, A] and the GT index of every positive."""
    batch, num_gt = batch_size(gt_classes), gt_classes.shape[1]
    positive = labels >= 0
    matched_gt = tf.where(positive, matched_gt, -1)
    boxes = tf.gather(gt_boxes, tf.maximum(matched_gt, 0), batch_dims=1)
    boxes = tf.where(positive[..., None], boxes, tf.zeros_like(boxes))
    # Non-positives count in a spare segment B·M that is dropped.
    segment = tf.where(positive, tf.range(batch)[:, None] * num_gt + matched_gt, batch * num_gt)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(segment), segment, batch * num_gt + 1)
    num_pos = tf.reshape(counts[:-1], [batch, num_gt])
    return AssignResult(labels=labels, matched_boxes=boxes, positive_mask=positive,
                        matched_gt=matched_gt, num_positives_per_gt=num_pos)


def iou_assign(config, anchors, gt_boxes, gt_classes, plus_one=False):
    """RetinaNet IoU hard assignment.

    Args:
      config: AssignConfig (`iou_positive`, `iou_negative`, `low_quality`).
      anchors: float32 [A, 4] yxyx; gt_boxes float32 [B, M, 4] yxyx;
      gt_classes: int32 [B, M], -1 for padded GTs.
    Returns:
      AssignResult.
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_classes = tf.convert_to_tensor(gt_classes, tf.int32)
    pos_thr = float(_option(config, "iou_positive"))
    neg_thr = float(_option(config, "iou_negative"))
    if neg_thr > pos_thr:
        raise ValueError(f"assign.iou_negative ({neg_thr}) must not exceed assign.iou_positive "
                         f"({pos_thr})")
    iou = iou_match.anchor_gt_iou(anchors, gt_boxes, gt_classes, plus_one=plus_one)
    matched, best_iou = iou_match.match_anchors(
        iou, pos_thr, _option(config, "low_quality"), bool(_option(config, "iou_low_quality")))
    classes = tf.gather(gt_classes, tf.maximum(matched, 0), batch_dims=1)
    labels = tf.where(matched >= 0, classes,
                      tf.where(best_iou < neg_thr, BACKGROUND, IGNORE))
    return _result(labels, matched, gt_boxes, gt_classes)


def atss_assign(config, anchors, level_ids, num_levels, gt_boxes, gt_classes, plus_one=False):
    """ATSS adaptive training sample selection.

    Args:
      config: AssignConfig (`atss_topk`).
      anchors: float32 [A, 4] yxyx; level_ids: static int [A] sorted by level.
      gt_boxes: float32 [B, M, 4] yxyx; gt_classes: int32 [B, M], -1 padding.
    Returns:
      AssignResult.
    """
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_classes = tf.convert_to_tensor(gt_classes, tf.int32)
    batch, num_gt = batch_size(gt_classes), gt_classes.shape[1]
    num_anchors = anchors.shape[0]
    topk = int(_option(config, "atss_topk"))
    valid_gt = gt_classes >= 0

    iou = iou_match.anchor_gt_iou(anchors, gt_boxes, gt_classes, plus_one=plus_one)  # [B,M,A]
    anchor_centre = (anchors[:, :2] + anchors[:, 2:]) * 0.5  # [A, 2] (cy, cx)
    gt_centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) * 0.5  # [B, M, 2]
    offset = gt_centre[:, :, None, :] - anchor_centre[None, None, :, :]
    distance = tf.sqrt(tf.reduce_sum(tf.square(offset), axis=-1))  # [B, M, A]

    cand = []
    for start, end in level_bounds(level_ids, num_levels):
        k = min(topk, end - start)
        if k > 0:
            cand.append(tf.math.top_k(-distance[:, :, start:end], k=k).indices + start)
    cand = tf.concat(cand, axis=-1)  # [B, M, N]
    cand_iou = tf.gather(iou, cand, batch_dims=2)
    size = cand.shape[-1]
    cand_shape = tf.shape(cand)
    mean = tf.reduce_mean(cand_iou, axis=-1, keepdims=True)
    var = tf.reduce_sum(tf.square(cand_iou - mean), axis=-1, keepdims=True) / max(size - 1, 1)
    threshold = mean + tf.sqrt(var)

    cand_centre = tf.gather(anchor_centre, cand)  # [B, M, N, 2]
    box = gt_boxes[:, :, None, :]
    inside = tf.reduce_min(tf.concat([cand_centre - box[..., :2], box[..., 2:] - cand_centre],
                                     axis=-1), axis=-1) > 0.01
    positive = tf.logical_and(tf.logical_and(cand_iou >= threshold, inside),
                              valid_gt[:, :, None])

    # Dense [B, M, A] IoU of positive (GT, anchor) pairs, -inf elsewhere.
    b_ids = tf.broadcast_to(tf.range(batch)[:, None, None], cand_shape)
    m_ids = tf.broadcast_to(tf.range(num_gt)[None, :, None], cand_shape)
    columns = tf.where(positive, cand, num_anchors)
    at = tf.reshape(tf.stack([b_ids, m_ids, columns], axis=-1), [-1, 3])
    is_pos = tf.scatter_nd(at, tf.ones(tf.shape(at)[:1], tf.int32),
                           [batch, num_gt, num_anchors + 1])[..., :num_anchors] > 0
    pos_iou = tf.where(is_pos, iou, tf.constant(-np.inf, tf.float32))
    best = tf.reduce_max(pos_iou, axis=1)  # [B, A]
    gt_index = tf.range(num_gt)[None, :, None]
    best_gt = tf.reduce_min(
        tf.where(tf.logical_and(is_pos, pos_iou >= best[:, None, :]), gt_index, num_gt), axis=1)
    assigned = best > -np.inf
    matched = tf.where(assigned, best_gt, -1)
    classes = tf.gather(gt_classes, tf.maximum(matched, 0), batch_dims=1)
    labels = tf.where(assigned, classes, BACKGROUND)
    return _result(labels, matched, gt_boxes, gt_classes)
