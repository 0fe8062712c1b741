"""COCO reader and the tf.data pipeline (the data filters of docs/CONVENTIONS.md).

The `sample_data` tests read generated data in COCO 2017's layout with its quirks (official
category ids with gaps, crowd boxes, boxes across the border, 45 objects in an image:
tests/helpers/sample_data.py) and compare with an independent count made by pycocotools; the
others use tiny files written to tmp_path.
"""

import collections
import dataclasses
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools.coco import COCO

from paa_tf.config import DataConfig
from paa_tf.data import label_map as label_map_lib
from paa_tf.data import pipeline, transforms
from tests.test_data_bad_input import coco_config, edit_annotations, make_coco, write_image

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def coco_mini_config(sample_data, **overrides):
    root = sample_data / "coco_mini"
    fields = dict(format="coco", train_images=str(root / "train2017"),
                  train_annotations=str(root / "annotations/instances_train2017.json"),
                  val_images=str(root / "val2017"),
                  val_annotations=str(root / "annotations/instances_val2017.json"),
                  min_size=(320,), max_size=512, image_size=(512, 512), max_instances=100,
                  deterministic=True)
    fields.update(overrides)
    return DataConfig(**fields)


def oracle(annotation_file, training):
    """{image id: (boxes yxyx [N, 4] original pixels, category ids [N])}: crowd boxes out,
    boxes clipped to the image, boxes <= 1 px wide or high removed, and in training images
    left without a box skipped."""
    coco = COCO(str(annotation_file))
    out = {}
    for image_id in coco.getImgIds():
        info = coco.imgs[image_id]
        boxes, ids = [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            if ann["iscrowd"]:
                continue
            x, y, w, h = ann["bbox"]
            x1, y1 = min(max(x, 0), info["width"]), min(max(y, 0), info["height"])
            x2, y2 = min(max(x + w, 0), info["width"]), min(max(y + h, 0), info["height"])
            if x2 - x1 > 1 and y2 - y1 > 1:
                boxes.append([y1, x1, y2, x2])
                ids.append(ann["category_id"])
        if boxes or not training:
            out[image_id] = (np.array(boxes, np.float64).reshape(-1, 4), np.array(ids))
    return out


def collect(dataset):
    """{source id: element dict of numpy arrays, padding rows removed}."""
    out = {}
    for batch in dataset:
        batch = {k: v.numpy() for k, v in batch.items()}
        for i, source_id in enumerate(batch["source_id"]):
            valid = batch["gt_classes"][i] >= 0
            out[int(source_id)] = {"image": batch["image"][i], "info": batch["image_info"][i],
                                   "boxes": batch["gt_boxes"][i][valid],
                                   "classes": batch["gt_classes"][i][valid]}
    return out


def sort_rows(boxes):
    return boxes[np.lexsort(boxes.T[::-1])] if len(boxes) else boxes


def expected_scaled_size(height, width, shorter, config):
    scale = min(shorter / min(height, width), config.max_size / max(height, width),
                config.image_size[0] / height, config.image_size[1] / width)
    return round(height * scale), round(width * scale)


@pytest.mark.slow
def test_val_images_boxes_and_mapping_back_match_pycocotools(sample_data):
    config = coco_mini_config(sample_data)
    dataset, report = pipeline.build_dataset(config, "val", is_training=False, batch_size=8)
    got = collect(dataset)
    expected = oracle(config.val_annotations, training=False)
    assert set(got) == set(expected)  # every image, none dropped (eval keeps all)
    assert sum(len(g["boxes"]) for g in got.values()) == sum(
        len(b) for b, _ in expected.values()) == report.num_boxes
    crowd = sum(a["iscrowd"] for a in json.load(open(config.val_annotations))["annotations"])
    assert crowd > 0 and report.filtered["crowd boxes kept out of targets"] == crowd
    label_map = report.label_map
    for image_id, (boxes, category_ids) in expected.items():
        element = got[image_id]
        info = element["info"]
        assert element["image"].shape == (512, 512, 3)
        mapped = transforms.boxes_to_original(element["boxes"][None], info[None])[0].numpy()
        np.testing.assert_allclose(sort_rows(mapped), sort_rows(boxes), atol=1.0)
        np.testing.assert_array_equal(
            sorted(label_map.ids[c] for c in element["classes"]), sorted(category_ids))
    sizes = {i["id"]: (i["height"], i["width"])
             for i in json.load(open(config.val_annotations))["images"]}
    for image_id, element in got.items():
        height, width = sizes[image_id]
        np.testing.assert_array_equal(element["info"][0], [height, width])
        np.testing.assert_array_equal(element["info"][1],
                                      expected_scaled_size(height, width, 320, config))
        scaled_h, scaled_w = element["info"][1].astype(int)
        assert np.all(element["image"][scaled_h:] == 0) and np.all(
            element["image"][:, scaled_w:] == 0)


def test_train_filters_flip_and_multiscale_match_source_counts(sample_data):
    config = coco_mini_config(sample_data, min_size=(256, 320), flip_prob=0.5,
                              num_parallel_calls=2)
    dataset, report = pipeline.build_dataset(config, "train", is_training=True, batch_size=4,
                                             repeat=False)
    got = collect(dataset)
    expected = oracle(config.train_annotations, training=True)
    assert set(got) == set(expected)
    assert report.num_images == len(expected)
    assert sum(len(g["boxes"]) for g in got.values()) == sum(len(b) for b, _ in
                                                             expected.values())
    flipped, shorter_sides = 0, set()
    for image_id, (boxes, category_ids) in expected.items():
        element = got[image_id]
        info = element["info"]
        original = transforms.boxes_to_original(element["boxes"][None], info[None])[0].numpy()
        width = info[0, 1]
        mirrored = np.stack([boxes[:, 0], width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]],
                            axis=-1)
        if np.allclose(sort_rows(original), sort_rows(boxes), atol=1.0):
            pass
        else:
            np.testing.assert_allclose(sort_rows(original), sort_rows(mirrored), atol=1.0)
            flipped += 1
        assert collections.Counter(report.label_map.ids[c] for c in element["classes"]) == \
            collections.Counter(category_ids.tolist())
        height_width = info[0]
        shorter = [s for s in range(256, 321)
                   if tuple(info[1]) == expected_scaled_size(*height_width, s, config)]
        assert shorter, f"image {image_id}: scaled size {info[1]} fits no S in [256, 320]"
        shorter_sides.add(int(min(info[1])))
    assert 0 < flipped < len(expected)  # p = 0.5 (seeded): some images flipped, some not
    batches = -(-len(expected) // 4)
    assert len(shorter_sides) > batches  # S drawn per image, not once per batch


@pytest.mark.slow
def test_deterministic_pipeline_repeats_exactly(sample_data):
    config = coco_mini_config(sample_data, min_size=(200, 256), max_size=320,
                              image_size=(384, 384), num_parallel_calls=2)
    runs = []
    for _ in range(2):
        dataset, _ = pipeline.build_dataset(config, "train", is_training=True, batch_size=4)
        runs.append([{k: v.numpy() for k, v in b.items()} for b in dataset.take(2)])
    for first, second in zip(*runs):
        for key in first:
            np.testing.assert_array_equal(first[key], second[key])
    assert runs[0][0]["image"].shape == (4, 384, 384, 3)
    other, _ = pipeline.build_dataset(dataclasses.replace(config, seed=1), "train",
                                      is_training=True, batch_size=4)
    assert not np.array_equal(next(iter(other))["source_id"].numpy(), runs[0][0]["source_id"])


def test_training_elements_have_static_shapes(tmp_path):
    config = make_coco(tmp_path)
    dataset, _ = pipeline.build_dataset(config, "train", is_training=True, batch_size=2)
    spec = dataset.element_spec
    assert spec["image"].shape.as_list() == [2, 128, 128, 3]
    assert spec["gt_boxes"].shape.as_list() == [2, 4, 4]
    assert spec["gt_classes"].shape.as_list() == [2, 4] and spec["gt_classes"].dtype == tf.int32
    assert spec["image_info"].shape.as_list() == [2, 4, 2]
    assert spec["source_id"].dtype == tf.int64


@pytest.mark.slow
def test_input_context_shards_records_between_pipelines(tmp_path):
    config = make_coco(tmp_path, num_images=5)
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2,
                                             input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        dataset, _ = pipeline.build_dataset(config, "val", is_training=False, batch_size=1,
                                            input_context=context)
        seen.append({int(b["source_id"][0]) for b in dataset})
    assert not seen[0] & seen[1] and seen[0] | seen[1] == {10, 11, 12, 13, 14}
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    distributed = strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.build_dataset(config, "train", True, 2, input_context=ctx)[0])
    batch = next(iter(distributed))
    assert batch["image"].shape == (2, 128, 128, 3)


