"""Box geometry against the reference values for losses, box coding, the pre-assignment
example and anchors (docs/CONVENTIONS.md, "Reference values")."""

import numpy as np
import pytest

from paa_tf.ops import anchors as anchor_ops
from paa_tf.ops import boxes as box_ops


def xyxy_to_yxyx(b):
    b = np.asarray(b, np.float32)
    return b[..., [1, 0, 3, 2]]


def test_giou_loss_matches_reference_values():
    pred = xyxy_to_yxyx([[0, 0, 10, 10]] * 3)
    gt = xyxy_to_yxyx([[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(box_ops.giou_loss(pred, gt).numpy(),
                               [1.079365, 1.777778, 0.0], atol=1e-5)
    # The aligned GIoU agrees with 1 - loss away from the eps regime.
    np.testing.assert_allclose(1.0 - box_ops.aligned_giou(pred, gt).numpy(),
                               [1.079365, 1.777778, 0.0], atol=1e-5)


def test_giou_loss_clamps_inverted_prediction():
    # An inverted predicted box (ymax < ymin) is treated as degenerate, not negative area.
    pred = np.array([[10, 10, 5, 20]], np.float32)
    gt = np.array([[0, 0, 10, 10]], np.float32)
    loss = box_ops.giou_loss(pred, gt).numpy()
    assert np.all(np.isfinite(loss)) and 1.0 <= loss[0] <= 2.0


def test_iou_with_and_without_plus_one():
    a = xyxy_to_yxyx([[0, 0, 10, 10]])
    b = xyxy_to_yxyx([[5, 5, 15, 15]])
    assert box_ops.aligned_iou(a, b, plus_one=True).numpy()[0] == pytest.approx(0.174757, abs=1e-6)
    assert box_ops.aligned_iou(a, b).numpy()[0] == pytest.approx(0.142857, abs=1e-6)


def test_pairwise_iou_of_the_preassignment_example():
    anchors = xyxy_to_yxyx([[10, 0, 110, 100], [0, 0, 100, 100]])
    gts = xyxy_to_yxyx([[0, 0, 100, 100], [40, 0, 140, 100]])
    continuous = box_ops.pairwise_iou(gts, anchors).numpy()
    np.testing.assert_allclose(continuous, [[0.8182, 1.0], [0.5385, 0.4286]], atol=1e-4)
    plus_one = box_ops.pairwise_iou(gts, anchors, plus_one=True).numpy()
    np.testing.assert_allclose(plus_one, [[0.8198, 1.0], [0.5420, 0.4326]], atol=1e-4)
    # Pairwise equals aligned on the diagonal, and GIoU <= IoU everywhere.
    giou = box_ops.pairwise_giou(gts, anchors).numpy()
    assert np.all(giou <= continuous + 1e-6)


def test_kk_delta_coding_reference_values():
    anchor = xyxy_to_yxyx([-27.5, -27.5, 35.5, 35.5])
    gt = xyxy_to_yxyx([10, 20, 60, 90])
    deltas = box_ops.encode_boxes(gt, anchor, plus_one=True).numpy()
    # reference (dx, dy, dw, dh) = (4.84375, 7.96875, -1.135287, 0.518984); ours is (dy, dx, dh, dw)
    np.testing.assert_allclose(deltas, [7.96875, 4.84375, 0.518984, -1.135287], atol=1e-5)
    decoded = box_ops.decode_boxes(deltas, anchor, plus_one=True).numpy()
    np.testing.assert_allclose(decoded, gt, atol=1e-4)
    zero = box_ops.decode_boxes(np.zeros(4, np.float32), anchor, plus_one=True).numpy()
    np.testing.assert_allclose(zero, anchor, atol=1e-5)
    grow = box_ops.decode_boxes([0, 0, 0, 50.0], anchor, plus_one=True).numpy()
    np.testing.assert_allclose(grow[[1, 3]], [-1995.5, 2003.5], atol=1e-2)
    shrink = box_ops.decode_boxes([0, 0, 0, -50.0], anchor, plus_one=True).numpy()
    np.testing.assert_allclose(shrink[[1, 3]], [4.4985, 3.5015], atol=1e-4)


def test_mm_delta_coding_reference_values():
    anchor = xyxy_to_yxyx([-32, -32, 32, 32])
    gt = xyxy_to_yxyx([10, 20, 60, 90])
    deltas = box_ops.encode_boxes(gt, anchor).numpy()
    np.testing.assert_allclose(deltas, [8.59375, 5.46875, 0.448061, -1.234300], atol=1e-5)
    np.testing.assert_allclose(box_ops.decode_boxes(deltas, anchor, clamp="mm").numpy(), gt,
                               atol=1e-4)
    shrink = box_ops.decode_boxes([0, 0, 0, -50.0], anchor, clamp="mm").numpy()
    assert shrink[3] - shrink[1] == pytest.approx(1.024, abs=1e-4)


def test_decode_rejects_unknown_clamp():
    with pytest.raises(ValueError, match="clamp"):
        box_ops.decode_boxes(np.zeros(4), np.zeros(4), clamp="both")


def test_clip_and_coco_conversion_round_trip():
    boxes = np.array([[-5, 3, 50, 700]], np.float32)
    np.testing.assert_allclose(box_ops.clip_boxes(boxes, 40, 600).numpy(), [[0, 3, 40, 600]])
    xywh = np.array([[10.5, 20.0, 30.0, 40.25]], np.float32)
    yxyx = box_ops.xywh_to_yxyx(xywh)
    np.testing.assert_allclose(yxyx, [[20.0, 10.5, 60.25, 40.5]])
    np.testing.assert_allclose(box_ops.yxyx_to_xywh(yxyx), xywh)


@pytest.mark.parametrize("stride_index,expected", [
    (0, [-27.5, 35.5]), (1, [-55.5, 71.5]), (2, [-111.5, 143.5]),
    (3, [-223.5, 287.5]), (4, [-447.5, 575.5]),
])
def test_kk_base_anchors(stride_index, expected):
    anchors, levels = anchor_ops.generate_anchors(1024, 1024, plus_one=True)
    first = anchors[np.argmax(levels == stride_index)]
    np.testing.assert_allclose(first, [expected[0], expected[0], expected[1], expected[1]])


def test_mm_base_anchor_cell_corner():
    anchors, _ = anchor_ops.generate_anchors(256, 256, center_offset=0.0)
    np.testing.assert_allclose(anchors[0], [-32, -32, 32, 32])
    np.testing.assert_allclose(anchors[1], [-32, -24, 32, 40])  # next column, same row


def test_anchor_count_800x1216():
    sizes = anchor_ops.feature_sizes(800, 1216)
    assert sizes == [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]
    anchors, levels = anchor_ops.generate_anchors(800, 1216)
    assert anchors.shape == (20267, 4)
    assert np.bincount(levels).tolist() == [15200, 3800, 950, 247, 70]


def test_anchor_order_is_row_major_per_level():
    anchors, _ = anchor_ops.generate_anchors(64, 64, min_level=3, max_level=3, octave_base_scale=1)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    # 8x8 grid: index 1 moves one column right, index 8 one row down.
    np.testing.assert_allclose(centres[0], [4, 4])
    np.testing.assert_allclose(centres[1], [4, 12])
    np.testing.assert_allclose(centres[8], [12, 4])


def test_focal_loss_reference_values():
    from paa_tf.ops.focal import sigmoid_focal_loss
    logits = np.array([-4.59512, -4.59512, 0.0, 0.0, 2.0, 2.0], np.float32)
    targets = np.array([1, 0, 1, 0, 1, 0], np.float32)
    np.testing.assert_allclose(
        sigmoid_focal_loss(logits, targets).numpy(),
        [1.128381825, 7.537752e-7, 0.043322, 0.129965, 0.000451, 1.237559], rtol=1e-5, atol=6e-7)
    prior = np.full(80, -np.log(99.0), np.float32)
    target = np.zeros(80, np.float32)
    target[0] = 1
    assert float(np.sum(sigmoid_focal_loss(prior, target))) == pytest.approx(1.128441373, rel=1e-5)
