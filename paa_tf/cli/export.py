"""Command line for the SavedModel export (``bin/paa_export``).

Example::

    bin/paa_export --model_dir=runs/quickstart --export_dir=runs/quickstart/export
    # -> runs/quickstart/export/1/ (saved_model.pb, variables/, assets/label_map.json)
    bin/paa_export --model_dir=runs/x --checkpoint=runs/x/ckpt-90000 --export_dir=/models/paa \
        --version=2 --override eval.score_voting=false,eval.max_detections=300

Writes ``<export_dir>/<version>/`` in TensorFlow Serving's layout with the signatures
``serving_default`` (tf.string encoded JPEG/PNG images) and ``image_tensor`` (uint8 images),
both taking the input ``inputs`` and returning ``detection_boxes`` (normalised yxyx),
``detection_scores``, ``detection_classes`` (dataset ids) and ``num_detections`` (see
paa_tf/serving/export.py and README "Export"). ``--formats`` adds ONNX and LiteRT files of the same
detector (paa_tf/serving/formats.py, README "Deploy")::

    bin/paa_export --model_dir=runs/quickstart --export_dir=runs/quickstart/export \
        --formats saved_model,onnx,litert,litert_fp16,litert_int8 --calibration_images 100
"""

import os
import sys
import time

from paa_tf.cli import program

FLAGS = program.FLAGS
FLAG_SPECS = (
    program.MODEL_DIR.as_required(),
    program.CHECKPOINT,
    program.OVERRIDE,
    program.flag("string", "export_dir", None, "TF Serving model base path; the SavedModel "
                 "goes to <export_dir>/<version>/.", required=True),
    program.flag("integer", "version", None, "Version folder number (default: export.version "
                 "of the config).", lower_bound=0),
    program.flag("bool", "overwrite", False, "Replace an existing version folder."),
    program.flag("list", "formats", ["saved_model"], "Comma-separated formats to write: "
                 "saved_model (<export_dir>/<version>/), onnx, litert, litert_fp16, "
                 "litert_int8 (each in <export_dir>/<format>/ with label_map.json)."),
    program.flag("integer", "calibration_images", 100, "Training images litert_int8 "
                 "calibrates its activation ranges on.", lower_bound=1),
)


def _run(argv):
    # TensorFlow only once a model runs: --help and usage errors stay fast
    from paa_tf.serving import formats

    start = time.time()
    written = formats.export_formats(
        FLAGS.model_dir, FLAGS.export_dir, formats.check_formats(FLAGS.formats),
        checkpoint=FLAGS.checkpoint, version=FLAGS.version, overwrite=FLAGS.overwrite,
        config_overrides=FLAGS.override, num_calibration=FLAGS.calibration_images)
    for name, written_path in written.items():
        if name != "saved_model":
            print(f"Exported {name} to {written_path}")
    path = written.get("saved_model")
    if path is None:
        print(f"({time.time() - start:.0f} s)")
        return 0
    print(f"Exported SavedModel to {path} ({time.time() - start:.0f} s)")
    print("  signatures: serving_default (inputs: tf.string [batch] JPEG/PNG bytes), "
          "image_tensor (inputs: uint8 [batch, height, width, 3])")
    print("  outputs: detection_boxes (normalised ymin, xmin, ymax, xmax), detection_scores, "
          "detection_classes (dataset ids), num_detections")
    # saved_model_cli is installed beside this Python (the .venv is not on PATH).
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    print(f"  inspect: {cli} show --dir {path} --all")
    return 0


main = program.entry_point("paa_export", FLAG_SPECS, _run)
