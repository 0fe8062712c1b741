"""Backbone, FPN, head and detector structure (docs/PAA.md, "Network" and "Anchors")."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from paa_tf.config import ConfigError, build_config
from paa_tf.modeling import (
    FPN,
    IncompleteBackboneCheckpoint,
    PAAHead,
    build_backbone,
    build_detector,
    load_backbone_weights,
)
from paa_tf.modeling.backbone import resnet_inner_model
from paa_tf.modeling.group_norm import GroupNorm

TINY = ("model.backbone=tiny,model.num_classes=3,model.fpn_channels=32,"
        "model.head_channels=32,model.head_convs=2")


def _conv(c_in, c_out, k, bias=True):
    return k * k * c_in * c_out + (c_out if bias else 0)


def reference_r50_paa_parameter_count(num_classes=80):
    """Parameters of the authors' R-50 PAA model, counted from the architecture (docs/PAA.md).

    KK's ResNet-50 has bias-free convs and FrozenBatchNorm (buffers, not parameters); the FPN
    has laterals on C3-C5, 3x3 outputs, P6 on P5 and P7 on ReLU(P6), all with bias; the head
    has two towers of 4 x (conv with bias + GroupNorm(weight, bias)), the three predictors with
    bias, and 5 Scale scalars.
    """
    backbone = _conv(3, 64, 7, bias=False)  # stem
    c_in = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            backbone += (_conv(c_in, width, 1, False) + _conv(width, width, 3, False)
                         + _conv(width, 4 * width, 1, False))
            if block == 0:  # projection shortcut
                backbone += _conv(c_in, 4 * width, 1, False)
            c_in = 4 * width
    fpn = sum(_conv(c, 256, 1) for c in (512, 1024, 2048)) + 5 * _conv(256, 256, 3)
    head = (8 * (_conv(256, 256, 3) + 2 * 256) + _conv(256, num_classes, 3) + _conv(256, 4, 3)
            + _conv(256, 1, 3) + 5)
    assert backbone == 23_454_912  # torchvision's 25,557,032 minus fc and BN parameters
    return backbone + fpn + head


@pytest.mark.slow
def test_r50_parameter_count_equals_the_reference_up_to_frozen_bn_variables():
    # COCO's 80 classes: a run takes them from its label map, here they are given.
    model = build_detector(build_config(overrides="model.num_classes=80"), image_size=(128, 128))
    bn_variables = [w for layer in model.backbone.submodules
                    if isinstance(layer, tf_keras.layers.BatchNormalization)
                    for w in layer.weights]
    bn_count = sum(int(np.prod(w.shape)) for w in bn_variables)
    reference = reference_r50_paa_parameter_count()
    assert reference == 32_244_250
    # 26,560 BN channels x (gamma, beta, moving mean, moving variance).
    assert bn_count == 4 * 26_560
    assert model.count_params() - bn_count == reference
    trainable = {id(v) for v in model.trainable_variables}
    assert not any(id(w) in trainable for w in bn_variables)


def test_outputs_are_flattened_p3_first_row_major_like_the_anchors():
    model = build_detector(build_config(overrides=TINY), image_size=(128, 160))
    images = tf.random.stateless_normal([2, 128, 160, 3], seed=[1, 2])
    outputs = model(images)
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]  # ceil(n / stride)
    num_anchors = sum(h * w for h, w in sizes)
    assert outputs["cls_logits"].shape == (2, num_anchors, 3)
    assert outputs["box_deltas"].shape == (2, num_anchors, 4)
    assert outputs["iou_logits"].shape == (2, num_anchors)
    assert model.anchors.shape == (num_anchors, 4)
    # Recompute level P4 by hand from the head's layers and find position (y=5, x=7).
    pyramid = model.fpn(model.backbone(images))
    head = model.head
    cls_map = head.cls_logits(head._run(head.cls_tower, pyramid[4]))
    box_map = head.bbox_pred(head._run(head.box_tower, pyramid[4]))
    iou_map = head.aux_pred(head._run(head.box_tower, pyramid[4]))
    index = 16 * 20 + 5 * 10 + 7
    np.testing.assert_allclose(outputs["cls_logits"][:, index], cls_map[:, 5, 7], atol=1e-5)
    np.testing.assert_allclose(outputs["box_deltas"][:, index], box_map[:, 5, 7], atol=1e-5)
    np.testing.assert_allclose(outputs["iou_logits"][:, index], iou_map[:, 5, 7, 0], atol=1e-5)
    # The anchor at that index is the P4 anchor of cell (5, 7): centre ((5.5, 7.5) * 16).
    anchor = model.anchors[index].numpy()
    np.testing.assert_allclose((anchor[:2] + anchor[2:]) / 2, [88.0, 120.0])
    np.testing.assert_allclose(anchor[2:] - anchor[:2], [128.0, 128.0])


def test_head_initialisation_follows_the_references():
    head = PAAHead(num_classes=80, channels=64, num_convs=2)
    features = {lv: tf.zeros([1, 4, 4, 64]) for lv in range(3, 8)}
    head(features)
    assert head.cls_logits.bias.numpy() == pytest.approx(np.full(80, -math.log(99.0)), abs=1e-6)
    assert np.all(head.bbox_pred.bias.numpy() == 0) and np.all(head.aux_pred.bias.numpy() == 0)
    kernel = head.cls_tower[0].kernel.numpy()
    assert abs(kernel.std() - 0.01) < 0.001 and abs(kernel.mean()) < 0.001
    assert [float(s) for s in head.scales] == [1.0] * 5
    assert isinstance(head.cls_tower[1], GroupNorm)
    assert head.cls_tower[1].groups == 32


def test_per_level_scale_multiplies_only_its_level_deltas():
    head = PAAHead(num_classes=2, channels=32, num_convs=1, min_level=3, max_level=4)
    features = {3: tf.random.normal([1, 4, 4, 32], seed=1),
                4: tf.random.normal([1, 2, 2, 32], seed=2)}
    before = head(features)["box_deltas"].numpy()
    head.scales[1].assign(2.0)
    after = head(features)["box_deltas"].numpy()
    np.testing.assert_allclose(after[:, :16], before[:, :16])
    np.testing.assert_allclose(after[:, 16:], 2.0 * before[:, 16:], rtol=1e-6)


@pytest.mark.parametrize("aux_head, has_aux", [("centerness", True), ("none", False)])
def test_aux_head_options(aux_head, has_aux):
    head = PAAHead(num_classes=2, channels=32, num_convs=1, aux_head=aux_head)
    outputs = head({lv: tf.zeros([1, 2, 2, 32]) for lv in range(3, 8)})
    assert ("iou_logits" in outputs) == has_aux
    if has_aux:
        assert head.aux_pred.name == "centerness_pred"


def _fpn_inputs(sizes=((10, 10), (5, 5), (3, 3)), channels=(8, 16, 32)):
    return {lv: tf.random.stateless_normal([1, h, w, c], seed=[lv, 0])
            for lv, (h, w), c in zip((3, 4, 5), sizes, channels)}


def test_fpn_extra_levels_use_symmetric_padding_and_relu_before_p7():
    # Even P5 (4x4): TF's 'same' would pad 0 before / 1 after, PyTorch pads 1 / 1.
    features = _fpn_inputs(sizes=((16, 16), (8, 8), (4, 4)))
    fpn = FPN(channels=16)
    out = fpn(features)
    assert [tuple(out[lv].shape[1:3]) for lv in range(3, 8)] == [
        (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    # Independent oracle: PyTorch-style conv with one pixel of zeros on every side.
    conv6, conv7 = fpn.extra_convs["p6"], fpn.extra_convs["p7"]
    padded = tf.pad(out[5], [[0, 0], [1, 1], [1, 1], [0, 0]])
    expected_p6 = tf.nn.conv2d(padded, conv6.kernel, 2, "VALID") + conv6.bias
    np.testing.assert_allclose(out[6], expected_p6, atol=1e-5)
    same_p6 = tf.nn.conv2d(out[5], conv6.kernel, 2, "SAME") + conv6.bias
    assert not np.allclose(out[6], same_p6, atol=1e-3)  # 'same' would shift the grid
    padded = tf.pad(tf.nn.relu(out[6]), [[0, 0], [1, 1], [1, 1], [0, 0]])
    np.testing.assert_allclose(out[7], tf.nn.conv2d(padded, conv7.kernel, 2, "VALID")
                               + conv7.bias, atol=1e-5)
    # MM variant: P7 straight from P6.
    fpn_mm = FPN(channels=16, p7_from_relu=False)
    fpn_mm(features)
    fpn_mm.set_weights(fpn.get_weights())
    out_mm = fpn_mm(features)
    padded = tf.pad(out_mm[6], [[0, 0], [1, 1], [1, 1], [0, 0]])
    np.testing.assert_allclose(out_mm[7], tf.nn.conv2d(padded, conv7.kernel, 2, "VALID")
                               + conv7.bias, atol=1e-5)
    assert not np.allclose(out_mm[7], out[7], atol=1e-4)


def test_fpn_top_down_uses_pytorch_nearest_rows_to_the_exact_lateral_size():
    features = _fpn_inputs()
    fpn = FPN(channels=16)
    out = fpn(features)
    # Odd sizes: P6 = ceil(3 / 2) = 2, P7 = 1.
    assert [tuple(out[lv].shape[1:3]) for lv in range(3, 8)] == [
        (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    lateral5 = fpn.laterals["c5"](features[5]).numpy()
    lateral4 = fpn.laterals["c4"](features[4]).numpy()
    rows = [0, 0, 1, 1, 2]  # floor(i * 3 / 5), F.interpolate(mode='nearest', size=5)
    merged = lateral4 + lateral5[:, rows][:, :, rows]
    np.testing.assert_allclose(out[4], fpn.output_convs["p4"](merged), atol=1e-5)
    kernel = fpn.laterals["c3"].kernel.numpy()
    bound = math.sqrt(3.0 / 8)  # lecun_uniform: U(+-sqrt(3 / fan_in))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.8 * bound


def test_tiny_backbone_outputs_c3_to_c5_at_strides_8_to_32():
    backbone = build_backbone(build_config(overrides=TINY).model, (96, 160, 3))
    out = backbone(tf.zeros([1, 96, 160, 3]))
    assert {lv: tuple(t.shape[1:3]) for lv, t in out.items()} == {
        3: (12, 20), 4: (6, 10), 5: (3, 5)}
    assert all(16 <= t.shape[-1] <= 128 for t in out.values())


@pytest.mark.parametrize("freeze_at", [0, 2])
def test_resnet_freeze_at_and_frozen_batch_norm(freeze_at):
    config = build_config(overrides=f"model.backbone=resnet18,model.freeze_at={freeze_at}")
    backbone = build_backbone(config.model, (64, 64, 3))
    inner = resnet_inner_model(backbone)
    stem_conv = next(layer for layer in inner.layers if isinstance(layer, tf_keras.layers.Conv2D))
    first_block = next(layer for layer in inner.layers if "block" in type(layer).__name__.lower())
    stage3_block = inner.layers[inner.layers.index(inner.get_layer("block_group_l2")) + 1]
    assert stem_conv.trainable == (freeze_at < 1)
    assert first_block.trainable == (freeze_at < 2)
    assert stage3_block.trainable
    trainable = {id(v) for v in backbone.trainable_variables}
    assert not any(id(v) in trainable for layer in backbone.submodules
                   if isinstance(layer, tf_keras.layers.BatchNormalization)
                   for v in layer.weights)
    # Frozen BN is a fixed affine map: training mode changes nothing and updates nothing.
    images = tf.random.stateless_normal([2, 64, 64, 3], seed=[3, 4])
    before = [v.numpy() for v in backbone.weights]
    train_out = backbone(images, training=True)
    eval_out = backbone(images, training=False)
    for lv in (3, 4, 5):
        np.testing.assert_allclose(train_out[lv], eval_out[lv], atol=1e-5)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, backbone.weights))


def test_unknown_backbone_is_a_clear_error():
    config = build_config(overrides=TINY)
    config.model.backbone = "resnet51"
    with pytest.raises(ValueError, match="resnet51.*tiny"):
        build_backbone(config.model)


@pytest.mark.slow
def test_tf_checkpoint_loading_reports_loaded_missing_and_mismatched(tmp_path):
    config = build_config(overrides="model.backbone=resnet18")
    source = build_backbone(config.model, (64, 64, 3))
    for variable in source.weights:
        variable.assign(tf.random.uniform(variable.shape, seed=7))
    # A Model Garden classification checkpoint keeps the backbone below model/backbone/.
    path = tf.train.Checkpoint(model=tf.train.Checkpoint(
        backbone=resnet_inner_model(source))).write(str(tmp_path / "ckpt-1"))
    target = build_backbone(config.model, (64, 64, 3))
    report = load_backbone_weights(target, path)
    assert report.prefix == "model/backbone/"
    assert len(report.loaded) == len(target.weights)
    assert not report.missing and not report.shape_mismatch
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # A checkpoint of another architecture: everything reported, nothing silently wrong.
    other = build_backbone(build_config(overrides=TINY).model, (64, 64, 3))
    path = tf.train.Checkpoint(backbone=other).write(str(tmp_path / "tiny-1"))
    tiny_target = build_backbone(build_config(overrides=TINY).model, (64, 64, 3))
    tiny_target.get_layer("stage1_conv").kernel.assign(tf.zeros([3, 3, 16, 16]))
    with pytest.raises(IncompleteBackboneCheckpoint, match="backbone_checkpoint_partial"):
        load_backbone_weights(target, path)
    report = load_backbone_weights(target, path, allow_partial=True)
    assert len(report.loaded) + len(report.missing) + len(report.shape_mismatch) == len(
        target.weights)
    assert len(report.missing) + len(report.shape_mismatch) > 0
    assert "loaded" in report.summary()


def test_keras_h5_weights_round_trip_and_missing_file_error(tmp_path):
    model_config = build_config(overrides=TINY).model
    source = build_backbone(model_config, (64, 64, 3))
    source.save_weights(str(tmp_path / "tiny.h5"))
    target = build_backbone(model_config, (64, 64, 3))
    report = load_backbone_weights(target, str(tmp_path / "tiny.h5"))
    assert len(report.loaded) == len(target.weights)
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="not found"):
        load_backbone_weights(target, str(tmp_path / "absent.h5"))
    with pytest.raises(ValueError, match="not found"):
        load_backbone_weights(target, str(tmp_path / "absent-ckpt"))


def test_build_detector_loads_the_configured_backbone_checkpoint(tmp_path):
    config = build_config(overrides=TINY)
    source = build_backbone(config.model, (128, 128, 3))
    path = tf.train.Checkpoint(backbone=source).write(str(tmp_path / "ckpt-1"))
    config.model.backbone_checkpoint = path
    model = build_detector(config, image_size=(128, 128))
    assert len(model.backbone_load_report.loaded) == len(source.weights)
    for a, b in zip(source.weights, model.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _numpy_frozen_bn(x, gamma, beta, mean, var, epsilon):
    """Inference BatchNorm written out: (x - mean) / sqrt(var + eps) * gamma + beta."""
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


@pytest.mark.parametrize("override, epsilon", [("", 1e-5), (",model.bn_epsilon=1e-3", 1e-3)])
def test_frozen_bn_uses_the_checkpoint_epsilon(override, epsilon):
    """Model Garden's ImageNet ResNets were trained with BN epsilon 1e-5 (its ResNet class
    defaults to 1e-3); the frozen BN must reproduce the checkpoint's statistics with it."""
    config = build_config(overrides="model.backbone=resnet18" + override)
    assert config.model.bn_epsilon == epsilon
    backbone = build_backbone(config.model, (32, 32, 3))
    inner = resnet_inner_model(backbone)
    norms = [layer for layer in backbone.submodules
             if isinstance(layer, tf_keras.layers.BatchNormalization)]
    assert len(norms) == 21  # ResNet-18: stem, 8 blocks x 2, a projection in each stage
    assert all(layer.epsilon == epsilon for layer in norms)
    stem_conv = next(layer for layer in inner.layers if isinstance(layer, tf_keras.layers.Conv2D))
    stem_bn = next(layer for layer in inner.layers
                   if isinstance(layer, tf_keras.layers.BatchNormalization))
    rng = np.random.default_rng(0)
    channels = stem_bn.gamma.shape[0]
    gamma, beta = rng.uniform(0.5, 2.0, channels), rng.normal(0.0, 1.0, channels)
    mean, var = rng.normal(0.0, 1.0, channels), rng.uniform(0.5, 2.0, channels)
    var[3] = 2e-5  # a low-variance channel: 1/sqrt(var + 1e-5) and 1/sqrt(var + 1e-3) differ 5x
    stem_bn.set_weights([w.astype(np.float32) for w in (gamma, beta, mean, var)])
    probe = tf_keras.Model(inner.inputs, [stem_conv.output, stem_bn.output])
    images = tf.random.stateless_normal([1, 32, 32, 3], seed=[5, 6])
    conv_out, bn_out = (t.numpy().astype(np.float64) for t in probe(images, training=True))
    want = _numpy_frozen_bn(conv_out, gamma, beta, mean, var, epsilon)
    np.testing.assert_allclose(bn_out, want, rtol=1e-4, atol=1e-4)
    other = _numpy_frozen_bn(conv_out, gamma, beta, mean, var, 1e-3 if epsilon == 1e-5 else 1e-5)
    # The other epsilon misses the low-variance channel by far more than the tolerance.
    assert np.abs(other[..., 3] - want[..., 3]).max() > 1.0
    assert np.abs(bn_out[..., 3] - other[..., 3]).max() > 1.0


