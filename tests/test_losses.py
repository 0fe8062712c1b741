"""PAA losses (paper Eq. 8; docs/PAA.md, "Losses") against the reference loss values
(docs/CONVENTIONS.md, "Reference values") and hand-computed cases."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from paa_tf.config import LossConfig
from paa_tf.modeling import losses

PRIOR = -math.log(99.0)  # reference value: -4.595120
KK_LOSS = LossConfig(focal_alpha=0.25, focal_gamma=2.0, reg_weight=1.3, iou_weight=0.5,
                     normalizer="all_reduce")


def _cls_sum(logits, labels):
    return float(losses.classification_loss_sum(
        tf.constant(logits, tf.float32), tf.constant(labels, tf.int32)))


@pytest.mark.parametrize("logit, positive, negative, tolerance", [
    (PRIOR, 1.128381825, 7.537752e-7, dict(rel=1e-5)),  # float32 arithmetic
    (0.0, 0.043322, 0.129965, dict(abs=1e-6)),  # reference values rounded to 6 decimals
    (2.0, 0.000451, 1.237559, dict(abs=1e-6)),
])
def test_focal_loss_per_element_matches_reference_values(logit, positive, negative, tolerance):
    # One anchor, one class: label 0 = positive of class 0, -1 = background.
    assert _cls_sum([[[logit]]], [[0]]) == pytest.approx(positive, **tolerance)
    assert _cls_sum([[[logit]]], [[-1]]) == pytest.approx(negative, **tolerance)


def test_classification_cost_of_80_prior_logits_matches_reference_value():
    logits = np.full([1, 2, 80], PRIOR, np.float32)
    positive = _cls_sum(logits[:, :1], [[3]])
    background = _cls_sum(logits[:, 1:], [[-1]])
    assert positive == pytest.approx(1.128441373, rel=1e-5)
    assert background == pytest.approx(6.0302e-5, rel=1e-3)
    assert _cls_sum(logits, [[3, -1]]) == pytest.approx(positive + background, rel=1e-6)


def test_ignored_anchors_contribute_no_classification_loss():
    logits = np.array([[[2.0, -1.0], [0.5, 3.0], [1.0, 1.0]]], np.float32)
    with_ignore = _cls_sum(logits, [[0, -2, -1]])
    without_middle = _cls_sum(logits[:, [0, 2]], [[0, -1]])
    assert with_ignore == pytest.approx(without_middle, rel=1e-6)
    assert with_ignore < _cls_sum(logits, [[0, -1, -1]])


@pytest.mark.parametrize("target, expected", [
    ([5.0, 5.0, 15.0, 15.0], 1.079365),
    ([20.0, 20.0, 30.0, 30.0], 1.777778),
    ([0.0, 0.0, 10.0, 10.0], 0.0),
])
def test_giou_loss_values_match_reference_values(target, expected):
    pred = tf.constant([[[0.0, 0.0, 10.0, 10.0]]])
    values = losses.box_giou_losses(pred, tf.constant([[target]]), tf.constant([[True]]))
    assert float(values[0, 0]) == pytest.approx(expected, abs=1e-5)


def test_regression_normalisation_reference_example():
    # u = [0.8, 0.5], GIoU losses [0.3, 0.9] -> 1.3 * (0.24 + 0.45) / 1.3 = 0.69;
    # the third anchor is not positive and must not count.
    value = losses.regression_loss(
        tf.constant([[0.3, 0.9, 5.0]]), tf.constant([[0.8, 0.5, 0.7]]),
        tf.constant([[True, True, False]]), reg_weight=1.3)
    assert float(value) == pytest.approx(0.69, abs=1e-6)


def test_iou_prediction_reference_example():
    value = losses.aux_loss(tf.constant([[0.0, 2.0, 9.0]]), tf.constant([[0.8, 0.5, 0.1]]),
                            tf.constant([[True, True, False]]), aux_weight=0.5,
                            normalizer=tf.constant(2.0))
    assert float(value) == pytest.approx(0.455019, abs=1e-6)


def _one_positive_batch():
    """Two anchors, 3 classes; anchor 0 is a positive of class 1 predicting (0,0,10,10)."""
    cls_logits = tf.constant([[[0.0, 2.0, PRIOR], [PRIOR, 0.0, 2.0]]])
    pred_boxes = tf.constant([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]]])
    iou_logits = tf.constant([[0.0, 3.0]])
    labels = tf.constant([[1, -1]])
    targets = tf.constant([[[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 0.0, 0.0]]])
    positive = tf.constant([[True, False]])
    anchors = tf.constant([[-27.0, -27.0, 37.0, 37.0], [-27.0, -27.0, 37.0, 37.0]])
    return cls_logits, pred_boxes, iou_logits, labels, targets, positive, anchors


def test_paa_losses_combine_the_three_terms_as_eq_8():
    cls_logits, pred_boxes, iou_logits, labels, targets, positive, anchors = _one_positive_batch()
    out = losses.paa_losses(cls_logits, pred_boxes, iou_logits, labels, targets, positive,
                            anchors, KK_LOSS)
    # Focal by hand: anchor 0 targets (0, 1, 0), anchor 1 all background; N_pos = 1.
    expected_cls = (0.129965 + 0.000451 + 7.537752e-7) + (7.537752e-7 + 0.129965 + 1.237559)
    u = 1.0 / 7.0  # continuous IoU of (0,0,10,10) and (5,5,15,15)
    bce = -(u * math.log(0.5) + (1 - u) * math.log(0.5))
    assert float(out["loss_cls"]) == pytest.approx(expected_cls, rel=1e-4)
    assert float(out["loss_reg"]) == pytest.approx(1.3 * 1.079365, rel=1e-5)
    assert float(out["loss_aux"]) == pytest.approx(0.5 * bce, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(
        float(out["loss_cls"] + out["loss_reg"] + out["loss_aux"]), rel=1e-6)
    assert float(out["num_positives"]) == 1.0


def test_iou_target_uses_plus_one_convention_when_asked():
    # reference values: IoU of (0,0,10,10) and (5,5,15,15) is 0.174757 with +1, 1/7 without.
    pred = tf.constant([[[0.0, 0.0, 10.0, 10.0]]])
    target = tf.constant([[[5.0, 5.0, 15.0, 15.0]]])
    assert float(losses.iou_targets(pred, target, plus_one=True)[0, 0]) == pytest.approx(
        0.174757, abs=1e-6)
    assert float(losses.iou_targets(pred, target)[0, 0]) == pytest.approx(1 / 7, abs=1e-6)


def test_batch_without_positives_gives_finite_losses_and_gradients():
    cls_logits, pred_boxes, iou_logits, _, targets, _, anchors = _one_positive_batch()
    labels = tf.constant([[-1, -1]])
    positive = tf.constant([[False, False]])
    # Garbage predictions (inverted, huge) must not leak NaNs either.
    pred_boxes = tf.Variable([[[0.0, 0.0, 10.0, 10.0], [1e30, 5.0, -1e30, 3.0]]])
    with tf.GradientTape() as tape:
        out = losses.paa_losses(cls_logits, pred_boxes, iou_logits, labels, targets, positive,
                                anchors, KK_LOSS)
    gradient = tape.gradient(out["loss"], pred_boxes)
    assert float(out["loss_reg"]) == 0.0 and float(out["loss_aux"]) == 0.0
    assert np.isfinite(float(out["loss_cls"])) and float(out["loss_cls"]) > 0
    assert gradient is None or np.all(np.isfinite(gradient.numpy()))


def test_regression_gradient_does_not_flow_through_the_iou_weight():
    cls_logits, _, iou_logits, labels, targets, positive, anchors = _one_positive_batch()
    pred_boxes = tf.Variable([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]]])
    with tf.GradientTape() as tape:
        out = losses.paa_losses(cls_logits, pred_boxes, iou_logits, labels, targets, positive,
                                anchors, KK_LOSS)
        loss = out["loss_reg"]
    gradient = tape.gradient(loss, pred_boxes).numpy()
    # With u detached and a single positive, L_reg = 1.3 * GIoU-loss: same gradient.
    with tf.GradientTape() as tape:
        plain = 1.3 * losses.box_giou_losses(pred_boxes, targets, positive)[0, 0]
    expected = tape.gradient(plain, pred_boxes).numpy()
    np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-7)
    assert np.all(gradient[0, 1] == 0.0)


def test_per_replica_normaliser_uses_max_of_positives_and_images():
    cls_logits, pred_boxes, iou_logits, labels, targets, positive, anchors = _one_positive_batch()
    # Two images, one positive in total: MM divides the focal sum by max(1, 2) = 2.
    stack = lambda t: tf.concat([t, t], axis=0)  # noqa: E731
    no_pos = tf.zeros_like(positive)
    mm = dataclasses.replace(KK_LOSS, normalizer="per_replica")
    args = (stack(cls_logits), stack(pred_boxes), stack(iou_logits),
            tf.concat([labels, -tf.ones_like(labels)], 0), stack(targets),
            tf.concat([positive, no_pos], 0), anchors)
    kk_out = losses.paa_losses(*args, KK_LOSS)
    mm_out = losses.paa_losses(*args, mm)
    assert float(mm_out["loss_cls"]) == pytest.approx(float(kk_out["loss_cls"]) / 2, rel=1e-6)
    assert float(mm_out["loss_reg"]) == pytest.approx(float(kk_out["loss_reg"]), rel=1e-6)


def test_centerness_target_is_fcos_centerness_of_the_anchor_centre():
    anchors = tf.constant([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 60.0, 60.0]])  # centres (5,5)
    boxes = tf.constant([[[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 20.0]]])
    values = losses.centerness_targets(anchors, boxes).numpy()
    # Centre (5, 5): top = bottom = 5, left 5, right 15 -> sqrt(5/15); (50, 50) is outside.
    np.testing.assert_allclose(values[0], [math.sqrt(5 / 15), 0.0], atol=1e-6)
