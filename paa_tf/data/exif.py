"""EXIF orientation of JPEG files, read and applied in the TensorFlow graph.

A phone stores a photo as the sensor saw it and writes an EXIF orientation tag (0x0112) telling
viewers how to turn it; image viewers, browsers, annotation tools (CVAT, Label Studio, the COCO
annotator) and PIL's `ImageOps.exif_transpose` show the turned image, so annotations (boxes and
the image width/height) are made in that orientation. `tf.io.decode_jpeg` ignores the tag, so
without this module a portrait photo stored landscape would be trained on sideways, with boxes
that do not match it. Decoding (`paa_tf.data.transforms.decode_image`) applies the tag, the
same way in training, evaluation, prediction and the exported SavedModel.

Where the tag is read: the first APP1 segment of a JPEG that starts with `Exif\0\0`, a TIFF
header (`II`, little endian, or `MM`, big endian), and the first IFD's entry 0x0112 (a SHORT,
1..8). Values outside 1..8 and files without the tag count as 1 (stored as shown). PNG files
are used as stored: the PNG `eXIf` chunk is rare and not read.

Orientation values (as `ImageOps.exif_transpose` applies them to the stored pixels):
  1 as stored, 2 mirror left-right, 3 rotate 180, 4 mirror top-bottom, 5 transpose (mirror
  about the main diagonal), 6 rotate 90 clockwise, 7 transverse (mirror about the other
  diagonal), 8 rotate 90 counter-clockwise. 5-8 swap height and width.
"""

import tensorflow as tf

from paa_tf.data.image_files import has_format

_MAX_SEGMENTS = 32  # APPn segments walked before giving up (real files have a handful)
_MAX_ENTRIES = 64  # IFD0 entries searched for the tag (cameras write about a dozen)
ORIENTATION_TAG = 0x0112


def _bytes_at(encoded, position, count):
    """int32 [count]: bytes position .. position+count-1 of `encoded`, 0 past its end."""
    position = tf.clip_by_value(tf.cast(position, tf.int32), 0, tf.strings.length(encoded))
    piece = tf.strings.join([tf.strings.substr(encoded, position, count), b"\0" * count])
    return tf.cast(tf.io.decode_raw(tf.strings.substr(piece, 0, count), tf.uint8), tf.int32)


def _exif_start(encoded):
    """Position of the TIFF header of the JPEG's APP1 `Exif` segment, or -1 (int32 [])."""
    exif_id = tf.constant([0x45, 0x78, 0x69, 0x66, 0, 0], tf.int32)  # "Exif\0\0"

    def body(position, found, steps):
        head = _bytes_at(encoded, position, 10)
        is_marker = tf.equal(head[0], 0xFF)
        is_exif = tf.logical_and(tf.equal(head[1], 0xE1),
                                 tf.reduce_all(tf.equal(head[4:10], exif_id)))
        # Headers end at the first non-marker byte, start of scan (DA) or end of image (D9).
        ends = tf.logical_or(tf.logical_not(is_marker),
                             tf.logical_or(tf.equal(head[1], 0xDA), tf.equal(head[1], 0xD9)))
        found = tf.where(tf.logical_and(is_marker, is_exif), position + 10,
                         tf.where(ends, -2, -1))
        return position + 2 + head[2] * 256 + head[3], found, steps + 1

    def searching(position, found, steps):
        return tf.logical_and(tf.equal(found, -1), steps < _MAX_SEGMENTS)

    _, found, _ = tf.while_loop(searching, body, (tf.constant(2), tf.constant(-1),
                                                  tf.constant(0)))
    return tf.maximum(found, -1)


def _orientation_in_tiff(encoded, start):
    """The orientation tag of the TIFF structure at `start` (1 when absent), int32 []."""
    header = _bytes_at(encoded, start, 8)
    little = tf.logical_and(tf.equal(header[0], 0x49), tf.equal(header[1], 0x49))  # "II"
    big = tf.logical_and(tf.equal(header[0], 0x4D), tf.equal(header[1], 0x4D))  # "MM"

    def u16(low_first, high_first):
        return tf.where(little, low_first + 256 * high_first, 256 * low_first + high_first)

    weights = tf.where(little, tf.constant([1, 256, 65536, 16777216], tf.int64),
                       tf.constant([16777216, 65536, 256, 1], tf.int64))
    offset = tf.reduce_sum(tf.cast(header[4:8], tf.int64) * weights)
    # The IFD lies inside the APP1 segment (< 64 KB); a larger offset finds no tag.
    if_start = start + tf.cast(tf.minimum(offset, 1 << 17), tf.int32)
    count_bytes = _bytes_at(encoded, if_start, 2)
    count = u16(count_bytes[0], count_bytes[1])
    entries = tf.reshape(_bytes_at(encoded, if_start + 2, 12 * _MAX_ENTRIES), [_MAX_ENTRIES, 12])
    tags = u16(entries[:, 0], entries[:, 1])
    values = u16(entries[:, 8], entries[:, 9])  # a SHORT value sits in the first 2 bytes
    hits = tf.logical_and(tf.equal(tags, ORIENTATION_TAG), tf.range(_MAX_ENTRIES) < count)
    value = tf.reduce_max(tf.where(hits, values, 0))
    valid = tf.logical_and(tf.logical_or(little, big),
                           tf.logical_and(value >= 1, value <= 8))
    return tf.where(valid, value, 1)


def orientation(encoded):
    """EXIF orientation 1..8 of one encoded image (tf.string []); 1 unless a JPEG has it."""
    def from_jpeg():
        start = _exif_start(encoded)
        return tf.cond(start >= 0, lambda: _orientation_in_tiff(encoded, start),
                       lambda: tf.constant(1))

    return tf.cond(has_format(encoded, "jpeg"), from_jpeg, lambda: tf.constant(1))


def apply_orientation(image, value):
    """Turn stored pixels [h, w, C] as a viewer shows them for EXIF orientation `value`."""
    def transpose(x):
        return tf.transpose(x, [1, 0, 2])

    branches = [
        lambda: image,
        lambda: tf.reverse(image, axis=[1]),
        lambda: tf.reverse(image, axis=[0, 1]),
        lambda: tf.reverse(image, axis=[0]),
        lambda: transpose(image),
        lambda: tf.reverse(transpose(image), axis=[1]),  # 90 degrees clockwise
        lambda: tf.reverse(transpose(image), axis=[0, 1]),
        lambda: tf.reverse(transpose(image), axis=[0]),  # 90 degrees counter-clockwise
    ]
    turned = tf.switch_case(tf.clip_by_value(value, 1, 8) - 1, branches)
    turned.set_shape([None, None, image.shape[-1]])
    return turned


def swaps_sides(value):
    """Whether orientation `value` swaps height and width (5..8)."""
    return value >= 5
