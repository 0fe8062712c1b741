"""Bad input never crashes inside TensorFlow nor disappears silently (issue 3, part 3).

Each case is a tiny dataset written to tmp_path: without `skip_bad_records` the error names
the file and the record and says how to fix it; with it the record is skipped, counted and
listed by id in the `BadRecordReport`, and the pipeline runs over the rest.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from paa_tf.config import DataConfig
from paa_tf.data import pipeline
from paa_tf.data.records import BadRecordError

HEIGHT, WIDTH = 48, 64
# min_size 64: 48x64 -> 64x85 (85.33 rounded), so the per-axis scales are 64/48 and 85/64.
SCALE_YXYX = np.array([64 / 48, 85 / 64, 64 / 48, 85 / 64])


def write_image(path, mode="RGB", fmt="JPEG", size=(HEIGHT, WIDTH), seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)


def make_coco(root, num_images=3, annotations=None):
    """COCO layout in `root`: images 10, 11, 12 (64x48 JPEG), categories 1 and 7.

    Default annotations: one box per image (ids 100, 101, 102), plus a second, smaller box
    (id 103) on image 12. Returns the DataConfig reading it (train and val are the same).
    """
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(num_images):
        name = f"img{i}.jpg"
        write_image(image_dir / name, seed=i)
        images.append({"id": 10 + i, "file_name": name, "height": HEIGHT, "width": WIDTH})
    if annotations is None:
        annotations = [{"id": 100 + i, "image_id": 10 + i, "category_id": 7 if i % 2 else 1,
                        "bbox": [4.0, 6.0, 30.0, 20.0], "iscrowd": 0, "area": 600.0}
                       for i in range(num_images)]
        if num_images >= 3:
            annotations.append({"id": 103, "image_id": 12, "category_id": 1,
                                "bbox": [40.0, 30.0, 10.0, 8.0], "iscrowd": 0,
                                "area": 80.0})
    content = {"images": images, "annotations": annotations,
               "categories": [{"id": 1, "name": "one"}, {"id": 7, "name": "seven"}]}
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps(content))
    return coco_config(root)


def coco_config(root, **overrides):
    fields = dict(format="coco", train_images=str(root / "images"),
                  train_annotations=str(root / "instances.json"),
                  val_images=str(root / "images"), val_annotations=str(root / "instances.json"),
                  min_size=(64,), max_size=128, image_size=(128, 128), max_instances=4,
                  deterministic=True, num_parallel_calls=1)
    fields.update(overrides)
    return DataConfig(**fields)


def edit_annotations(root, fn):
    path = root / "instances.json"
    content = json.loads(path.read_text())
    fn(content)
    path.write_text(json.dumps(content))


def source_ids(config, split="val", is_training=False, **kwargs):
    dataset, report = pipeline.build_dataset(config, split, is_training=is_training,
                                             batch_size=2, repeat=False, **kwargs)
    ids = [int(i) for batch in dataset for i in batch["source_id"].numpy()]
    return sorted(ids), report


def assert_skipped(config, bad_id, good_ids, reason):
    ids, report = source_ids(config, skip_bad_records=True)
    assert ids == sorted(good_ids)
    assert bad_id in report.skipped_ids
    assert report.num_skipped == 1
    assert any(reason in entry[2] for entry in report.entries)
    assert str(bad_id) in report.summary()


@pytest.mark.slow
def test_missing_image_names_file_and_image_id(tmp_path):
    config = make_coco(tmp_path)
    os.remove(tmp_path / "images" / "img1.jpg")
    with pytest.raises(BadRecordError, match=r"(?s)image id 11 \(img1.jpg\).*not found.*"
                                             r"skip_bad_records"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2)
    assert_skipped(config, 11, [10, 12], "not found")


@pytest.mark.parametrize("damage,reason", [("text", "not a JPEG"), ("folder", "cannot read"),
                                            ("empty", "empty")])
def test_unreadable_image_is_reported(tmp_path, damage, reason):
    config = make_coco(tmp_path)
    path = tmp_path / "images" / "img0.jpg"
    os.remove(path)
    if damage == "text":
        path.write_bytes(b"this is not an image at all")
    elif damage == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"")
    with pytest.raises(BadRecordError, match=rf"(?s)image id 10 \(img0.jpg\).*{reason}"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2)
    assert_skipped(config, 10, [11, 12], reason)


def test_truncated_jpeg_is_caught_before_tensorflow(tmp_path):
    config = make_coco(tmp_path)
    path = tmp_path / "images" / "img2.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    # The hazard being guarded against: TensorFlow itself fails deep in the pipeline.
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(data[: len(data) // 2], channels=3)
    with pytest.raises(BadRecordError, match=r"(?s)image id 12 \(img2.jpg\).*truncated.*img2"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2)
    assert_skipped(config, 12, [10, 11], "truncated")


def test_full_verification_finds_corrupt_data_with_an_end_marker(tmp_path):
    make_coco(tmp_path)
    path = tmp_path / "images" / "img0.png"
    write_image(path, fmt="PNG")
    data = bytearray(path.read_bytes())
    start = data.find(b"IDAT") + 40
    data[start:start + 20] = bytes(b ^ 0x55 for b in data[start:start + 20])
    path.write_bytes(bytes(data))  # compressed data broken, IEND end marker intact
    edit_annotations(tmp_path, lambda c: c["images"][0].update(file_name="img0.png"))
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(bytes(data), channels=3)
    # The fast header check cannot see this (documented); the full decode does.
    pipeline.build_dataset(coco_config(tmp_path, verify_images="header"), "val",
                           is_training=False, batch_size=2)
    config = coco_config(tmp_path, verify_images="full")
    with pytest.raises(BadRecordError, match=r"image id 10 \(img0.png\).*corrupt"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2)
    assert_skipped(config, 10, [11, 12], "corrupt")


@pytest.mark.parametrize("bbox,reason", [
    ([70.0, 6.0, 10.0, 10.0], "outside the 64x48 image"),
    ([4.0, 6.0, 60.0, 60.0], "outside the 64x48 image"),
    ([20.0, 6.0, -5.0, 10.0], "negative size"),
    ([4.0, 6.0, 10.0, float("nan")], "non-finite"),
])
def test_bad_box_names_annotation(tmp_path, bbox, reason):
    config = make_coco(tmp_path)
    edit_annotations(tmp_path, lambda c: c["annotations"][1].update(bbox=bbox))
    with pytest.raises(BadRecordError, match=rf"(?s)image id 11 .*annotation 101.*{reason}.*"
                                             r"instances.json"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2)
    assert_skipped(config, 11, [10, 12], reason)


def test_box_crossing_border_within_tolerance_is_clipped(tmp_path):
    config = make_coco(tmp_path)
    edit_annotations(tmp_path, lambda c: c["annotations"][0].update(bbox=[40.0, -1.5, 25.5,
                                                                          20.0]))
    dataset, report = pipeline.build_dataset(config, "val", is_training=False, batch_size=3)
    batch = next(iter(dataset))
    row = list(batch["source_id"].numpy()).index(10)
    np.testing.assert_allclose(batch["gt_boxes"][row, 0].numpy(),
                               np.array([0.0, 40.0, 18.5, 64.0]) * SCALE_YXYX, rtol=1e-5)
    assert report.filtered["boxes clipped to the image"] == 1


def test_unknown_category_id(tmp_path):
    config = make_coco(tmp_path)
    edit_annotations(tmp_path, lambda c: c["annotations"][0].update(category_id=99))
    with pytest.raises(BadRecordError, match=r"(?s)image id 10.*annotation 100.*unknown "
                                             r"category_id 99.*instances.json"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2)
    assert_skipped(config, 10, [11, 12], "unknown category_id 99")


def test_annotation_of_unknown_image(tmp_path):
    config = make_coco(tmp_path)
    edit_annotations(tmp_path, lambda c: c["annotations"][0].update(image_id=77))
    with pytest.raises(BadRecordError, match="annotation 100 refers to image id 77"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2)


@pytest.mark.parametrize("text,message", [
    ('{"images": [{"id": 1,', r"not valid JSON \(line 1, column"),
    ("[1, 2]", "no 'images' list"),
])
def test_malformed_json_names_file_and_position(tmp_path, text, message):
    config = make_coco(tmp_path)
    (tmp_path / "instances.json").write_text(text)
    with pytest.raises(ValueError, match=rf"instances.json.*{message}|{message}"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2)
    with pytest.raises(ValueError, match="instances.json"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2,
                               skip_bad_records=True)


def test_too_many_instances_errors_or_keeps_the_largest(tmp_path):
    config = make_coco(tmp_path)
    config.max_instances = 1
    with pytest.raises(BadRecordError, match=r"image id 12.*2 boxes.*max_instances=1"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=3)
    dataset, report = pipeline.build_dataset(config, "val", is_training=False, batch_size=3,
                                             skip_bad_records=True)
    batch = next(iter(dataset))
    row = list(batch["source_id"].numpy()).index(12)
    np.testing.assert_allclose(batch["gt_boxes"][row, 0].numpy() / SCALE_YXYX,
                               [6.0, 4.0, 26.0, 34.0], rtol=1e-5)  # the 30x20 box, not 10x8
    assert report.warnings and report.warnings[0][0] == 12 and report.num_skipped == 0


def make_voc(root, objects_xml=None):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    stems = ["a1", "a2"]
    for i, stem in enumerate(stems):
        write_image(root / "JPEGImages" / f"{stem}.jpg", seed=i)
        obj = (objects_xml or {}).get(stem, "<object><name>cell</name><difficult>0</difficult>"
                                            "<bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax>"
                                            "<ymax>20</ymax></bndbox></object>")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>{WIDTH}</width>"
            f"<height>{HEIGHT}</height><depth>3</depth></size>{obj}</annotation>")
    (root / "ImageSets/Main/train.txt").write_text("\n".join(stems) + "\n")
    return DataConfig(format="voc", voc_root=str(root), voc_train_split="train",
                      voc_val_split="train", min_size=(64,), max_size=128, image_size=(128, 128),
                      max_instances=4, num_parallel_calls=1)


@pytest.mark.parametrize("obj,reason", [
    ("<object><name>cell</name><bndbox><xmin>5</xmin>", "malformed XML"),
    ("<object><name>dog</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax><ymax>20"
     "</ymax></bndbox></object>", "unknown class name 'dog'"),
    ("<object><name>cell</name><bndbox><xmin>five</xmin><ymin>5</ymin><xmax>30</xmax><ymax>20"
     "</ymax></bndbox></object>", "not a number"),
    ("<object><name>cell</name><bndbox><xmin>40</xmin><ymin>5</ymin><xmax>30</xmax><ymax>20"
     "</ymax></bndbox></object>", "negative size"),
])
def test_bad_voc_xml_names_the_xml_file(tmp_path, obj, reason):
    config = make_voc(tmp_path, {"a2": obj})
    if "dog" in obj:  # a label map that does not list 'dog'
        from paa_tf.data import label_map as label_map_lib
        config.label_map = label_map_lib.write_label_map(
            label_map_lib.from_names(["cell"]), str(tmp_path / "label_map.json"))
    with pytest.raises(BadRecordError, match=rf"(?s)\(a2(\.jpg)?\).*{reason}.*a2\.xml"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2)
    dataset, report = pipeline.build_dataset(config, "val", is_training=False, batch_size=2,
                                             skip_bad_records=True)
    assert report.num_skipped == 1 and report.num_images == 1
    assert report.id_to_name and sum(b["image"].shape[0] for b in dataset) == 1


def test_voc_missing_xml_is_reported(tmp_path):
    config = make_voc(tmp_path)
    (tmp_path / "ImageSets/Main/train.txt").write_text("a1\na2\nghost\n")
    with pytest.raises(BadRecordError, match=r"ghost.*annotation file not found.*ghost\.xml"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2)


def write_records(path, examples):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example if isinstance(example, bytes) else example.SerializeToString())


def tfrecord_dataset(root):
    """Two shards from the tiny COCO set plus the records of `make_coco`."""
    from paa_tf.data import tfrecord_convert
    config = make_coco(root)
    paths, _ = tfrecord_convert.convert("coco", str(root / "tf" / "data"), 1,
                                     annotations=config.val_annotations,
                                     images=config.val_images)
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(paths[0])]
    return coco_config(root, format="tfrecord", val_tfrecords=str(root / "tf" / "*.tfrecord"),
                       train_tfrecords=str(root / "tf" / "*.tfrecord")), paths[0], serialized


def test_tfrecord_garbage_record_and_unknown_label(tmp_path):
    config, path, serialized = tfrecord_dataset(tmp_path)
    example = tf.train.Example.FromString(serialized[1])
    example.features.feature["image/object/class/label"].int64_list.value[0] = 42
    write_records(path, [serialized[0], example, b"\x01\x02 not a protobuf example"])
    with pytest.raises(BadRecordError, match=r"(?s)image id 11 \(.*data-00000-of-00001.tfrecord "
                                             r"record 1\): has unknown class/label id\(s\) "
                                             r"\[42\].*record 2\): Error parsing"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2)
    ids, report = source_ids(config, skip_bad_records=True)
    assert ids == [10] and report.num_skipped == 2


@pytest.mark.slow
def test_tfrecord_truncated_shard_reads_what_is_readable(tmp_path):
    config, path, serialized = tfrecord_dataset(tmp_path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 50)  # the last record is cut
    with pytest.raises(BadRecordError, match=r"record 2.*corrupt"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2)
    ids, report = source_ids(config, skip_bad_records=True)
    assert ids == [10, 11] and report.num_skipped == 1
    # Training repeats over the shard without touching the corrupt tail.
    dataset, _ = pipeline.build_dataset(config, "train", is_training=True, batch_size=2,
                                        skip_bad_records=True)
    for batch in dataset.take(4):
        assert set(batch["source_id"].numpy()) <= {10, 11}
