"""In-graph request checks and pre-processing of the exported SavedModel's signatures.

A request is a batch of encoded images (`tf.string` [B], JPEG or PNG, any sizes) or of
decoded images (`uint8` [B, h, w, 3], one size per request). Each image is decoded (for
strings), then goes through exactly the evaluation pre-processing of
`paa_tf.data.transforms` (resize to the shorter side S with the longer side <= L, normalise,
zero-pad bottom/right), one image at a time, so images of different sizes can share a request.
The padding (`ServingPreprocess.pad_multiple`): with `data.buckets: orientation` each image is
padded to the smallest multiple of 32 that holds its resized size (what the authors' code
does at test time with one image per GPU), a shape known only at run time; with
`data.buckets: square` to the static canvas `image_size`, as the square evaluation pipeline.

Bad requests fail with `tf.errors.InvalidArgumentError` whose message says what is wrong:
which input index is not a JPEG or PNG, what rank/shape was expected, or which image has more
pixels than `export.max_pixels` (read from the JPEG SOF / PNG IHDR header before anything is
decoded: a 388 KB PNG can otherwise decompress to 1.2 GB inside the server). The checks read the
*runtime* shape: TensorFlow Serving does not compare a request's shape with the signature, so
a rank-2 string tensor reaches the graph, and a static-shape assertion would have been
folded away at export time.
"""

import dataclasses
from typing import Tuple

import tensorflow as tf

from paa_tf.config import ExportConfig
from paa_tf.data import buckets, exif, transforms

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFAULT_MAX_PIXELS = ExportConfig().max_pixels  # 40 Mpx: a photo decodes to 120 MB of RGB


@dataclasses.dataclass(frozen=True)
class ServingPreprocess:
    """Pre-processing settings frozen into the export (all from the experiment config).

    `shorter_side` is the evaluation scale: the largest of `data.min_size`, as the
    evaluation pipeline (`paa_tf.data.pipeline`) uses. `image_size` is the square canvas
    (H, W): it bounds the resize (as in the pipeline) and is the padded shape when
    `pad_multiple` is 0; otherwise each image is padded to the smallest multiple of
    `pad_multiple` holding it (`padded_one`).
    """
    shorter_side: int
    max_size: int
    image_size: Tuple[int, int]
    pixel_mean: Tuple[float, ...]
    pixel_std: Tuple[float, ...]
    max_pixels: int = DEFAULT_MAX_PIXELS
    pad_multiple: int = 0

    @classmethod
    def from_config(cls, config):
        """Settings of an `ExperimentConfig`; `export.max_image_size` (> 0) replaces the
        canvas `data.image_size` by a square one of that side (a multiple of 128)."""
        data = config.data
        image_size = tuple(int(s) for s in data.image_size)
        side = int(config.export.max_image_size)
        if side:
            if side % 128:
                raise ValueError(f"config key 'export.max_image_size' is {side}; give a "
                                 "multiple of 128 (the padded bucket side), or 0 to use "
                                 "data.image_size")
            image_size = (side, side)
        max_pixels = int(config.export.max_pixels)
        if max_pixels < 1:
            raise ValueError(f"config key 'export.max_pixels' is {max_pixels}; give the largest "
                             "height x width a request image may have (default "
                             f"{DEFAULT_MAX_PIXELS})")
        own = buckets.mode_of(data) == "orientation"
        return cls(shorter_side=data.eval_shorter_side,
                   max_size=int(data.max_size), image_size=image_size,
                   pixel_mean=tuple(float(v) for v in data.pixel_mean),
                   pixel_std=tuple(float(v) for v in data.pixel_std), max_pixels=max_pixels,
                   pad_multiple=buckets.STRIDE if own else 0)


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
    is_image = tf.logical_or(
        tf.equal(tf.strings.substr(flat, 0, len(JPEG_MAGIC)), JPEG_MAGIC),
        tf.equal(tf.strings.substr(flat, 0, len(PNG_MAGIC)), PNG_MAGIC))
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


def _decode_one(encoded):
    """Encoded JPEG/PNG scalar -> uint8 [h, w, 3] (grey expanded, alpha dropped)."""
    return transforms.decode_image(encoded)


