"""The exported SavedModel pads each image to its own multiple of 32 (data.buckets:
orientation, issue 14).

A tiny random-weight detector (canvas 256x256, S = 128, L = 200) with a spread-out class head
is exported once through bin/paa_export. The oracle is the Python path: the evaluation resize,
zero padding to the smallest multiples of 32 holding the resized image, the model, its
NumPy anchors for that static shape and `postprocess`. An image's detections must be the
oracle's whether the image is sent alone, inside a `serving_default` request with images of
other sizes and orientations, or through `image_tensor`, and in a fresh process. Detections
are paired within classes by their scores and boxes, never by score rank.
"""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from paa_tf.data import transforms
from paa_tf.inference import postprocess
from tests.test_export import (
    LABEL_MAP,
    _call,
    _cli,
    _jpeg,
    _random_image,
    pair_detections,
    write_random_run,
)

pytestmark = pytest.mark.slow  # one export and a fresh process: ~1 min

OVERRIDES = ["data.image_size=[256,256]", "data.min_size=[128]", "data.max_size=200",
             "data.buckets=orientation", "model.prior_prob=0.2", "eval.max_detections=100",
             "eval.score_threshold=0.5", "model.num_classes=6"]
CANVAS = (256, 256)
# (height, width) -> resized (S = 128, L = 200) -> own padded shape:
# 100x150 -> 128x192 -> 128x192; 150x100 -> 192x128; 90x90 -> 128x128; 60x200 -> 60x200 -> 64x224.
IMAGES = [(1, 100, 150), (3, 150, 100), (2, 90, 90), (4, 60, 200)]
PADDED = [(128, 192), (192, 128), (128, 128), (64, 224)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run")
    config, model = write_random_run(model_dir, OVERRIDES, seed=3, kernel_seed=[1, 2])
    export_dir = tmp_path_factory.mktemp("export")
    assert _cli(["--model_dir", str(model_dir), "--export_dir", str(export_dir)]) == 0
    jpegs = [_jpeg(_random_image(seed, h, w)) for seed, h, w in IMAGES]
    return {"config": config, "model": model, "version_dir": export_dir / "1", "jpegs": jpegs,
            "decoded": [transforms.decode_image(j).numpy() for j in jpegs],
            "loaded": tf.saved_model.load(str(export_dir / "1"))}


def _oracle(config, model, image, shape=None):
    """(client-convention detections [1, ...], padded shape) of the Python path with `image`
    padded to `shape`, by default the smallest multiples of 32 holding its resized size."""
    data = config.data
    resized, info = transforms.resize_image(
        tf.constant(image), max(data.min_size), data.max_size, tuple(data.image_size),
        data.pixel_mean, data.pixel_std)
    height, width = resized.shape[:2]
    shape = shape or (-(-height // 32) * 32, -(-width // 32) * 32)
    padded = np.zeros((1, *shape, 3), np.float32)
    padded[0, :height, :width] = resized.numpy()
    outputs = model(padded, training=False)
    anchors, level_ids = model.anchors_for(*shape)
    det = {k: v.numpy() for k, v in postprocess.postprocess(
        outputs["cls_logits"], outputs["box_deltas"], outputs["iou_logits"], anchors,
        info[None], level_ids=level_ids,
        params=postprocess.PostprocessParams.from_config(config)).items()}
    return client_outputs(det, [image.shape[:2]]), shape


def client_outputs(det, sizes):
    """`postprocess` detections (NumPy, original pixels, contiguous classes) of images of
    original `sizes` [(h, w), ...] -> the client conventions (normalised boxes, dataset ids)."""
    ids = np.array(LABEL_MAP.ids, np.float32)
    classes = det["detection_classes"]
    scale = np.tile(np.asarray(sizes, np.float32), [1, 2])[:, None, :]
    return {"detection_boxes": det["detection_boxes"] / scale,
            "detection_scores": det["detection_scores"],
            "detection_classes": np.where(classes >= 0, ids[np.maximum(classes, 0)], -1.0),
            "num_detections": det["num_detections"].astype(np.float32)}


def _max_difference(actual, expected, index=0, expected_index=0):
    """Largest |score| and |box| difference of image `index` of `actual` against image
    `expected_index` of `expected`, detections paired within classes
    (`tests.test_export.pair_detections`), never by rank. inf when the counts differ."""
    count = int(expected["num_detections"][expected_index])
    assert count > 0, "the oracle found nothing: a vacuous test"
    assert count < len(expected["detection_scores"][expected_index]), \
        "max_detections cut the list: a near-tie could decide the last one"
    if int(actual["num_detections"][index]) != count:
        return np.inf
    got = {k: np.asarray(actual[k])[index][:count] for k in
           ("detection_boxes", "detection_scores", "detection_classes")}
    want = {k: np.asarray(expected[k])[expected_index][:count] for k in got}
    partner = pair_detections(want, got)
    if np.any(got["detection_classes"][partner] != want["detection_classes"]):
        return np.inf
    return max(np.abs(want["detection_scores"] - got["detection_scores"][partner]).max(),
               np.abs(want["detection_boxes"] - got["detection_boxes"][partner]).max())


def test_each_image_runs_alone_on_its_own_multiple_of_32(run):
    for jpeg, image, padded in zip(run["jpegs"], run["decoded"], PADDED):
        expected, shape = _oracle(run["config"], run["model"], image)
        assert shape == padded
        alone = _call(run["loaded"], "serving_default", [jpeg])
        assert _max_difference(alone, expected) < 1e-4
        # The padding changes the detections measurably (GroupNorm statistics, receptive
        # field): the match above shows the image ran on its own shape, not the canvas.
        canvas, _ = _oracle(run["config"], run["model"], image, CANVAS)
        assert _max_difference(canvas, alone) > 1e-4
        tensor = _call(run["loaded"], "image_tensor", image[None])
        assert _max_difference(tensor, expected) < 1e-4


def test_a_request_mixing_sizes_gives_each_image_its_own_detections(run):
    mixed = _call(run["loaded"], "serving_default", run["jpegs"])
    assert mixed["detection_scores"].shape == (len(IMAGES), 100)
    for index, image in enumerate(run["decoded"]):
        expected, _ = _oracle(run["config"], run["model"], image)
        assert _max_difference(mixed, expected, index) < 1e-4
    # image_tensor: two images of one size, different content, in one request.
    pair = np.stack([run["decoded"][0], _random_image(9, *run["decoded"][0].shape[:2])])
    both = _call(run["loaded"], "image_tensor", pair)
    for index, image in enumerate(pair):
        expected, _ = _oracle(run["config"], run["model"], image)
        assert _max_difference(both, expected, index) < 1e-4


def test_the_export_runs_in_a_fresh_process(run, tmp_path):
    np.save(tmp_path / "jpegs.npy", np.array(run["jpegs"], object), allow_pickle=True)
    script = ("import sys, numpy as np, tensorflow as tf\n"
              "jpegs = np.load(sys.argv[2], allow_pickle=True).tolist()\n"
              "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
              "out = serve(inputs=tf.constant(jpegs))\n"
              "np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})\n")
    subprocess.run([sys.executable, "-c", script, str(run["version_dir"]),
                    str(tmp_path / "jpegs.npy"), str(tmp_path / "out.npz")], check=True,
                   capture_output=True)
    fresh = dict(np.load(tmp_path / "out.npz"))
    for index, image in enumerate(run["decoded"]):
        expected, _ = _oracle(run["config"], run["model"], image)
        assert _max_difference(fresh, expected, index) < 1e-4
