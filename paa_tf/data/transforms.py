"""In-graph image and box transforms of the input pipeline (pure TensorFlow, per image).

Boxes are `[ymin, xmin, ymax, xmax]` float32 pixels. The output image lives in a fixed
padded bucket `[H, W]` (static shape); the resized content occupies the top-left
`[scaled_h, scaled_w]` corner, the rest is zero after normalisation (the mean colour).

`image_info` float32 [4, 2] = [[orig_h, orig_w], [scaled_h, scaled_w], [scale_y, scale_x],
[offset_y, offset_x]]; a box in input pixels maps back to the original image as
`(box - offset) / scale` (see `boxes_to_original`). The offset is 0 in this pipeline (content
is padded at the bottom and right) and is kept for crops or centred padding.

Decoding applies a JPEG's EXIF orientation (`paa_tf.data.exif`): images are used as viewers
and annotation tools show them, so a phone photo annotated as displayed matches its boxes.
"""

import tensorflow as tf

from paa_tf.data import exif, image_files


def decode_image(encoded):
    """JPEG/PNG/GIF/BMP/WebP bytes -> uint8 [h, w, 3] RGB.

    Grayscale is repeated to 3 channels, CMYK JPEGs are converted by the JPEG decoder, an
    alpha channel is dropped, 16-bit PNGs are scaled to 8 bits, an animated GIF gives its
    first frame. A JPEG's EXIF orientation is applied (`exif`): the result is the image as a
    viewer shows it (height and width swapped for orientations 5-8).
    """
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return exif.apply_orientation(image, exif.orientation(encoded))


def decoded_size(encoded):
    """(height, width) int32 [2] of one encoded image as `decode_image` gives it, from its
    header when possible.

    JPEG and PNG: `image_files.header_size`, swapped when the JPEG's EXIF orientation turns
    the image by 90 degrees (`exif`). Anything else (and a PNG shorter than its IHDR) is
    decoded.
    """
    def turned(size):
        return tf.where(exif.swaps_sides(exif.orientation(encoded)), tf.reverse(size, [0]), size)

    def by_decoding():
        return tf.shape(decode_image(encoded))[:2]

    has_header = tf.logical_or(
        image_files.has_format(encoded, "jpeg"),
        tf.logical_and(image_files.has_format(encoded, "png"), tf.strings.length(encoded) >= 24))
    return tf.cond(has_header,
                   lambda: turned(tf.cast(image_files.header_size(encoded), tf.int32)),
                   by_decoding)


def resize_scale(height, width, shorter_side, max_size, image_size):
    """Scale so that the shorter side becomes `shorter_side`, the longer side <= `max_size`,
    and the result fits the padded bucket `image_size` = (H, W). float32 scalar."""
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    shorter_side = tf.cast(shorter_side, tf.float32)
    return tf.reduce_min(tf.stack([
        shorter_side / tf.minimum(height, width),
        float(max_size) / tf.maximum(height, width),
        tf.cast(image_size[0], tf.float32) / height,
        tf.cast(image_size[1], tf.float32) / width]))


