"""PAA training losses (paper Eq. 8; docs/PAA.md, "Losses"), float32 throughout.

    L = L_cls + L_reg + L_aux
    L_cls = sum_{anchors, classes} FL(z, t) / N_pos                   focal, alpha .25, gamma 2
    L_reg = reg_weight * sum_{a in P} u_a * GIoU-loss_a / sum_{a in P} u_a
    L_aux = aux_weight * sum_{a in P} BCE(o_a, u_a) / N_pos

where P is the set of positive anchors after assignment and ``u_a`` is the IoU of the
*detached* decoded prediction of anchor a with its GT box (for the centerness ablation, u_a is
the FCOS/ATSS centerness of the anchor centre inside its GT box and o_a the centerness logit;
with no auxiliary head, u_a = 1 and L_aux = 0).

Normalisers (``loss.normalizer``):
* 'all_reduce' (KK): N_pos and sum u are summed over replicas and divided by the number of
  replicas, so each replica's loss is its share of the global-batch loss times the number of
  replicas; averaging the replicas' gradients (or summing the gradients of loss / replicas, as
  Keras does) gives exactly the single-device gradient of the global batch.
* 'per_replica' (MM): local N_pos (classification: max(N_pos, images)) and local sum u.

Labels follow ``paa_tf.assign``: class index 0..C-1 positive, -1 background, -2 ignored
(no classification loss at all).
"""

from __future__ import annotations

import tensorflow as tf

from paa_tf.assign.labels import IGNORE
from paa_tf.ops.boxes import aligned_iou, giou_loss
from paa_tf.ops.focal import sigmoid_focal_loss

NORMALIZERS = ("all_reduce", "per_replica")
# Positives whose weight is exactly 0 still count a little, so sum u > 0 whenever P is not
# empty (KK would divide by zero there; mmdetection clamps the same way).
MIN_REG_WEIGHT = 1e-12


def num_replicas() -> int:
    """Number of replicas of the current strategy (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_sum(value):
    """Sum of ``value`` over all replicas when called inside a multi-replica step."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def replica_mean(value, mode: str):
    """``value`` averaged over replicas ('all_reduce'), or the local value ('per_replica')."""
    if mode not in NORMALIZERS:
        raise ValueError(f"loss.normalizer = {mode!r}; choose one of {NORMALIZERS}")
    if mode == "per_replica":
        return value
    return replica_sum(value) / tf.cast(num_replicas(), value.dtype)


def classification_loss_sum(cls_logits, labels, alpha=0.25, gamma=2.0):
    """Sum of the sigmoid focal loss over all anchors and classes.

    Args:
      cls_logits: float [B, A, C] logits (cast to float32).
      labels: int32 [B, A]: 0..C-1 class of a positive, -1 background, -2 ignore.
    Returns:
      float32 scalar.
    """
    cls_logits = tf.cast(cls_logits, tf.float32)
    num_classes = tf.shape(cls_logits)[-1]
    # one_hot of -1/-2 is all zeros: background targets.
    targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    loss = sigmoid_focal_loss(cls_logits, targets, alpha, gamma)
    valid = tf.cast(tf.not_equal(labels, IGNORE), tf.float32)
    return tf.reduce_sum(loss * valid[..., None])


def iou_targets(pred_boxes, target_boxes, plus_one=False):
    """IoU u_a of each detached prediction with its GT: [B, A, 4] yxyx x2 -> float32 [B, A]."""
    return tf.stop_gradient(aligned_iou(tf.stop_gradient(pred_boxes), target_boxes, plus_one))


def centerness_targets(anchors, target_boxes):
    """FCOS/ATSS centerness of each anchor centre inside its GT box.

    sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) with l, t, r, b the distances from the
    anchor centre to the GT sides; 0 when the centre lies outside the box.

    Args:
      anchors: float32 [A, 4] or [B, A, 4] yxyx.
      target_boxes: float32 [B, A, 4] yxyx.
    Returns:
      float32 [B, A] in [0, 1].
    """
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    target_boxes = tf.convert_to_tensor(target_boxes, tf.float32)
    cy = (anchors[..., 0] + anchors[..., 2]) * 0.5
    cx = (anchors[..., 1] + anchors[..., 3]) * 0.5
    top = tf.maximum(cy - target_boxes[..., 0], 0.0)
    left = tf.maximum(cx - target_boxes[..., 1], 0.0)
    bottom = tf.maximum(target_boxes[..., 2] - cy, 0.0)
    right = tf.maximum(target_boxes[..., 3] - cx, 0.0)
    ratio_x = tf.math.divide_no_nan(tf.minimum(left, right), tf.maximum(left, right))
    ratio_y = tf.math.divide_no_nan(tf.minimum(top, bottom), tf.maximum(top, bottom))
    return tf.stop_gradient(tf.sqrt(ratio_x * ratio_y))


