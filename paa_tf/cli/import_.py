"""Command line for importing a released PyTorch PAA checkpoint (``bin/paa_import``).

Example::

    bin/paa_import --checkpoint paa_r50_fpn_1x_coco_20200821-936edec3.pth \\
        --output runs/paa_r50_mmdet
    bin/paa_eval --model_dir runs/paa_r50_mmdet
    bin/paa_export --model_dir runs/paa_r50_mmdet --export_dir runs/paa_r50_mmdet/export

    bin/paa_import --checkpoint resnet50-0676ba61.pth --output data/pretrained/resnet50_tv
    # -> a backbone checkpoint for model.backbone_checkpoint

The source (mmdetection, the authors' code, or an ImageNet torchvision ResNet) is read from
the file; the run folder's config is the reference's preset in configs/ (``--config`` to
choose another, ``--params_override`` for e.g. the data paths). Needs PyTorch to read the
file (``pip install torch==2.13.0``); nothing else in paa-tf does.
"""

import sys
import time

from absl import app, flags

from paa_tf.cli import errors

FLAGS = flags.FLAGS
_FLAG_NAMES = ("checkpoint", "output", "source", "config", "params_override", "overwrite")


def define_flags(flag_values=FLAGS):
    """Defines this command's flags once (other commands may share a flag's name)."""
    definitions = {
        "checkpoint": lambda: flags.DEFINE_string(
            "checkpoint", None, "The PyTorch .pth file to import.", flag_values=flag_values),
        "output": lambda: flags.DEFINE_string(
            "output", None, "Folder to write: a run folder (detector) or a backbone "
            "checkpoint folder (ImageNet ResNet).", flag_values=flag_values),
        "source": lambda: flags.DEFINE_enum(
            "source", "auto", ["auto", "mmdet", "authors", "imagenet"], "Checkpoint layout; "
            "auto reads it from the file's keys.", flag_values=flag_values),
        "config": lambda: flags.DEFINE_string(
            "config", None, "Experiment YAML for the run (default: the reference's preset "
            "in configs/).", flag_values=flag_values),
        "params_override": lambda: flags.DEFINE_string(
            "params_override", None, "Dotted config overrides, e.g. "
            "'data.val_images=/data/coco/val2017'.", flag_values=flag_values),
        "overwrite": lambda: flags.DEFINE_bool(
            "overwrite", False, "Replace the checkpoint of an existing --output folder.",
            flag_values=flag_values),
    }
    for name in _FLAG_NAMES:
        if name not in flag_values:
            definitions[name]()
        flag_values.register_key_flag_for_module(sys.argv[0], flag_values[name])


def _run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; all options are --flags.")
    for name in ("checkpoint", "output"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required")
    from paa_tf.convert import run_folder

    start = time.time()
    report = run_folder.import_checkpoint(
        FLAGS.checkpoint, FLAGS.output, source=FLAGS.source, config_path=FLAGS.config,
        overrides=FLAGS.params_override, overwrite=FLAGS.overwrite)
    print(f"Imported {report['layout']} ResNet-{report['depth']} checkpoint "
          f"{FLAGS.checkpoint} -> {report['checkpoint']} ({report['loaded']} arrays, "
          f"{time.time() - start:.0f} s)")
    for line in report.get("set_to_zero", [])[:3]:
        print(f"  set to 0: {line}")
    if report["layout"] == "imagenet":
        print(f"  use it with {report['use_as']}")
    else:
        print(f"  config: {report['config']} -> {FLAGS.output}/config.yaml")
        print(f"  evaluate: bin/paa_eval --model_dir {FLAGS.output}")
        print(f"  export:   bin/paa_export --model_dir {FLAGS.output} "
              f"--export_dir {FLAGS.output}/export")
    print(f"  details: {FLAGS.output}/import.json")
    return 0


def main(argv=None):
    """Entry point: parses ``argv`` (default ``sys.argv``) and imports."""
    define_flags()
    errors.run(_run, "paa_import", argv)


if __name__ == "__main__":
    main()