def test_resize_rule_hand_computed(tmp_path):
    config = make_coco(tmp_path, num_images=1)
    for max_size, expected in ((100, [[48, 64], [64, 85], [64 / 48, 85 / 64], [0, 0]]),
                               (80, [[48, 64], [60, 80], [1.25, 1.25], [0, 0]])):
        config.max_size = max_size
        dataset, _ = pipeline.build_dataset(config, "val", is_training=False, batch_size=1)
        np.testing.assert_allclose(next(iter(dataset))["image_info"][0].numpy(), expected,
                                   rtol=1e-6)


def test_flip_mirrors_image_and_boxes_exactly(tmp_path):
    config = make_coco(tmp_path, num_images=1)
    plain, _ = pipeline.build_dataset(config, "val", is_training=False, batch_size=1)
    config.flip_prob = 1.0
    flipped, _ = pipeline.build_dataset(config, "train", is_training=True, batch_size=1)
    a, b = next(iter(plain)), next(iter(flipped))
    width = 85  # 64 px scaled by 64/48 and rounded
    np.testing.assert_array_equal(b["image"][0, :, :width].numpy(),
                                  a["image"][0, :, :width].numpy()[:, ::-1])
    y1, x1, y2, x2 = a["gt_boxes"][0, 0].numpy()
    np.testing.assert_allclose(b["gt_boxes"][0, 0].numpy(), [y1, width - x2, y2, width - x1],
                               rtol=1e-6)


