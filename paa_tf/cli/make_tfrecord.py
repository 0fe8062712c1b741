"""Command line: sharded TFRecords (Model Garden layout) from COCO or Pascal VOC data.

Examples::

    bin/paa_make_tfrecord --format=coco --annotations=coco/annotations/instances_val2017.json \\
        --images=coco/val2017 --output_prefix=tfrecords/val --num_shards=8
    bin/paa_make_tfrecord --format=voc --voc_root=VOCdevkit/VOC2007 --voc_split=trainval \\
        --output_prefix=tfrecords/voc_trainval --num_shards=4

Writes `<output_prefix>-00000-of-0000N.tfrecord` ... and `label_map.json` beside them. Each
record keeps the original image bytes, `image/source_id` = the COCO image id (VOC: the stable
id of the file stem), all boxes including crowd / difficult ones (flagged in
`image/object/is_crowd`); the training filters are applied when the records are read.
Records are validated as the pipeline validates them, and every image is decoded with
TensorFlow: bad ones stop the conversion with a message naming them, or are skipped and listed
with --skip_bad_records.
"""

import sys
import time

from absl import app, flags

from paa_tf.cli import errors

FLAGS = flags.FLAGS
_FLAG_NAMES = ("format", "annotations", "images", "voc_root", "voc_split", "output_prefix",
               "num_shards", "label_map", "skip_bad_records", "verify_images", "box_tolerance",
               "voc_keep_difficult")


def define_flags(flag_values=FLAGS):
    """Defines this command's flags (once; a second call is a no-op)."""
    if "output_prefix" in flag_values:
        return
    flags.DEFINE_enum("format", "coco", ["coco", "voc"], "Source layout.",
                      flag_values=flag_values)
    flags.DEFINE_string("annotations", None, "COCO instances JSON (--format=coco).",
                        flag_values=flag_values)
    flags.DEFINE_string("images", None, "COCO image folder (--format=coco).",
                        flag_values=flag_values)
    flags.DEFINE_string("voc_root", None, "VOC folder with Annotations/, JPEGImages/, "
                        "ImageSets/Main/ (--format=voc).", flag_values=flag_values)
    flags.DEFINE_string("voc_split", "trainval", "VOC split name (ImageSets/Main/<split>.txt).",
                        flag_values=flag_values)
    flags.DEFINE_string("output_prefix", None, "Output path prefix; shards are named "
                        "<prefix>-00000-of-0000N.tfrecord.", flag_values=flag_values)
    flags.DEFINE_integer("num_shards", 8, "Number of output files.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_string("label_map", None, "Optional label map JSON (list of {index, id, "
                        "name}); default: the COCO categories / the VOC class names.",
                        flag_values=flag_values)
    flags.DEFINE_bool("skip_bad_records", False, "Skip bad records and list them at the end "
                      "instead of stopping.", flag_values=flag_values)
    flags.DEFINE_enum("verify_images", "decode", ["decode", "full"], "Image check: header, "
                      "end marker and a TensorFlow decode of every image ('full': and a PIL "
                      "decode).", flag_values=flag_values)
    flags.DEFINE_float("box_tolerance", 2.0, "Pixels a box may cross the image border.",
                       flag_values=flag_values)
    flags.DEFINE_bool("voc_keep_difficult", False, "Write VOC difficult objects as normal "
                      "objects (default: flagged is_crowd).", flag_values=flag_values)
    flags.mark_flag_as_required("output_prefix", flag_values=flag_values)
    # absl's --help lists the key flags of the script named by sys.argv[0] only.
    for name in _FLAG_NAMES:
        flag_values.register_key_flag_for_module(sys.argv[0], flag_values[name])


def convert(fmt, output_prefix, num_shards, *, annotations=None, images=None, voc_root=None,
            voc_split="trainval", label_map=None, skip_bad_records=False,
            verify_images="decode", box_tolerance=2.0, voc_keep_difficult=False):
    """Validate the source and write the shards; returns (shard paths, BadRecordReport)."""
    if fmt == "coco" and (not annotations or not images):
        raise app.UsageError("--format=coco needs --annotations and --images")
    if fmt == "voc" and not voc_root:
        raise app.UsageError("--format=voc needs --voc_root")
    from paa_tf.data import coco, records, tfrecord, voc  # TensorFlow loads here
    from paa_tf.data import label_map as label_map_lib

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
        raise app.UsageError(f"--format must be coco or voc, got {fmt!r}")
    # Every image is decoded by TensorFlow: no record the pipeline cannot decode is written.
    if verify_images not in ("decode", "full"):
        raise app.UsageError(f"--verify_images={verify_images}: choose decode or full")
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


def _run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; all options are --flags.")
    start = time.time()
    paths, report = convert(
        FLAGS.format, FLAGS.output_prefix, FLAGS.num_shards, annotations=FLAGS.annotations,
        images=FLAGS.images, voc_root=FLAGS.voc_root, voc_split=FLAGS.voc_split,
        label_map=FLAGS.label_map, skip_bad_records=FLAGS.skip_bad_records,
        verify_images=FLAGS.verify_images, box_tolerance=FLAGS.box_tolerance,
        voc_keep_difficult=FLAGS.voc_keep_difficult)
    print(report.summary(filtered_title="counted"))
    print(f"wrote {report.num_images} images ({report.num_boxes} boxes, crowd/difficult "
          f"included) into {len(paths)} shards {paths[0]} ... in {time.time() - start:.1f} s; "
          f"label map with {report.label_map.num_classes} classes beside them")
    return 0


def main():
    define_flags()
    errors.run(_run, "paa_make_tfrecord")
