"""Box geometry: areas, IoU, GIoU and the delta coding of PAA.

Every box here is `[ymin, xmin, ymax, xmax]` in pixels, float32, with any
number of leading dimensions. Two pixel conventions exist (docs/CONVENTIONS.md, "Pixels"):

* continuous (default): width = xmax - xmin;
* "+1" (`plus_one=True`): width = xmax - xmin + 1, the old Detectron
  convention of the authors' code, needed to reproduce its numbers exactly.

Deltas are ordered `(dy, dx, dh, dw)` to follow the box layout; the references'
`(dx, dy, dw, dh)` weights (10, 10, 5, 5) therefore apply as (10, 10, 5, 5)
to `(dy, dx, dh, dw)` as well, since both centre weights and both size
weights are equal.
"""

import math

import numpy as np
import tensorflow as tf

# Upper clamp of dh, dw: no box grows beyond 1000/16 times its anchor.
DELTA_CLAMP = math.log(1000.0 / 16.0)
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _offset(plus_one):
    return 1.0 if plus_one else 0.0


def area(boxes, plus_one=False):
    """Area of `boxes` [..., 4] yxyx -> [...]; negative extents count as 0."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    one = _offset(plus_one)
    return tf.maximum(ymax - ymin + one, 0.0) * tf.maximum(xmax - xmin + one, 0.0)


def _intersection(b1, b2, plus_one):
    """Intersection area of broadcastable yxyx boxes `b1`, `b2` [..., 4]."""
    one = _offset(plus_one)
    ymin = tf.maximum(b1[..., 0], b2[..., 0])
    xmin = tf.maximum(b1[..., 1], b2[..., 1])
    ymax = tf.minimum(b1[..., 2], b2[..., 2])
    xmax = tf.minimum(b1[..., 3], b2[..., 3])
    return tf.maximum(ymax - ymin + one, 0.0) * tf.maximum(xmax - xmin + one, 0.0)


def _enclosing_area(b1, b2, plus_one):
    one = _offset(plus_one)
    ymin = tf.minimum(b1[..., 0], b2[..., 0])
    xmin = tf.minimum(b1[..., 1], b2[..., 1])
    ymax = tf.maximum(b1[..., 2], b2[..., 2])
    xmax = tf.maximum(b1[..., 3], b2[..., 3])
    return tf.maximum(ymax - ymin + one, 0.0) * tf.maximum(xmax - xmin + one, 0.0)


def _iou_and_union(b1, b2, plus_one):
    inter = _intersection(b1, b2, plus_one)
    union = area(b1, plus_one) + area(b2, plus_one) - inter
    iou = tf.math.divide_no_nan(inter, union)
    return iou, union


def aligned_iou(boxes1, boxes2, plus_one=False):
    """IoU of matching pairs: `boxes1`, `boxes2` [..., 4] yxyx -> [...]."""
    b1 = tf.convert_to_tensor(boxes1, tf.float32)
    b2 = tf.convert_to_tensor(boxes2, tf.float32)
    return _iou_and_union(b1, b2, plus_one)[0]


def pairwise_iou(boxes1, boxes2, plus_one=False):
    """IoU of every pair: `boxes1` [..., N, 4], `boxes2` [..., M, 4] -> [..., N, M]."""
    b1 = tf.convert_to_tensor(boxes1, tf.float32)[..., :, None, :]
    b2 = tf.convert_to_tensor(boxes2, tf.float32)[..., None, :, :]
    return _iou_and_union(b1, b2, plus_one)[0]


def _giou(b1, b2, plus_one):
    iou, union = _iou_and_union(b1, b2, plus_one)
    enclosing = _enclosing_area(b1, b2, plus_one)
    return iou - tf.math.divide_no_nan(enclosing - union, enclosing)


def aligned_giou(boxes1, boxes2, plus_one=False):
    """Generalised IoU of matching pairs [..., 4] -> [...], in [-1, 1]."""
    b1 = tf.convert_to_tensor(boxes1, tf.float32)
    b2 = tf.convert_to_tensor(boxes2, tf.float32)
    return _giou(b1, b2, plus_one)


def pairwise_giou(boxes1, boxes2, plus_one=False):
    """Generalised IoU of every pair: [..., N, 4] x [..., M, 4] -> [..., N, M]."""
    b1 = tf.convert_to_tensor(boxes1, tf.float32)[..., :, None, :]
    b2 = tf.convert_to_tensor(boxes2, tf.float32)[..., None, :, :]
    return _giou(b1, b2, plus_one)


def giou_loss(pred_boxes, target_boxes, eps=1e-7):
    """1 - GIoU of matching pairs, as the authors' training loss computes it.

    The predicted max corner is clamped to be >= its min corner (a decoded box
    can be inverted when dh or dw is very negative); areas use continuous
    widths and `eps` keeps the union and enclosing area away from zero.

    Args:
      pred_boxes: float32 [..., 4] yxyx predictions.
      target_boxes: float32 [..., 4] yxyx ground truth.
    Returns:
      float32 [...] loss in [0, 2].
    """
    pred = tf.convert_to_tensor(pred_boxes, tf.float32)
    target = tf.convert_to_tensor(target_boxes, tf.float32)
    pymin, pxmin, pymax, pxmax = tf.unstack(pred, axis=-1)
    pymax = tf.maximum(pymax, pymin)
    pxmax = tf.maximum(pxmax, pxmin)
    tymin, txmin, tymax, txmax = tf.unstack(target, axis=-1)
    pred_area = (pymax - pymin) * (pxmax - pxmin)
    target_area = (tymax - tymin) * (txmax - txmin)
    inter = tf.maximum(tf.minimum(pymax, tymax) - tf.maximum(pymin, tymin), 0.0) * tf.maximum(
        tf.minimum(pxmax, txmax) - tf.maximum(pxmin, txmin), 0.0)
    union = pred_area + target_area - inter + eps
    enclosing = (tf.maximum(pymax, tymax) - tf.minimum(pymin, tymin)) * (
        tf.maximum(pxmax, txmax) - tf.minimum(pxmin, txmin)) + eps
    giou = inter / union - (enclosing - union) / enclosing
    return 1.0 - giou


def _centre_size(boxes, plus_one):
    one = _offset(plus_one)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return (ymin + ymax) * 0.5, (xmin + xmax) * 0.5, ymax - ymin + one, xmax - xmin + one


def encode_boxes(boxes, anchors, weights=BOX_WEIGHTS, plus_one=False):
    """Regression targets of `boxes` w.r.t. `anchors` (both [..., 4] yxyx).

    Returns float32 [..., 4] deltas `(dy, dx, dh, dw)`:
    dy = wy·(cy_b − cy_a)/h_a, dh = wh·ln(h_b/h_a), and likewise for x, w.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    cy, cx, h, w = _centre_size(boxes, plus_one)
    acy, acx, ah, aw = _centre_size(anchors, plus_one)
    wy, wx, wh, ww = weights
    return tf.stack([
        wy * (cy - acy) / ah,
        wx * (cx - acx) / aw,
        wh * tf.math.log(h / ah),
        ww * tf.math.log(w / aw),
    ], axis=-1)


