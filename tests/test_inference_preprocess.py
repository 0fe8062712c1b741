"""One inference pre-processing (`paa_tf.data.inference_preprocess`): `paa_predict` shows what
is scored and served.

A tiny random-weight detector trained-size canvas 256x256 with orientation buckets
(S = 128, L = 200: buckets 128x224 and 224x128) is saved as a run folder and exported through
bin/paa_export. On a landscape and a portrait photo:

* `paa_predict`'s detections (`Predictor`) equal the exported SavedModel's: both pad each
  image to its own multiple of 32 (128x192 and 192x128 here). Before, `Predictor` padded every
  image to the 256x256 canvas, which the run never trained or evaluated on: the cause of the
  phantom detections at the bottom edge of photos.
* evaluation (`paa_eval`'s input pipeline) pads the same resized pixels to the batch's bucket,
  and its detections differ from the served ones only by that padding (docs/SIZES.md);
* no detection lies wholly in the padding (after clipping, such a box has no area);
* `paa_visualize` runs the assignment on the same padded input (its anchors are those of the
  image's own padded shape).
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from paa_tf.data import buckets, pipeline, transforms
from paa_tf.data.inference_preprocess import InferencePreprocess
from paa_tf.inference import detection
from paa_tf.serving.reader import load_exported
from paa_tf.visualization import assignment
from paa_tf.visualization.predict import Predictor
from tests.test_export import (
    LABEL_MAP,
    _cli,
    _jpeg,
    _random_image,
    pair_detections,
    write_random_run,
)

pytestmark = pytest.mark.slow  # one export: ~40 s

# (seed, height, width): landscape and portrait; resized (S=128) to 128x192 and 192x128, whose
# own multiples of 32 are themselves, 32 px less than their buckets 128x224 / 224x128.
PHOTOS = [(11, 100, 150), (12, 150, 100)]
OWN = [(128, 192), (192, 128)]
BUCKETS = [(128, 224), (224, 128)]


def _overrides(folder):
    return ["data.image_size=[256,256]", "data.min_size=[128]", "data.max_size=200",
            "data.buckets=orientation", "model.prior_prob=0.2", "eval.max_detections=100",
            "eval.score_threshold=0.4", "model.num_classes=6",
            f"data.val_images={folder}", f"data.val_annotations={folder}/val.json",
            f"data.train_images={folder}", f"data.train_annotations={folder}/val.json",
            "data.verify_images=header"]


def _write_photos(folder):
    """The photos as JPEG files and a COCO instances JSON with one box each."""
    images, annotations, jpegs = [], [], []
    for index, (seed, height, width) in enumerate(PHOTOS):
        jpeg = _jpeg(_random_image(seed, height, width))
        (folder / f"photo{index}.jpg").write_bytes(jpeg)
        jpegs.append(jpeg)
        images.append({"id": index + 1, "file_name": f"photo{index}.jpg", "height": height,
                       "width": width})
        annotations.append({"id": index + 1, "image_id": index + 1, "category_id": 3,
                            "bbox": [width * 0.2, height * 0.3, width * 0.5, height * 0.4],
                            "area": width * height * 0.2, "iscrowd": 0})
    categories = [{"id": i, "name": n} for i, n in zip(LABEL_MAP.ids, LABEL_MAP.names)]
    (folder / "val.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return jpegs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    jpegs = _write_photos(folder)
    model_dir = tmp_path_factory.mktemp("run")
    config, _ = write_random_run(model_dir, _overrides(folder), seed=5, kernel_seed=[5, 6])
    export_dir = tmp_path_factory.mktemp("export")
    assert _cli(["--model_dir", str(model_dir), "--export_dir", str(export_dir)]) == 0
    decoded = [transforms.decode_image(tf.constant(j)).numpy() for j in jpegs]
    return {"config": config, "model_dir": model_dir, "jpegs": jpegs, "decoded": decoded,
            "exported": load_exported(str(export_dir / "1")),
            "predicted": Predictor(model_dir).predict(decoded)}


def _as_detections(result):
    """`Predictor` result -> the dict `pair_detections` takes."""
    return {"detection_boxes": result["boxes"], "detection_scores": result["scores"],
            "detection_classes": result["classes"]}


def _one_image(batch_output, image=0):
    count = int(batch_output["num_detections"][image])
    return {k: np.asarray(batch_output[k])[image][:count]
            for k in ("detection_boxes", "detection_scores", "detection_classes")}


def test_the_config_pads_each_photo_to_its_own_multiple_and_evaluation_to_its_bucket(run):
    config = run["config"]
    assert buckets.bucket_shapes(config.data, is_training=False) == BUCKETS
    preprocess = InferencePreprocess.from_config(config)
    for image, own, bucket in zip(run["decoded"], OWN, BUCKETS):
        served, info = preprocess(tf.constant(image))
        assert tuple(served.shape[:2]) == own
        evaluated, same_info = preprocess(tf.constant(image), canvas=bucket)
        assert tuple(evaluated.shape[:2]) == bucket
        np.testing.assert_array_equal(same_info.numpy(), info.numpy())
        # The same resized pixels; the bucket only adds zero (mean-colour) padding.
        np.testing.assert_array_equal(evaluated.numpy()[:own[0], :own[1]], served.numpy())
        assert not evaluated.numpy()[own[0]:, own[1]:].any()


def test_predict_equals_the_export_on_a_landscape_and_a_portrait_photo(run):
    for index, jpeg in enumerate(run["jpegs"]):
        served = _one_image(run["exported"]({"encoded": [jpeg]}))
        shown = _as_detections(run["predicted"][index])
        assert len(served["detection_scores"]) > 0, "nothing detected: a vacuous test"
        assert len(shown["detection_scores"]) == len(served["detection_scores"])
        partner = pair_detections(served, shown)
        np.testing.assert_array_equal(shown["detection_classes"][partner],
                                      served["detection_classes"])
        # The same graph of the same pixels: equal up to the export's normalised boxes
        # (pixel / size, then * size again by the reader).
        np.testing.assert_allclose(shown["detection_scores"][partner],
                                   served["detection_scores"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(shown["detection_boxes"][partner],
                                   served["detection_boxes"], rtol=0, atol=1e-3)


def test_no_detection_lies_wholly_in_the_padding(run):
    for result, (_, height, width) in zip(run["predicted"], PHOTOS):
        boxes = result["boxes"]
        assert len(boxes) > 0
        # Boxes are clipped to the image: one that lay in the padding has no height or width.
        assert (boxes[:, 2] - boxes[:, 0] > 0.5).all() and (boxes[:, 3] - boxes[:, 1] > 0.5).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= height).all() \
            and (boxes[:, 3] <= width).all()


def _evaluation_detections(config, model):
    """(pipeline batches, their detections) of the val split as `paa_eval` computes them."""
    dataset, _ = pipeline.build_dataset(config.data, "val", is_training=False, batch_size=1)
    predict_fn = detection.make_predict_fn(config, model)
    batches = list(dataset.as_numpy_iterator())
    return batches, [predict_fn(b) for b in batches]


def test_evaluation_differs_from_the_served_detections_only_by_the_bucket_padding(run):
    from paa_tf.modeling.restore import restore_run
    from paa_tf.run_folder import RunFolder

    config = run["config"]
    model, _ = restore_run(RunFolder(run["model_dir"]), config, tuple(config.data.image_size))
    batches, outputs = _evaluation_detections(config, model)
    preprocess = InferencePreprocess.from_config(config)
    matched = total = 0
    for batch, output in zip(batches, outputs):
        index = int(batch["source_id"][0]) - 1
        bucket = BUCKETS[index]
        # paa_eval's input is the one pre-processing, padded to the photo's bucket.
        expected, _ = preprocess(tf.constant(run["decoded"][index]), canvas=bucket)
        np.testing.assert_array_equal(batch["image"][0], expected.numpy())
        evaluated = _one_image(output)
        served = _as_detections(run["predicted"][index])
        total += len(served["detection_scores"])
        for box, cls in zip(served["detection_boxes"], served["detection_classes"]):
            same = evaluated["detection_boxes"][evaluated["detection_classes"] == cls]
            if len(same) and _iou(box, same).max() >= 0.5:
                matched += 1
    # The padding effect (docs/SIZES.md): 32 more px of padding moves a random detector's
    # boxes and scores a little; most served detections keep a same-class IoU >= 0.5 partner.
    assert total > 0 and matched / total >= 0.7, (matched, total)


def _iou(box, boxes):
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def test_visualize_runs_the_assignment_on_the_served_input(run, tmp_path):
    from paa_tf.modeling.restore import restore_run
    from paa_tf.run_folder import RunFolder

    config = run["config"]
    model, _ = restore_run(RunFolder(run["model_dir"]), config, tuple(config.data.image_size))
    for index, own in enumerate(OWN):
        view = assignment.assignment_picture(run["model_dir"], tmp_path / f"a{index}.png",
                                             data_index=index, split="val")
        assert (tmp_path / f"a{index}.png").stat().st_size > 0
        anchors, _ = model.anchors_for(*own)
        # Indices into the anchors of the image's own padded shape, not of the 256x256 canvas.
        np.testing.assert_array_equal(view.anchors, anchors[view.anchor_indices])
        assert len(view.anchor_indices) > 0 and view.anchor_indices.max() < len(anchors)
