"""Released-model parity for the authors' ResNeXt and DCNv2 models (as tests/test_import_parity.py
does for ResNet-50).

The reference is the authors' network written in PyTorch (``tests/helpers/torch_references.py``:
maskrcnn-benchmark module names, grouped 3x3 convs with the stride in them, ``DFConv2d`` =
``offset`` conv + ``ModulatedDeformConv`` run by ``torchvision.ops.deform_conv2d``) with random
weights, BN statistics and offset convs giving offsets of a few pixels. It is a ResNeXt-50
32x4d with DCNv2 in res4-res5 and in the last conv of both head towers: the released X-101 /
X-152 networks differ only in block counts and widths, which the importer reads from the
file; the full X-152 would take minutes on this CPU. It is saved with ``torch.save`` in their
checkpoint layout and imported with ``bin/paa_import`` through the dcnv2 X-101 preset (with
``model.backbone`` overridden to the test's ResNeXt-50). Compared: every level's outputs
(within 1e-4 of the largest reference magnitude), C3..C5, and the detections of their
post-processing; and that each released network's keys pick its preset.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
import torch

from paa_tf import config as config_lib
from paa_tf.modeling import restore
from tests.helpers import torch_references as ref
from tests.test_import_parity import (
    HEIGHT,
    RELATIVE_TOLERANCE,
    REPO,
    WIDTH,
    _relative_error,
    assert_levels_match,
    assert_same_detections,
    cli_import,
    model_on_imported_backbone,
    paa_input,
    reference_input,
    rgb_image,
)

pytest.importorskip("torchvision.ops", reason="the reference DCNv2 is torchvision's op")

PRESET = REPO / "configs" / "paa_dcnv2_x101_64x4d_fpn_2x_coco_authors.yaml"
OVERRIDE = "model.backbone=resnext50_32x4d"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    torch.manual_seed(0)
    network = ref.randomize(ref.KKPAA(50, groups=32, width_per_group=4, dcn_stages=(4, 5),
                                      head_dcn=True), seed=13)
    folder = tmp_path_factory.mktemp("import_dcn")
    checkpoint = folder / "dcnv2_x50.pth"
    torch.save(network.checkpoint(), checkpoint)
    run_dir = folder / "run"
    assert cli_import(["--torch_checkpoint", checkpoint, "--output_dir", run_dir,
                       "--config", PRESET, "--override", OVERRIDE]) == 0
    config = config_lib.load_config(run_dir / "config.yaml")
    model = restore.restore_model(config, tf.train.latest_checkpoint(str(run_dir)),
                                     (HEIGHT, WIDTH))
    return {"network": network, "checkpoint": checkpoint, "run_dir": run_dir,
            "config": config, "model": model}


# Slow: the module's import builds and restores a ResNeXt-50 detector (~75 s here).
@pytest.mark.slow
def test_import_reads_the_architecture_from_the_file(imported):
    report = json.loads((imported["run_dir"] / "import.json").read_text())
    assert report["architecture"] == "resnext50_32x4d + DCNv2 res4-5 + head DCNv2"
    model = imported["config"].model
    assert (model.backbone, model.backbone_style, tuple(model.backbone_dcn_stages),
            model.head_dcn) == ("resnext50_32x4d", "torchvision", (4, 5), True)
    # Every array of the file is loaded (offset convs included); only the anchors are not.
    state = torch.load(imported["checkpoint"], weights_only=True)["model"]
    anchors = [k for k in state if "anchor_generator" in k]
    assert report["loaded"] == len(state) - len(anchors) == len(imported["model"].weights)
    offsets = [k for k in state if k.endswith(".offset.weight")]
    assert len(offsets) == 6 + 3 + 2  # res4 (6 blocks), res5 (3), the two towers


@pytest.mark.slow
def test_every_level_output_matches_the_reference(imported):
    image = rgb_image(1)
    with torch.no_grad():
        expected = ref.to_paa_layout(imported["network"](reference_input("authors", image)))
    outputs = imported["model"](paa_input(imported["config"], image), training=False)
    worst = assert_levels_match(expected, outputs, imported["model"].level_ids, "dcnv2")
    print(f"\nResNeXt + DCNv2: largest relative difference per output {worst}")


@pytest.mark.slow
def test_backbone_features_match_and_depend_on_the_offsets(imported):
    image = rgb_image(2)
    body = imported["network"].backbone.body
    with torch.no_grad():
        want = [f.permute(0, 2, 3, 1).numpy() for f in body(reference_input("authors", image))]
    backbone = imported["model"].backbone
    got = backbone(paa_input(imported["config"], image), training=False)
    errors = {level: _relative_error(got[level].numpy(), expected)
              for level, expected in zip((3, 4, 5), want)}
    print(f"\nC3..C5 relative differences {errors}")
    assert max(errors.values()) < RELATIVE_TOLERANCE
    # Oracle sanity: the same weights with the offset convs at zero (plain grid) differ.
    layer = backbone.get_layer("layer4_0_conv2")
    saved = [w.numpy() for w in (layer.offset_kernel, layer.offset_bias)]
    try:
        layer.offset_kernel.assign(tf.zeros_like(layer.offset_kernel))
        layer.offset_bias.assign(tf.zeros_like(layer.offset_bias))
        changed = backbone(paa_input(imported["config"], image), training=False)[5].numpy()
    finally:
        layer.offset_kernel.assign(saved[0])
        layer.offset_bias.assign(saved[1])
    assert _relative_error(changed, want[2]) > 1e-2


@pytest.mark.slow
def test_detections_match_after_the_authors_post_processing(imported):
    config, model = imported["config"], imported["model"]
    assert config.eval.candidate_rule == "kk" and config.eval.score_voting
    image = rgb_image(3)
    with torch.no_grad():
        levels = ref.to_paa_layout(imported["network"](reference_input("authors", image)))
    assert_same_detections(config, model, levels, model(paa_input(config, image),
                                                        training=False))


@pytest.mark.slow
def test_bad_dcn_checkpoints_are_refused_naming_the_key(imported, tmp_path, capsys):
    from paa_tf.convert import strict_load, torch_file
    from paa_tf.convert.torch_file import CheckpointError

    model = imported["model"]
    layer = model.backbone.get_layer("layer4_1_conv2")
    before = layer.offset_kernel.numpy()
    key = "backbone.body.layer4.1.conv2.offset.weight"
    state = torch_file.read_state_dict(imported["checkpoint"])[0]
    state[key] = state[key][:18]  # offsets only: an unmodulated (DCNv1) conv
    with pytest.raises(CheckpointError, match=rf"'{key}': shape \[18, 1024, 3, 3\]"):
        strict_load.load_strict(model, state, "authors")
    del state[key]
    with pytest.raises(CheckpointError,
                       match=rf"'{key}' \(for backbone/layer4_1_conv2/offset_kernel\)"):
        strict_load.load_strict(model, state, "authors")
    np.testing.assert_array_equal(layer.offset_kernel.numpy(), before)  # nothing loaded
    # A DCN file with a config without DCN: the config key that differs is named.
    plain = REPO / "configs" / "paa_x101_64x4d_fpn_2x_coco_authors.yaml"
    assert cli_import(["--torch_checkpoint", imported["checkpoint"], "--config", plain,
                       "--override", OVERRIDE, "--output_dir", tmp_path / "run"]) == 2
    assert "model.backbone_dcn_stages is () but the authors checkpoint needs (4, 5)" in (
        capsys.readouterr().err)


def _released_keys(depth, groups, width, dcn_stages, head_dcn):
    """The keys (and the shapes the importer reads) of a released network, no weights."""
    blocks = ref.BLOCKS.get(depth, (3, 8, 36, 3))
    state = {}
    for stage, count in enumerate(blocks, start=2):
        channels = groups * width * 2 ** (stage - 2)
        for block in range(count):
            module = f"backbone.body.layer{stage - 1}.{block}.conv2"
            grouped = np.zeros((channels, channels // groups, 1, 1), np.float32)
            if stage in dcn_stages:
                state[f"{module}.conv.weight"] = grouped
                state[f"{module}.offset.weight"] = np.zeros((27, 1, 1, 1), np.float32)
            else:
                state[f"{module}.weight"] = grouped
    if head_dcn:
        state["rpn.head.cls_tower.9.offset.weight"] = np.zeros((27, 1, 1, 1), np.float32)
    state["rpn.head.cls_logits.weight"] = np.zeros(1, np.float32)
    return state


@pytest.mark.parametrize("network, preset", [
    ((101, 64, 4, (), False), "paa_x101_64x4d_fpn_2x_coco_authors.yaml"),
    ((101, 64, 4, (4, 5), True), "paa_dcnv2_x101_64x4d_fpn_2x_coco_authors.yaml"),
    ((152, 32, 8, (3, 4, 5), True), "paa_dcnv2_x152_32x8d_fpn_2x_coco_authors.yaml"),
    # Published AP, no released checkpoint: a model trained with their code imports too.
    ((101, 1, 64, (3, 4, 5), True), "paa_dcnv2_r101_fpn_2x_coco_authors.yaml"),
    ((101, 32, 8, (4, 5), True), "paa_dcnv2_x101_32x8d_fpn_2x_coco_authors.yaml"),
    ((101, 1, 64, (), False), "paa_r101_fpn_2x_coco_authors.yaml"),
])
def test_each_released_network_picks_its_preset_and_the_preset_fits(network, preset):
    from paa_tf.convert import importer, layouts

    arch = layouts.architecture(_released_keys(*network), "authors")
    assert importer.preset_path("authors", arch).name == preset
    config = config_lib.load_config(REPO / "configs" / preset)
    importer.check_config(config, "authors", arch, preset)  # raises on any differing key


# Slow: ~3 min here (the first float16 training step of a ResNeXt-50 with DCN, on the CPU).
@pytest.mark.slow
def test_mixed_precision_step_with_resnext_and_dcn_is_finite():
    """A ResNeXt-50 32x4d with DCNv2 in res4-5 and the head, mixed_float16: the step's
    gradients are finite (the loss scale is kept) and reach the offset convs."""
    from paa_tf.modeling import build_detector
    from tests.test_train_step import SIZE, _batch

    overrides = ("model.backbone=resnext50_32x4d,model.backbone_style=torchvision,"
                 "model.backbone_dcn_stages=[4,5],model.head_dcn=true,model.num_classes=3,"
                 "model.fpn_channels=32,model.head_channels=32,model.head_convs=2,"
                 "model.max_level=5")
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        tf_keras.utils.set_random_seed(3)
        model = build_detector(config_lib.build_config(overrides=overrides), SIZE)
        model.compile(optimizer=tf_keras.optimizers.SGD(0.01, momentum=0.9))
        assert model(tf.zeros([1, *SIZE, 3]))["cls_logits"].dtype == tf.float16
        offsets = [model.backbone.get_layer("layer4_2_conv2").offset_kernel,
                   model.head.box_tower[-3].offset_kernel]
        initial_scale = float(model.optimizer.loss_scale)
        logs = model.train_on_batch(_batch(), return_dict=True)
        assert float(model.optimizer.loss_scale) == initial_scale
        assert np.isfinite(logs["loss"])
        for variable in offsets:  # zero-initialised, moved by the step
            assert np.all(np.isfinite(variable.numpy())) and np.any(variable.numpy())
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_torchvision_imagenet_resnext_converts_to_a_backbone_checkpoint(tmp_path):
    """torchvision's own ResNeXt-50 32x4d (random weights and BN statistics) -> paa_import ->
    model.backbone_checkpoint of a detector: every backbone variable loaded, C5 equal to
    torchvision's layer4 output (an oracle independent of tests/helpers)."""
    from torchvision.models import resnext50_32x4d

    network = ref.randomize(resnext50_32x4d(weights=None), seed=22)
    path = tmp_path / "resnext50_32x4d-imagenet.pth"
    torch.save(network.state_dict(), path)
    assert cli_import(["--torch_checkpoint", path, "--output_dir", tmp_path / "tv"]) == 0
    report = json.loads((tmp_path / "tv" / "import.json").read_text())
    assert report["architecture"] == "resnext50_32x4d"
    config, model = model_on_imported_backbone(tmp_path / "tv" / "ckpt-0",
                                               ["model.backbone=resnext50_32x4d"])
    image = rgb_image(4)
    with torch.no_grad():
        x = reference_input("mmdet", image)
        x = network.maxpool(network.relu(network.bn1(network.conv1(x))))
        for stage in (network.layer1, network.layer2, network.layer3, network.layer4):
            x = stage(x)
    got = model.backbone(paa_input(config, image), training=False)[5].numpy()
    assert _relative_error(got, x.permute(0, 2, 3, 1).numpy()) < RELATIVE_TOLERANCE


