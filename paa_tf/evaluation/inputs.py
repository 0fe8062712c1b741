"""The evaluation input of a model that pre-processes for itself: undecoded images.

An exported SavedModel (`paa_tf.serving.reader.load_exported`) and test-time augmentation
(`paa_tf.inference.tta`) take the image files' bytes and decode, resize and pad them themselves;
`encoded_eval_dataset` reads the val split's records as the training input pipeline does
(`paa_tf.data.pipeline.load_records`: the same validation, the same order) and batches the
files' bytes with their ids and original sizes.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from paa_tf.data import buckets as buckets_lib
from paa_tf.data import pipeline, transforms


def encoded_eval_dataset(data_config, batch_size, images_dir=None, annotations=None):
    """Evaluation batches of the *undecoded* images, for an exported model.

    The records (COCO, VOC or TFRecord `val` split) are read and validated as by
    `paa_tf.data.pipeline.load_records`; each batch holds `encoded` tf.string [B],
    `source_id` int64 [B] and `original_size` int32 [B, 2] (height, width of the file).
    `images_dir`/`annotations` replace `data.val_images`/`data.val_annotations`.
    Returns (dataset, BadRecordReport).
    """
    replace = {k: v for k, v in (("val_images", images_dir), ("val_annotations", annotations))
               if v}
    data_config = dataclasses.replace(data_config, **replace)
    records, report, layout = pipeline.load_records(data_config, "val", is_training=False)
    source_ids = tf.constant(np.array([r.image_id for r in records], np.int64))
    data = pipeline.encoded_rows(records, layout, data_config).map(
        lambda row, encoded: {"encoded": encoded, "source_id": source_ids[row],
                              "original_size": transforms.decoded_size(encoded)},
        num_parallel_calls=tf.data.AUTOTUNE)
    if buckets_lib.mode_of(data_config) == "orientation":
        # Batches of one orientation, so test-time views run on its bucket, not the canvas.
        data = data.group_by_window(
            lambda item: tf.cast(item["original_size"][0] > item["original_size"][1], tf.int64),
            lambda _, window: window.batch(int(batch_size)), window_size=int(batch_size))
    else:
        data = data.batch(int(batch_size))
    return data.prefetch(tf.data.AUTOTUNE), report
