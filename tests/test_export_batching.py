"""`export.batching: bucket`: a request padded into one bucket and run as one batch (issue 21).

A tiny random-weight detector (canvas 256x256, S = 128, L = 200, `data.buckets:
orientation`) with a spread-out class head is exported once through bin/paa_export with
`--override export.batching=bucket`. The buckets, by hand (`paa_tf.serving.batching`):
landscape [round_up(min(S, L)), round_up(L)] = 128x224, portrait 224x128, and the canvas
256x256 for a request mixing orientations. The oracle is the in-process path on the same
padded batch: the evaluation resize of each image, zero padding (NumPy) into the bucket, one
`paa_tf.inference.detection.detect` call on the stacked tensor, the client conventions in NumPy.
Detections are paired within classes by scores and boxes, never by score rank.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from paa_tf import config as config_lib
from paa_tf.data import buckets, transforms
from paa_tf.data import label_map as label_map_lib
from paa_tf.inference import detection, postprocess
from paa_tf.modeling.detector import build_detector
from paa_tf.serving import batching
from tests.test_bucket_export import OVERRIDES, _max_difference, _oracle, client_outputs
from tests.test_export import (
    LABEL_MAP,
    REPO,
    _call,
    _cli,
    _jpeg,
    _png,
    _random_image,
    assert_warmup_requests_run,
)

pytestmark = pytest.mark.slow  # one export (tracing both signatures): ~1 min on this CPU

# (seed, height, width) -> resized (S = 128, L = 200): 100x150 -> 128x192, 60x200 -> 60x200
# (landscape); 150x100 -> 192x128, 200x120 -> 200x120 (portrait).
LANDSCAPE = [(1, 100, 150), (4, 60, 200)]
PORTRAIT = [(3, 150, 100), (5, 200, 120)]
BUCKETS = {"landscape": (128, 224), "portrait": (224, 128), "canvas": (256, 256)}
# A higher threshold than tests.test_bucket_export's keeps every image's count below the cap
# in the canvas too: no near-tie decides the last detection.
MAX_DETECTIONS = 300


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run")
    config = config_lib.load_config(REPO / "configs" / "quickstart.yaml", overrides=OVERRIDES
                                    + [f"eval.max_detections={MAX_DETECTIONS}",
                                                     "eval.score_threshold=0.55"])
    tf_keras.utils.set_random_seed(3)  # every weight from this seed, whatever ran before
    model = build_detector(config)
    kernel = model.head.cls_logits.kernel  # scores far apart: no ties decided by round-off
    kernel.assign(tf.random.stateless_normal(kernel.shape, [1, 2], stddev=0.05))
    config_lib.save_config(config, model_dir / "config.yaml")
    label_map_lib.write_label_map(LABEL_MAP, model_dir)
    step = tf.Variable(1, dtype=tf.int64)
    tf.train.CheckpointManager(tf.train.Checkpoint(step=step, model=model),
                               str(model_dir), max_to_keep=1).save(checkpoint_number=step)
    export_dir = tmp_path_factory.mktemp("export")
    assert _cli(["--model_dir", str(model_dir), "--export_dir", str(export_dir),
                 "--override", "export.batching=bucket"]) == 0
    images = {seed: _random_image(seed, h, w) for seed, h, w in LANDSCAPE + PORTRAIT}
    return {"config": config, "model": model, "version_dir": export_dir / "1",
            "images": images, "loaded": tf.saved_model.load(str(export_dir / "1"))}


def _bucket_oracle(config, model, images, shape):
    """Client-convention detections [B, ...] of `images` (uint8 [h, w, 3] each) padded
    together into `shape` and run as one batch in process."""
    data = config.data
    batch = np.zeros((len(images), *shape, 3), np.float32)
    infos = []
    for index, image in enumerate(images):
        resized, info = transforms.resize_image(
            tf.constant(image), max(data.min_size), data.max_size, tuple(data.image_size),
            data.pixel_mean, data.pixel_std)
        height, width = resized.shape[:2]
        batch[index, :height, :width] = resized.numpy()
        infos.append(info)
    det = detection.detect(model, tf.constant(batch), tf.stack(infos),
                           postprocess.PostprocessParams.from_config(config))
    return client_outputs({k: v.numpy() for k, v in det.items()},
                          [image.shape[:2] for image in images])


def _assert_matches(actual, expected):
    for index in range(len(expected["num_detections"])):
        assert _max_difference(actual, expected, index, index) < 1e-4, f"image {index}"


def test_the_buckets_are_the_evaluation_ones(run):
    from paa_tf.serving import requests  # only this test builds the settings by hand

    preprocess = requests.export_preprocess(run["config"])[0]
    assert batching.bucket_shapes(preprocess) == list(BUCKETS.values())
    # The evaluation pipeline's buckets, then the canvas.
    assert batching.bucket_shapes(preprocess)[:-1] == buckets.bucket_shapes(
        run["config"].data, is_training=False)
    def shapes(*overrides):
        config = config_lib.load_config(REPO / "configs" / "quickstart.yaml", list(overrides))
        return batching.bucket_shapes(requests.export_preprocess(config)[0])

    assert shapes() == [(256, 256)]  # data.buckets: square
    # A canvas equal to the landscape bucket stays last: the portrait bucket is cut to it.
    assert shapes("data.buckets=orientation", "data.image_size=[128,256]",
                  "data.min_size=[128]", "data.max_size=256") == [(128, 128), (128, 256)]


@pytest.mark.parametrize("which, bucket", [("landscape", "landscape"),
                                           ("portrait", "portrait"), ("mixed", "canvas")])
def test_a_mixed_size_request_equals_the_model_on_its_bucket_padded_batch(run, which,
                                                                           bucket):
    specs = {"landscape": LANDSCAPE, "portrait": PORTRAIT, "mixed": LANDSCAPE + PORTRAIT}[which]
    images = [run["images"][seed] for seed, _, _ in specs]
    encoded = [(_jpeg if index % 2 else _png)(image) for index, image in enumerate(images)]
    decoded = [transforms.decode_image(e).numpy() for e in encoded]  # JPEG is lossy
    expected = _bucket_oracle(run["config"], run["model"], decoded, BUCKETS[bucket])
    _assert_matches(_call(run["loaded"], "serving_default", encoded), expected)


def test_image_tensor_runs_its_batch_in_the_orientation_bucket(run):
    first = run["images"][3]  # portrait 150x100
    pair = np.stack([first, _random_image(9, *first.shape[:2])])
    expected = _bucket_oracle(run["config"], run["model"], list(pair), BUCKETS["portrait"])
    _assert_matches(_call(run["loaded"], "image_tensor", pair), expected)


def test_the_bucket_not_the_own_padding_decides_the_detections(run):
    # 100x150 pads to 128x192 alone (per_image), to 128x224 in the landscape bucket and to
    # 256x256 beside a portrait image: three paddings, measurably different detections.
    image = run["images"][1]
    per_image, shape = _oracle(run["config"], run["model"], image)
    assert shape == (128, 192)
    alone = _call(run["loaded"], "serving_default", [_png(image)])
    mixed = _call(run["loaded"], "serving_default", [_png(image), _png(run["images"][3])])
    assert _max_difference(alone, per_image) > 1e-4
    assert _max_difference(mixed, alone) > 1e-4
    assert _max_difference(alone, _bucket_oracle(run["config"], run["model"], [image],
                                                 BUCKETS["landscape"])) < 1e-4


def test_empty_request_gives_empty_outputs(run):
    outputs = _call(run["loaded"], "serving_default", tf.constant([], tf.string))
    assert outputs["detection_boxes"].shape == (0, MAX_DETECTIONS, 4)
    assert outputs["num_detections"].shape == (0,)


def test_warmup_requests_run_against_their_signatures(run):
    assert_warmup_requests_run(run["version_dir"], run["loaded"])