def _preprocess_one(image, params):
    return transforms.preprocess(
        image, shorter_side=params.shorter_side, max_size=params.max_size,
        image_size=params.image_size, pixel_mean=params.pixel_mean, pixel_std=params.pixel_std)


def padded_one(image, params):
    """One uint8 [h, w, 3] image -> (float32 [H', W', 3] normalised and zero-padded,
    image_info float32 [4, 2]).

    H', W' = `params.image_size` (static) when `params.pad_multiple` is 0, else the smallest
    multiples of it holding the resized image (dynamic: each image gets its own).
    """
    if not params.pad_multiple:
        return _preprocess_one(image, params)
    resized, image_info = transforms.resize_image(
        image, params.shorter_side, params.max_size, params.image_size, params.pixel_mean,
        params.pixel_std)
    size = buckets.round_up(tf.shape(resized)[:2], params.pad_multiple)
    return transforms.pad_image(resized, tf.unstack(size)), image_info


def _output_signature(params):
    height, width = params.image_size
    return (tf.TensorSpec([height, width, 3], tf.float32), tf.TensorSpec([4, 2], tf.float32))


def preprocess_encoded(encoded, params):
    """Checked, decoded and pre-processed batch of encoded images, padded to the canvas
    `params.image_size` (the export pads each image itself: `checked_encoded`, `padded_one`).

    Args:
      encoded: tf.string [B] JPEG or PNG bytes, sizes may differ.
      params: `ServingPreprocess`.
    Returns:
      (images float32 [B, H, W, 3] normalised and padded, image_info float32 [B, 4, 2]).
    """
    return tf.map_fn(lambda item: _preprocess_one(_decode_one(item), params),
                     checked_encoded(encoded, params),
                     fn_output_signature=_output_signature(params))


def checked_encoded(encoded, params):
    """`encoded` (tf.string [B]) gated on `check_encoded` and `check_pixels`: nothing is
    decoded before every image passed."""
    return check_pixels(check_encoded(encoded), params.max_pixels)


def preprocess_images(images, params):
    """Checked and pre-processed batch of uint8 images [B, h, w, 3] (same as encoded ones)."""
    images = check_images(images, params.max_pixels)
    return tf.map_fn(lambda image: _preprocess_one(image, params), images,
                     fn_output_signature=_output_signature(params))


def header_size(encoded):
    """(height, width) int64 [2] of one JPEG or PNG, from its header, decoding nothing.

    JPEG: the SOF segment (`tf.io.extract_jpeg_shape`; a JPEG without one is an
    InvalidArgumentError). PNG: the IHDR chunk, which must come first (width and height at
    bytes 16-23, big endian); a PNG without it gives (0, 0) and fails when decoded. Anything
    else gives (0, 0): `check_encoded` refuses it in serving.
    """
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

    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, len(JPEG_MAGIC)), JPEG_MAGIC)
    is_png = tf.equal(tf.strings.substr(encoded, 0, len(PNG_MAGIC)), PNG_MAGIC)
    return tf.case([(is_jpeg, jpeg_size), (is_png, png_size)],
                   default=lambda: tf.zeros([2], tf.int64))


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


def encoded_image_size(encoded):
    """(height, width) int32 [2] of one encoded image as decoded, from its header when possible.

    JPEG and PNG: `header_size`, swapped when the JPEG's EXIF orientation turns the image by
    90 degrees (`paa_tf.data.exif`, applied by decoding). Anything else is decoded.
    """
    def turned(size):
        return tf.where(exif.swaps_sides(exif.orientation(encoded)), tf.reverse(size, [0]), size)

    def decoded_size():
        return tf.shape(transforms.decode_image(encoded))[:2]

    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, len(JPEG_MAGIC)), JPEG_MAGIC)
    is_png = tf.logical_and(
        tf.equal(tf.strings.substr(encoded, 0, len(PNG_MAGIC)), PNG_MAGIC),
        tf.strings.length(encoded) >= 24)
    return tf.cond(tf.logical_or(is_jpeg, is_png),
                   lambda: turned(tf.cast(header_size(encoded), tf.int32)), decoded_size)