def test_data_filters_crowd_tiny_and_empty_images(tmp_path):
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [4, 6, 30, 20], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 7, "bbox": [5, 5, 20, 20], "iscrowd": 1},
        {"id": 3, "image_id": 10, "category_id": 7, "bbox": [40, 5, 1.0, 20], "iscrowd": 0},
        {"id": 4, "image_id": 11, "category_id": 1, "bbox": [4, 6, 30, 20], "iscrowd": 1},
        {"id": 5, "image_id": 12, "category_id": 7, "bbox": [9, 9, 0.5, 0.5], "iscrowd": 0},
    ]  # image 13 has no annotation at all
    config = make_coco(tmp_path, num_images=4, annotations=annotations)
    val, val_report = pipeline.build_dataset(config, "val", is_training=False, batch_size=4)
    batch = next(iter(val))
    counts = dict(zip(batch["source_id"].numpy().tolist(),
                      (batch["gt_classes"].numpy() >= 0).sum(axis=1).tolist()))
    assert counts == {10: 1, 11: 0, 12: 0, 13: 0}  # evaluation keeps every image
    assert val_report.filtered["crowd boxes kept out of targets"] == 2
    assert val_report.filtered["boxes <= 1 px removed"] == 2
    assert np.all(batch["gt_boxes"].numpy()[batch["gt_classes"].numpy() < 0] == -1)
    train, train_report = pipeline.build_dataset(config, "train", is_training=True,
                                                 batch_size=1, repeat=False)
    assert [int(b["source_id"][0]) for b in train] == [10]
    assert train_report.filtered["training images without a valid box skipped"] == 3