def decode_boxes(deltas, anchors, weights=BOX_WEIGHTS, clamp="kk", plus_one=False):
    """Boxes from `(dy, dx, dh, dw)` deltas [..., 4] and `anchors` [..., 4] yxyx.

    `clamp`: 'kk' bounds dh, dw from above only (authors' code, KK);
    'mm' bounds them on both sides (mmdetection, MM; docs/PAA.md, "Box coding"). With `plus_one`
    the decoded box spans `centre ± (size − 1)/2`, the inverse of the +1 widths.
    """
    deltas = tf.convert_to_tensor(deltas, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    acy, acx, ah, aw = _centre_size(anchors, plus_one)
    wy, wx, wh, ww = weights
    dy = deltas[..., 0] / wy
    dx = deltas[..., 1] / wx
    dh = deltas[..., 2] / wh
    dw = deltas[..., 3] / ww
    if clamp == "kk":
        dh = tf.minimum(dh, DELTA_CLAMP)
        dw = tf.minimum(dw, DELTA_CLAMP)
    elif clamp == "mm":
        dh = tf.clip_by_value(dh, -DELTA_CLAMP, DELTA_CLAMP)
        dw = tf.clip_by_value(dw, -DELTA_CLAMP, DELTA_CLAMP)
    else:
        raise ValueError(f"decode_boxes: clamp must be 'kk' or 'mm', got {clamp!r}")
    cy = dy * ah + acy
    cx = dx * aw + acx
    h = tf.exp(dh) * ah
    w = tf.exp(dw) * aw
    one = _offset(plus_one)
    half_h = (h - one) * 0.5
    half_w = (w - one) * 0.5
    return tf.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)


def clip_boxes(boxes, height, width, plus_one=False):
    """Clip yxyx `boxes` [..., 4] to `[0, H] × [0, W]` (`[0, H−1] × [0, W−1]` with +1).

    `height`, `width` may be scalars or tensors broadcastable to `boxes[..., 0]`.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    one = _offset(plus_one)
    ymax_limit = tf.cast(height, tf.float32) - one
    xmax_limit = tf.cast(width, tf.float32) - one
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.stack([
        tf.minimum(tf.maximum(ymin, 0.0), ymax_limit),
        tf.minimum(tf.maximum(xmin, 0.0), xmax_limit),
        tf.minimum(tf.maximum(ymax, 0.0), ymax_limit),
        tf.minimum(tf.maximum(xmax, 0.0), xmax_limit),
    ], axis=-1)


def xywh_to_yxyx(boxes):
    """COCO `[x, y, w, h]` (NumPy [..., 4]) -> `[ymin, xmin, ymax, xmax]` (continuous)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    x, y, w, h = np.moveaxis(boxes, -1, 0)
    return np.stack([y, x, y + h, x + w], axis=-1)


def yxyx_to_xywh(boxes):
    """`[ymin, xmin, ymax, xmax]` (NumPy [..., 4]) -> COCO `[x, y, w, h]` (continuous)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    ymin, xmin, ymax, xmax = np.moveaxis(boxes, -1, 0)
    return np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=-1)