def test_bn_epsilon_must_not_be_negative():
    with pytest.raises(ConfigError, match="model.bn_epsilon"):
        build_config(overrides="model.backbone=resnet18,model.bn_epsilon=-1e-5")


def _rewrite_checkpoint(source_prefix, target_prefix, drop=(), extra=None):
    """Copy a TF checkpoint's variables to a new one, dropping keys or adding {key: array}.

    Written with the raw save op, so any set of keys (a partial backbone) can be made.
    """
    reader = tf.train.load_checkpoint(source_prefix)
    tensors = {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
               if key.endswith("/.ATTRIBUTES/VARIABLE_VALUE") and key not in drop}
    tensors.update(extra or {})
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=target_prefix, tensor_names=names,
                      shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    return target_prefix


def _tiny_checkpoint(tmp_path):
    """A tiny backbone with random weights, saved below model/backbone/ beside a classifier."""
    model_config = build_config(overrides=TINY).model
    source = build_backbone(model_config, (64, 64, 3))
    for variable in source.weights:
        variable.assign(tf.random.stateless_uniform(variable.shape, seed=[1, len(variable.name)],
                                                    minval=0.5, maxval=1.5))
    classifier = tf.Variable(tf.ones([128, 10]))
    path = tf.train.Checkpoint(model=tf.train.Checkpoint(backbone=source, classifier=classifier)
                               ).write(str(tmp_path / "full-1"))
    return model_config, source, path