@pytest.mark.slow
def test_msra_resnet_with_dcn_in_res3_to_res5_matches_the_reference(tmp_path):
    """The authors' dcnv2 ResNet layout (PAA_dcnv2_R_101_FPN: MSRA blocks with the stride in
    the first 1x1, so every deformable conv has stride 1; DCNv2 in res3-res5 and the head):
    an R-50 of that layout, imported through the R-101 dcnv2 preset that the file's keys pick
    (depth overridden), gives every level's outputs and the detections of the reference."""
    from paa_tf.convert import importer, layouts, torch_file

    torch.manual_seed(0)
    network = ref.randomize(ref.KKPAA(50, dcn_stages=(3, 4, 5), head_dcn=True), seed=14)
    checkpoint = tmp_path / "dcnv2_r50.pth"
    torch.save(network.checkpoint(), checkpoint)
    arch = layouts.architecture(torch_file.read_state_dict(checkpoint)[0], "authors")
    assert (arch.depth, arch.dcn_stages, arch.head_dcn) == (50, (3, 4, 5), True)
    depth101 = layouts.Architecture(101, dcn_stages=(3, 4, 5), head_dcn=True)
    preset = importer.preset_path("authors", depth101)
    assert preset.name == "paa_dcnv2_r101_fpn_2x_coco_authors.yaml"
    run_dir = tmp_path / "run"
    assert cli_import(["--torch_checkpoint", checkpoint, "--output_dir", run_dir,
                       "--config", preset, "--override", "model.backbone=resnet50"]) == 0
    config = config_lib.load_config(run_dir / "config.yaml")
    assert config.model.backbone_style == "msra"
    model = restore.restore_model(config, tf.train.latest_checkpoint(str(run_dir)),
                                  (HEIGHT, WIDTH))
    image = rgb_image(5)
    with torch.no_grad():
        levels = ref.to_paa_layout(network(reference_input("authors", image)))
    outputs = model(paa_input(config, image), training=False)
    worst = assert_levels_match(levels, outputs, model.level_ids, "msra dcnv2")
    print(f"\nmsra ResNet + DCNv2 res3-5: largest relative difference per output {worst}")
    assert_same_detections(config, model, levels, outputs)
