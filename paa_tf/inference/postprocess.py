"""Inference post-processing of PAA: candidates, class-aware NMS, score voting (paper Sec.
3.2-3.3; docs/PAA.md, "Inference").

Pure TensorFlow, batched, static or dynamic batch size, so the same functions run eagerly,
inside `tf.function` and inside an exported SavedModel.

Pipeline (`postprocess`):
1. `select_candidates`: p = sigmoid(class logits), q = sigmoid(IoU or centerness logits);
   the KK rule (p > 0.05, then the top 1000 (anchor, class) pairs per level by score) or
   MM's (top 1000 anchors per level by max-class score, then score > 0.05); score
   sqrt(p*q) or p*q; decode the selected boxes and clip them to the scaled image.
2. `nms_and_vote`: class-aware NMS at IoU 0.6 keeping the 100 best, then score voting: each
   kept box becomes the average of the same-class pre-NMS candidates with IoU > 0.01,
   weighted by exp(-(1-IoU)^2/sigma) * score (paper Eq. 9-10).
3. `map_to_original`: boxes back to the original image through `image_info`.

Candidates are carried as a dense score matrix: `boxes` [B, N, 4] yxyx and `scores`
[B, N, C] float32, where a score of 0 means "not a candidate of that class". With the KK
rule each row is one (anchor, class) pair (one non-zero score); with MM's each row is an
anchor. This one layout feeds `tf.image.combined_non_max_suppression` (exactly per-class NMS,
no coordinate offsets, dynamic batch) and lets voting read each detection's same-class
candidate scores with one gather, so voting is a masked [B, D, N] weight matrix and one
matrix product, without a loop over detections or classes.

Conventions: `plus_one` (config `model.plus_one`, KK's "+1" pixels, width = x2 - x1 + 1)
governs decoding, clipping, NMS and voting alike. TF's NMS op has continuous IoU only, so in
+1 mode the max corners go into it shifted by +1: its continuous IoU of the shifted boxes is
the +1 IoU of the originals (see `nms_and_vote`). Padded detections have box 0, score 0 and
class -1.
"""

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from paa_tf.config import SCORES, EvalConfig, ExperimentConfig, ModelConfig, choices
from paa_tf.ops import boxes as box_ops

_EVAL, _MODEL = EvalConfig(), ModelConfig()


@dataclasses.dataclass(frozen=True)
class PostprocessParams:
    """Settings of the post-processing; defaults are KK's (docs/CONVENTIONS.md).

    `plus_one`, `box_weights` and `delta_clamp` must match how the model was trained
    (`model.*` in the config); `plus_one` governs decoding, clipping, NMS and voting.
    """
    # Defaults come from `EvalConfig` and `ModelConfig`, where the project's defaults are.
    score_threshold: float = _EVAL.score_threshold
    pre_nms_topk: int = _EVAL.pre_nms_topk
    candidate_rule: str = _EVAL.candidate_rule  # 'kk' | 'mm'
    score: str = _EVAL.score  # 'sqrt' | 'product' | 'cls'
    nms_iou: float = _EVAL.nms_iou
    max_detections: int = _EVAL.max_detections
    score_voting: bool = _EVAL.score_voting
    voting_sigma: float = _EVAL.voting_sigma
    voting_iou: float = _EVAL.voting_iou
    plus_one: bool = _MODEL.plus_one
    box_weights: Tuple[float, ...] = _MODEL.box_weights
    delta_clamp: str = _MODEL.delta_clamp

    def __post_init__(self):
        if self.candidate_rule not in choices("eval.candidate_rule"):
            raise ValueError(f"postprocess: candidate_rule must be 'kk' or 'mm' "
                             f"(config key eval.candidate_rule), got {self.candidate_rule!r}")
        if self.score not in SCORES:
            raise ValueError(f"postprocess: score must be one of {SCORES} "
                             f"(config key eval.score), got {self.score!r}")
        if self.voting_sigma <= 0:
            raise ValueError(f"postprocess: voting_sigma must be > 0 (config key "
                             f"eval.voting_sigma), got {self.voting_sigma}")

    @classmethod
    def from_config(cls, config, **overrides):
        """Params from an `ExperimentConfig` (eval + model sections) or an `EvalConfig`."""
        whole = isinstance(config, ExperimentConfig)
        eval_cfg = config.eval if whole else config
        names = {field.name for field in dataclasses.fields(eval_cfg)}
        values = {field.name: getattr(eval_cfg, field.name)
                  for field in dataclasses.fields(cls) if field.name in names}
        if whole:
            values["plus_one"] = config.model.plus_one
            values["box_weights"] = tuple(config.model.box_weights)
            values["delta_clamp"] = config.model.delta_clamp
        values.update(overrides)
        return cls(**values)


