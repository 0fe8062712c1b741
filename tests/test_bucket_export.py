"""The exported SavedModel with orientation buckets (data.buckets: orientation, issue 14).

A tiny random-weight detector with a 256x256 canvas and the buckets 128x256 (landscape) and
256x128 (portrait) is exported once. The oracle is the Python model path run on the shape the
request must use: the landscape bucket for landscape images, the portrait bucket for portrait
ones, the canvas for a request that mixes them.
"""

import numpy as np
import pytest
import tensorflow as tf

from paa_tf import config as config_lib
from paa_tf import postprocess
from paa_tf.data import label_map as label_map_lib
from paa_tf.data import transforms
from paa_tf.modeling.detector import build_detector
from tests import test_export
from tests.test_export import LABEL_MAP, REPO, _call, _cli, _jpeg, _random_image

_assert_same_detections = test_export._assert_same_detections

pytestmark = pytest.mark.slow  # one export with three network copies: ~1 min

OVERRIDES = ["data.image_size=[256,256]", "data.min_size=[128]", "data.max_size=200",
             "data.buckets=orientation", "model.prior_prob=0.2", "eval.max_detections=50",
             "model.num_classes=6"]
LANDSCAPE, PORTRAIT, CANVAS = (128, 256), (256, 128), (256, 256)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run")
    config = config_lib.load_config(REPO / "configs" / "quickstart.yaml", overrides=OVERRIDES)
    tf.random.set_seed(3)
    model = build_detector(config)
    kernel = model.head.cls_logits.kernel  # scores far apart: no ties decided by round-off
    kernel.assign(tf.random.stateless_normal(kernel.shape, [1, 2], stddev=0.05))
    config_lib.save_config(config, model_dir / "config.yaml")
    label_map_lib.write_label_map(LABEL_MAP, model_dir)
    step = tf.Variable(1, dtype=tf.int64)
    tf.train.CheckpointManager(tf.train.Checkpoint(step=step, model=model),
                               str(model_dir), max_to_keep=1).save(checkpoint_number=step)
    export_dir = tmp_path_factory.mktemp("export")
    _cli(["--model_dir", str(model_dir), "--export_dir", str(export_dir)])
    return {"config": config, "model": model,
            "loaded": tf.saved_model.load(str(export_dir / "1"))}


def _oracle(config, model, decoded, shape):
    """Client-convention detections of the Python path with every image padded to `shape`."""
    data = config.data
    inputs, infos = zip(*[transforms.preprocess(
        tf.constant(image), shorter_side=max(data.min_size), max_size=data.max_size,
        image_size=shape, pixel_mean=data.pixel_mean, pixel_std=data.pixel_std)
        for image in decoded])
    info = tf.stack(infos)
    outputs = model(tf.stack(inputs), training=False)
    anchors, level_ids = model.anchors_for(*shape)
    det = {k: v.numpy() for k, v in postprocess.postprocess(
        outputs["cls_logits"], outputs["box_deltas"], outputs["iou_logits"], anchors, info,
        level_ids=level_ids,
        params=postprocess.PostprocessParams.from_config(config)).items()}
    sizes = np.array([image.shape[:2] for image in decoded], np.float32)
    ids = np.array(LABEL_MAP.ids, np.float32)
    classes = det["detection_classes"]
    return {"detection_boxes": det["detection_boxes"] / np.tile(sizes, [1, 2])[:, None, :],
            "detection_scores": det["detection_scores"],
            "detection_classes": np.where(classes >= 0, ids[np.maximum(classes, 0)], -1.0),
            "num_detections": det["num_detections"].astype(np.float32)}


def test_each_request_runs_on_its_orientation_bucket(run):
    landscape = [_random_image(1, 100, 150), _random_image(2, 90, 90)]  # square: landscape
    portrait = [_random_image(3, 150, 100), _random_image(4, 160, 70)]
    for images, shape in ((landscape, LANDSCAPE), (portrait, PORTRAIT)):
        expected = _oracle(run["config"], run["model"], images, shape)
        canvas = _oracle(run["config"], run["model"], images, CANVAS)
        # The shapes give measurably different outputs, so the match below shows the bucket.
        assert np.abs(canvas["detection_scores"] - expected["detection_scores"]).max() > 1e-4
        decoded = [transforms.decode_image(_jpeg(image)).numpy() for image in images]
        expected = _oracle(run["config"], run["model"], decoded, shape)
        _assert_same_detections(
            _call(run["loaded"], "serving_default", [_jpeg(image) for image in images]),
            expected)
        _assert_same_detections(_call(run["loaded"], "image_tensor", np.stack(images[:1])),
                                _oracle(run["config"], run["model"], images[:1], shape))


def test_a_request_mixing_orientations_runs_on_the_canvas(run):
    images = [_random_image(5, 100, 150), _random_image(6, 150, 100)]
    decoded = [transforms.decode_image(_jpeg(image)).numpy() for image in images]
    _assert_same_detections(
        _call(run["loaded"], "serving_default", [_jpeg(image) for image in images]),
        _oracle(run["config"], run["model"], decoded, CANVAS))
