"""Probabilistic anchor assignment (paper Sec. 3.1, Procedure 1; docs/PAA.md, Steps A-F).

Per batch, with the network outputs detached:
  A. IoU pre-assignment (`iou_match`): each anchor to at most one GT.
  B. Anchor cost = Σ_classes focal loss + λ·GIoU loss of the decoded prediction.
  C. Per GT and pyramid level, the `topk` cheapest matched anchors, pooled and sorted.
  D. One 2-component GMM per GT, all GTs of the batch in one jit-compiled EM.
  E. Separation (`separation`) into positives / negatives / ignores.
  F. Per-anchor targets; IoU-matched anchors outside the top-K are background.

All GTs of the batch form the rows of one `[G, N]` problem, G = B·M padded up to
`assign.max_gt_per_batch` (or a multiple of it), N = levels × topk, so the
compiled EM sees the same shape from step to step.
"""

import numpy as np
import tensorflow as tf

from paa_tf.assign import iou_match
from paa_tf.assign.labels import (
    BACKGROUND,
    CANDIDATE_IGNORE,
    CANDIDATE_POSITIVE,
    IGNORE,
    AssignResult,
    PaaDiagnostics,
)
from paa_tf.assign.separation import separate
from paa_tf.config import AssignConfig, LossConfig
from paa_tf.ops import gmm
from paa_tf.ops.boxes import giou_loss
from paa_tf.ops.focal import sigmoid_focal_loss


def option(config, name):
    """`config.<name>` of an `AssignConfig`; its defaults when `config` is None."""
    return getattr(AssignConfig() if config is None else config, name)


def level_bounds(level_ids, num_levels):
    """Static [start, end) anchor ranges per level from `level_ids` [A] (sorted, 0-based)."""
    ids = tf.get_static_value(level_ids)
    if ids is None:
        raise ValueError("assign: level_ids must be static (the NumPy array from "
                         "paa_tf.ops.anchors.generate_anchors), not a traced tensor")
    ids = np.asarray(ids).astype(np.int64).ravel()
    if ids.size and (np.any(np.diff(ids) < 0) or ids[0] < 0 or ids[-1] >= num_levels):
        raise ValueError(f"assign: level_ids must be sorted values in [0, {num_levels}), as "
                         "generate_anchors returns them (P3 first)")
    edges = np.searchsorted(ids, np.arange(num_levels + 1))
    return [(int(edges[i]), int(edges[i + 1])) for i in range(num_levels)]


def anchor_costs(cls_logits, pred_boxes, gt_boxes, gt_classes, matched_gt, score_lambda=1.0,
                 alpha=0.25, gamma=2.0):
    """Cost of each IoU-matched anchor for its GT (paper Eq. 3; docs/PAA.md, Step B).

    cost = Σ_c FL(z_c, onehot(class of GT)) + λ·(1 − GIoU(pred, GT)).

    Args:
      cls_logits: float [B, A, C]; pred_boxes: float32 [B, A, 4] decoded yxyx.
      gt_boxes: float32 [B, M, 4] yxyx; gt_classes: int32 [B, M].
      matched_gt: int32 [B, A] from the pre-assignment (-1 background).
    Returns:
      float32 [B, A]; +inf where the anchor is not matched.
    """
    num_classes = tf.shape(cls_logits)[-1]
    matched = matched_gt >= 0
    safe_gt = tf.maximum(matched_gt, 0)
    classes = tf.gather(gt_classes, safe_gt, batch_dims=1)
    targets = tf.one_hot(tf.where(matched, classes, -1), num_classes, dtype=tf.float32)
    cls_cost = tf.reduce_sum(sigmoid_focal_loss(cls_logits, targets, alpha, gamma), axis=-1)
    boxes = tf.gather(gt_boxes, safe_gt, batch_dims=1)
    reg_cost = giou_loss(pred_boxes, boxes)
    cost = cls_cost + score_lambda * reg_cost
    return tf.where(matched, cost, tf.constant(np.inf, tf.float32))


