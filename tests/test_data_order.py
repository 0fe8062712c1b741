"""Evaluation batches keep the record order whatever `data.deterministic` says.

`paa_eval --max_batches` scores the first images, and tests compare results files written by
two evaluations; with an unordered parallel map (the training default) a small image could
overtake a large one being decoded, so two evaluations saw different images (the flaky
`test_checkpoint_evaluation_matches_in_process`, `test_saved_model_evaluation_matches_checkpoint`
and `test_tta_at_the_evaluation_scale_equals_plain_evaluation`).
"""

import json

import numpy as np
from PIL import Image

from paa_tf.data import pipeline
from tests.test_data_bad_input import coco_config


def test_evaluation_keeps_the_record_order_with_an_unordered_config(tmp_path):
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    # A large noisy image first (slow to decode), then small ones that finish sooner.
    for i, (height, width) in enumerate([(600, 800)] + [(48, 64)] * 5):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / f"{i}.jpg", quality=95)
        images.append({"id": 100 + i, "file_name": f"{i}.jpg", "height": height,
                       "width": width})
        annotations.append({"id": i + 1, "image_id": 100 + i, "category_id": 1, "iscrowd": 0,
                            "bbox": [2.0, 2.0, 20.0, 20.0], "area": 400.0})
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}]}))
    config = coco_config(tmp_path, deterministic=False, num_parallel_calls=-1)
    dataset, _ = pipeline.build_dataset(config, "val", is_training=False, batch_size=2,
                                        repeat=False)
    assert dataset.options().deterministic
    for _ in range(3):
        ids = [int(i) for batch in dataset for i in batch["source_id"].numpy()]
        assert ids == list(range(100, 106))
