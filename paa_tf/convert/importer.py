"""``bin/paa_import``'s work: a released checkpoint -> a paa-tf run folder.

A detector checkpoint (mmdetection or the authors' code) becomes a run folder
(``paa_tf.run_folder.RunFolder``, as ``bin/paa_train`` leaves one): ``config.yaml`` (the
resolved preset), ``label_map.json`` (COCO's 80 categories), ``checkpoint`` + ``ckpt-0.*``
(``tf.train.Checkpoint(step, model)`` written by a ``CheckpointManager``), plus
``import.json`` saying what was converted, so ``paa_eval``, ``paa_predict``,
``paa_visualize`` and ``paa_export`` use it like a trained run.

An ImageNet classification checkpoint (torchvision's ResNet) becomes a TensorFlow checkpoint
of the backbone alone, for ``model.backbone_checkpoint`` (``paa_tf.modeling.weights`` reads
it by object path, so the training config must build the same backbone: same depth and
``model.backbone_style``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

import tensorflow as tf

from paa_tf import config as config_lib
from paa_tf.convert import coco_categories, layouts, strict_load, torch_file
from paa_tf.convert.torch_file import CheckpointError
from paa_tf.modeling.backbone import build_backbone
from paa_tf.modeling.detector import build_detector
from paa_tf.run_folder import RunFolder

# Built at this input size for the conversion only (weights do not depend on it).
_BUILD_SIZE = (256, 256)

# What the reference network computes, as paa-tf config values; a config that differs would
# load the weights but compute something else, so the import refuses it (naming the key).
REQUIRED = {
    "mmdet": {
        "model.backbone_style": "torchvision", "model.bn_epsilon": 1e-5,
        "model.input_channels": "rgb", "model.p7_from_relu": False,
        "model.anchor_center_offset": 0.0, "model.plus_one": False, "model.delta_clamp": "mm",
        "data.pixel_mean": (123.675, 116.28, 103.53),
        "data.pixel_std": (58.395, 57.12, 57.375)},
    "authors": {
        "model.backbone_style": "msra", "model.bn_epsilon": 0.0,
        "model.input_channels": "bgr", "model.p7_from_relu": True,
        "model.anchor_center_offset": 0.5, "model.plus_one": True, "model.delta_clamp": "kk",
        # Their BGR means, written in paa-tf's RGB order (the backbone reverses the channels).
        "data.pixel_mean": (122.7717, 115.9465, 102.9801), "data.pixel_std": (1.0, 1.0, 1.0)},
}
_COMMON = {"model.min_level": 3, "model.max_level": 7, "model.octave_base_scale": 8.0,
           "model.box_weights": (10.0, 10.0, 5.0, 5.0), "model.head_norm": "group",
           "model.aux_head": "iou", "model.num_classes": 80}


# The preset used by default for each reference and network (``layouts.architecture``). The
# schedule in the name is the one the released models were trained with (mmdetection's 1x;
# the authors' R-50 release is 1.5x, their others 2x); it changes nothing at inference. The
# authors' dcnv2 R-101 and X-101 32x8d have presets without a released checkpoint (a model
# trained with their code imports through them).
_ARCH = layouts.Architecture
PRESETS = {("mmdet", _ARCH(50)): "paa_r50_fpn_1x_coco_mmdet.yaml",
           ("mmdet", _ARCH(101)): "paa_r101_fpn_1x_coco_mmdet.yaml",
           ("authors", _ARCH(50)): "paa_r50_fpn_1.5x_coco_authors.yaml",
           ("authors", _ARCH(101)): "paa_r101_fpn_2x_coco_authors.yaml",
           ("authors", _ARCH(101, dcn_stages=(3, 4, 5), head_dcn=True)):
               "paa_dcnv2_r101_fpn_2x_coco_authors.yaml",
           ("authors", _ARCH(101, 64, 4)): "paa_x101_64x4d_fpn_2x_coco_authors.yaml",
           ("authors", _ARCH(101, 64, 4, (4, 5), True)):
               "paa_dcnv2_x101_64x4d_fpn_2x_coco_authors.yaml",
           ("authors", _ARCH(101, 32, 8, (4, 5), True)):
               "paa_dcnv2_x101_32x8d_fpn_2x_coco_authors.yaml",
           ("authors", _ARCH(152, 32, 8, (3, 4, 5), True)):
               "paa_dcnv2_x152_32x8d_fpn_2x_coco_authors.yaml"}


def preset_path(layout: str, arch: layouts.Architecture) -> pathlib.Path:
    """The default preset of a reference and network (``PRESETS``) a shipped preset."""
    if (layout, arch) not in PRESETS:
        known = "; ".join(f"{lay} {a.name}" for lay, a in PRESETS)
        raise CheckpointError(f"no preset for a {layout} {arch.name} model; give --config "
                              f"(presets exist for: {known})")
    return config_lib.PRESET_DIR / PRESETS[(layout, arch)]


def check_config(config, layout: str, arch: layouts.Architecture, config_name: str):
    """Raise CheckpointError naming the first config key that differs from the reference."""
    expected = {**_COMMON, **REQUIRED[layout], "model.backbone": arch.backbone,
                "model.backbone_dcn_stages": arch.dcn_stages, "model.head_dcn": arch.head_dcn}
    if arch.dcn_stages or arch.head_dcn:
        expected["model.deformable_groups"] = arch.deformable_groups
    if layout == "authors" and arch.groups > 1:
        # Their ResNeXt configs set STRIDE_IN_1X1: False (the stride in the 3x3 conv).
        expected["model.backbone_style"] = "torchvision"
    for key, value in expected.items():
        section, name = key.split(".")
        actual = getattr(getattr(config, section), name)
        same = (tuple(actual) == tuple(value) if isinstance(value, tuple)
                else actual == value)
        if not same:
            raise CheckpointError(
                f"{config_name}: {key} is {actual!r} but the {layout} checkpoint needs "
                f"{value!r}; use the preset {PRESETS.get((layout, arch), '')} or fix the key")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prepare_output(output, overwrite):
    output = pathlib.Path(output)
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise CheckpointError(f"{output} exists and is not empty; pass --overwrite or "
                                  "choose another --output_dir")
        for name in os.listdir(output):
            if name.startswith(("ckpt-", "checkpoint")):
                (output / name).unlink()
    output.mkdir(parents=True, exist_ok=True)
    return output


def import_checkpoint(path, output, source="auto", config_path=None, overrides=None,
                      overwrite=False) -> dict:
    """Convert the checkpoint ``path`` into ``output`` (see the module docstring).

    Args:
      path: the ``.pth`` file.
      output: run folder to write (a detector) or backbone checkpoint folder (ImageNet).
      source: 'auto' | 'mmdet' | 'authors' | 'imagenet'.
      config_path: experiment YAML; default the reference's preset in configs/.
      overrides: dotted config overrides (e.g. 'data.val_images=/data/coco/val2017').
    Returns:
      the import report (also written to ``output/import.json``).
    """
    state, kind = torch_file.read_state_dict(path)
    layout = layouts.guess_layout(state, kind) if source == "auto" else source
    if layout not in layouts.LAYOUTS:
        raise CheckpointError(f"--source {source!r}: choose auto, mmdet, authors or imagenet")
    try:
        arch = layouts.architecture(state, layout)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    output = _prepare_output(output, overwrite)
    report = {"source_file": os.path.abspath(path), "sha256": _sha256(path), "layout": layout,
              "depth": arch.depth, "architecture": arch.name}
    if layout == "imagenet":
        report.update(_import_backbone(state, path, output, arch, config_path, overrides))
    else:
        report.update(_import_detector(state, path, output, layout, arch, config_path,
                                       overrides))
    (output / "import.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _import_detector(state, path, output, layout, arch, config_path, overrides):
    config_path = pathlib.Path(config_path) if config_path else preset_path(layout, arch)
    config = config_lib.load_config(config_path, overrides=overrides)
    check_config(config, layout, arch, str(config_path))
    # The released weights replace every initial value; the ImageNet file is not needed.
    build_config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, backbone_checkpoint=None))
    model = build_detector(build_config, image_size=_BUILD_SIZE)
    result = strict_load.load_strict(model, state, layout, source_name=str(path))
    strict_load.check_cell_anchors(state, model, source_name=str(path))
    RunFolder(output).write(config, coco_categories.coco_label_map())
    step = tf.Variable(0, dtype=tf.int64)
    saved = tf.train.CheckpointManager(tf.train.Checkpoint(step=step, model=model),
                                       str(output), max_to_keep=1).save(checkpoint_number=0)
    return {"config": str(config_path), "checkpoint": saved, "loaded": result["loaded"],
            "set_to_zero": result["filled"], "not_weights": result["ignored"]}


def _import_backbone(state, path, output, arch, config_path, overrides):
    if config_path:
        model_cfg = config_lib.load_config(config_path, overrides=overrides).model
    else:
        model_cfg = config_lib.ModelConfig(backbone=arch.backbone,
                                           backbone_style="torchvision")
    if model_cfg.backbone_style != "torchvision" or model_cfg.backbone != arch.backbone:
        raise CheckpointError(
            f"{path} is a torchvision {arch.backbone}: the config must build "
            f"model.backbone: {arch.backbone} with model.backbone_style: torchvision (it has "
            f"{model_cfg.backbone}, {model_cfg.backbone_style})")
    backbone = build_backbone(model_cfg, (*_BUILD_SIZE, 3))
    result = strict_load.load_strict(backbone, state, "imagenet", source_name=str(path),
                                     parts=("backbone",))
    saved = tf.train.CheckpointManager(tf.train.Checkpoint(backbone=backbone), str(output),
                                       max_to_keep=1).save(checkpoint_number=0)
    return {"checkpoint": saved, "loaded": result["loaded"], "not_weights": result["ignored"],
            "use_as": f"model.backbone_checkpoint: {saved}"}
