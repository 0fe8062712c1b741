"""Label constants and result types shared by every anchor-assignment method.

Per-anchor class targets: `0..C-1` = positive of that class, `BACKGROUND` = negative
(all-zero focal targets), `IGNORE` = contributes no classification loss.
"""

from typing import NamedTuple

import tensorflow as tf

BACKGROUND = -1
IGNORE = -2

# Per-candidate decisions of a separation scheme (inside a GT's candidate list).
CANDIDATE_POSITIVE = 1
CANDIDATE_NEGATIVE = 0
CANDIDATE_IGNORE = -1


class AssignResult(NamedTuple):
    """Targets of one batch, as `paa_tf.assign.assign` returns them.

    Attributes:
      labels: int32 [B, A]; class index for positives, `BACKGROUND` (-1), `IGNORE` (-2).
      matched_boxes: float32 [B, A, 4] yxyx pixels; the GT box of positives, zeros elsewhere.
      positive_mask: bool [B, A]; `labels >= 0`.
      matched_gt: int32 [B, A]; index into the M padded GTs for positives, -1 elsewhere.
      num_positives_per_gt: int32 [B, M]; positives per GT (0 for padded GTs).
    """

    labels: tf.Tensor
    matched_boxes: tf.Tensor
    positive_mask: tf.Tensor
    matched_gt: tf.Tensor
    num_positives_per_gt: tf.Tensor


class PaaDiagnostics(NamedTuple):
    """What PAA saw and decided for each GT (for visualisation and tests).

    Shapes: B images, M padded GTs, N = num_levels × topk pooled candidates.
    Candidate lists are sorted by ascending cost (ties: smaller anchor index first);
    padded entries have `candidate_mask` False, anchor -1, cost +inf.

    Attributes:
      candidate_anchors: int32 [B, M, N] anchor indices.
      candidate_costs: float32 [B, M, N] anchor costs (focal + λ·GIoU loss).
      candidate_mask: bool [B, M, N].
      components: int32 [B, M, N] GMM component (0 = positive mode, -1 padding).
      log_density: float64 [B, M, N] mixture log-density.
      prob_fg: float64 [B, M, N] posterior of component 0.
      decisions: int32 [B, M, N] `CANDIDATE_POSITIVE/NEGATIVE/IGNORE`.
      gmm_weights, gmm_means, gmm_variances: float64 [B, M, 2].
      gmm_iterations: int32 [B, M] EM iterations per GT.
      matched_gt_iou: int32 [B, A] IoU pre-assignment (GT index, -1 background).
      anchor_costs: float32 [B, A] cost of IoU-matched anchors, +inf elsewhere.
    """

    candidate_anchors: tf.Tensor
    candidate_costs: tf.Tensor
    candidate_mask: tf.Tensor
    components: tf.Tensor
    log_density: tf.Tensor
    prob_fg: tf.Tensor
    decisions: tf.Tensor
    gmm_weights: tf.Tensor
    gmm_means: tf.Tensor
    gmm_variances: tf.Tensor
    gmm_iterations: tf.Tensor
    matched_gt_iou: tf.Tensor
    anchor_costs: tf.Tensor