def topk_candidates(costs, matched_gt, bounds, num_gt, topk):
    """Per GT and level the `topk` cheapest matched anchors, pooled and sorted (Step C).

    Ties go to the smaller anchor index (top_k keeps the lower index first, and the
    final stable sort keeps level order, which is anchor order).

    Args:
      costs: float32 [B, A], +inf for unmatched anchors.
      matched_gt: int32 [B, A].
      bounds: [(start, end)] static anchor range of each level.
      num_gt: M (python int).
    Returns:
      anchors int32 [B, M, N] (-1 padding), costs float32 [B, M, N] (+inf padding),
      sorted by ascending cost; N = Σ_l min(topk, anchors in level l).
    """
    gt_ids = tf.range(num_gt, dtype=matched_gt.dtype)[None, :, None]
    neg_inf = tf.constant(-np.inf, tf.float32)
    all_idx, all_cost = [], []
    for start, end in bounds:
        k = min(topk, end - start)
        if k == 0:
            continue
        member = tf.equal(matched_gt[:, None, start:end], gt_ids)  # [B, M, A_l]
        neg_cost = tf.where(member, -costs[:, None, start:end], neg_inf)
        values, idx = tf.math.top_k(neg_cost, k=k, sorted=True)
        valid = values > neg_inf
        all_idx.append(tf.where(valid, idx + start, -1))
        all_cost.append(tf.where(valid, -values, -neg_inf))
    cand_idx = tf.concat(all_idx, axis=-1)
    cand_cost = tf.concat(all_cost, axis=-1)
    order = tf.argsort(cand_cost, axis=-1, stable=True)
    return (tf.gather(cand_idx, order, batch_dims=2),
            tf.gather(cand_cost, order, batch_dims=2))


