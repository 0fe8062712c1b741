"""PAADetector.train_step / test_step: wiring, metrics, weight decay and the bias LR
(paper Procedure 1 and Eq. 8; docs/PAA.md, "Losses" and "Training recipe")."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from paa_tf.assign.labels import AssignResult
from paa_tf.config import build_config
from paa_tf.modeling import build_detector, losses
from paa_tf.modeling.detector import is_bias

TINY = ("model.backbone=tiny,model.num_classes=3,model.fpn_channels=32,"
        "model.head_channels=32,model.head_convs=2,model.max_level=5")
SIZE = (128, 128)


def _batch(num_images=1):
    """Images with bright/dark rectangles where the GT boxes (yxyx pixels) are."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(num_images, *SIZE, 3)).astype(np.float32)
    boxes = np.full((num_images, 4, 4), -1.0, np.float32)
    classes = np.full((num_images, 4), -1, np.int32)
    boxes[0, :2] = [[10, 10, 60, 50], [70, 60, 120, 125]]
    classes[0, :2] = [0, 2]
    image[0, 10:60, 10:50] += 2.0
    image[0, 70:120, 60:125] -= 2.0
    if num_images > 1:
        boxes[1, :1] = [[30, 20, 90, 100]]
        classes[1, :1] = [1]
    return {"image": image, "gt_boxes": boxes, "gt_classes": classes}


@pytest.mark.slow
def test_one_image_overfit_drives_the_total_loss_down():
    tf_keras.utils.set_random_seed(0)
    model = build_detector(build_config(overrides=TINY), SIZE)
    model.compile(optimizer=tf_keras.optimizers.SGD(0.01, momentum=0.9))
    data = _batch()
    initial = model.test_on_batch(data, return_dict=True)
    # At the prior bias each positive costs ~1.128 in focal loss (reference loss values).
    assert 1.0 < initial["loss_cls"] < 1.3
    assert initial["pos_per_gt"] >= 1.0
    for _ in range(100):
        logs = model.train_on_batch(data, return_dict=True)
        assert np.isfinite(logs["loss"])
    assert set(logs) == {"loss", "loss_cls", "loss_reg", "loss_iou", "pos_per_gt",
                         "gt_without_pos", "lr"}
    final = model.test_on_batch(data, return_dict=True)
    assert final["loss"] < initial["loss"] / 8
    assert final["loss_cls"] < initial["loss_cls"] / 100
    assert final["loss_reg"] < initial["loss_reg"] / 3
    assert logs["lr"] == pytest.approx(0.01)


def _fixed_assignment(labels, boxes, num_pos_per_gt):
    """An assign_fn returning hand-made targets (the real engine is tested elsewhere)."""
    labels = tf.constant(labels, tf.int32)
    positive = labels >= 0

    def assign_fn(config, anchors, level_ids, num_levels, gt_boxes, gt_classes, cls_logits,
                  pred_boxes, plus_one=False, loss_config=None):
        assert not isinstance(cls_logits, tf.Variable)
        return AssignResult(labels=labels, matched_boxes=tf.constant(boxes, tf.float32),
                            positive_mask=positive,
                            matched_gt=tf.where(positive, 0, -1),
                            num_positives_per_gt=tf.constant(num_pos_per_gt, tf.int32))
    return assign_fn


