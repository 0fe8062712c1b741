"""Sharded TFRecords (Model Garden layout) from COCO or Pascal VOC data: `bin/paa_make_tfrecord`.

The source is validated as the training pipeline validates it (records, boxes, and every
image decoded by TensorFlow), so no record the pipeline would refuse is written; bad records
stop the conversion with a message naming them, or are skipped and listed
(`skip_bad_records`).
"""

from paa_tf.data import coco, records, tfrecord, voc
from paa_tf.data import label_map as label_map_lib


def convert(fmt, output_prefix, num_shards, *, annotations=None, images=None, voc_root=None,
            voc_split="trainval", label_map=None, skip_bad_records=False,
            verify_images="decode", box_tolerance=2.0, voc_keep_difficult=False):
    """Validate the source and write the shards; returns (shard paths, BadRecordReport)."""
    if fmt == "coco" and (not annotations or not images):
        raise ValueError("--format=coco needs --annotations and --images")
    if fmt == "voc" and not voc_root:
        raise ValueError("--format=voc needs --voc_root")
    report = records.BadRecordReport(split=f"{fmt} -> {output_prefix}")
    label_map = label_map_lib.load_label_map(label_map) if label_map else None
    if fmt == "coco":
        items, label_map = coco.read_coco(annotations, images, report,
                                          skip_bad_records=skip_bad_records,
                                          label_map=label_map)
    elif fmt == "voc":
        items, label_map = voc.read_voc(voc_root, voc_split, report,
                                        skip_bad_records=skip_bad_records, label_map=label_map,
                                        keep_difficult=voc_keep_difficult)
    else:
        raise ValueError(f"--format must be coco or voc, got {fmt!r}")
    # Every image is decoded by TensorFlow: no record the pipeline cannot decode is written.
    if verify_images not in ("decode", "full"):
        raise ValueError(f"--verify_images={verify_images}: choose decode or full")
    items = records.verify_images(items, report, level=verify_images,
                                  skip_bad_records=skip_bad_records)
    items = records.validate_boxes(items, report, box_tolerance=box_tolerance,
                                   skip_bad_records=skip_bad_records)
    if not items:
        raise ValueError(f"nothing to write: no usable records\n{report.summary()}")
    report.num_images = len(items)
    report.num_boxes = sum(len(r.boxes) for r in items)
    report.label_map = label_map
    paths = tfrecord.write_tfrecords(items, output_prefix, num_shards, label_map)
    return paths, report
