"""Command line for the SavedModel export (``bin/paa_export``).

Example::

    bin/paa_export --model_dir=runs/quickstart --export_dir=runs/quickstart/export
    # -> runs/quickstart/export/1/ (saved_model.pb, variables/, assets/label_map.json)
    bin/paa_export --model_dir=runs/x --checkpoint=runs/x/ckpt-90000 --export_dir=/models/paa \
        --version=2 --score_voting=false

Writes ``<export_dir>/<version>/`` in TensorFlow Serving's layout with the signatures
``serving_default`` (tf.string encoded JPEG/PNG images) and ``image_tensor`` (uint8 images),
both taking the input ``inputs`` and returning ``detection_boxes`` (normalised yxyx),
``detection_scores``, ``detection_classes`` (dataset ids) and ``num_detections``. See
README.md, "Export and serve with TensorFlow Serving", for serving it.
"""

import sys
import time

from absl import app, flags

from paa_tf.cli import errors

FLAGS = flags.FLAGS
_FLAG_NAMES = ("model_dir", "checkpoint", "export_dir", "version", "score_voting", "overwrite",
               "params_override")


def define_flags(flag_values=FLAGS):
    """Defines this command's flags once (importing several CLIs in one process is safe).

    A flag another command already defined under the same name and meaning (`model_dir`,
    `checkpoint`) is reused rather than defined twice.
    """
    definitions = {
        "model_dir": lambda: flags.DEFINE_string(
            "model_dir", None, "Training folder (config.yaml, label_map.json, checkpoints).",
            flag_values=flag_values),
        "checkpoint": lambda: flags.DEFINE_string(
            "checkpoint", None, "Checkpoint prefix (default: the latest in --model_dir).",
            flag_values=flag_values),
        "export_dir": lambda: flags.DEFINE_string(
            "export_dir", None, "TF Serving model base path; the SavedModel goes to "
            "<export_dir>/<version>/.", flag_values=flag_values),
        "version": lambda: flags.DEFINE_integer(
            "version", None, "Version folder number (default: export.version of the config).",
            lower_bound=0, flag_values=flag_values),
        "score_voting": lambda: flags.DEFINE_bool(
            "score_voting", None, "Score voting in the exported graph (default: "
            "eval.score_voting of the config, true).", flag_values=flag_values),
        "overwrite": lambda: flags.DEFINE_bool(
            "overwrite", False, "Replace an existing version folder.", flag_values=flag_values),
        "params_override": lambda: flags.DEFINE_string(
            "params_override", None, "Dotted config overrides, e.g. "
            "'eval.max_detections=300,eval.score_threshold=0.1'.", flag_values=flag_values),
    }
    for name in _FLAG_NAMES:
        if name not in flag_values:
            definitions[name]()
        flag_values.register_key_flag_for_module(sys.argv[0], flag_values[name])


def _run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; all options are --flags.")
    from paa_tf import export

    for name in ("model_dir", "export_dir"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required")
    start = time.time()
    path = export.export_from_model_dir(
        FLAGS.model_dir, FLAGS.export_dir, checkpoint=FLAGS.checkpoint,
        version=FLAGS.version, score_voting=FLAGS.score_voting, overwrite=FLAGS.overwrite,
        config_overrides=FLAGS.params_override)
    print(f"Exported SavedModel to {path} ({time.time() - start:.0f} s)")
    print("  signatures: serving_default (inputs: tf.string [batch] JPEG/PNG bytes), "
          "image_tensor (inputs: uint8 [batch, height, width, 3])")
    print("  outputs: detection_boxes (normalised ymin, xmin, ymax, xmax), detection_scores, "
          "detection_classes (dataset ids), num_detections")
    print(f"  inspect: saved_model_cli show --dir {path} --all")
    return 0


def main(argv=None):
    """Entry point: parses ``argv`` (default ``sys.argv``) and exports."""
    define_flags()
    errors.run(_run, "paa_export", argv)


if __name__ == "__main__":
    main()