def test_full_backbone_checkpoint_loads_every_variable_exactly(tmp_path):
    model_config, source, path = _tiny_checkpoint(tmp_path)
    target = build_backbone(model_config, (64, 64, 3))
    report = load_backbone_weights(target, path)
    assert report.complete and report.prefix == "model/backbone/"
    assert len(report.loaded) == len(target.weights)
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _kernel_key(layer_index):
    return f"model/backbone/layer_with_weights-{layer_index}/kernel/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.mark.parametrize("case", ["missing", "shape", "unused"])
def test_partial_backbone_checkpoint_is_refused_with_the_variables_named(tmp_path, case):
    model_config, source, path = _tiny_checkpoint(tmp_path)
    if case == "missing":  # the first conv and a BN moving variance absent
        drop = {_kernel_key(0), "model/backbone/layer_with_weights-1/moving_variance/"
                ".ATTRIBUTES/VARIABLE_VALUE"}
        partial = _rewrite_checkpoint(path, str(tmp_path / "partial"), drop=drop)
        names = ["layer_with_weights-0/kernel (stage1_down/kernel)",
                 "layer_with_weights-1/moving_variance (stage1_down_bn/moving_variance)"]
        count = "2 backbone variables missing"
    elif case == "shape":  # the first conv with another number of filters
        partial = _rewrite_checkpoint(path, str(tmp_path / "partial"), drop={_kernel_key(0)},
                                      extra={_kernel_key(0): np.ones([3, 3, 3, 8], np.float32)})
        names = ["layer_with_weights-0/kernel (stage1_down/kernel)", "[3, 3, 3, 16]",
                 "[3, 3, 3, 8]"]
        count = "1 variables with another shape"
    else:  # a backbone layer this architecture does not have
        partial = _rewrite_checkpoint(path, str(tmp_path / "partial"),
                                      extra={_kernel_key(99): np.ones([3], np.float32)})
        names = [_kernel_key(99)[:-len("/.ATTRIBUTES/VARIABLE_VALUE")]]
        count = "1 unused file entries below the backbone"
    target = build_backbone(model_config, (64, 64, 3))
    before = [v.numpy() for v in target.weights]
    with pytest.raises(IncompleteBackboneCheckpoint) as error:
        load_backbone_weights(target, partial)
    message = str(error.value)
    assert count in message and all(name in message for name in names), message
    assert "model.backbone_checkpoint_partial=true" in message
    # Refused before anything is assigned.
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, target.weights))
    # The explicit flag loads what matches and reports the rest.
    report = load_backbone_weights(target, partial, allow_partial=True)
    assert not report.complete
    skipped = {"missing": {"stage1_down/kernel", "stage1_down_bn/moving_variance"},
               "shape": {"stage1_down/kernel"}, "unused": set()}[case]
    assert len(report.loaded) == len(target.weights) - len(skipped)
    for variable, loaded, initial in zip(target.weights, source.weights, before):
        want = initial if variable.name.split(":")[0] in skipped else loaded.numpy()
        np.testing.assert_array_equal(variable.numpy(), want)


@pytest.mark.slow
def test_training_refuses_a_partial_backbone_checkpoint_unless_allowed(tmp_path):
    model_config, _, path = _tiny_checkpoint(tmp_path)
    partial = _rewrite_checkpoint(path, str(tmp_path / "partial"), drop={_kernel_key(0)})
    config = build_config(overrides=TINY)
    config.model.backbone_checkpoint = partial
    with pytest.raises(IncompleteBackboneCheckpoint, match="stage1_down/kernel"):
        build_detector(config, image_size=(128, 128))
    config.model.backbone_checkpoint_partial = True
    model = build_detector(config, image_size=(128, 128))
    assert model.backbone_load_report.missing == [
        "layer_with_weights-0/kernel (stage1_down/kernel)"]