@pytest.mark.parametrize("mode,fmt,tolerance", [
    ("RGBA", "PNG", 0.0), ("P", "PNG", 0.0), ("L", "PNG", 0.0), ("I;16", "PNG", 0.0),
    ("L", "JPEG", 2.0), ("CMYK", "JPEG", 2.0), ("RGB", "BMP", 0.0)])
def test_decodes_and_normalises_every_colour_layout(tmp_path, mode, fmt, tolerance):
    make_coco(tmp_path, num_images=1)
    path = tmp_path / "images" / f"odd.{fmt.lower()}"
    if mode == "I;16":
        Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)).save(path)
    else:
        write_image(path, mode=mode, fmt=fmt)
    edit_annotations(tmp_path, lambda c: c["images"][0].update(file_name=path.name))
    config = coco_config(tmp_path, min_size=(48,), max_size=64)  # scale 1: pixels unchanged
    dataset, _ = pipeline.build_dataset(config, "val", is_training=False, batch_size=1)
    image = next(iter(dataset))["image"][0].numpy()
    reference = Image.open(io.BytesIO(path.read_bytes()))
    if mode == "I;16":  # TF scales 16-bit to 8-bit by dropping the low byte
        expected = np.repeat((np.asarray(reference, np.uint16) >> 8)[..., None], 3, -1)
    else:
        expected = np.asarray(reference.convert("RGB"), np.float32)
    restored = image[:48, :64] * STD + MEAN
    assert np.abs(restored - expected).mean() <= max(tolerance, 1e-3)
    assert np.all(image[48:] == 0) and np.all(image[:, 64:] == 0)


def test_label_map_of_noncontiguous_coco_ids_round_trips(sample_data, tmp_path):
    config = coco_mini_config(sample_data)
    label_map = pipeline.dataset_label_map(config)
    assert label_map.num_classes == 80
    assert label_map.ids[:3] == (1, 2, 3) and label_map.ids[-1] == 90
    assert label_map.names[0] == "person" and label_map.index_of_id(90) == 79
    path = label_map_lib.write_label_map(label_map, tmp_path)
    entries = json.loads(open(path).read())
    assert entries[11] == {"index": 11, "id": 13, "name": "stop sign"}  # no id 12
    assert label_map_lib.load_label_map(path) == label_map
    assert label_map_lib.load_label_map(config.val_annotations) == label_map
    assert pipeline.run_label_map(config) == label_map


def test_label_map_file_errors_name_the_problem(tmp_path):
    path = tmp_path / "label_map.json"
    path.write_text(json.dumps([{"index": 0, "id": 1, "name": "a"},
                                {"index": 2, "id": 3, "name": "b"}]))
    with pytest.raises(ValueError, match=r"label_map.json: entry .*without gaps"):
        label_map_lib.load_label_map(path)
    path.write_text(json.dumps([{"index": 0, "id": 1, "name": "a"},
                                {"index": 1, "id": 1, "name": "b"}]))
    with pytest.raises(ValueError, match="category id 1 twice"):
        label_map_lib.load_label_map(path)
    path.write_text("[{")
    with pytest.raises(ValueError, match=r"not valid JSON \(line 1"):
        label_map_lib.load_label_map(path)


def test_exif_orientation_is_applied_as_documented(tmp_path):
    """Images are used as viewers show them (tests/test_exif.py has every orientation): a
    64x48 (WxH) photo tagged "rotate 90 degrees clockwise" is 48 wide and 64 high."""
    make_coco(tmp_path, num_images=1)
    path = tmp_path / "images" / "img0.jpg"
    image = Image.open(path)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image.save(path, exif=exif.tobytes())
    content = json.loads((tmp_path / "instances.json").read_text())
    content["images"][0].update(width=48, height=64)
    (tmp_path / "instances.json").write_text(json.dumps(content))
    dataset, report = pipeline.build_dataset(coco_config(tmp_path), "val", is_training=False,
                                             batch_size=1)
    assert report.num_skipped == 0
    np.testing.assert_array_equal(next(iter(dataset))["image_info"][0, 0].numpy(), [64, 48])