def padded_rows(num_rows, pad_to):
    """Rows of the EM problem: `num_rows` rounded up to a positive multiple of `pad_to`.

    `num_rows` is a python int, or a scalar tensor when the batch size is dynamic.
    """
    if pad_to <= 0:
        return num_rows
    if isinstance(num_rows, int):
        return max(1, -(-num_rows // pad_to)) * pad_to
    return tf.maximum(1, (num_rows + pad_to - 1) // pad_to) * pad_to


def batch_size(tensor):
    """Static batch size of `tensor`, or a scalar tensor when it is unknown (eval's last batch)."""
    static = tensor.shape[0]
    return static if static is not None else tf.shape(tensor)[0]


def select_from_costs(config, costs, matched_gt, gt_classes, bounds):
    """Steps C-F from anchor costs and the IoU pre-assignment.

    Args:
      config: AssignConfig (or None for the defaults).
      costs: float32 [B, A], +inf for unmatched anchors.
      matched_gt: int32 [B, A] pre-assignment (-1 background).
      gt_classes: int32 [B, M], -1 for padded GTs.
      bounds: static per-level anchor ranges (`level_bounds`).
    Returns:
      (labels int32 [B, A], matched_gt int32 [B, A] of positives,
       num_positives_per_gt int32 [B, M], PaaDiagnostics with the anchor-level
       fields `matched_gt_iou`, `anchor_costs` filled).
    """
    gt_classes = tf.convert_to_tensor(gt_classes, tf.int32)
    batch, num_gt = batch_size(gt_classes), gt_classes.shape[1]
    num_anchors = costs.shape[1]
    cand_idx, cand_cost = topk_candidates(costs, matched_gt, bounds, num_gt,
                                          int(option(config, "topk")))
    size = cand_idx.shape[-1]
    rows = batch * num_gt
    padded = padded_rows(rows, int(option(config, "max_gt_per_batch")))
    flat_cost = tf.reshape(cand_cost, [rows, size])
    flat_mask = tf.reshape(cand_idx >= 0, [rows, size])
    flat_cost = tf.pad(flat_cost, [[0, padded - rows], [0, 0]], constant_values=np.inf)
    flat_mask = tf.pad(flat_mask, [[0, padded - rows], [0, 0]], constant_values=False)

    fit = gmm.fit_gmm_1d_jit(flat_cost, flat_mask)
    decisions = separate(
        flat_cost, flat_mask, fit.components, fit.log_density,
        scheme=option(config, "separation"),
        single_candidate=option(config, "single_candidate"),
        no_component0=option(config, "no_component0"),
        fnp_count=int(option(config, "fnp_count")),
        fsr_threshold=float(option(config, "fsr_threshold")))

    def unflatten(t):
        return tf.reshape(t[:rows], tf.concat([[batch, num_gt], tf.shape(t)[1:]], axis=0))

    decisions = unflatten(decisions)
    cand_mask = cand_idx >= 0
    cand_shape = tf.shape(cand_idx)
    cls = tf.broadcast_to(gt_classes[:, :, None], cand_shape)
    cand_labels = tf.where(tf.equal(decisions, CANDIDATE_POSITIVE), cls,
                           tf.where(tf.equal(decisions, CANDIDATE_IGNORE), IGNORE, BACKGROUND))
    gt_of_cand = tf.broadcast_to(tf.range(num_gt)[None, :, None], cand_shape)
    cand_gt = tf.where(tf.equal(decisions, CANDIDATE_POSITIVE), gt_of_cand, -1)

    # Each anchor is in at most one list; padding goes to a spare column A, then dropped.
    batch_ids = tf.broadcast_to(tf.range(batch)[:, None, None], cand_shape)
    columns = tf.where(cand_mask, cand_idx, num_anchors)
    scatter_at = tf.reshape(tf.stack([batch_ids, columns], axis=-1), [-1, 2])
    labels = tf.tensor_scatter_nd_update(
        tf.fill([batch, num_anchors + 1], BACKGROUND), scatter_at, tf.reshape(cand_labels, [-1]))
    pos_gt = tf.tensor_scatter_nd_update(
        tf.fill([batch, num_anchors + 1], -1), scatter_at, tf.reshape(cand_gt, [-1]))
    num_pos = tf.reduce_sum(
        tf.cast(tf.logical_and(cand_mask, tf.equal(decisions, CANDIDATE_POSITIVE)), tf.int32),
        axis=-1)
    diagnostics = PaaDiagnostics(
        candidate_anchors=cand_idx, candidate_costs=cand_cost, candidate_mask=cand_mask,
        components=unflatten(fit.components), log_density=unflatten(fit.log_density),
        prob_fg=unflatten(fit.prob_fg), decisions=decisions,
        gmm_weights=unflatten(fit.weights), gmm_means=unflatten(fit.means),
        gmm_variances=unflatten(fit.variances), gmm_iterations=unflatten(fit.n_iter),
        matched_gt_iou=matched_gt, anchor_costs=costs)
    return labels[:, :num_anchors], pos_gt[:, :num_anchors], num_pos, diagnostics


def _check_shapes(anchors, gt_boxes, gt_classes, cls_logits, pred_boxes):
    """A and M must be static; B may be unknown (evaluation's last batch: the EM then skips
    its row compaction)."""
    m, a = gt_classes.shape[1], anchors.shape[0]
    if None in (m, a) or cls_logits.shape[1] != a or pred_boxes.shape[1] != a \
            or gt_boxes.shape[1] != m or cls_logits.shape.rank != 3 or gt_boxes.shape.rank != 3:
        raise ValueError(
            "assign: expected anchors [A,4], gt_boxes [B,M,4], gt_classes [B,M], "
            f"cls_logits [B,A,C], pred_boxes [B,A,4]; got {anchors.shape}, {gt_boxes.shape}, "
            f"{gt_classes.shape}, {cls_logits.shape}, {pred_boxes.shape}")


def paa_candidates_and_gmm(config, anchors, level_ids, num_levels, gt_boxes, gt_classes,
                           cls_logits, pred_boxes, plus_one=False, loss_config=None):
    """PAA assignment with everything it computed on the way.

    Arguments as `paa_tf.assign.assign`. Returns (AssignResult, PaaDiagnostics).
    """
    loss_config = LossConfig() if loss_config is None else loss_config
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    gt_boxes = tf.stop_gradient(tf.convert_to_tensor(gt_boxes, tf.float32))
    gt_classes = tf.convert_to_tensor(gt_classes, tf.int32)
    cls_logits = tf.stop_gradient(tf.cast(cls_logits, tf.float32))
    pred_boxes = tf.stop_gradient(tf.cast(pred_boxes, tf.float32))
    _check_shapes(anchors, gt_boxes, gt_classes, cls_logits, pred_boxes)
    bounds = level_bounds(level_ids, num_levels)

    iou = iou_match.anchor_gt_iou(anchors, gt_boxes, gt_classes, plus_one=plus_one)
    matched_iou, _ = iou_match.match_anchors(
        iou, float(option(config, "candidate_iou")), option(config, "low_quality"))
    costs = anchor_costs(cls_logits, pred_boxes, gt_boxes, gt_classes, matched_iou,
                         float(option(config, "score_lambda")),
                         float(loss_config.focal_alpha), float(loss_config.focal_gamma))
    labels, pos_gt, num_pos, diagnostics = select_from_costs(
        config, costs, matched_iou, gt_classes, bounds)
    return make_result(labels, pos_gt, num_pos, gt_boxes, gt_classes), diagnostics


def make_result(labels, matched_gt, num_pos, gt_boxes, gt_classes):
    """AssignResult from per-anchor labels and the GT index of positives."""
    positive = labels >= 0
    boxes = tf.gather(gt_boxes, tf.maximum(matched_gt, 0), batch_dims=1)
    boxes = tf.where(positive[..., None], boxes, tf.zeros_like(boxes))
    num_pos = tf.where(gt_classes >= 0, num_pos, 0)
    return AssignResult(
        labels=labels, matched_boxes=boxes, positive_mask=positive,
        matched_gt=tf.where(positive, matched_gt, -1), num_positives_per_gt=num_pos)


def paa_assign(config, anchors, level_ids, num_levels, gt_boxes, gt_classes, cls_logits,
               pred_boxes, plus_one=False, loss_config=None):
    """PAA targets (see `paa_tf.assign.assign`)."""
    return paa_candidates_and_gmm(config, anchors, level_ids, num_levels, gt_boxes, gt_classes,
                                  cls_logits, pred_boxes, plus_one, loss_config)[0]
