"""Backbones that turn an image into the C3..C5 feature maps the FPN consumes.

Two families:

* ``resnet18`` .. ``resnet152``: Model Garden's ``official.vision`` ResNet. Frozen BatchNorm
  (fixed affine and statistics, as in KK) is Keras BatchNormalization with ``trainable=False``,
  which in tf_keras also forces inference mode, so the moving statistics are used and never
  updated. ``freeze_at`` freezes the stem (1) and the stages res2..res{freeze_at}.
* ``resnext101_64x4d``, ``resnext101_32x8d``, ``resnext152_32x8d``: ResNeXt, PyTorch layouts
  only (``paa_tf.modeling.resnet_torch``), like the ResNets with ``model.backbone_style``
  torchvision or msra; those also take deformable 3x3 convs (``model.backbone_dcn_stages``).
* ``tiny``: a plain conv net (16-128 channels) for CPU runs and tests. Stride-2 convs use an
  explicit one-pixel zero padding and 'valid' convolution, like PyTorch (see fpn.py).

``build_backbone`` returns a functional ``tf_keras.Model`` mapping an image
``float32 [B, H, W, 3]`` to ``{3: C3, 4: C4, 5: C5}`` (strides 8, 16, 32).
"""

from __future__ import annotations

import re

import tf_keras

from paa_tf import config as config_lib
from paa_tf.modeling.resnet_torch import build_torch_resnet

BACKBONES = config_lib.choices("model.backbone")
RESNET_DEPTHS = {name: int(name[len("resnet"):]) for name in BACKBONES
                 if re.fullmatch(r"resnet\d+", name)}
# resnextD_GxWd -> (depth D, groups G, width per group W): PyTorch layouts only.
RESNEXT = {name: tuple(int(n) for n in match.groups()) for name in BACKBONES
           for match in [re.fullmatch(r"resnext(\d+)_(\d+)x(\d+)d", name)] if match}

# Channels of the tiny backbone's stages at strides 2, 4, 8, 16, 32.
TINY_CHANNELS = (16, 32, 64, 96, 128)


def _conv_bn_relu(x, filters, name, strides=1, frozen_bn=False):
    """3x3 conv (symmetric 1-pixel padding when strided, PyTorch's grid), BatchNorm, ReLU.

    BatchNorm makes this from-scratch net train in the CPU quickstart's budget; without it
    the plain stack learned several times slower.
    """
    if strides == 2:
        x = tf_keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    x = tf_keras.layers.Conv2D(filters, 3, strides=strides,
                               padding="valid" if strides == 2 else "same", use_bias=False,
                               name=name)(x)
    bn = tf_keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name=f"{name}_bn")
    # Frozen BN is a fixed affine map in inference mode (identity at initialisation).
    bn.trainable = not frozen_bn
    x = bn(x)
    return tf_keras.layers.ReLU(name=f"{name}_relu")(x)


def build_tiny_backbone(input_shape=(None, None, 3), name="tiny_backbone",
                        frozen_bn=False) -> tf_keras.Model:
    """A small conv net: each stage is a stride-2 conv then a 3x3 conv, each with BN + ReLU.

    Args:
      input_shape: (H, W, 3); H and W may be None.
      frozen_bn: keep BatchNorm fixed (`model.frozen_bn`); train it when from scratch.
    Returns:
      tf_keras.Model: image float32 [B, H, W, 3] -> {3: [B, H/8, W/8, 64],
      4: [B, H/16, W/16, 96], 5: [B, H/32, W/32, 128]} (ceil division).
    """
    inputs = tf_keras.Input(shape=input_shape, name="image")
    x = inputs
    outputs = {}
    for stage, channels in enumerate(TINY_CHANNELS, start=1):
        x = _conv_bn_relu(x, channels, f"stage{stage}_down", strides=2, frozen_bn=frozen_bn)
        x = _conv_bn_relu(x, channels, f"stage{stage}_conv", frozen_bn=frozen_bn)
        if stage >= 3:
            outputs[stage] = x
    return tf_keras.Model(inputs, outputs, name=name)


def _resnet_stage_of_layers(model: tf_keras.Model) -> list[tuple[tf_keras.layers.Layer, int]]:
    """Pairs each top-level layer of a Model Garden ResNet with its stage (1 = stem, 2..5).

    Model Garden marks the end of stage N with an identity layer named ``block_group_lN``;
    everything before the first residual block is the stem.
    """
    stage = 1
    pairs = []
    for layer in model.layers:
        is_block = type(layer).__name__ in ("ResidualBlock", "BottleneckBlock")
        if is_block and stage == 1:
            stage = 2
        pairs.append((layer, stage))
        if layer.name.startswith("block_group_l"):
            stage = int(layer.name[len("block_group_l"):]) + 1
    return pairs