def box_giou_losses(pred_boxes, target_boxes, positive_mask):
    """GIoU loss of each anchor's decoded prediction with its GT box.

    Args:
      pred_boxes: float32 [B, A, 4] yxyx decoded predictions (gradient flows through them).
      target_boxes: float32 [B, A, 4] yxyx GT box of each anchor (anything for non-positives).
      positive_mask: bool [B, A].
    Returns:
      float32 [B, A]; 0 for non-positive anchors.
    """
    pred_boxes = tf.cast(pred_boxes, tf.float32)
    # Non-positive anchors compare a fixed unit box with itself: their (garbage) predictions
    # and targets could overflow to NaN, and a NaN times a zero weight is still NaN in the
    # gradient. tf.where passes zero gradient to the branch it does not select.
    mask = positive_mask[..., None]
    unit = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32)
    safe_pred = tf.where(mask, pred_boxes, unit)
    safe_target = tf.where(mask, tf.cast(target_boxes, tf.float32), unit)
    losses = giou_loss(safe_pred, safe_target)
    return tf.where(positive_mask, losses, tf.zeros_like(losses))


def regression_loss(giou_losses, weights, positive_mask, reg_weight=1.3, mode="all_reduce"):
    """L_reg = reg_weight * sum_P u * GIoU-loss / sum_P u (the sum of u all-reduced or local).

    Args:
      giou_losses: float32 [B, A] per-anchor GIoU loss.
      weights: float32 [B, A] u_a (detached).
      positive_mask: bool [B, A].
    Returns:
      float32 scalar, 0 when there is no positive anywhere.
    """
    positive = tf.cast(positive_mask, tf.float32)
    weights = tf.maximum(tf.cast(weights, tf.float32), MIN_REG_WEIGHT) * positive
    numerator = tf.reduce_sum(weights * tf.cast(giou_losses, tf.float32))
    denominator = replica_mean(tf.reduce_sum(weights), mode)
    # No positives: numerator and denominator are both 0 -> loss 0, no NaN.
    return reg_weight * tf.math.divide_no_nan(numerator, denominator)


def aux_loss(aux_logits, targets, positive_mask, aux_weight, normalizer):
    """aux_weight * sum_P BCE-with-logits(o_a, u_a) / normalizer.

    Args:
      aux_logits: float [B, A] IoU (or centerness) logits.
      targets: float32 [B, A] u_a in [0, 1].
      positive_mask: bool [B, A].
      normalizer: float32 scalar (N_pos, already made >= 1).
    """
    bce = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(targets, tf.float32), logits=tf.cast(aux_logits, tf.float32))
    total = tf.reduce_sum(bce * tf.cast(positive_mask, tf.float32))
    return aux_weight * total / normalizer


def paa_losses(cls_logits, pred_boxes, aux_logits, labels, target_boxes, positive_mask,
               anchors, loss_config, aux_head="iou", plus_one=False):
    """All PAA losses of one replica's batch.

    Args:
      cls_logits: float [B, A, C].
      pred_boxes: float32 [B, A, 4] yxyx decoded predictions (differentiable).
      aux_logits: float [B, A] IoU (or centerness) logits, or None when ``aux_head='none'``.
      labels: int32 [B, A] assignment labels (class, -1 background, -2 ignore).
      target_boxes: float32 [B, A, 4] yxyx GT box of each positive.
      positive_mask: bool [B, A].
      anchors: float32 [A, 4] yxyx (used by the centerness target).
      loss_config: ``LossConfig`` (focal_alpha, focal_gamma, reg_weight, iou_weight,
        normalizer).
      aux_head: 'iou' | 'centerness' | 'none'.
      plus_one: pixel convention of the IoU target.
    Returns:
      dict of float32 scalars: ``loss_cls``, ``loss_reg``, ``loss_aux``, ``loss`` (their sum),
      the replica's share described in the module docstring, and ``num_positives`` (global
      count over replicas).
    """
    mode = loss_config.normalizer
    alpha, gamma = loss_config.focal_alpha, loss_config.focal_gamma
    reg_weight, aux_weight = loss_config.reg_weight, loss_config.iou_weight

    positive = tf.cast(positive_mask, tf.float32)
    local_pos = tf.reduce_sum(positive)
    num_positives = replica_sum(local_pos)
    if mode == "per_replica":
        num_images = tf.cast(tf.shape(labels)[0], tf.float32)
        cls_norm = tf.maximum(local_pos, num_images)
        aux_norm = tf.maximum(local_pos, 1.0)
    else:
        cls_norm = tf.maximum(replica_mean(local_pos, mode), 1.0)
        aux_norm = cls_norm

    loss_cls = classification_loss_sum(cls_logits, labels, alpha, gamma) / cls_norm

    if aux_head == "iou":
        quality = iou_targets(pred_boxes, target_boxes, plus_one)
    elif aux_head == "centerness":
        quality = centerness_targets(anchors, target_boxes)
    elif aux_head == "none":
        quality = tf.ones_like(positive)
    else:
        raise ValueError(f"model.aux_head = {aux_head!r}; choose 'iou', 'centerness' or 'none'")

    giou_losses = box_giou_losses(pred_boxes, target_boxes, positive_mask)
    loss_reg = regression_loss(giou_losses, quality, positive_mask, reg_weight, mode)

    if aux_head == "none" or aux_logits is None:
        loss_aux = tf.zeros([], tf.float32)
    else:
        loss_aux = aux_loss(aux_logits, quality, positive_mask, aux_weight, aux_norm)

    return {"loss": loss_cls + loss_reg + loss_aux, "loss_cls": loss_cls,
            "loss_reg": loss_reg, "loss_aux": loss_aux, "num_positives": num_positives}
