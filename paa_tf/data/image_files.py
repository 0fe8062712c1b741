"""What an image file's first bytes say: its format and, for JPEG and PNG, its size.

The one statement of the magic numbers of the formats TensorFlow decodes, read by the data
checks (`records`), the TFRecord writer (`tfrecord`), EXIF handling (`exif`), the decoded
size (`transforms.decoded_size`) and the export's request checks (`paa_tf.serving.requests`).
`image_format` reads Python bytes (no TensorFlow); `has_format` and `header_size` are
in-graph (tf.string).
"""

# Leading bytes of each format; WebP is `RIFF` + 4 size bytes + `WEBP`.
MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n", "gif": b"GIF8", "bmp": b"BM"}
_WEBP = (b"RIFF", b"WEBP")


def image_format(head):
    """'jpeg', 'png', 'gif', 'bmp', 'webp' or None for the first bytes `head` of a file."""
    for name, magic in MAGIC.items():
        if head[:len(magic)] == magic:
            return name
    if head[:4] == _WEBP[0] and head[8:12] == _WEBP[1]:
        return "webp"
    return None


def has_format(encoded, name):
    """tf.bool, same shape as `encoded` (tf.string): whether each starts like a `name` file
    ('jpeg' or 'png')."""
    import tensorflow as tf  # in-graph readers only: the data checks read bytes without it

    magic = MAGIC[name]
    return tf.equal(tf.strings.substr(encoded, 0, len(magic)), magic)


def header_size(encoded):
    """(height, width) int64 [2] of one JPEG or PNG (tf.string scalar), from its header,
    decoding nothing.

    JPEG: the SOF segment (`tf.io.extract_jpeg_shape`; a JPEG without one is an
    InvalidArgumentError). PNG: the IHDR chunk, which must come first (width and height at
    bytes 16-23, big endian); a PNG without it gives (0, 0) and fails when decoded. Anything
    else gives (0, 0). The size is the stored one: a JPEG's EXIF orientation may swap it
    (`transforms.decoded_size`).
    """
    import tensorflow as tf  # in-graph readers only: the data checks read bytes without it

    def png_size():
        padded = tf.strings.join([encoded, b"\0" * 24])  # a truncated file still gives 8 bytes
        header = tf.io.decode_raw(tf.strings.substr(padded, 16, 8), tf.uint8)
        header = tf.reshape(tf.cast(header, tf.int64), [2, 4])
        values = header[:, 0] * 16777216 + header[:, 1] * 65536 + header[:, 2] * 256 \
            + header[:, 3]
        has_ihdr = tf.equal(tf.strings.substr(padded, 12, 4), b"IHDR")
        return tf.where(has_ihdr, tf.stack([values[1], values[0]]),  # IHDR: width first
                        tf.zeros([2], tf.int64))

    def jpeg_size():
        return tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64)

    return tf.case([(has_format(encoded, "jpeg"), jpeg_size),
                    (has_format(encoded, "png"), png_size)],
                   default=lambda: tf.zeros([2], tf.int64))