def level_sizes_from_ids(level_ids):
    """Static anchors-per-level counts from `level_ids` [A] int (NumPy or constant tensor)."""
    if isinstance(level_ids, tf.Tensor):
        static = tf.get_static_value(level_ids)
        if static is None:
            raise ValueError("postprocess: level_ids must be known statically (anchors are "
                             "static for a padded input size); pass level_sizes instead")
        level_ids = static
    level_ids = np.asarray(level_ids).astype(np.int64).reshape(-1)
    if not level_ids.size:
        return []
    if np.any(np.diff(level_ids) < 0):
        raise ValueError("postprocess: level_ids must be sorted (P3 first, as generate_anchors "
                         "returns them)")
    return [int(n) for n in np.bincount(level_ids - level_ids.min()) if n > 0]


def _scores(probs, quality, score):
    """Unified score of class probabilities [B, A, C] and quality [B, A] (or None).

    'cls' ranks by p alone even when the model has an IoU or centerness head (ablations:
    the head trained, its prediction unused).
    """
    if quality is None or score == "cls":
        return probs
    product = probs * quality[..., None]
    return tf.sqrt(product) if score == "sqrt" else product


def select_candidates(cls_logits, box_deltas, iou_logits, anchors, level_sizes, image_info,
                      params=PostprocessParams()):
    """Pre-NMS candidates of a batch (docs/PAA.md, "Inference", steps 1-5).

    Args:
      cls_logits: float [B, A, C] class logits, anchors flattened P3 first.
      box_deltas: float [B, A, 4] deltas (dy, dx, dh, dw).
      iou_logits: float [B, A] (or [B, A, 1]) IoU or centerness logits, or None (no auxiliary head:
        the score is p alone).
      anchors: float [A, 4] yxyx input pixels.
      level_sizes: anchors per level (sum = A): Python ints (`level_sizes_from_ids`), or
        int32 scalar tensors for an input size known only at run time (the export).
      image_info: float [B, 4, 2]; row 1 is the scaled image size used for clipping.
      params: `PostprocessParams`.
    Returns:
      dict `boxes` float32 [B, N, 4] yxyx clipped input pixels and `scores` float32
      [B, N, C] (0 = not a candidate of that class).
    """
    # Casts, not conversions: the head may emit float16/bfloat16 under mixed precision.
    cls_logits = tf.cast(cls_logits, tf.float32)
    box_deltas = tf.cast(box_deltas, tf.float32)
    anchors = tf.cast(anchors, tf.float32)
    image_info = tf.cast(image_info, tf.float32)
    level_sizes = [n if tf.get_static_value(n) is None else int(tf.get_static_value(n))
                   for n in level_sizes]
    num_anchors = cls_logits.shape[1]
    static = all(isinstance(n, int) for n in level_sizes)
    if static and num_anchors is not None and sum(level_sizes) != num_anchors:
        raise ValueError(f"postprocess: level_sizes {level_sizes} sum to {sum(level_sizes)} "
                         f"but cls_logits has {num_anchors} anchors")
    num_classes = cls_logits.shape[-1]
    if num_classes is None:
        raise ValueError("postprocess: the class axis of cls_logits must be static")
    probs = tf.sigmoid(cls_logits)
    quality = None
    if iou_logits is not None:
        iou_logits = tf.cast(iou_logits, tf.float32)
        if iou_logits.shape.rank == 3:  # [B, A, 1] straight from the head
            iou_logits = tf.squeeze(iou_logits, axis=-1)
        quality = tf.sigmoid(iou_logits)

    rows_boxes, rows_scores = [], []
    start = 0
    for size in level_sizes:
        p = probs[:, start:start + size]
        q = None if quality is None else quality[:, start:start + size]
        s = _scores(p, q, params.score)
        if params.candidate_rule == "kk":
            anchor_idx, scores = _kk_level(p, s, size, num_classes, params)
        else:
            anchor_idx, scores = _mm_level(s, size, params)
        anchor_idx = anchor_idx + start
        deltas = tf.gather(box_deltas, anchor_idx, batch_dims=1)
        level_boxes = box_ops.decode_boxes(
            deltas, tf.gather(anchors, anchor_idx), weights=params.box_weights,
            clamp=params.delta_clamp, plus_one=params.plus_one)
        rows_boxes.append(level_boxes)
        rows_scores.append(scores)
        start += size
    boxes = tf.concat(rows_boxes, axis=1)
    scaled_hw = image_info[:, 1, :]
    boxes = box_ops.clip_boxes(boxes, scaled_hw[:, 0:1], scaled_hw[:, 1:2],
                               plus_one=params.plus_one)
    return {"boxes": boxes, "scores": tf.concat(rows_scores, axis=1)}


