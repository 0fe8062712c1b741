"""Command line: sharded TFRecords (Model Garden layout) from COCO or Pascal VOC data.

Examples::

    bin/paa_make_tfrecord --format=coco --annotations=coco/annotations/instances_val2017.json \\
        --image_dir=coco/val2017 --output_prefix=tfrecords/val --num_shards=8
    bin/paa_make_tfrecord --format=voc --voc_root=VOCdevkit/VOC2007 --voc_split=trainval \\
        --output_prefix=tfrecords/voc_trainval --num_shards=4

Writes `<output_prefix>-00000-of-0000N.tfrecord` ... and `label_map.json` beside them. Each
record keeps the original image bytes, `image/source_id` = the COCO image id (VOC: the stable
id of the file stem), all boxes including crowd / difficult ones (flagged in
`image/object/is_crowd`); the training filters are applied when the records are read.
Records are validated as the pipeline validates them, and every image is decoded with
TensorFlow: bad ones stop the conversion with a message naming them, or are skipped and listed
with --skip_bad_records (paa_tf/data/tfrecord_convert.py).
"""

import time

from paa_tf.cli import program

FLAGS = program.FLAGS
FLAG_SPECS = (
    program.flag("enum", "format", "coco", "Source layout.", enum_values=["coco", "voc"]),
    program.flag("string", "annotations", None, "COCO instances JSON (--format=coco)."),
    program.flag("string", "image_dir", None, "COCO image folder (--format=coco)."),
    program.flag("string", "voc_root", None, "VOC folder with Annotations/, JPEGImages/, "
                 "ImageSets/Main/ (--format=voc)."),
    program.flag("string", "voc_split", "trainval", "VOC split name "
                 "(ImageSets/Main/<split>.txt)."),
    program.flag("string", "output_prefix", None, "Output path prefix; shards are named "
                 "<prefix>-00000-of-0000N.tfrecord.", required=True),
    program.flag("integer", "num_shards", 8, "Number of output files.", lower_bound=1),
    program.flag("string", "label_map", None, "Optional label map JSON (list of {index, id, "
                 "name}); default: the COCO categories / the VOC class names."),
    program.flag("bool", "skip_bad_records", False, "Skip bad records and list them at the end "
                 "instead of stopping."),
    program.flag("enum", "verify_images", "decode", "Image check: header, end marker and a "
                 "TensorFlow decode of every image ('full': and a PIL decode).",
                 enum_values=["decode", "full"]),
    program.flag("float", "box_tolerance", 2.0, "Pixels a box may cross the image border."),
    program.flag("bool", "voc_keep_difficult", False, "Write VOC difficult objects as normal "
                 "objects (default: flagged is_crowd)."),
)


def _run(argv):
    # TensorFlow only only when converting: --help and usage errors stay fast
    from paa_tf.data import tfrecord_convert

    start = time.time()
    paths, report = tfrecord_convert.convert(
        FLAGS.format, FLAGS.output_prefix, FLAGS.num_shards, annotations=FLAGS.annotations,
        images=FLAGS.image_dir, voc_root=FLAGS.voc_root, voc_split=FLAGS.voc_split,
        label_map=FLAGS.label_map, skip_bad_records=FLAGS.skip_bad_records,
        verify_images=FLAGS.verify_images, box_tolerance=FLAGS.box_tolerance,
        voc_keep_difficult=FLAGS.voc_keep_difficult)
    print(report.summary(filtered_title="counted"))
    print(f"wrote {report.num_images} images ({report.num_boxes} boxes, crowd/difficult "
          f"included) into {len(paths)} shards {paths[0]} ... in {time.time() - start:.1f} s; "
          f"label map with {report.label_map.num_classes} classes beside them")
    return 0


main = program.entry_point("paa_make_tfrecord", FLAG_SPECS, _run)
