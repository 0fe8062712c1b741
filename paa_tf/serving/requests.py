"""In-graph checks of the exported SavedModel's requests, and the export's pre-processing.

A request is a batch of encoded images (`tf.string` [B], JPEG or PNG, any sizes) or of
decoded images (`uint8` [B, h, w, 3], one size per request). Each image then goes through
the inference pre-processing every program shares (`paa_tf.data.inference_preprocess`),
one image at a time, so images of different sizes can share a request; `export_preprocess`
gives its settings with the export's own canvas (`export.max_image_size`).

Bad requests fail with `tf.errors.InvalidArgumentError` whose message says what is wrong:
which input index is not a JPEG or PNG, what rank/shape was expected, or which image has more
pixels than `export.max_pixels` (read from the JPEG SOF / PNG IHDR header before anything is
decoded: a 388 KB PNG can otherwise decompress to 1.2 GB inside the server). The checks read the
*runtime* shape: TensorFlow Serving does not compare a request's shape with the signature, so
a rank-2 string tensor reaches the graph, and a static-shape assertion would have been
folded away at export time.
"""

import tensorflow as tf

from paa_tf.config import ExportConfig
from paa_tf.data.image_files import has_format, header_size
from paa_tf.data.inference_preprocess import InferencePreprocess

DEFAULT_MAX_PIXELS = ExportConfig().max_pixels  # 40 Mpx: a photo decodes to 120 MB of RGB


def export_preprocess(config):
    """(`InferencePreprocess`, max_pixels) of an `ExperimentConfig`'s export.

    `export.max_image_size` (> 0) replaces the canvas `data.image_size` by a square one of
    that side (a multiple of 128); `export.max_pixels` bounds a request image's height x
    width. ValueError naming the key when either is out of range.
    """
    side = int(config.export.max_image_size)
    if side % 128:
        raise ValueError(f"config key 'export.max_image_size' is {side}; give a "
                         "multiple of 128 (the padded bucket side), or 0 to use "
                         "data.image_size")
    max_pixels = int(config.export.max_pixels)
    if max_pixels < 1:
        raise ValueError(f"config key 'export.max_pixels' is {max_pixels}; give the largest "
                         "height x width a request image may have (default "
                         f"{DEFAULT_MAX_PIXELS})")
    preprocess = InferencePreprocess.from_config(config, image_size=(side, side) if side
                                                 else None)
    return preprocess, max_pixels


def runtime_shape(tensor):
    """int32 [rank] shape of `tensor` as fed at run time.

    `PlaceholderWithDefault` with an unknown shape hides the static shape of the signature
    input, so the rank checks below are evaluated per request instead of being constant-folded.
    """
    hidden = tf.raw_ops.PlaceholderWithDefault(input=tensor, shape=tf.TensorShape(None))
    return tf.shape(hidden)


def _checked(tensor, conditions):
    """`tensor` after the (condition, message list) assertions, in order."""
    asserts = []
    for condition, data in conditions:
        with tf.control_dependencies(asserts):
            asserts.append(tf.debugging.Assert(condition, data, summarize=16))
    with tf.control_dependencies(asserts):
        return tf.identity(tensor)


def check_encoded(encoded):
    """Assert `encoded` is a 1-D string batch whose items all start like JPEG or PNG files.

    Returns `encoded` (tf.string [B]) gated on the checks; a failure raises
    InvalidArgumentError naming the bad input indices.
    """
    shape = runtime_shape(encoded)
    rank_ok = tf.equal(tf.size(shape), 1)
    flat = tf.reshape(encoded, [-1])
    is_image = tf.logical_or(has_format(flat, "jpeg"), has_format(flat, "png"))
    bad = tf.reshape(tf.where(tf.logical_not(is_image)), [-1])
    checked = _checked(encoded, [
        (rank_ok, ["'inputs' must be a 1-D batch of encoded images (tf.string [batch]); got a "
                   "tensor of shape", shape]),
        (tf.equal(tf.size(bad), 0),
         ["'inputs' holds bytes that are not a JPEG or PNG image (JPEG or PNG expected) at "
          "index", bad]),
    ])
    return tf.reshape(checked, [-1])


def check_images(images, max_pixels=DEFAULT_MAX_PIXELS):
    """Assert `images` is uint8 [B, h, w, 3] with 1 <= h, w and h * w <= `max_pixels`.

    Returns `images` gated on the checks.
    """
    shape = runtime_shape(images)
    rank_ok = tf.equal(tf.size(shape), 4)
    # The padded shape keeps the indexing valid when the rank is wrong (that assert fails).
    padded = tf.concat([shape, tf.ones([4], tf.int32)], axis=0)
    size_ok = tf.logical_and(tf.equal(padded[3], 3),
                             tf.logical_and(padded[1] >= 1, padded[2] >= 1))
    message = ("'inputs' must be uint8 images [batch, height, width, 3] (RGB, one size per "
               "request, height and width >= 1); got a tensor of shape")
    pixels = tf.cast(padded[1], tf.int64) * tf.cast(padded[2], tf.int64)
    checked = _checked(images, [(rank_ok, [message, shape]),
                                (size_ok, [message, shape]),
                                (pixels <= max_pixels, [
                                    f"'inputs' images have more than export.max_pixels="
                                    f"{max_pixels} pixels (height x width); downscale them "
                                    "before sending, or re-export with a larger "
                                    "export.max_pixels. Got a tensor of shape", shape])])
    return tf.ensure_shape(checked, [None, None, None, 3])


def checked_encoded(encoded, max_pixels):
    """`encoded` (tf.string [B]) gated on `check_encoded` and `check_pixels`: nothing is
    decoded before every image passed."""
    return check_pixels(check_encoded(encoded), max_pixels)


def check_pixels(encoded, max_pixels):
    """Assert that no image of `encoded` (tf.string [B], JPEG or PNG) has more than
    `max_pixels` pixels by its header; returns `encoded` gated on the check, so that nothing
    is decoded before it passes. The error names the indices and sizes of the images."""
    sizes = tf.map_fn(header_size, encoded, fn_output_signature=tf.TensorSpec([2], tf.int64))
    too_big = tf.reshape(tf.where(sizes[:, 0] * sizes[:, 1] > max_pixels), [-1])
    return _checked(encoded, [(tf.equal(tf.size(too_big), 0), [
        f"'inputs' holds images with more than export.max_pixels={max_pixels} pixels (height "
        "x width, read from the file header); downscale them before sending, or re-export "
        "with a larger export.max_pixels. Index", too_big, "height, width",
        tf.gather(sizes, too_big)])])
