"""Image data corrupt behind valid markers is named, skipped and counted, never a bare crash.

A JPEG whose Huffman table is broken and a PNG whose IDAT data is scrambled both keep a valid
header and end marker, so the header check passes them; TensorFlow's decoder fails on them.
Before the fix training died at its first step with `jpeg::Uncompress failed` / `Invalid PNG
data`, naming no file, even with `data.skip_bad_records=true`, and `paa_make_tfrecord` wrote
such records. Now every image is decoded by TensorFlow when the records are loaded
(`data.verify_images: decode`, the default).
"""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from paa_tf.data import pipeline
from paa_tf.data.records import BadRecordError
from tests.test_data_bad_input import coco_config, edit_annotations, make_coco, source_ids


def broken_huffman_jpeg(seed=0):
    """A 64x48 JPEG whose first Huffman table (DHT) claims 255 codes of every length."""
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    table = data.find(b"\xff\xc4") + 5  # marker, 2 length bytes, class/id byte
    data[table:table + 16] = b"\xff" * 16  # code counts per length: an impossible table
    return bytes(data)


def scrambled_png(seed=0):
    """A 64x48 PNG whose compressed IDAT data is scrambled (signature and IEND intact)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    start = data.find(b"IDAT") + 40
    data[start:start + 20] = bytes(b ^ 0x55 for b in data[start:start + 20])
    return bytes(data)


CORRUPT = {"jpeg": ("img1.jpg", broken_huffman_jpeg), "png": ("img1.png", scrambled_png)}


def corrupt_image_1(root, kind):
    """The COCO set of `make_coco` with image id 11 replaced by corrupt data of `kind`."""
    make_coco(root)
    name, make = CORRUPT[kind]
    (root / "images" / "img1.jpg").unlink()
    (root / "images" / name).write_bytes(make(seed=1))
    edit_annotations(root, lambda c: c["images"][1].update(file_name=name))
    return coco_config(root), name


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_the_corrupt_files_pass_the_header_check_and_fail_to_decode(kind):
    from paa_tf.data import records

    data = CORRUPT[kind][1]()
    assert records.image_problem(data, (48, 64), level="header") == (None, (48, 64))
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(data, channels=3)


@pytest.mark.parametrize("kind", sorted(CORRUPT))
@pytest.mark.parametrize("split,is_training", [("train", True), ("val", False)])
def test_corrupt_image_data_is_named_without_skipping(tmp_path, kind, split, is_training):
    config, name = corrupt_image_1(tmp_path, kind)
    with pytest.raises(BadRecordError,
                       match=rf"(?s)image id 11 \({name}\): image data is corrupt behind a valid "
                             rf"header: TensorFlow cannot decode it.*images/{name}.*"
                             r"skip_bad_records=true"):
        pipeline.build_dataset(config, split, is_training=is_training, batch_size=2)


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_image_data_is_skipped_and_counted(tmp_path, kind):
    config, name = corrupt_image_1(tmp_path, kind)
    ids, report = source_ids(config, skip_bad_records=True)
    assert ids == [10, 12]
    assert report.skipped_ids == [11] and report.num_skipped == 1
    assert f"skipped image id 11 ({name}): image data is corrupt" in report.summary()
    assert f"images/{name}" in report.summary()
    # Training (shuffled, repeated) goes on over the other images.
    dataset, report = pipeline.build_dataset(config, "train", is_training=True, batch_size=2,
                                             skip_bad_records=True)
    seen = {int(i) for batch in dataset.take(6) for i in batch["source_id"].numpy()}
    assert seen == {10, 12}
    assert report.skipped_ids == [11] and report.num_skipped == 1


def test_corrupt_image_in_a_tfrecord_is_named_or_skipped(tmp_path):
    from paa_tf.data import coco, tfrecord
    from paa_tf.data import records as records_lib

    config, name = corrupt_image_1(tmp_path, "jpeg")
    report = records_lib.BadRecordReport()
    items, label_map = coco.read_coco(config.val_annotations, config.val_images, report)
    tfrecord.write_tfrecords(items, str(tmp_path / "tf" / "data"), 1, label_map)  # unchecked
    config = coco_config(tmp_path, format="tfrecord", val_tfrecords=str(tmp_path / "tf" / "*"))
    with pytest.raises(BadRecordError,
                       match=r"image id 11 \(.*data-00000-of-00001.tfrecord record 1\): image "
                             r"data is corrupt"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=2)
    ids, report = source_ids(config, skip_bad_records=True)
    assert ids == [10, 12] and report.skipped_ids == [11]


def test_make_tfrecord_decodes_every_image_before_writing(tmp_path):
    from paa_tf.data import tfrecord_convert

    config, name = corrupt_image_1(tmp_path, "png")
    prefix = str(tmp_path / "tf" / "data")
    with pytest.raises(BadRecordError, match=rf"(?s)image id 11 \({name}\).*corrupt.*{name}"):
        tfrecord_convert.convert("coco", prefix, 1, annotations=config.val_annotations,
                                 images=config.val_images)
    with pytest.raises(ValueError, match="choose decode or full"):
        tfrecord_convert.convert("coco", prefix, 1, annotations=config.val_annotations,
                                 images=config.val_images, verify_images="header")
    paths, report = tfrecord_convert.convert("coco", prefix, 1,
                                             annotations=config.val_annotations,
                                             images=config.val_images, skip_bad_records=True)
    assert report.skipped_ids == [11] and report.num_images == 2
    assert sum(1 for _ in tf.data.TFRecordDataset(paths)) == 2


def test_evaluation_of_undecoded_images_names_or_skips_corrupt_data(tmp_path):
    """The batches of `encoded_eval_dataset` (test-time augmentation, exported models)."""
    from paa_tf.evaluation import inputs as eval_inputs

    config, name = corrupt_image_1(tmp_path, "jpeg")
    with pytest.raises(BadRecordError, match=rf"image id 11 \({name}\)"):
        eval_inputs.encoded_eval_dataset(config, batch_size=2)
    dataset, report = eval_inputs.encoded_eval_dataset(
        coco_config(tmp_path, skip_bad_records=True), batch_size=2)
    ids = sorted(int(i) for batch in dataset for i in batch["source_id"].numpy())
    assert ids == [10, 12] and report.skipped_ids == [11]


def test_predict_names_a_file_it_cannot_decode(tmp_path):
    from paa_tf.visualization import predict

    path = tmp_path / "broken.jpg"
    path.write_bytes(broken_huffman_jpeg())
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        predict.read_image(str(path))
