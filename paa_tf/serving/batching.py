"""`export.batching: bucket`: the images of one request padded into one bucket, run as a batch.

`per_image` (the default, `paa_tf.serving.export.ExportedDetector`) runs each image of a request on
its own, padded to its own size; exact per image, and on a CPU the convolutions use every core
anyway. A GPU server batching requests (TF Serving `--enable_batching`) wants the whole batch
in one network call instead. With `bucket` every image of a request gets the evaluation
pre-processing (`paa_tf.data.inference_preprocess`), is zero-padded bottom/right into the request's
bucket, and the batch [B, H, W, 3] runs once through the network and the post-processing.

The request's bucket is the first of `bucket_shapes` that holds every resized image:
with `data.buckets: orientation` the landscape bucket [H_s, W_L] of the evaluation scale,
then the portrait one [W_L, H_s], then the square canvas (a request mixing orientations);
with `data.buckets: square` the canvas alone (`paa_tf.data.buckets`). So a request of one
orientation is padded exactly as the evaluation input pipeline pads it, and the export has
at most three input shapes. The price: an image's detections depend on the padding, hence on
which images share its request (README "Export", docs/BENCHMARKS.md "Batched export").
"""

import tensorflow as tf

from paa_tf import config as config_lib
from paa_tf.data import buckets

MODES = config_lib.choices("export.batching")


def bucket_shapes(preprocess):
    """The (H, W) buckets a request may be padded into, smallest first (module docstring).

    Args:
      preprocess: `InferencePreprocess` (`requests.export_preprocess`); `pad_multiple` 0
        means square mode.
    """
    canvas = tuple(preprocess.image_size)
    if not preprocess.pad_multiple:
        return [canvas]
    shapes = [buckets.orientation_shape(preprocess.shorter_side, preprocess.max_size, canvas,
                                        portrait) for portrait in (False, True)]
    # The canvas last, always: the bucket of a request that fits no other (a non-square
    # canvas can equal the landscape bucket).
    return [shape for shape in dict.fromkeys(shapes) if shape != canvas] + [canvas]


def request_bucket(scaled_sizes, shapes):
    """int32 [2] (H, W): the first of `shapes` holding every row of `scaled_sizes` (float32
    [B, 2] resized (h, w)); the last, the canvas, holds them all."""
    fits = [(tf.reduce_all(scaled_sizes <= tf.constant(shape, tf.float32)),
             lambda shape=shape: tf.constant(shape, tf.int32)) for shape in shapes[:-1]]
    last = tf.constant(shapes[-1], tf.int32)
    return tf.case(fits, default=lambda: last) if fits else last


def padded_batch(items, load, preprocess):
    """(images float32 [B, H, W, 3], image_info float32 [B, 4, 2]) of a request in its bucket.

    Each item is loaded (`load(item)`: uint8 [h, w, 3]) and pre-processed into the canvas,
    then the batch is cut to the request's bucket: the resized images sit top-left and the
    bucket holds them, so the cut removes padding only: each image is decoded and resized
    once, at the cost of a canvas-sized float32 copy per image (24 MB at 1408x1408). H and W
    are static in square mode, dynamic otherwise.
    """
    height, width = preprocess.image_size
    images, image_info = tf.map_fn(
        lambda item: preprocess(load(item), canvas=(height, width)),
        items, fn_output_signature=(tf.TensorSpec([height, width, 3], tf.float32),
                                    tf.TensorSpec([4, 2], tf.float32)))
    shapes = bucket_shapes(preprocess)
    if len(shapes) == 1:
        return images, image_info
    size = request_bucket(image_info[:, 1, :], shapes)
    return images[:, :size[0], :size[1], :], image_info


def output_specs(max_detections):
    """{name: TensorSpec} of one image's four client outputs (`paa_tf.serving.export`)."""
    return {"detection_boxes": tf.TensorSpec([max_detections, 4], tf.float32),
            "detection_scores": tf.TensorSpec([max_detections], tf.float32),
            "detection_classes": tf.TensorSpec([max_detections], tf.float32),
            "num_detections": tf.TensorSpec([], tf.float32)}


def detect_bucketed(items, load, preprocess, detect, max_detections):
    """The client outputs of a request run as one batch in its bucket.

    Args:
      items: [B, ...] request items (encoded strings or uint8 images).
      load: item -> uint8 [h, w, 3].
      preprocess: `InferencePreprocess` (`requests.export_preprocess`).
      detect: (images [B, H, W, 3], image_info [B, 4, 2]) -> the four client outputs.
      max_detections: D of the outputs.
    Returns:
      dict of the four float32 client outputs [B, ...]; an empty request runs nothing.
    """
    def run():
        return detect(*padded_batch(items, load, preprocess))

    def empty():
        return {key: tf.zeros([0, *spec.shape], spec.dtype)
                for key, spec in output_specs(max_detections).items()}

    return tf.cond(tf.shape(items)[0] > 0, run, empty)
