"""Command line for detections on image files (``bin/paa_predict``).

Examples::

    bin/paa_predict --model_dir=runs/quickstart --images data/shapes/val \
        --output_dir=/tmp/predictions
    bin/paa_predict --model_dir=runs/quickstart --checkpoint=runs/quickstart/ckpt-2000 \
        --images a.jpg b.png photos/ --output_dir=out --score_threshold=0.5 --picture_format=jpg

``--images`` takes files and folders (a folder's JPEG/PNG/BMP/GIF/WebP files, not its
subfolders); further paths may follow it as plain arguments. The images go through the
evaluation pre-processing of the run's config (resize to the largest ``data.min_size``,
longer side <= ``data.max_size``, pad to ``data.image_size``), in batches of
``eval.batch_size``, and through the model and the full post-processing (candidates, NMS,
score voting) of ``eval.*`` (``--override`` changes any of them; paa_tf/visualization/predict.py).

Writes into ``--output_dir``:
  ``detections.json``: {"model_dir", "checkpoint", "score_threshold", "images": [{"file",
    "height", "width", "picture", "detections": [{"bbox": [x, y, w, h] (COCO, original
    pixels), "box": [ymin, xmin, ymax, xmax] (original pixels), "score", "class_index"
    (contiguous), "category_id" (dataset id), "class_name"}]}], "skipped": [{"file",
    "reason"}]}; detections sorted by descending score, those below --score_threshold left out;
  one picture per image, ``<file stem>.<picture_format>``, with the boxes, class names and scores.

An unreadable or undecodable image stops the run with an error naming the file, unless
``--skip_bad_images`` is given: then it is skipped, listed under "skipped" and counted.
"""

import os

from absl import app

from paa_tf.cli import program

FLAGS = program.FLAGS
FLAG_SPECS = (
    program.MODEL_DIR.as_required(), program.CHECKPOINT, program.OVERRIDE,
    program.flag("multi_string", "images", [], "Image files or folders; more paths may follow "
                 "as plain arguments (--images a.jpg b.jpg dir/)."),
    program.OUTPUT_DIR.with_help("Where detections.json and the pictures go.", required=True),
    program.flag("float", "score_threshold", 0.3, "Keep detections scoring at least this (in "
                 "the JSON and the pictures).", lower_bound=0.0),
    program.flag("enum", "picture_format", "png", "Picture format.", enum_values=["png", "jpg"]),
    program.flag("bool", "skip_bad_images", False, "Skip unreadable images (listed in "
                 "detections.json and counted) instead of stopping."),
    program.flag("integer", "min_picture_side", 0, "Enlarge small pictures so that their "
                 "shorter side is at least this many pixels before drawing (readable labels "
                 "on small images); 0 keeps the image size.", lower_bound=0),
    program.flag("integer", "label_size", 0, "Height of the label text in picture pixels; 0 "
                 "chooses it from the picture size (paa_tf.visualization.drawing.label_font_size).",
                 lower_bound=0),
)


def _run(argv):
    # TensorFlow only once a model runs: --help and usage errors stay fast
    from paa_tf.visualization import predict

    paths = list(FLAGS.images) + list(argv[1:])
    if not paths:
        raise app.UsageError("give the images: --images FILE_OR_FOLDER [more paths ...]")
    result = predict.run_prediction(
        FLAGS.model_dir, paths, FLAGS.output_dir, checkpoint=FLAGS.checkpoint,
        score_threshold=FLAGS.score_threshold, picture_format=FLAGS.picture_format,
        skip_bad_images=FLAGS.skip_bad_images, min_picture_side=FLAGS.min_picture_side,
        label_size=FLAGS.label_size, overrides=FLAGS.override)
    count = sum(len(e["detections"]) for e in result["images"])
    print(f"{len(result['images'])} images, {count} detections with score >= "
          f"{FLAGS.score_threshold}; {len(result['skipped'])} skipped")
    print(f"detections: {os.path.join(FLAGS.output_dir, 'detections.json')}")
    return 0


main = program.entry_point("paa_predict", FLAG_SPECS, _run, positional=True)
