"""Command line for COCO evaluation (``bin/paa_eval``).

Examples::

    # score an existing COCO results file
    bin/paa_eval --annotations=ANN.json --results_file=results.json --output_dir=/tmp/ev
    # sanity check of the pipeline: the ground truth as detections must give AP = 1
    bin/paa_eval --annotations=ANN.json --gt_as_detections --output_dir=/tmp/ev
    # a trained checkpoint (newest in model_dir, config from model_dir/config.yaml) on the
    # config's val split, or on a COCO image folder given here
    bin/paa_eval --model_dir=runs/x [--checkpoint=runs/x/ckpt-2000] [--config=...] \
        [--data=val2017/ --annotations=ANN.json] [--score_voting=false] [--batch_size=8]
    # an exported SavedModel (bin/paa_export), run on the undecoded image files
    bin/paa_eval --saved_model=export/1 [--data=val2017/ --annotations=ANN.json]
    # test-time augmentation of a checkpoint: every listed shorter side, each also mirrored;
    # the views' candidates are merged before NMS and score voting
    bin/paa_eval --model_dir=runs/x --tta_scales=640,800 --tta_flip

Writes ``results.json`` (COCO results) and ``metrics.json`` (the 12 COCO numbers by name and
per-category AP) into ``--output_dir`` (default ``<model_dir>/eval``, or ``./paa_eval_output``).
"""

import os
import sys

from absl import app, flags

from paa_tf import coco_scoring
from paa_tf.cli import errors
from paa_tf.config import SCORES

FLAGS = flags.FLAGS
_FLAG_NAMES = ("annotations", "results_file", "gt_as_detections", "output_dir", "model_dir",
               "checkpoint", "config", "data", "score_voting", "score", "batch_size", "saved_model",
               "max_batches", "tta_scales", "tta_flip")


def define_flags(flag_values=FLAGS):
    """Defines this command's flags once (importing several CLIs in one process is safe)."""
    if "gt_as_detections" in flag_values:
        return
    flags.DEFINE_string("annotations", None, "COCO instances JSON of the evaluated images "
                        "(default: config data.val_annotations).", flag_values=flag_values)
    flags.DEFINE_string("results_file", None, "Score this COCO results JSON instead of running "
                        "a model.", flag_values=flag_values)
    flags.DEFINE_bool("gt_as_detections", False, "Use the ground truth (crowd boxes excluded) "
                      "as detections: checks the evaluation path, AP must be 1.0.",
                      flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "Where results.json and metrics.json go (default "
                        "<model_dir>/eval, else ./paa_eval_output).", flag_values=flag_values)
    flags.DEFINE_string("model_dir", None, "Training folder (config and checkpoints).",
                        flag_values=flag_values)
    flags.DEFINE_string("checkpoint", None, "Checkpoint path (default: latest in model_dir).",
                        flag_values=flag_values)
    flags.DEFINE_string("config", None, "Experiment YAML (default: the one in model_dir).",
                        flag_values=flag_values)
    flags.DEFINE_string("data", None, "COCO image folder to evaluate on (default: config "
                        "data.val_images).", flag_values=flag_values)
    flags.DEFINE_bool("score_voting", None, "Override eval.score_voting (true|false).",
                      flag_values=flag_values)
    flags.DEFINE_enum("score", None, list(SCORES), "Override eval.score: "
                      "sqrt(p*q), p*q, or the class probability p alone.",
                      flag_values=flag_values)
    flags.DEFINE_integer("batch_size", None, "Override eval.batch_size.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_string("saved_model", None, "Evaluate this exported SavedModel instead of a "
                        "checkpoint.", flag_values=flag_values)
    flags.DEFINE_integer("max_batches", None, "Stop after this many batches (quick checks); "
                         "only the images seen are scored.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_list("tta_scales", None, "Test-time augmentation: the shorter sides to run "
                      "(comma-separated, e.g. 640,800; the evaluation scale is not added). "
                      "Overrides eval.tta_scales.", flag_values=flag_values)
    flags.DEFINE_bool("tta_flip", None, "Test-time augmentation: also run each scale mirrored "
                      "(overrides eval.tta_flip).", flag_values=flag_values)
    # absl's --help lists only the key flags of the script named by sys.argv[0]; these flags
    # live in this module, so register them for the script as well.
    for name in _FLAG_NAMES:
        flag_values.register_key_flag_for_module(sys.argv[0], flag_values[name])


def _output_dir():
    if FLAGS.output_dir:
        return FLAGS.output_dir
    if FLAGS.model_dir:
        return os.path.join(FLAGS.model_dir, "eval")
    return "paa_eval_output"


def _overrides():
    overrides = []
    if FLAGS.score_voting is not None:
        overrides.append(f"eval.score_voting={str(FLAGS.score_voting).lower()}")
    if FLAGS.score is not None:
        overrides.append(f"eval.score={FLAGS.score}")
    if FLAGS.batch_size is not None:
        overrides.append(f"eval.batch_size={FLAGS.batch_size}")
    if FLAGS.tta_scales is not None:
        overrides.append(f"eval.tta_scales=[{','.join(_tta_scales())}]")
    if FLAGS.tta_flip is not None:
        overrides.append(f"eval.tta_flip={str(FLAGS.tta_flip).lower()}")
    return overrides or None


