"""Command line for importing a released PyTorch PAA checkpoint (``bin/paa_import``).

Example::

    bin/paa_import --torch_checkpoint paa_r50_fpn_1x_coco_20200821-936edec3.pth \\
        --output_dir runs/paa_r50_mmdet
    bin/paa_eval --model_dir runs/paa_r50_mmdet
    bin/paa_export --model_dir runs/paa_r50_mmdet --export_dir runs/paa_r50_mmdet/export

    bin/paa_import --torch_checkpoint resnet50-0676ba61.pth \\
        --output_dir data/pretrained/resnet50_tv
    # -> a backbone checkpoint for model.backbone_checkpoint

The source (mmdetection, the authors' code, or an ImageNet torchvision ResNet) is read from
the file; the run folder's config is the reference's preset in configs/ (``--config`` to
choose another, ``--override`` for e.g. the data paths). Needs PyTorch to read the file
(``pip install torch==2.13.0``); nothing else in paa-tf does.
"""

import time

from paa_tf.cli import program

FLAGS = program.FLAGS
FLAG_SPECS = (
    program.flag("string", "torch_checkpoint", None, "The PyTorch .pth file to import.",
                 required=True),
    program.OUTPUT_DIR.with_help("Folder to write: a run folder (detector) or a backbone "
                                 "checkpoint folder (ImageNet ResNet).").as_required(),
    program.flag("enum", "source", "auto", "Checkpoint layout; auto reads it from the file's "
                 "keys.", enum_values=["auto", "mmdet", "authors", "imagenet"]),
    program.CONFIG.with_help("Experiment YAML for the run (default: the reference's preset in "
                             "configs/)."),
    program.OVERRIDE,
    program.flag("bool", "overwrite", False, "Replace the checkpoint of an existing "
                 "--output_dir folder."),
)


def _run(argv):
    # TensorFlow and PyTorch only when converting
    from paa_tf.convert import importer

    start = time.time()
    report = importer.import_checkpoint(
        FLAGS.torch_checkpoint, FLAGS.output_dir, source=FLAGS.source, config_path=FLAGS.config,
        overrides=FLAGS.override, overwrite=FLAGS.overwrite)
    print(f"Imported {report['layout']} {report['architecture']} checkpoint "
          f"{FLAGS.torch_checkpoint} -> {report['checkpoint']} ({report['loaded']} arrays, "
          f"{time.time() - start:.0f} s)")
    for line in report.get("set_to_zero", [])[:3]:
        print(f"  set to 0: {line}")
    if report["layout"] == "imagenet":
        print(f"  use it with {report['use_as']}")
    else:
        print(f"  config: {report['config']} -> {FLAGS.output_dir}/config.yaml")
        print(f"  evaluate: bin/paa_eval --model_dir {FLAGS.output_dir}")
        print(f"  export:   bin/paa_export --model_dir {FLAGS.output_dir} "
              f"--export_dir {FLAGS.output_dir}/export")
    print(f"  details: {FLAGS.output_dir}/import.json")
    return 0


main = program.entry_point("paa_import", FLAG_SPECS, _run)