def _at_most(limit, count):
    """min(limit, count) for a Python int or a runtime int32 `count` (a top-k width)."""
    return min(limit, count) if isinstance(count, int) else tf.minimum(limit, count)


def _kk_level(p, s, size, num_classes, params):
    """KK: p > threshold, then the top-k (anchor, class) pairs by score; one pair per row."""
    masked = tf.where(p > params.score_threshold, s, -1.0)
    flat = tf.reshape(masked, [-1, size * num_classes])
    k = _at_most(params.pre_nms_topk, size * num_classes)
    values, flat_idx = tf.math.top_k(flat, k=k, sorted=False)
    valid = values >= 0.0
    classes = flat_idx % num_classes
    scores = tf.one_hot(classes, num_classes) * tf.where(valid, values, 0.0)[..., None]
    return flat_idx // num_classes, scores


def _mm_level(s, size, params):
    """MM: the top-k anchors by max-class score, then score > threshold; one anchor per row."""
    k = _at_most(params.pre_nms_topk, size)
    _, anchor_idx = tf.math.top_k(tf.reduce_max(s, axis=-1), k=k, sorted=False)
    rows = tf.gather(s, anchor_idx, batch_dims=1)
    return anchor_idx, tf.where(rows > params.score_threshold, rows, 0.0)


