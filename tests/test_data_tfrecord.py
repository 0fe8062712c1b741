"""TFRecords in Model Garden's layout: paa_make_tfrecord, scanning, and the round trip
COCO/VOC -> TFRecord -> pipeline giving the same tensors as reading the source directly."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from paa_tf.data import pipeline, records, tfrecord_convert
from tests.test_data_bad_input import HEIGHT, WIDTH, coco_config, make_coco
from tests.test_data_coco import coco_mini_config
from tests.test_data_voc import bccd_config

# Model Garden's COCO TFRecord keys, spelled out here as an independent reader of the files.
MODEL_GARDEN_SPEC = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/source_id": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    **{f"image/object/bbox/{k}": tf.io.VarLenFeature(tf.float32)
       for k in ("xmin", "ymin", "xmax", "ymax")},
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    "image/object/area": tf.io.VarLenFeature(tf.float32),
}


def run_cli(*args):
    return subprocess.run([sys.executable, "bin/paa_make_tfrecord", *args], capture_output=True,
                          text=True, timeout=300)


def elements(config, split="val", is_training=False, **kwargs):
    dataset, report = pipeline.build_dataset(config, split, is_training=is_training,
                                             batch_size=8, repeat=False, **kwargs)
    out = {}
    for batch in dataset:
        for i, source_id in enumerate(batch["source_id"].numpy()):
            out[int(source_id)] = {k: v[i].numpy() for k, v in batch.items()}
    return out, report


def test_coco_tfrecord_round_trip_gives_the_same_tensors(sample_data, tmp_path):
    config = coco_mini_config(sample_data, min_size=(256,), max_size=320, image_size=(384, 384))
    result = run_cli("--format=coco", f"--annotations={config.val_annotations}",
                     f"--image_dir={config.val_images}", f"--output_prefix={tmp_path}/val",
                     "--num_shards=3")
    assert result.returncode == 0, result.stderr
    content = json.load(open(config.val_annotations))
    num_images, num_boxes = len(content["images"]), len(content["annotations"])
    assert f"wrote {num_images} images ({num_boxes} boxes" in result.stdout
    shards = sorted(tmp_path.glob("val-*-of-00003.tfrecord"))
    assert len(shards) == 3 and (tmp_path / "label_map.json").is_file()
    direct, direct_report = elements(config)
    from_records, record_report = elements(dataclasses.replace(
        config, format="tfrecord", val_tfrecords=str(tmp_path / "val-*.tfrecord")))
    assert set(direct) == set(from_records) and len(direct) == num_images
    assert record_report.filtered == direct_report.filtered
    for source_id, a in direct.items():
        b = from_records[source_id]
        np.testing.assert_array_equal(a["image"], b["image"])  # same bytes, same decoder
        np.testing.assert_array_equal(a["gt_classes"], b["gt_classes"])
        np.testing.assert_allclose(a["gt_boxes"], b["gt_boxes"], atol=1e-3)  # normalised f32
        np.testing.assert_allclose(a["image_info"], b["image_info"], rtol=1e-6)


def test_records_use_model_garden_keys_and_coco_ids(sample_data, tmp_path):
    config = coco_mini_config(sample_data)
    paths, _ = tfrecord_convert.convert("coco", str(tmp_path / "val"), 2,
                                     annotations=config.val_annotations,
                                     images=config.val_images)
    content = json.load(open(config.val_annotations))
    images = {i["id"]: i for i in content["images"]}
    anns = {}
    for ann in content["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    seen = 0
    for serialized in tf.data.TFRecordDataset(paths):
        parsed = tf.io.parse_single_example(serialized, MODEL_GARDEN_SPEC)
        image_id = int(parsed["image/source_id"].numpy())
        info, expected = images[image_id], anns[image_id]
        assert parsed["image/height"] == info["height"] and parsed["image/width"] == info["width"]
        dense = {k: tf.sparse.to_dense(v).numpy() for k, v in parsed.items()
                 if isinstance(v, tf.sparse.SparseTensor)}
        bbox = np.array([a["bbox"] for a in expected])
        np.testing.assert_allclose(dense["image/object/bbox/xmin"], bbox[:, 0] / info["width"],
                                   rtol=1e-5)
        np.testing.assert_allclose(dense["image/object/bbox/ymax"],
                                   (bbox[:, 1] + bbox[:, 3]) / info["height"], rtol=1e-5)
        np.testing.assert_array_equal(dense["image/object/class/label"],
                                      [a["category_id"] for a in expected])
        np.testing.assert_array_equal(dense["image/object/is_crowd"],
                                      [a["iscrowd"] for a in expected])
        with open(f"{config.val_images}/{info['file_name']}", "rb") as f:
            assert parsed["image/encoded"].numpy() == f.read()
        seen += 1
    assert seen == len(images)


def test_cli_help_and_usage_errors():
    result = run_cli("--help")  # absl's --help exits with status 1
    for flag in ("--format", "--annotations", "--voc_root", "--output_prefix", "--num_shards",
                 "skip_bad_records"):
        assert flag in result.stdout
    result = run_cli("--format=coco", "--output_prefix=/tmp/never_written")
    assert result.returncode != 0 and "--annotations" in result.stderr


def test_voc_tfrecord_round_trip_counts(sample_data, tmp_path):
    config = bccd_config(sample_data)
    paths, report = tfrecord_convert.convert("voc", str(tmp_path / "bccd"), 2,
                                          voc_root=config.voc_root, voc_split="val")
    direct, direct_report = elements(config)
    from_records, _ = elements(dataclasses.replace(
        config, format="tfrecord", val_tfrecords=str(tmp_path / "bccd-*")))
    assert set(direct) == set(from_records) and direct_report.num_images == report.num_images
    for source_id, a in direct.items():
        np.testing.assert_array_equal(a["image"], from_records[source_id]["image"])
        np.testing.assert_allclose(a["gt_boxes"], from_records[source_id]["gt_boxes"],
                                   atol=1e-3)


def test_foreign_records_without_size_or_numeric_id(tmp_path):
    config = make_coco(tmp_path, num_images=1)
    encoded = (tmp_path / "images" / "img0.jpg").read_bytes()
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"cat_017"])),
        "image/object/bbox/ymin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.25])),
        "image/object/bbox/xmin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5])),
        "image/object/bbox/ymax": tf.train.Feature(float_list=tf.train.FloatList(value=[0.75])),
        "image/object/bbox/xmax": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0])),
        "image/object/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    with tf.io.TFRecordWriter(str(tmp_path / "foreign.tfrecord")) as writer:
        writer.write(example.SerializeToString())
    from paa_tf.data import label_map as label_map_lib
    label_map_path = label_map_lib.write_label_map(label_map_lib.LabelMap((1, 7), ("a", "b")),
                                                   str(tmp_path / "map.json"))
    config = coco_config(tmp_path, format="tfrecord", label_map=label_map_path,
                         val_tfrecords=str(tmp_path / "foreign.tfrecord"))
    got, report = elements(config)
    (source_id, element), = got.items()
    assert source_id == records.stable_id("cat_017") and report.id_to_name[source_id] == "cat_017"
    np.testing.assert_array_equal(element["image_info"][0], [HEIGHT, WIDTH])  # from the header
    expected = np.array([0.25 * HEIGHT, 0.5 * WIDTH, 0.75 * HEIGHT, WIDTH])
    scale = np.tile(element["image_info"][2], 2)
    np.testing.assert_allclose(element["gt_boxes"][0], expected * scale, rtol=1e-5)
    assert element["gt_classes"][0] == 1


@pytest.mark.parametrize("num_shards", [3, 1])  # by file, and by record within one file
def test_tfrecord_shards_split_between_input_pipelines(tmp_path, num_shards):
    config = make_coco(tmp_path, num_images=5)
    tfrecord_convert.convert("coco", str(tmp_path / "tf" / "d"), num_shards,
                          annotations=config.val_annotations, images=config.val_images)
    config = coco_config(tmp_path, format="tfrecord", val_tfrecords=str(tmp_path / "tf/*"))
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(2, pipeline_id, 2)
        got, _ = elements(config, input_context=context)
        seen.append(set(got))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == {10, 11, 12, 13, 14}


def test_tfrecord_training_iterator_resumes_exactly(tmp_path):
    """A checkpointed iterator over shuffled, interleaved shards continues where it stopped."""
    config = make_coco(tmp_path, num_images=7)
    tfrecord_convert.convert("coco", str(tmp_path / "tf" / "d"), 3,
                          annotations=config.val_annotations, images=config.val_images)
    config = coco_config(tmp_path, format="tfrecord", train_tfrecords=str(tmp_path / "tf/*"),
                         shuffle_buffer=4, min_size=(48, 64))

    def iterator():
        dataset, _ = pipeline.build_dataset(config, "train", is_training=True, batch_size=2)
        return iter(dataset)

    def take(it, n):
        return [next(it) for _ in range(n)]

    first = iterator()
    take(first, 3)
    saved = tf.train.Checkpoint(iterator=first).write(str(tmp_path / "ckpt" / "it"))
    expected = take(first, 6)
    resumed = iterator()
    tf.train.Checkpoint(iterator=resumed).read(saved).assert_consumed()
    got = take(resumed, 6)
    order = [list(b["source_id"].numpy()) for b in expected]
    assert len({i for batch in order for i in batch}) > 3  # shards interleaved, not one file
    assert [list(b["source_id"].numpy()) for b in got] == order
    for a, b in zip(expected, got):
        for key in a:  # same scale draw and flip: the per-element random state resumed too
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
