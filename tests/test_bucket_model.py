"""The detector on a 32-multiple bucket vs the square canvas (issue 14).

A landscape image of 100x200 pixels is padded into its bucket 128x224 (the smallest multiples
of 32 holding it; P6 of a tiny P3-P6 detector then has ceil(224 / 64) = 4 columns, the last
one half over the edge) and into the square canvas 256x256. The square's outputs at the
anchors both inputs share are fed to the assignment and the losses of both, so these tests
isolate what the bucket changes: the anchor set, and nothing else.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from paa_tf.assign import BACKGROUND, assign
from paa_tf.inference import postprocess
from paa_tf.modeling import losses as losses_lib
from paa_tf.modeling.detector import build_detector
from paa_tf.ops.anchors import feature_sizes, generate_anchors, generate_anchors_tf
from tests import train_utils

SQUARE, BUCKET, CONTENT = (256, 256), (128, 224), (100, 200)
GT_BOXES = np.array([[[10, 12, 60, 70], [30, 90, 98, 190], [70, 20, 99, 60], [-1, -1, -1, -1]]],
                    np.float32)
GT_CLASSES = np.array([[0, 2, 1, -1]], np.int32)


def config(overrides=""):
    return train_utils.tiny_config(
        "data.image_size=[256,256],data.min_size=[128],data.max_size=200" +
        ("," + overrides if overrides else ""))


def shared_index(square_anchors, square_levels, bucket_anchors, bucket_levels):
    """Index into the square's anchors of each bucket anchor (same box and level)."""
    lookup = {(level, *box.tolist()): i
              for i, (box, level) in enumerate(zip(square_anchors, square_levels))}
    return np.array([lookup[(level, *box.tolist())]
                     for box, level in zip(bucket_anchors, bucket_levels)])


def image_in(canvas, seed=0):
    pixels = np.zeros((1, *canvas, 3), np.float32)
    pixels[0, :CONTENT[0], :CONTENT[1]] = np.random.default_rng(seed).normal(
        size=(*CONTENT, 3))
    return pixels


def test_bucket_anchors_are_the_squares_top_left_anchors():
    model = build_detector(config(), SQUARE)
    square, square_levels = model.anchors_for(*SQUARE)
    bucket, bucket_levels = model.anchors_for(*BUCKET)
    np.testing.assert_array_equal(square, model.anchors.numpy())
    index = shared_index(square, square_levels, bucket, bucket_levels)
    # Row-major per level, P3 first: the bucket's order is the square's order restricted.
    assert np.all(np.diff(index) > 0)
    # P3 16x28, P4 8x14, P5 4x7, P6 2x4 (ceil(3.5)).
    assert len(bucket) == 16 * 28 + 8 * 14 + 4 * 7 + 2 * 4
    centres = (square[:, :2] + square[:, 2:]) / 2
    strides = 8.0 * 2.0 ** square_levels
    outside = np.ones(len(square), bool)
    outside[index] = False
    # The square's extra anchors are those whose cell starts in the padding below or right of
    # the bucket; every cell of the bucket (the partial P6 column too) is shared.
    starts = centres - strides[:, None] / 2
    assert np.all((starts[outside, 0] >= BUCKET[0]) | (starts[outside, 1] >= BUCKET[1]))
    assert np.all((starts[index, 0] < BUCKET[0]) & (starts[index, 1] < BUCKET[1]))
    # The same generator, called with the bucket size directly, agrees.
    direct, _ = generate_anchors(*BUCKET, 3, 6, octave_base_scale=3.0)
    np.testing.assert_array_equal(bucket, direct)


@pytest.mark.parametrize("size", [(128, 224), (96, 160), (800, 1344), (224, 96), (32, 32)])
def test_head_outputs_line_up_with_the_anchors_at_multiples_of_32(size):
    # P3-P7: 800x1344 has an odd P5 (25 rows), so P6 and P7 take ceil sizes 13 and 7.
    cfg = config("model.max_level=7")
    model = build_detector(cfg, (128, 128))
    pyramid = model.fpn(model.backbone(tf.zeros([1, *size, 3])))
    sizes = [tuple(pyramid[level].shape[1:3]) for level in range(3, 8)]
    assert sizes == feature_sizes(*size, 3, 7)
    outputs = model(tf.zeros([1, *size, 3]))
    anchors, levels = model.anchors_for(*size)
    assert outputs["cls_logits"].shape[1] == len(anchors) == sum(h * w for h, w in sizes)
    # The runtime (TensorFlow) generator of the export makes exactly the same anchors.
    dynamic, level_sizes = tf.function(lambda hw: generate_anchors_tf(
        hw[0], hw[1], 3, 7, octave_base_scale=3.0))(tf.constant(size))
    np.testing.assert_array_equal(dynamic.numpy(), anchors)
    assert [int(n) for n in level_sizes] == [h * w for h, w in sizes]
    assert np.bincount(levels).tolist() == [h * w for h, w in sizes]


