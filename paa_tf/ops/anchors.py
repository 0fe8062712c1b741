"""One square anchor per feature-map location on P3..P7 (docs/PAA.md, "Anchors").

The anchor of level l has side `octave_base_scale × 2**l` and, for the cell in
row i and column j, its centre at `((i + o)·s, (j + o)·s)` with stride
`s = 2**l` and centre offset `o` (0.5 = cell centre, the project default and
the authors' placement; 0 = cell corner, mmdetection's).
"""

import numpy as np
import tensorflow as tf


def feature_sizes(height, width, min_level=3, max_level=7):
    """Feature-map sizes [(h, w), ...] of levels `min_level..max_level`.

    Each stride-2 stage maps n to ceil(n / 2), as a padded 3×3 stride-2 conv does.
    """
    sizes = []
    h, w = int(height), int(width)
    for level in range(1, max_level + 1):
        h, w = -(-h // 2), -(-w // 2)
        if level >= min_level:
            sizes.append((h, w))
    return sizes


def generate_anchors(height, width, min_level=3, max_level=7, octave_base_scale=8.0,
                     center_offset=0.5, plus_one=False):
    """Anchors of a `height × width` (padded) input, flattened over levels.

    Order: level `min_level` first, then row-major (y, x) inside a level, the
    same order in which the head flattens its outputs.

    With `plus_one` (authors' convention) an anchor of side S spans
    `centre ± (S − 1)/2`, so its +1 width is S; otherwise `centre ± S/2`.

    Returns:
      anchors: np.float32 [A, 4] yxyx pixels.
      level_ids: np.int32 [A], 0 for `min_level`, 1 for the next level, ...
    """
    all_anchors, all_levels = [], []
    for index, (h, w) in enumerate(feature_sizes(height, width, min_level, max_level)):
        stride = 2.0 ** (min_level + index)
        half = (octave_base_scale * stride - (1.0 if plus_one else 0.0)) / 2.0
        cy = (np.arange(h, dtype=np.float64) + center_offset) * stride
        cx = (np.arange(w, dtype=np.float64) + center_offset) * stride
        cy, cx = np.meshgrid(cy, cx, indexing="ij")
        boxes = np.stack([cy - half, cx - half, cy + half, cx + half], axis=-1).reshape(-1, 4)
        all_anchors.append(boxes)
        all_levels.append(np.full(h * w, index, dtype=np.int32))
    return np.concatenate(all_anchors).astype(np.float32), np.concatenate(all_levels)


def generate_anchors_tf(height, width, min_level=3, max_level=7, octave_base_scale=8.0,
                        center_offset=0.5, plus_one=False):
    """`generate_anchors` for a runtime input size (int32 scalar tensors), in TensorFlow.

    The exported SavedModel pads each request to its own size (a multiple of 32), known only
    when the graph runs. Same sizes (ceil per stride-2 stage), order and coordinates as
    `generate_anchors`: every value is a multiple of 0.5 far below 2**24, exact in float32.

    Returns:
      anchors: float32 [A, 4] yxyx pixels.
      level_sizes: list of int32 scalars, anchors per level (`min_level` first; sum = A).
    """
    all_anchors, level_sizes = [], []
    h, w = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    for level in range(1, max_level + 1):
        h, w = (h + 1) // 2, (w + 1) // 2
        if level < min_level:
            continue
        stride = 2.0 ** level
        half = (octave_base_scale * stride - (1.0 if plus_one else 0.0)) / 2.0
        cy = (tf.range(h, dtype=tf.float32) + center_offset) * stride
        cx = (tf.range(w, dtype=tf.float32) + center_offset) * stride
        cy, cx = tf.meshgrid(cy, cx, indexing="ij")
        boxes = tf.stack([cy - half, cx - half, cy + half, cx + half], axis=-1)
        all_anchors.append(tf.reshape(boxes, [-1, 4]))
        level_sizes.append(h * w)
    return tf.concat(all_anchors, axis=0), level_sizes