def build_resnet_backbone(depth: int, input_shape=(None, None, 3), freeze_at: int = 2,
                          frozen_bn: bool = True, bn_epsilon: float = 1e-5) -> tf_keras.Model:
    """Model Garden ResNet with frozen BN and a frozen stem/first stages.

    Args:
      depth: 18, 34, 50, 101 or 152.
      input_shape: (H, W, 3); H and W may be None.
      freeze_at: 0 freezes nothing, 1 the stem, k >= 2 the stem and stages res2..res{k}.
      frozen_bn: True makes every BatchNormalization a fixed affine map (inference mode).
      bn_epsilon: epsilon of every BatchNormalization, (x - mean) / sqrt(var + eps) * gamma +
        beta. It must be the one the checkpoint was trained with: with frozen statistics a
        wrong value rescales every low-variance channel of all BN layers. Model Garden's
        ImageNet ResNets (experiment ``resnet_imagenet``) use 1e-5, not the 1e-3 default of
        its ResNet class.
    Returns:
      tf_keras.Model: image float32 [B, H, W, 3] -> {3: C3, 4: C4, 5: C5}.
    """
    # Model Garden's vision package takes seconds to import: only for its own ResNet.
    from official.vision.modeling.backbones import resnet

    if not 0 <= freeze_at <= 5:
        raise ValueError(f"model.freeze_at must be in 0..5, got {freeze_at}")
    resnet_model = resnet.ResNet(
        depth, input_specs=tf_keras.layers.InputSpec(shape=[None, *input_shape]),
        bn_trainable=not frozen_bn, norm_epsilon=bn_epsilon)
    for layer, stage in _resnet_stage_of_layers(resnet_model):
        if stage <= freeze_at:
            layer.trainable = False
    inputs = tf_keras.Input(shape=input_shape, name="image")
    endpoints = resnet_model(inputs)
    outputs = {level: endpoints[str(level)] for level in (3, 4, 5)}
    return tf_keras.Model(inputs, outputs, name=f"resnet{depth}_backbone")


def build_backbone(model_config, input_shape=(None, None, 3)) -> tf_keras.Model:
    """Builds the backbone named by ``model_config.backbone`` (see module docstring).

    Weights are not loaded here; see ``paa_tf.modeling.weights.load_backbone_weights``.
    """
    name = model_config.backbone
    if name == "tiny":
        return build_tiny_backbone(input_shape, frozen_bn=model_config.frozen_bn)
    style = model_config.backbone_style
    if style != "model_garden" and (name in RESNET_DEPTHS or name in RESNEXT):
        depth, groups, width = RESNEXT.get(name, (RESNET_DEPTHS.get(name), 1, 64))
        return build_torch_resnet(
            depth, style, input_shape, freeze_at=model_config.freeze_at,
            frozen_bn=model_config.frozen_bn, bn_epsilon=model_config.bn_epsilon,
            input_channels=model_config.input_channels, groups=groups, width_per_group=width,
            dcn_stages=tuple(model_config.backbone_dcn_stages),
            deformable_groups=model_config.deformable_groups)
    unsupported = [key for key, used in (
        ("model.input_channels: bgr", model_config.input_channels != "rgb"),
        (f"model.backbone: {name}", name in RESNEXT),
        ("model.backbone_dcn_stages", bool(model_config.backbone_dcn_stages))) if used]
    if unsupported:
        raise ValueError(f"{unsupported[0]} needs a PyTorch-layout ResNet: set "
                         "model.backbone_style to torchvision or msra (not model_garden)")
    if name in RESNET_DEPTHS:
        return build_resnet_backbone(
            RESNET_DEPTHS[name], input_shape,
            freeze_at=model_config.freeze_at, frozen_bn=model_config.frozen_bn,
            bn_epsilon=model_config.bn_epsilon)
    raise ValueError(
        f"model.backbone = {name!r} is not supported; choose one of {', '.join(BACKBONES)}")


def resnet_inner_model(backbone: tf_keras.Model) -> tf_keras.Model | None:
    """The wrapped Model Garden ResNet of a ResNet backbone (for weight loading), else None."""
    for layer in backbone.layers:
        if type(layer).__name__ == "ResNet":
            return layer
    return None
