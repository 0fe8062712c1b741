"""Static-shape orientation buckets: pad each image to the bucket of its orientation.

With `data.buckets: square` every image is padded into the one canvas `data.image_size`
(e.g. 1408x1408 for 800/1333). With `data.buckets: orientation` a landscape image
(height <= width) is padded into `[H_s, W_L]` and a portrait one into `[W_L, H_s]`, where,
for each training scale S (shorter side) and the longer-side limit L (`data.max_size`):

  H_s = the smallest multiple of STRIDE >= min(S, L)     (shorter side of the bucket)
  W_L = the smallest multiple of STRIDE >= L             (longer side of the bucket)

clipped to the square canvas, which therefore holds every bucket. 800/1333 gives 800x1344
and 1344x800 (1.08 Mpx each instead of 1.98). A multi-scale range (`min_size: [640, 800]`)
gets one landscape and one portrait bucket per distinct H_s (640, 672, ..., 800). Evaluation
uses the buckets of the evaluation scale (the largest S); the exported SavedModel pads each
image to the smallest multiple of STRIDE holding it (`paa_tf.data.inference_preprocess`).

An image's resize scale never depends on its bucket (the bucket always holds the S/L-resized
image), so the content and the boxes are the same in every bucket; only the zero padding
differs. STRIDE is 32, the stride of C5 and the size divisibility of the authors' batches:
C3..C5 and P3..P5 have whole cells. P6 and P7 come from stride-2 convolutions that pad one
pixel on each side (`paa_tf.modeling.fpn`), so an odd P5 (800 / 32 = 25 rows) gives
ceil(25 / 2) = 13 rows of P6 and 7 of P7, on the same sampling grid as the canvas; the anchor
generator (`paa_tf.ops.anchors.feature_sizes`) makes the same ceil sizes, so anchors and head
outputs line up at every multiple of 32.
"""

import numpy as np
import tensorflow as tf

from paa_tf import config as config_lib

STRIDE = 32
MODES = config_lib.choices("data.buckets")


def round_up(value, stride=STRIDE):
    """The smallest multiple of `stride` >= `value`: a Python int, or an int32 tensor for a
    tensor `value` (e.g. a runtime image size)."""
    if isinstance(value, tf.Tensor):
        return (value + stride - 1) // stride * stride
    return -(-int(value) // stride) * stride


def mode_of(data_config):
    """`data.buckets`, checked (a `DataConfig` built in code skips `config.validate`)."""
    mode = data_config.buckets
    if mode not in MODES:
        raise ValueError(f"data.buckets is {mode!r}; choose one of {MODES}")
    return mode


def image_size_of(data_config):
    """The padded canvas (H, W): `data.image_size`, or max_size rounded up to 128 (square)."""
    size = tuple(int(s) for s in (data_config.image_size or ()))
    if not size:
        side = round_up(data_config.max_size)
        size = (side, side)
    if len(size) != 2 or any(s <= 0 or s % STRIDE for s in size):
        raise ValueError(f"data.image_size is {size}; give [H, W], positive multiples of 128")
    return size


def scale_sides(data_config, is_training):
    """Shorter sides S this split resizes to: the range of `min_size` (training) or its max."""
    if is_training:
        sizes = [int(s) for s in data_config.min_size]
        return list(range(min(sizes), max(sizes) + 1))
    return [data_config.eval_shorter_side]


def orientation_shape(shorter_side, max_size, canvas, portrait):
    """The bucket (H, W) of one scale: (round_up(min(S, L)), round_up(L)), transposed for a
    portrait image, clipped to `canvas` (H, W)."""
    side, longer = round_up(min(shorter_side, max_size)), round_up(max_size)
    shape = (longer, side) if portrait else (side, longer)
    return (min(shape[0], canvas[0]), min(shape[1], canvas[1]))


def bucket_shapes(data_config, is_training):
    """The padded shapes [(H, W), ...] of a split, landscape then portrait per scale group.

    'square': [data.image_size]. 'orientation': see the module docstring. Duplicates (a
    square bucket when S and L round to the same side) are listed once.
    """
    canvas = image_size_of(data_config)
    if mode_of(data_config) == "square":
        return [canvas]
    shapes = []
    for side in sorted({round_up(min(s, data_config.max_size))
                        for s in scale_sides(data_config, is_training)}):
        for portrait in (False, True):
            shape = orientation_shape(side, data_config.max_size, canvas, portrait)
            if shape not in shapes:
                shapes.append(shape)
    return shapes


def bucket_lookup(data_config, is_training):
    """(shapes, index table): `table[portrait, S - S_min]` is the bucket index of an image.

    `portrait` is 1 for height > width; S the image's drawn shorter side. int32 NumPy
    [2, S_max - S_min + 1]; every image maps into the square canvas's single bucket in
    'square' mode.
    """
    shapes = bucket_shapes(data_config, is_training)
    sides = scale_sides(data_config, is_training)
    table = np.zeros([2, len(sides)], np.int32)
    if len(shapes) > 1:
        canvas = image_size_of(data_config)
        for column, s in enumerate(sides):
            for portrait in (0, 1):
                table[portrait, column] = shapes.index(
                    orientation_shape(s, data_config.max_size, canvas, portrait))
    return shapes, table


def group_into_batches(dataset, key_fn, num_buckets, batch_size):
    """Full batches of `batch_size` consecutive elements of one bucket, in order of filling.

    Like `tf.data.Dataset.group_by_window` with `window_size=batch_size`, but written as a
    `scan` over fixed-size buffers, because TF 2.20's GroupByWindow cannot be saved in a
    symbolic checkpoint (the pipeline's exact-resume mode) and a scan can: the state is the
    per-bucket buffers (small: row indices and counters, or encoded bytes for TFRecords).
    Elements still buffered when a finite input ends are dropped (training repeats forever).

    Args:
      dataset: elements that are tuples of scalar tensors.
      key_fn: element -> int32 bucket index in [0, num_buckets).
    Returns:
      dataset of tuples of [batch_size] tensors (one per element component).
    """
    specs = dataset.element_spec
    initial = tuple(tf.zeros([num_buckets, batch_size], spec.dtype) for spec in specs)
    initial = (initial, tf.zeros([num_buckets], tf.int32))

    def step(state, element):
        buffers, counts = state
        key = tf.cast(key_fn(*element), tf.int32)
        slot = [[key, counts[key]]]
        buffers = tuple(tf.tensor_scatter_nd_update(b, slot, [tf.cast(v, b.dtype)])
                        for b, v in zip(buffers, element))
        counts = tf.tensor_scatter_nd_add(counts, [[key]], [1])
        full = tf.equal(counts[key], batch_size)
        counts = tf.where(full, tf.tensor_scatter_nd_update(counts, [[key]], [0]), counts)
        return (buffers, counts), (full, tuple(b[key] for b in buffers))

    grouped = dataset.scan(initial, step).filter(lambda full, batch: full)
    return grouped.map(lambda full, batch: batch)