@pytest.mark.slow
def test_test_step_losses_and_metrics_follow_the_assignment():
    config = build_config(overrides=TINY)
    probe = build_detector(config, SIZE)
    num_anchors = probe.anchors.shape[0]
    labels = np.full((1, num_anchors), -1, np.int32)
    labels[0, [5, 40, 41]] = [0, 2, 2]
    labels[0, 7] = -2
    boxes = np.zeros((1, num_anchors, 4), np.float32)
    boxes[0, 5] = [10, 10, 60, 50]
    boxes[0, 40:42] = [70, 60, 120, 125]
    model = build_detector(config, SIZE, assign_fn=_fixed_assignment(
        labels, boxes, [[1, 2, 0, 0]]))
    model.set_weights(probe.get_weights())
    model.compile(optimizer=tf_keras.optimizers.SGD(0.01))
    data = _batch()
    logs = model.test_on_batch(data, return_dict=True)
    outputs = model(data["image"])
    expected = losses.paa_losses(
        outputs["cls_logits"], model.decode(outputs["box_deltas"]), outputs["iou_logits"],
        tf.constant(labels), tf.constant(boxes), tf.constant(labels >= 0), model.anchors,
        config.loss)
    assert logs["loss_cls"] == pytest.approx(float(expected["loss_cls"]), rel=1e-5)
    assert logs["loss_reg"] == pytest.approx(float(expected["loss_reg"]), rel=1e-5)
    assert logs["loss_iou"] == pytest.approx(float(expected["loss_aux"]), rel=1e-5)
    assert logs["loss"] == pytest.approx(float(expected["loss"]), rel=1e-5)
    # Fig. 4b statistic over the two real GTs (padded rows excluded): (1 + 2) / 2.
    assert logs["pos_per_gt"] == pytest.approx(1.5)
    assert logs["gt_without_pos"] == pytest.approx(0.0)


def test_weight_decay_skips_biases_and_bias_gradients_are_scaled():
    config = build_config(overrides=TINY + ",train.weight_decay=0.01,train.bias_lr_factor=2.0,"
                          "train.bias_weight_decay=0.5")
    model = build_detector(config, SIZE)
    variables = model.trainable_variables
    zeros = [tf.zeros_like(v) for v in variables]
    scaled = model._decay_and_scale([z + 1.0 for z in zeros], variables)
    names = [v.name for v in variables]
    assert any("cls_logits/bias" in n for n in names) and any("gn0/beta" in n for n in names)
    assert any("scale_p3" in n for n in names)
    for variable, gradient in zip(variables, scaled):
        value = variable.numpy()
        if is_bias(variable):  # 2 x (g + 0.5 w)
            np.testing.assert_allclose(gradient, 2.0 * (1.0 + 0.5 * value), rtol=1e-6)
        else:  # g + 0.01 w: conv kernels, GroupNorm gamma and the Scales are decayed (KK)
            np.testing.assert_allclose(gradient, 1.0 + 0.01 * value, rtol=1e-6)


def test_doubling_the_gradient_equals_doubling_the_lr_for_sgd_with_momentum():
    """The reasoning behind train.bias_lr_factor, checked on Keras' SGD with a schedule."""
    schedule = tf_keras.optimizers.schedules.PiecewiseConstantDecay([2, 4], [0.1, 0.05, 0.01])
    gradients = [tf.constant([0.3, -1.2]), tf.constant([0.5, 0.1]), tf.constant([-0.7, 0.4]),
                 tf.constant([0.2, 0.2]), tf.constant([1.0, -0.3])]
    scaled_gradient = tf.Variable([1.0, 2.0])
    scaled_lr = tf.Variable([1.0, 2.0])
    opt_a = tf_keras.optimizers.SGD(schedule, momentum=0.9)
    opt_b = tf_keras.optimizers.SGD(
        tf_keras.optimizers.schedules.PiecewiseConstantDecay([2, 4], [0.2, 0.1, 0.02]),
        momentum=0.9)
    for gradient in gradients:
        opt_a.apply_gradients([(2.0 * gradient, scaled_gradient)])
        opt_b.apply_gradients([(gradient, scaled_lr)])
    np.testing.assert_allclose(scaled_gradient.numpy(), scaled_lr.numpy(), rtol=1e-6)


@pytest.mark.slow
def test_mixed_float16_steps_are_finite_and_not_skipped():
    """Losses stay float32; GroupNorm runs in float32 so float16 gradients do not overflow."""
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        tf_keras.utils.set_random_seed(2)
        model = build_detector(build_config(overrides=TINY), SIZE)
        model.compile(optimizer=tf_keras.optimizers.SGD(0.01, momentum=0.9))
        assert model(tf.zeros([1, *SIZE, 3]))["cls_logits"].dtype == tf.float16
        initial_scale = float(model.optimizer.loss_scale)
        for _ in range(3):
            logs = model.train_on_batch(_batch(), return_dict=True)
        # A dynamic loss scale is halved at every step whose gradients were not finite.
        assert float(model.optimizer.loss_scale) == initial_scale
        assert int(model.optimizer.iterations) == 3 and np.isfinite(logs["loss"])
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
