"""Command line for the generated shapes dataset (``bin/paa_make_shapes``).

Example::

    bin/paa_make_shapes --output_dir=/tmp/shapes --num_train=2000 --num_val=200 --seed=0

Writes ``OUT/train/*.jpg``, ``OUT/val/*.jpg``, ``OUT/annotations/instances_{train,val}.json``
(COCO, category ids 1, 3, 5, ...) and ``OUT/manifest.json``. A complete dataset generated with
the same parameters is reused, not rewritten (``--overwrite`` forces regeneration).
"""

import time

from paa_tf.cli import program
from paa_tf.data import synthetic

FLAGS = program.FLAGS
FLAG_SPECS = (
    program.OUTPUT_DIR.with_help("Folder to write the dataset into (created if absent; reused "
                                 "when it already holds the same dataset).", required=True),
    program.flag("integer", "num_train", 2000, "Number of training images.", lower_bound=1),
    program.flag("integer", "num_val", 200, "Number of validation images.", lower_bound=0),
    program.flag("integer", "image_size", 256, "Side of the square images in pixels; object "
                 "sizes scale with it.", lower_bound=64),
    program.flag("integer", "seed", 0, "Random seed; the same seed gives identical files."),
    program.flag("integer", "num_classes", len(synthetic.SHAPE_NAMES), "How many shape classes "
                 f"to use, in the order {', '.join(synthetic.SHAPE_NAMES)}.", lower_bound=1,
                 upper_bound=len(synthetic.SHAPE_NAMES)),
    program.flag("bool", "overwrite", False, "Regenerate even if a matching dataset exists."),
)


def _run(argv):
    start = time.time()
    result = synthetic.make_shapes_dataset(
        FLAGS.output_dir, num_train=FLAGS.num_train, num_val=FLAGS.num_val,
        image_size=FLAGS.image_size, seed=FLAGS.seed, num_classes=FLAGS.num_classes,
        overwrite=FLAGS.overwrite)
    counts = result["counts"]
    verb = "Generated" if result["generated"] else "Reused existing"
    print(f"{verb} shapes dataset in {result['output_dir']} ({time.time() - start:.1f} s): "
          f"train {counts['train_images']} images / {counts['train_annotations']} boxes, "
          f"val {counts['val_images']} images / {counts['val_annotations']} boxes")
    print(f"  train: {result['train_image_dir']}  {result['train_annotation_file']}")
    print(f"  val:   {result['val_image_dir']}  {result['val_annotation_file']}")
    return 0


main = program.entry_point("paa_make_shapes", FLAG_SPECS, _run)
