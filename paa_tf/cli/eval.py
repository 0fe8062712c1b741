"""Command line for COCO evaluation (``bin/paa_eval``).

Examples::

    # score an existing COCO results file
    bin/paa_eval --annotations=ANN.json --results_file=results.json --output_dir=/tmp/ev
    # sanity check of the pipeline: the ground truth as detections must give AP = 1
    bin/paa_eval --annotations=ANN.json --gt_as_detections --output_dir=/tmp/ev
    # a trained checkpoint (newest in model_dir, config from model_dir/config.yaml) on the
    # config's val split, or on a COCO image folder given here
    bin/paa_eval --model_dir=runs/x [--checkpoint=runs/x/ckpt-2000] \
        [--image_dir=test/ --annotations=test/ANN.json] [--override eval.score_voting=false]
    # an exported SavedModel (bin/paa_export), run on the undecoded image files
    bin/paa_eval --saved_model=export/1 [--image_dir=val2017/ --annotations=ANN.json]
    # test-time augmentation of a checkpoint: every listed shorter side, each also mirrored;
    # the views' candidates are merged before NMS and score voting
    bin/paa_eval --model_dir=runs/x --override eval.tta_scales=[640,800],eval.tta_flip=true
    # and TensorBoard pictures of the first 8 images, detections beside the ground truth
    bin/paa_eval --model_dir=runs/x --image_summaries --override eval.summary_images=8

Each evaluation names the data it scored (``--split``, default the ``--image_dir`` folder's name,
else ``val``) and writes ``results.json`` (COCO results) and ``metrics.json`` (the 12 COCO
numbers by name and per-category AP) into ``--output_dir``, by default
``<model_dir>/eval/<split>/`` (``./paa_eval_output/<split>/`` without a run folder): two
splits evaluated from one run leave two result sets.
"""

import os

from absl import app

from paa_tf import config as config_lib
from paa_tf import run_folder
from paa_tf.cli import program
from paa_tf.run_folder import RunFolder

FLAGS = program.FLAGS
FLAG_SPECS = (
    program.MODEL_DIR, program.CHECKPOINT, program.CONFIG, program.OVERRIDE,
    program.flag("string", "image_dir", None, "COCO image folder to evaluate on (default: config "
                 "data.val_images)."),
    program.flag("string", "annotations", None, "COCO instances JSON of the evaluated images "
                 "(default: config data.val_annotations)."),
    program.OUTPUT_DIR.with_help("Where results.json and metrics.json go (default "
                                 "<model_dir>/eval/<split>, else ./paa_eval_output/<split>)."),
    program.flag("string", "split", None, "Name of the evaluated data in the output and in the "
                 "default output folder (default: the --image_dir folder's name, else 'val')."),
    program.flag("integer", "max_batches", None, "Stop after this many batches (quick checks); "
                 "only the images seen are scored.", lower_bound=1),
    program.flag("string", "saved_model", None, "Evaluate this exported SavedModel instead of "
                 "a checkpoint."),
    program.flag("string", "results_file", None, "Score this COCO results JSON instead of "
                 "running a model."),
    program.flag("bool", "gt_as_detections", False, "Use the ground truth (crowd boxes "
                 "excluded) as detections: checks the evaluation path, AP must be 1.0."),
    program.flag("bool", "image_summaries", False, "Also write TensorBoard pictures of the "
                 "first eval.summary_images images (detections beside the ground truth, "
                 "tag detections_vs_gt/image_<id>) into the output folder, at the "
                 "checkpoint's step (0 for --saved_model)."),
)


def split_name():
    """What the evaluated data is called: --split, else the --image_dir folder's name, else
    'val'."""
    if FLAGS.split:
        return FLAGS.split
    if FLAGS.image_dir:
        return os.path.basename(os.path.normpath(FLAGS.image_dir)) or "val"
    return "val"


def _output_dir():
    if FLAGS.output_dir:
        return FLAGS.output_dir
    if FLAGS.model_dir:
        return str(RunFolder(FLAGS.model_dir).eval_dir(split_name()))
    return os.path.join("paa_eval_output", split_name())


