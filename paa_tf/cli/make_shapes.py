"""Command line for the generated shapes dataset (``bin/paa_make_shapes``).

Example::

    bin/paa_make_shapes --output_dir=/tmp/shapes --num_train=2000 --num_val=200 --seed=0

Writes ``OUT/train/*.jpg``, ``OUT/val/*.jpg``, ``OUT/annotations/instances_{train,val}.json``
(COCO, category ids 1, 3, 5, ...) and ``OUT/manifest.json``. A complete dataset generated with
the same parameters is reused, not rewritten (``--overwrite`` forces regeneration).
"""

import sys
import time

from absl import app, flags

from paa_tf.cli import errors
from paa_tf.data import synthetic

FLAGS = flags.FLAGS
_FLAG_NAMES = ("output_dir", "num_train", "num_val", "image_size", "seed", "num_classes",
               "overwrite")


def define_flags(flag_values=FLAGS):
    """Defines this command's flags once (importing several CLIs in one process is safe)."""
    if "num_train" in flag_values:
        if "overwrite" not in flag_values:
            raise ValueError("Flag --num_train is already defined by another module; "
                             "paa_make_shapes must run in its own process.")
        return
    flags.DEFINE_string("output_dir", None, "Folder to write the dataset into (created if "
                        "absent; reused when it already holds the same dataset).",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_train", 2000, "Number of training images.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("num_val", 200, "Number of validation images.", lower_bound=0,
                         flag_values=flag_values)
    flags.DEFINE_integer("image_size", 256, "Side of the square images in pixels; object "
                         "sizes scale with it.", lower_bound=64, flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives identical files.",
                         flag_values=flag_values)
    flags.DEFINE_integer("num_classes", len(synthetic.SHAPE_NAMES),
                         "How many shape classes to use, in the order "
                         f"{', '.join(synthetic.SHAPE_NAMES)}.", lower_bound=1,
                         upper_bound=len(synthetic.SHAPE_NAMES), flag_values=flag_values)
    flags.DEFINE_bool("overwrite", False, "Regenerate even if a matching dataset exists.",
                      flag_values=flag_values)
    flags.mark_flag_as_required("output_dir", flag_values=flag_values)
    # absl's --help lists only the key flags of the script named by sys.argv[0]; these flags
    # live in this module, so register them for the script as well.
    for name in _FLAG_NAMES:
        flag_values.register_key_flag_for_module(sys.argv[0], flag_values[name])


def _run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; all options are --flags.")
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


def main(argv=None):
    """Entry point: parses ``argv`` (default ``sys.argv``) and writes the dataset."""
    define_flags()
    errors.run(_run, "paa_make_shapes", argv)


if __name__ == "__main__":
    main()