def score_voting(det_boxes, det_classes, cand_boxes, cand_scores, sigma=0.025,
                 iou_threshold=0.01, plus_one=False):
    """Vote each detection's box from the same-class pre-NMS candidates (paper Eq. 9-10).

    w_n = exp(-(1 - IoU(d, n))^2 / sigma) * s_n over candidates n of d's class with
    IoU > `iou_threshold`; box(d) = sum w_n * box_n / sum w_n. A detection without any
    such candidate (e.g. a padded one) keeps its box; nothing divides by zero.

    Args:
      det_boxes: float32 [B, D, 4] yxyx kept detections.
      det_classes: int [B, D] their classes; negative = padding.
      cand_boxes: float32 [B, N, 4] yxyx candidates, same frame as `det_boxes`.
      cand_scores: float32 [B, N, C] candidate scores per class (0 = not a candidate).
    Returns:
      float32 [B, D, 4] voted boxes.
    """
    det_boxes = tf.cast(det_boxes, tf.float32)
    det_classes = tf.cast(det_classes, tf.int32)
    cand_boxes = tf.cast(cand_boxes, tf.float32)
    cand_scores = tf.cast(cand_scores, tf.float32)
    # Row d of `same_class` holds every candidate's score for d's class: [B, D, N].
    same_class = tf.gather(tf.transpose(cand_scores, [0, 2, 1]),
                           tf.maximum(det_classes, 0), batch_dims=1)
    iou = box_ops.pairwise_iou(det_boxes, cand_boxes, plus_one=plus_one)
    keep = (iou > iou_threshold) & (same_class > 0.0) & (det_classes >= 0)[..., None]
    weights = tf.where(keep, tf.exp(-tf.square(1.0 - iou) / sigma) * same_class, 0.0)
    total = tf.reduce_sum(weights, axis=-1, keepdims=True)
    voted = tf.math.divide_no_nan(tf.linalg.matmul(weights, cand_boxes), total)
    return tf.where(total > 0.0, voted, det_boxes)


def nms_and_vote(boxes, scores, params=PostprocessParams()):
    """Class-aware NMS, top-`max_detections`, optional score voting (paper Eq. 9-10;
    docs/PAA.md, "Inference", steps 6-8).

    Args:
      boxes: float32 [B, N, 4] yxyx candidates; `scores`: float32 [B, N, C], 0 = absent.
    Returns:
      dict in the candidates' frame: `detection_boxes` [B, D, 4], `detection_scores`
      [B, D], `detection_classes` int32 [B, D] (-1 pads), `num_detections` int32 [B],
      sorted by descending score, D = `max_detections`.
    """
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    max_det = params.max_detections
    # +1 IoU through the continuous-IoU op: with the max corners moved by +1, each side the op
    # measures, (y2 + 1) - y1, is the +1 side y2 - y1 + 1, so areas, intersections and IoU are
    # the +1 ones (up to float32 rounding of y2 + 1). The shift is undone on the kept boxes.
    shift = tf.constant([0.0, 0.0, 1.0, 1.0] if params.plus_one else [0.0] * 4)
    nmsed = tf.image.combined_non_max_suppression(
        (boxes + shift)[:, :, None, :], scores, max_output_size_per_class=max_det,
        max_total_size=max_det, iou_threshold=params.nms_iou, score_threshold=0.0,
        pad_per_class=False, clip_boxes=False)
    num = tf.cast(nmsed.valid_detections, tf.int32)
    valid = tf.range(max_det)[None, :] < num[:, None]
    classes = tf.where(valid, tf.cast(nmsed.nmsed_classes, tf.int32), -1)
    det_boxes = nmsed.nmsed_boxes - shift
    if params.score_voting:
        det_boxes = score_voting(det_boxes, classes, boxes, scores, sigma=params.voting_sigma,
                                 iou_threshold=params.voting_iou, plus_one=params.plus_one)
    return {
        "detection_boxes": tf.where(valid[..., None], det_boxes, 0.0),
        "detection_scores": tf.where(valid, nmsed.nmsed_scores, 0.0),
        "detection_classes": classes,
        "num_detections": num,
    }


def map_to_original(boxes, image_info, plus_one=False):
    """Input-pixel yxyx `boxes` [B, D, 4] -> original image pixels: (box - offset) / scale.

    `image_info` [B, 4, 2] = [[orig_h, orig_w], [scaled_h, scaled_w], [scale_y, scale_x],
    [offset_y, offset_x]]. The result is clipped to the original image. A zero scale (an
    all-padding batch entry) gives zero boxes, not NaN.
    """
    info = tf.cast(image_info, tf.float32)
    original = _unscale(tf.cast(boxes, tf.float32), info)
    return box_ops.clip_boxes(original, info[:, 0, 0:1], info[:, 0, 1:2], plus_one=plus_one)