def _config():
    """The experiment config: the run's (or --config), else the export's, else the defaults."""
    if FLAGS.model_dir:
        return RunFolder(FLAGS.model_dir).config(FLAGS.override, config_path=FLAGS.config)
    if FLAGS.saved_model and not FLAGS.config:
        # TensorFlow only once a model runs: --help and usage errors stay fast
        from paa_tf.serving import reader as export_reader
        exported = config_lib.to_dict(export_reader.exported_config(FLAGS.saved_model))
        return config_lib.build_config([exported], FLAGS.override)
    return config_lib.load_config(FLAGS.config, overrides=FLAGS.override)


def _run_model(output_dir):
    """Evaluate a checkpoint or an exported SavedModel on the chosen data."""
    # TensorFlow only once a model runs: --help and usage errors stay fast
    from paa_tf.evaluation import evaluate
    from paa_tf.modeling.restore import restore_run

    config = _config()
    if FLAGS.image_dir:
        config.data.val_images = FLAGS.image_dir
    if FLAGS.annotations:
        config.data.val_annotations = FLAGS.annotations
    if config.data.format == "coco" and not (config.data.val_images and
                                             config.data.val_annotations):
        raise app.UsageError("give --image_dir (image folder) and --annotations (instances JSON), "
                             "or set data.val_images / data.val_annotations in the config")
    # pipeline only to name the data: the config alone says what is read
    from paa_tf.data import pipeline

    print(f"paa_eval: evaluating '{split_name()}' "
          f"({pipeline.describe_source(config.data, 'val') or config.data.format}) into "
          f"{output_dir}", flush=True)
    if FLAGS.image_summaries and not config.eval.summary_images:
        raise app.UsageError("--image_summaries draws eval.summary_images images, which is 0: "
                             "give e.g. --override eval.summary_images=4")
    # TensorBoard pictures only when asked: the module loads matplotlib
    from paa_tf.visualization import summaries

    pictures = summaries.EvalImages(config) if FLAGS.image_summaries else None
    if FLAGS.saved_model:
        if config.eval.tta_scales or config.eval.tta_flip:
            raise app.UsageError("eval.tta_scales / eval.tta_flip need a checkpoint "
                                 "(--model_dir): an exported SavedModel has its "
                                 "pre-processing built in")
        metrics = evaluate.evaluate_exported(config, FLAGS.saved_model, output_dir=output_dir,
                                             max_batches=FLAGS.max_batches, observer=pictures)
        if pictures:
            pictures.write(0, log_dir=output_dir)
        return metrics
    if not FLAGS.model_dir and not FLAGS.checkpoint:
        raise app.UsageError("give --model_dir (a training run folder) or --checkpoint")
    model, path = restore_run(RunFolder(FLAGS.model_dir or "."), config,
                              tuple(config.data.image_size), FLAGS.checkpoint)
    print(f"restored {path}", flush=True)
    metrics = evaluate.evaluate_model(config, model, output_dir=output_dir,
                                      max_batches=FLAGS.max_batches, observer=pictures)
    if pictures:
        pictures.write(run_folder.checkpoint_step(path), log_dir=output_dir)
        print(f"image summaries: {len(pictures.pictures)} pictures in {output_dir}")
    return metrics


def _score_file(output_dir):
    """Scores --results_file, or the ground truth itself (--gt_as_detections)."""
    # no TensorFlow: scoring a file stays light
    from paa_tf.evaluation import coco_scoring

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
    return coco_scoring.coco_evaluate(coco_gt, records, output_dir=output_dir)


def _run(argv):
    output_dir = _output_dir()
    if FLAGS.image_summaries and (FLAGS.results_file or FLAGS.gt_as_detections):
        raise app.UsageError("--image_summaries draws a model's detections: give --model_dir "
                             "or --saved_model, not --results_file / --gt_as_detections")
    if FLAGS.results_file or FLAGS.gt_as_detections:
        metrics = _score_file(output_dir)
    elif FLAGS.model_dir or FLAGS.checkpoint or FLAGS.saved_model:
        metrics = _run_model(output_dir)
    else:
        raise app.UsageError("nothing to evaluate: give --model_dir (or --saved_model), "
                             "--results_file, or --gt_as_detections")
    print(f"{split_name()}: AP {metrics['AP']:.4f}, AP50 {metrics['AP50']:.4f}")
    print(f"results: {os.path.join(output_dir, 'results.json')}")
    print(f"metrics: {os.path.join(output_dir, 'metrics.json')}")
    return 0


main = program.entry_point("paa_eval", FLAG_SPECS, _run)
