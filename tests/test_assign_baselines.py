"""Baseline assigners (paper Table 1 ablations): RetinaNet IoU assignment and ATSS."""

import numpy as np
import pytest

from paa_tf.assign import BACKGROUND, IGNORE, assign, atss_assign, iou_assign
from paa_tf.config import AssignConfig
from paa_tf.ops.anchors import generate_anchors


def yxyx(x1, y1, x2, y2):
    return [y1, x1, y2, x2]


def test_iou_assignment_thresholds_and_rescue():
    """>= 0.5 positive, < 0.4 background, between ignored; a GT's best anchor always positive."""
    anchors = np.array([
        yxyx(0, 0, 100, 100),    # GT0 IoU 1.0 -> positive
        yxyx(0, 0, 100, 50),     # GT0 IoU 0.5 -> positive (>=)
        yxyx(0, 0, 100, 45),     # GT0 IoU 0.45 -> ignore
        yxyx(0, 0, 100, 30),     # GT0 IoU 0.3 -> background
        yxyx(200, 200, 300, 300),  # GT1 (small) IoU 0.25, its best anchor -> rescued
        yxyx(500, 500, 600, 600),  # no overlap -> background
    ], np.float32)
    gts = np.array([[yxyx(0, 0, 100, 100), yxyx(200, 200, 250, 250), [-1, -1, -1, -1]]],
                   np.float32)
    cls = np.array([[2, 5, -1]], np.int32)
    result = iou_assign(AssignConfig(), anchors, gts, cls)
    assert result.labels.numpy()[0].tolist() == [2, 2, IGNORE, BACKGROUND, 5, BACKGROUND]
    assert result.matched_gt.numpy()[0].tolist() == [0, 0, -1, -1, 1, -1]
    assert result.num_positives_per_gt.numpy()[0].tolist() == [2, 1, 0]
    np.testing.assert_array_equal(result.matched_boxes.numpy()[0, 4], gts[0, 1])
    no_rescue = iou_assign(AssignConfig(iou_low_quality=False), anchors, gts, cls)
    assert no_rescue.labels.numpy()[0, 4] == BACKGROUND


def test_iou_assignment_rejects_inverted_thresholds():
    with pytest.raises(ValueError, match="iou_negative"):
        iou_assign(AssignConfig(iou_positive=0.4, iou_negative=0.5),
                   np.zeros((1, 4), np.float32), np.zeros((1, 1, 4), np.float32), [[0]])


def reference_atss(anchors, levels, gts, cls, topk=9):
    """ATSS written from the paper (Zhang et al. 2020, Algorithm 1) in NumPy, one GT at a time."""
    num_anchors = len(anchors)
    ay, ax = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    labels = np.full((len(gts), num_anchors), BACKGROUND)
    for b in range(len(gts)):
        best = np.full(num_anchors, -np.inf)
        for g in np.flatnonzero(cls[b] >= 0):
            y1, x1, y2, x2 = gts[b, g].astype(np.float64)
            inter = (np.clip(np.minimum(anchors[:, 2], y2) - np.maximum(anchors[:, 0], y1), 0, None)
                     * np.clip(np.minimum(anchors[:, 3], x2) - np.maximum(anchors[:, 1], x1), 0,
                               None))
            iou = inter / (area_a + (y2 - y1) * (x2 - x1) - inter)
            dist = np.hypot(ay - (y1 + y2) / 2, ax - (x1 + x2) / 2)
            cand = []
            for lvl in np.unique(levels):
                idx = np.flatnonzero(levels == lvl)
                cand.extend(idx[np.lexsort((idx, dist[idx]))][:topk])
            cand = np.array(cand)
            thr = iou[cand].mean() + iou[cand].std(ddof=1)
            inside = np.minimum.reduce([ay[cand] - y1, ax[cand] - x1, y2 - ay[cand],
                                        x2 - ax[cand]]) > 0.01
            for a in cand[(iou[cand] >= thr) & inside]:
                if iou[a] > best[a]:
                    best[a] = iou[a]
                    labels[b, a] = cls[b, g]
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_atss_matches_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    anchors, levels = generate_anchors(160, 160)
    gts = np.full((2, 6, 4), -1.0, np.float32)
    cls = np.full((2, 6), -1, np.int32)
    for m in range(6 if seed else 4):
        y, x = rng.uniform(0, 120, 2)
        h, w = rng.uniform(8, 160 - max(y, x), 2)
        gts[0, m] = [y, x, y + h, x + w]
        cls[0, m] = m % 3
    result = atss_assign(AssignConfig(), anchors, levels, 5, gts, cls)
    labels = result.labels.numpy()
    np.testing.assert_array_equal(labels, reference_atss(anchors, levels, gts, cls))
    assert (labels[1] == BACKGROUND).all()  # image without GT
    assert result.num_positives_per_gt.numpy()[0].sum() == np.sum(labels[0] >= 0) > 0


@pytest.mark.parametrize("method", ["iou", "atss", "paa"])
def test_dispatch_by_config_method(method):
    anchors, levels = generate_anchors(64, 64)
    gts = np.array([[yxyx(4, 4, 40, 36), [-1] * 4]], np.float32)
    cls = np.array([[1, -1]], np.int32)
    logits = np.full((1, len(anchors), 3), -4.6, np.float32)
    config = AssignConfig(method=method, max_gt_per_batch=4)
    result = assign(config, anchors, levels, 5, gts, cls, logits, anchors[None])
    if method == "iou":
        expected = iou_assign(config, anchors, gts, cls)
    elif method == "atss":
        expected = atss_assign(config, anchors, levels, 5, gts, cls)
    else:
        expected = result
    np.testing.assert_array_equal(result.labels.numpy(), expected.labels.numpy())
    assert result.num_positives_per_gt.numpy()[0, 0] > 0
    assert result.num_positives_per_gt.numpy()[0, 1] == 0


def test_unknown_method_is_rejected():
    anchors, levels = generate_anchors(64, 64)
    with pytest.raises(ValueError, match="assign.method"):
        assign(AssignConfig(method="fcos"), anchors, levels, 5, np.zeros((1, 1, 4), np.float32),
               [[0]], np.zeros((1, len(anchors), 2), np.float32), anchors[None])
