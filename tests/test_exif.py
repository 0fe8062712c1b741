"""EXIF orientation: images are decoded as viewers and annotation tools show them.

Oracle: PIL's `ImageOps.exif_transpose`, applied to TensorFlow's own decode of the stored
pixels (so the comparison is exact), with PIL reading the EXIF tag itself. The EXIF segments
are written here byte by byte, in both byte orders, after the JFIF segment PIL writes.
"""

import io
import json
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from paa_tf.data import exif, pipeline, records, transforms
from tests.test_data_bad_input import coco_config


def exif_segment(orientation, big_endian):
    """An APP1 `Exif` segment whose first IFD holds a Make tag and the orientation tag."""
    order = ">" if big_endian else "<"
    tiff = (b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, 8)
    ifd = (struct.pack(order + "H", 2)
           + struct.pack(order + "HHI", 0x010F, 2, 4) + b"cam\0"  # Make, ASCII, inline
           + struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0)  # SHORT, padded
           + struct.pack(order + "I", 0))
    payload = b"Exif\0\0" + tiff + ifd
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def jpeg_with_orientation(pixels, orientation, big_endian=False):
    """JPEG bytes of `pixels` (stored as given) tagged with EXIF `orientation`."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    assert data[2:4] == b"\xff\xe0"  # PIL's JFIF APP0 segment: the walker must skip it
    after_app0 = 4 + int.from_bytes(data[4:6], "big")
    return data[:after_app0] + exif_segment(orientation, big_endian) + data[after_app0:]


def pil_oracle(encoded):
    """TensorFlow's decode of the stored pixels, turned by PIL's exif_transpose."""
    stored = Image.fromarray(tf.io.decode_jpeg(encoded, channels=3).numpy())
    stored.info["exif"] = Image.open(io.BytesIO(encoded)).info["exif"]
    return np.asarray(ImageOps.exif_transpose(stored))


def blocks(height, width, seed=0):
    """uint8 [height, width, 3] of 8x8 random blocks (JPEG keeps them; no symmetry)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), np.uint8))


@pytest.mark.parametrize("big_endian", [False, True], ids=["II", "MM"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_decode_turns_every_orientation_like_pil(orientation, big_endian):
    encoded = jpeg_with_orientation(blocks(48, 80), orientation, big_endian)
    expected = pil_oracle(encoded)
    assert expected.shape[:2] == ((80, 48) if orientation >= 5 else (48, 80))
    assert int(exif.orientation(tf.constant(encoded))) == orientation
    np.testing.assert_array_equal(transforms.decode_image(tf.constant(encoded)).numpy(),
                                  expected)
    # The sizes read without decoding agree: the load-time check and the serving header.
    assert records.image_problem(encoded, expected.shape[:2]) == (None, expected.shape[:2])
    assert tuple(transforms.decoded_size(tf.constant(encoded)).numpy()) == \
        expected.shape[:2]


def test_files_without_the_tag_are_used_as_stored():
    pixels = blocks(48, 80)
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        assert int(exif.orientation(tf.constant(buffer.getvalue()))) == 1
        assert transforms.decode_image(buffer.getvalue()).shape == (48, 80, 3)
    # An orientation outside 1..8 is ignored, as PIL does.
    encoded = jpeg_with_orientation(pixels, 9)
    assert int(exif.orientation(tf.constant(encoded))) == 1
    np.testing.assert_array_equal(transforms.decode_image(encoded).numpy(), pil_oracle(encoded))


def phone_photo_dataset(root):
    """One 140x80 (WxH as stored) photo with EXIF orientation 6 (shown 80 wide, 140 high), and
    a COCO annotation made on the shown image: a box around a white square drawn there."""
    shown = np.full((140, 80, 3), 40, np.uint8)
    shown[90:130, 20:60] = 255  # rows 90-130, columns 20-60 of the shown image
    stored = np.rot90(shown, k=1)  # orientation 6 turns the stored image 90 degrees clockwise
    (root / "images").mkdir(parents=True)
    (root / "images" / "phone.jpg").write_bytes(jpeg_with_orientation(stored, 6))
    content = {"images": [{"id": 5, "file_name": "phone.jpg", "width": 80, "height": 140}],
               "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "iscrowd": 0,
                                "bbox": [20.0, 90.0, 40.0, 40.0], "area": 1600.0}],
               "categories": [{"id": 1, "name": "square"}]}
    (root / "instances.json").write_text(json.dumps(content))
    return coco_config(root, min_size=(140,), max_size=140, image_size=(256, 256),
                       flip_prob=0.0, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0))


@pytest.mark.parametrize("split,is_training", [("train", True), ("val", False)])
def test_rotated_phone_photo_keeps_its_box_in_training_and_evaluation(tmp_path, split,
                                                                     is_training):
    config = phone_photo_dataset(tmp_path)
    dataset, report = pipeline.build_dataset(config, split, is_training=is_training,
                                             batch_size=1, repeat=False)
    assert report.num_skipped == 0 and report.num_boxes == 1
    batch = next(iter(dataset))
    np.testing.assert_allclose(batch["image_info"][0, 0], [140, 80])  # shown height, width
    box = batch["gt_boxes"][0, 0].numpy()
    np.testing.assert_allclose(box, [90, 20, 130, 60])  # scale 1: min_size 140 = height
    y1, x1, y2, x2 = box.astype(int)
    image = batch["image"][0].numpy()
    assert image[y1 + 3:y2 - 3, x1 + 3:x2 - 3].min() > 200  # the white square is in the box
    assert image[:80, :, :].max() < 80  # and nowhere above it


def test_annotation_made_on_the_stored_pixels_is_named_with_the_fix(tmp_path):
    """An annotation tool that ignored the tag gives the stored size: refused, and the message
    says how to keep those boxes (clear the tag)."""
    config = phone_photo_dataset(tmp_path)
    path = tmp_path / "instances.json"
    path.write_text(path.read_text().replace('"width": 80, "height": 140',
                                             '"width": 140, "height": 80'))
    with pytest.raises(records.BadRecordError, match=r"(?s)image id 5 \(phone.jpg\): image is "
                                                     r"80x140 \(WxH\) as shown \(EXIF "
                                                     r"orientation 6.*Orientation=1"):
        pipeline.build_dataset(config, "val", is_training=False, batch_size=1)