def test_iterator_checkpoint_resumes_exactly_and_stays_small(tmp_path):
    config = make_coco(tmp_path / "data", num_images=5)
    config.min_size = (48, 64)
    dataset, _ = pipeline.build_dataset(config, "train", is_training=True, batch_size=2)
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    path = tf.train.Checkpoint(data=iterator).save(str(tmp_path / "ckpt" / "c"))
    expected = [next(iterator) for _ in range(3)]
    restored = iter(dataset)
    tf.train.Checkpoint(data=restored).restore(path)
    for batch in expected:
        again = next(restored)
        for key in batch:
            np.testing.assert_array_equal(batch[key].numpy(), again[key].numpy())
    size = sum(f.stat().st_size for f in (tmp_path / "ckpt").iterdir())
    assert size < 200_000  # positions only: no prefetched images (one batch is 393 KB)


def test_plus_one_ground_truth_is_inclusive_like_the_authors_and_round_trips(tmp_path):
    """model.plus_one: COCO [x, y, w, h] -> x2 = x + w - 1 before resizing (the authors'
    xywh -> xyxy), flip x -> W - 1 - x, and back to COCO with w = x2 - x1 + 1."""
    from paa_tf.evaluation import coco_scoring
    from paa_tf.inference import postprocess

    config = make_coco(tmp_path, num_images=1)  # bbox [4, 6, 30, 20] in a 64x48 image
    sy, sx = 64 / 48, 85 / 64  # scaled to 64x85 (see test_resize_rule_hand_computed)
    want = {False: [6 * sy, 4 * sx, 26 * sy, 34 * sx],  # continuous: x + w
            True: [6 * sy, 4 * sx, 25 * sy, 33 * sx]}  # inclusive: x + w - 1
    for plus_one in (False, True):
        dataset, _ = pipeline.build_dataset(config, "val", is_training=False, batch_size=1,
                                            plus_one=plus_one)
        batch = next(iter(dataset))
        np.testing.assert_allclose(batch["gt_boxes"][0, 0].numpy(), want[plus_one], rtol=1e-6)
        # A detection equal to the GT maps back to the annotation's own [x, y, w, h].
        original = postprocess.map_to_original(batch["gt_boxes"][:, :1], batch["image_info"],
                                               plus_one=plus_one)
        detections = {"detection_boxes": original.numpy(), "detection_scores": [[0.9]],
                      "detection_classes": [[0]], "num_detections": [1]}
        records = coco_scoring.detections_to_coco(detections, [10], {0: 1}, plus_one=plus_one)
        np.testing.assert_allclose(records[0]["bbox"], [4, 6, 30, 20], atol=1e-4)
    train = dataclasses.replace(config, flip_prob=1.0)
    flipped, _ = pipeline.build_dataset(train, "train", is_training=True, batch_size=1,
                                        plus_one=True)
    y1, x1, y2, x2 = want[True]
    np.testing.assert_allclose(next(iter(flipped))["gt_boxes"][0, 0].numpy(),
                               [y1, 85 - 1 - x2, y2, 85 - 1 - x1], rtol=1e-6)


def test_data_report_names_the_files_it_read(sample_data):
    # paa_eval may point the 'val' slot at any split: the report says which images it read.
    config = coco_mini_config(sample_data)
    _, report, _ = pipeline.load_records(config, "val", is_training=False)
    assert report.summary().startswith(f"data 'val: {config.val_images}'")
    _, report, _ = pipeline.load_records(config, "train", is_training=True)
    assert report.summary().startswith(f"data 'train: {config.train_images}'")