def _unscale(boxes, info):
    """(box - offset) / scale per image; `info` float32 [B, 4, 2]."""
    offset = tf.tile(info[:, 3, :], [1, 2])[:, None, :]
    scale = tf.tile(info[:, 2, :], [1, 2])[:, None, :]
    return tf.math.divide_no_nan(boxes - offset, scale)


def _finish(detections, image_info, params, already_original=False):
    """Map boxes to the original image (unless already there) and zero the padding."""
    boxes = detections["detection_boxes"]
    if already_original:
        info = tf.cast(image_info, tf.float32)
        boxes = box_ops.clip_boxes(boxes, info[:, 0, 0:1], info[:, 0, 1:2],
                                   plus_one=params.plus_one)
    else:
        boxes = map_to_original(boxes, image_info, plus_one=params.plus_one)
    valid = detections["detection_classes"] >= 0
    return dict(detections, detection_boxes=tf.where(valid[..., None], boxes, 0.0))


def postprocess(cls_logits, box_deltas, iou_logits, anchors, image_info, level_sizes=None,
                level_ids=None, params=PostprocessParams()):
    """Raw head outputs -> final detections in original-image pixels (docs/PAA.md, "Inference").

    Args: as `select_candidates`; give `level_sizes` or `level_ids` [A].
    Returns:
      dict `detection_boxes` float32 [B, D, 4] yxyx original pixels, `detection_scores`
      float32 [B, D], `detection_classes` int32 [B, D] contiguous (-1 pads),
      `num_detections` int32 [B]; D = `params.max_detections`.
    """
    if level_sizes is None:
        if level_ids is None:
            raise ValueError("postprocess: give level_sizes or level_ids (from generate_anchors)")
        level_sizes = level_sizes_from_ids(level_ids)
    candidates = select_candidates(cls_logits, box_deltas, iou_logits, anchors, level_sizes,
                                   image_info, params)
    detections = nms_and_vote(candidates["boxes"], candidates["scores"], params)
    return _finish(detections, image_info, params)


def views_to_original(candidates, image_info, flipped, plus_one=False):
    """Candidates of one test-time view -> original-image pixels.

    A flipped view is the horizontal mirror of the scaled image (width scaled_w, before
    padding); its boxes are mirrored back first, then (box - offset) / scale.
    """
    boxes = tf.cast(candidates["boxes"], tf.float32)
    info = tf.cast(image_info, tf.float32)
    if flipped:
        edge = info[:, 1, 1:2] - (1.0 if plus_one else 0.0)
        ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
        boxes = tf.stack([ymin, edge - xmax, ymax, edge - xmin], axis=-1)
    return {"boxes": _unscale(boxes, info), "scores": candidates["scores"]}


def merge_tta(views: Sequence[dict], params=PostprocessParams(),
              original_info: Optional[tf.Tensor] = None):
    """Merge the pre-NMS candidates of several test-time views, then NMS and voting.

    Args:
      views: dicts with `candidates` (from `select_candidates`, boxes in that view's input
        pixels), `image_info` [B, 4, 2] of that view, and `flipped` (Python bool).
      params: `PostprocessParams`.
      original_info: image_info whose row 0 gives the original size for the final clip;
        defaults to the first view's.
    Returns:
      the detections dict of `postprocess`, boxes in original-image pixels.
    """
    if not views:
        raise ValueError("merge_tta: give at least one view")
    mapped = [views_to_original(v["candidates"], v["image_info"], bool(v.get("flipped")),
                                params.plus_one) for v in views]
    boxes = tf.concat([m["boxes"] for m in mapped], axis=1)
    scores = tf.concat([m["scores"] for m in mapped], axis=1)
    detections = nms_and_vote(boxes, scores, params)
    info = views[0]["image_info"] if original_info is None else original_info
    return _finish(detections, info, params, already_original=True)
