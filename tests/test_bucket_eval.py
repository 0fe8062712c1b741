"""Evaluation with orientation buckets (issue 14): plain and test-time-augmented.

A tiny random detector on landscape, portrait and square images scaled by exactly 2 (so NMS
and voting in original pixels see the IoUs of input pixels). One test-time view at the
evaluation scale must give exactly the plain evaluation's detections: both run each image
on its orientation's bucket.
"""

import json

import pytest

from paa_tf import config as config_lib
from paa_tf.data import pipeline
from paa_tf.evaluation import evaluate
from paa_tf.modeling.detector import build_detector
from tests.test_buckets import make_mixed_coco

SIZES = [(64, 96), (96, 64), (64, 64), (64, 112), (112, 64)]


def bucketed_run(root):
    data = make_mixed_coco(root, sizes=SIZES, min_size=(128,), max_size=256)
    config = config_lib.load_config(overrides=[
        "model.backbone=tiny", "model.freeze_at=0", "model.frozen_bn=false",
        "model.num_classes=2", "model.min_level=3", "model.max_level=5",
        "model.fpn_channels=16", "model.head_convs=1", "model.head_channels=32",
        "model.octave_base_scale=4.0", "model.prior_prob=0.2", "eval.batch_size=2"])
    config.data = data
    return config, build_detector(config)


@pytest.mark.slow
def test_eval_and_tta_run_on_the_buckets_and_agree(tmp_path):
    config, model = bucketed_run(tmp_path / "data")
    shapes = {tuple(b["image"].shape[1:3]) for b in pipeline.build_dataset(
        config.data, "val", is_training=False, batch_size=2)[0]}
    assert shapes == {(128, 256), (256, 128)}
    plain = evaluate.evaluate_model(config, model, output_dir=str(tmp_path / "plain"),
                                    verbose=False)
    assert plain["num_images"] == len(SIZES) and plain["num_detections"] > 0
    config.eval.tta_scales = (128,)
    tta = evaluate.evaluate_model(config, model, output_dir=str(tmp_path / "tta"),
                                  verbose=False)
    assert tta["num_images"] == len(SIZES)
    want = json.loads((tmp_path / "plain" / "results.json").read_text())
    got = json.loads((tmp_path / "tta" / "results.json").read_text())
    key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])  # noqa: E731
    assert sorted(got, key=key) == sorted(want, key=key)
