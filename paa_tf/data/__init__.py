"""Input data: readers (COCO, VOC, TFRecord), validation, label maps and the tf.data pipeline.

Entry points: `paa_tf.data.pipeline.build_dataset` (the training/evaluation input),
`paa_tf.data.label_map.load_label_map` / `write_label_map`, and the readers in `coco`, `voc`
and `tfrecord`. Nothing is imported here so that light modules (e.g. `synthetic`) do not pull
in TensorFlow.
"""