def _tta_scales():
    """--tta_scales as decimal strings; a usage error for anything but positive integers."""
    scales = [s.strip() for s in FLAGS.tta_scales if s.strip()]
    if not all(s.isdigit() and int(s) > 0 for s in scales):
        raise app.UsageError(f"--tta_scales={','.join(FLAGS.tta_scales)}: give positive "
                             "integers (shorter sides in pixels), e.g. --tta_scales=640,800")
    return scales


def _apply_flag_overrides(config):
    if FLAGS.batch_size is not None:
        config.eval.batch_size = FLAGS.batch_size
    return config


def _load_config():
    """The experiment config: --config, else <model_dir>/config.yaml, else the defaults."""
    from paa_tf import config as config_lib
    path = FLAGS.config
    if path is None and FLAGS.model_dir:
        candidate = os.path.join(FLAGS.model_dir, "config.yaml")
        path = candidate if os.path.isfile(candidate) else None
    return config_lib.load_config(path, overrides=_overrides())


def evaluate_results(annotations, results, output_dir):
    """Score COCO results records (the path shared by --results_file and --gt_as_detections)."""
    return coco_scoring.coco_evaluate(annotations, results, output_dir=output_dir)


def restore_detector(config, model_dir, checkpoint=None):
    """A `PAADetector` built from `config` with the weights of `checkpoint`.

    `checkpoint` defaults to the newest in `model_dir` (the trainer's `tf.train.Checkpoint`
    with a `model` entry; the optimizer state is not needed and is left unrestored).
    """
    from paa_tf import checkpoints, export

    image_size = tuple(config.data.image_size)
    if checkpoint:
        model, path = export.restore_model(config, checkpoint, image_size), checkpoint
    elif model_dir and checkpoints.find_checkpoints(model_dir):
        model, path = export.restore_newest_model(config, model_dir, image_size)
    else:
        raise app.UsageError(f"no checkpoint found in --model_dir={model_dir!r}; train first "
                             "or give --checkpoint=PATH (the prefix, e.g. run/ckpt-2000)")
    print(f"restored {path}", flush=True)
    return model


def _run_model(output_dir):
    """Evaluate a checkpoint or an exported SavedModel on the val split."""
    # Running a model needs TensorFlow; scoring a results file (above) does not.
    from paa_tf import evaluate, export_reader

    if FLAGS.saved_model and not (FLAGS.config or FLAGS.model_dir):
        config = export_reader.exported_config(FLAGS.saved_model)
        config = _apply_flag_overrides(config)
    else:
        config = _load_config()
    if FLAGS.data:
        config.data.val_images = FLAGS.data
    if FLAGS.annotations:
        config.data.val_annotations = FLAGS.annotations
    run_label_map = os.path.join(FLAGS.model_dir or "", "label_map.json")
    if FLAGS.model_dir and not config.data.label_map and os.path.isfile(run_label_map):
        # The classes the model was trained with, whatever data it is evaluated on.
        config.data.label_map = run_label_map
    if config.data.format == "coco" and not (config.data.val_images and
                                             config.data.val_annotations):
        raise app.UsageError("give --data (image folder) and --annotations (instances JSON), "
                             "or set data.val_images / data.val_annotations in the config")
    if FLAGS.saved_model:
        if FLAGS.tta_scales or FLAGS.tta_flip:
            raise app.UsageError("--tta_scales/--tta_flip need a checkpoint (--model_dir): an "
                                 "exported SavedModel has its pre-processing built in")
        if FLAGS.score_voting is not None or FLAGS.score is not None:
            print("note: --score_voting and --score have no effect on a SavedModel (fixed at "
                  "export)")
        return evaluate.evaluate_exported(config, FLAGS.saved_model, output_dir=output_dir,
                                          max_batches=FLAGS.max_batches)
    model = restore_detector(config, FLAGS.model_dir, FLAGS.checkpoint)
    return evaluate.evaluate_model(config, model, output_dir=output_dir,
                                   max_batches=FLAGS.max_batches)


def _run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; all options are --flags.")
    output_dir = _output_dir()
    if FLAGS.results_file or FLAGS.gt_as_detections:
        if FLAGS.results_file and FLAGS.gt_as_detections:
            raise app.UsageError("give either --results_file or --gt_as_detections, not both")
        if not FLAGS.annotations:
            raise app.UsageError("--annotations (the COCO instances JSON) is required to score "
                                 "a results file")
        coco_gt = coco_scoring.load_coco(FLAGS.annotations)
        results_file = FLAGS.results_file
        if FLAGS.gt_as_detections:
            # Through the same file path a real results file takes.
            results_file = os.path.join(output_dir, "gt_as_detections.json")
            coco_scoring.write_json(coco_scoring.gt_as_detections(coco_gt), results_file)
        records = coco_scoring.load_results(results_file)
        metrics = evaluate_results(coco_gt, records, output_dir)
    else:
        if not (FLAGS.model_dir or FLAGS.checkpoint or FLAGS.saved_model):
            raise app.UsageError("nothing to evaluate: give --model_dir (or --saved_model), "
                                 "--results_file, or --gt_as_detections")
        metrics = _run_model(output_dir)
    print(f"results: {os.path.join(output_dir, 'results.json')}")
    print(f"metrics: {os.path.join(output_dir, 'metrics.json')}")
    return 0 if metrics is not None else 1


def main(argv=None):
    """Entry point: parses ``argv`` (default ``sys.argv``) and evaluates."""
    define_flags()
    errors.run(_run, "paa_eval", argv)


if __name__ == "__main__":
    main()