@pytest.mark.parametrize("method", ["paa", "atss", "iou"])
def test_assignment_and_losses_do_not_depend_on_the_padding(method):
    cfg = config(f"assign.method={method}")
    tf_keras.utils.set_random_seed(1)
    model = build_detector(cfg, SQUARE)
    outputs = model(image_in(SQUARE), training=False)
    square, square_levels = model.anchors_for(*SQUARE)
    bucket, bucket_levels = model.anchors_for(*BUCKET)
    index = shared_index(square, square_levels, bucket, bucket_levels)
    results = {}
    for name, anchors, levels, take in (("square", square, square_levels, slice(None)),
                                        ("bucket", bucket, bucket_levels, index)):
        cls = tf.gather(outputs["cls_logits"], take, axis=1) if name == "bucket" \
            else outputs["cls_logits"]
        deltas = tf.gather(outputs["box_deltas"], take, axis=1) if name == "bucket" \
            else outputs["box_deltas"]
        iou = tf.gather(outputs["iou_logits"], take, axis=1) if name == "bucket" \
            else outputs["iou_logits"]
        anchors = tf.constant(anchors)
        pred = model.decode(deltas, anchors)
        result = assign(cfg.assign, anchors, levels, model.num_levels, GT_BOXES, GT_CLASSES,
                        cls, pred)
        losses = losses_lib.paa_losses(cls, pred, iou, result.labels, result.matched_boxes,
                                       result.positive_mask, anchors, cfg.loss)
        results[name] = (result, losses, cls)
    (sq, sq_loss, sq_cls), (bu, bu_loss, _) = results["square"], results["bucket"]
    labels = sq.labels.numpy()[0]
    padding = np.setdiff1d(np.arange(len(square)), index)
    assert np.all(labels[padding] == BACKGROUND)  # padding anchors: negatives only
    np.testing.assert_array_equal(labels[index], bu.labels.numpy()[0])
    np.testing.assert_array_equal(sq.matched_gt.numpy()[0][index], bu.matched_gt.numpy()[0])
    np.testing.assert_array_equal(sq.num_positives_per_gt, bu.num_positives_per_gt)
    assert bu.positive_mask.numpy().sum() > 0
    for key in ("loss_reg", "loss_aux", "num_positives"):
        np.testing.assert_allclose(sq_loss[key], bu_loss[key], rtol=1e-6)
    # The square's classification loss also counts its padding anchors as negatives: exactly
    # the focal loss of those logits against all-zero targets (independent NumPy formula).
    p = tf.sigmoid(tf.gather(sq_cls[0], padding)).numpy().astype(np.float64)
    padding_focal = np.sum(0.75 * p ** 2 * -np.log1p(-p))
    norm = max(float(sq_loss["num_positives"]), 1.0)
    np.testing.assert_allclose(float(sq_loss["loss_cls"]),
                               float(bu_loss["loss_cls"]) + padding_focal / norm, rtol=1e-5)


def test_detections_are_the_same_from_the_bucket_anchors():
    # The network's own outputs differ slightly between canvases: features of the content
    # spread into the padding and back (receptive field), and GroupNorm's statistics span the
    # padding (README "Padded input"). What the bucket path itself must not change is
    # everything after the network: given the same outputs at the shared anchors (the
    # square's padding anchors scoring nothing), the bucket's anchors, per-level sizes and
    # decoding give the same detections.
    cfg = config("eval.score_threshold=0.0,eval.max_detections=50")
    tf_keras.utils.set_random_seed(2)
    model = build_detector(cfg, SQUARE)
    for variable in model.head.trainable_variables:  # distinct scores: no ranking of ties
        if "kernel" in variable.name:
            variable.assign(variable * 6.0)
    outputs = model(image_in(SQUARE, 3), training=False)
    square, square_levels = model.anchors_for(*SQUARE)
    bucket, bucket_levels = model.anchors_for(*BUCKET)
    index = shared_index(square, square_levels, bucket, bucket_levels)
    padding = np.setdiff1d(np.arange(len(square)), index)
    cls = outputs["cls_logits"].numpy()
    cls[:, padding] = -30.0
    params = postprocess.PostprocessParams.from_config(cfg)
    info = np.array([[CONTENT, CONTENT, [1, 1], [0, 0]]], np.float32)
    results = []
    for anchors, levels, take in ((square, square_levels, np.arange(len(square))),
                                  (bucket, bucket_levels, index)):
        results.append(postprocess.postprocess(
            cls[:, take], tf.gather(outputs["box_deltas"], take, axis=1),
            tf.gather(outputs["iou_logits"], take, axis=1), anchors, info,
            level_sizes=postprocess.level_sizes_from_ids(levels), params=params))
    first, second = results
    assert int(first["num_detections"][0]) == int(second["num_detections"][0]) == 50
    scores = first["detection_scores"].numpy()[0]
    assert np.min(-np.diff(scores)) > 1e-6  # no ties to rank
    for key in ("detection_scores", "detection_boxes", "detection_classes"):
        np.testing.assert_allclose(first[key].numpy(), second[key].numpy(), atol=1e-4)