def resize_image(image, shorter_side, max_size, image_size, pixel_mean=None, pixel_std=None):
    """Resize `image` [h, w, 3] (bilinear) per `resize_scale`, normalising when asked.

    With `pixel_mean`/`pixel_std` (RGB, 0-255) the result is `(resized - mean) / std`; the
    normalisation runs on whichever of the original and the resized image is smaller (bilinear
    weights sum to 1, so both orders agree to float rounding; this halves the cost at
    800/1333). Returns (image float32 [h', w', 3], image_info float32 [4, 2]); the per-axis
    scale in image_info is the exact ratio h'/h, w'/w after rounding the size.
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    scale = resize_scale(height, width, shorter_side, max_size, image_size)
    new_height = tf.clip_by_value(
        tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32), 1, image_size[0])
    new_width = tf.clip_by_value(
        tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32), 1, image_size[1])
    size = tf.stack([new_height, new_width])

    def resize(x):
        return tf.image.resize(x, size, method="bilinear")

    if pixel_mean is None:
        resized = resize(image)
    else:
        resized = tf.cond(scale >= 1.0,
                          lambda: resize(normalize(image, pixel_mean, pixel_std)),
                          lambda: normalize(resize(image), pixel_mean, pixel_std))
    resized.set_shape([None, None, 3])
    original = tf.cast(tf.stack([height, width]), tf.float32)
    scaled = tf.cast(size, tf.float32)
    image_info = tf.stack([original, scaled, scaled / original, tf.zeros([2], tf.float32)])
    return resized, image_info


def scale_boxes(boxes, image_info, plus_one=False):
    """Original-pixel boxes [N, 4] yxyx -> input pixels: box * scale + offset.

    With `plus_one` (`model.plus_one`, the authors' "+1" pixels) the records' continuous
    boxes become inclusive ones first, in original pixels as the authors do before resizing:
    COCO `[x, y, w, h]` is `x1 = x, x2 = x + w - 1` (VOC's 1-based `xmin..xmax` becomes
    `xmin - 1 .. xmax - 1`), so the max corner moves by -1.
    """
    if plus_one:
        boxes = boxes - tf.constant([0.0, 0.0, 1.0, 1.0], boxes.dtype)
    scale = tf.tile(image_info[2], [2])
    offset = tf.tile(image_info[3], [2])
    return boxes * scale + offset


def boxes_to_original(boxes, image_info):
    """Input-pixel boxes [..., N, 4] yxyx -> original-image pixels: (box - offset) / scale.

    `image_info` [..., 4, 2] as produced by the pipeline (works batched). TF or numpy inputs.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    image_info = tf.convert_to_tensor(image_info, tf.float32)
    scale = tf.concat([image_info[..., 2, :], image_info[..., 2, :]], axis=-1)[..., None, :]
    offset = tf.concat([image_info[..., 3, :], image_info[..., 3, :]], axis=-1)[..., None, :]
    return (boxes - offset) / scale


def flip_left_right(image, boxes, plus_one=False):
    """Mirror `image` [h, w, C] and its `boxes` [N, 4] yxyx (pixels of this image).

    Continuous x maps to w - x; with `plus_one` an inclusive pixel index x maps to w - 1 - x.
    """
    width = tf.cast(tf.shape(image)[1], boxes.dtype) - (1.0 if plus_one else 0.0)
    flipped = tf.stack([boxes[:, 0], width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]],
                       axis=-1)
    return tf.reverse(image, axis=[1]), flipped


def normalize(image, pixel_mean, pixel_std):
    """uint8 (or float 0-255) [h, w, 3] RGB -> float32 (image - mean) / std per channel."""
    mean = tf.constant(pixel_mean, tf.float32)
    inv_std = 1.0 / tf.constant(pixel_std, tf.float32)
    return (tf.cast(image, tf.float32) - mean) * inv_std


def pad_image(image, image_size):
    """Zero-pad `image` [h, w, 3] (h <= H, w <= W) bottom/right to `image_size` = (H, W).

    Zero is the mean colour of a normalised image. Output has the static shape [H, W, 3]
    when H and W are Python ints (a bucket chosen per image passes them as tensors).
    """
    shape = tf.shape(image)
    image = tf.pad(image, [[0, image_size[0] - shape[0]], [0, image_size[1] - shape[1]], [0, 0]])
    image.set_shape([tf.get_static_value(image_size[0]), tf.get_static_value(image_size[1]), 3])
    return image


def pad_instances(boxes, classes, max_instances):
    """Pad (or cut) boxes [N, 4] and classes [N] to `max_instances` rows, padding with -1."""
    count = tf.minimum(tf.shape(boxes)[0], max_instances)
    boxes = tf.pad(boxes[:count], [[0, max_instances - count], [0, 0]], constant_values=-1.0)
    classes = tf.pad(classes[:count], [[0, max_instances - count]], constant_values=-1)
    boxes.set_shape([max_instances, 4])
    classes.set_shape([max_instances])
    return boxes, classes
