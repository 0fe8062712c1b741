"""A bottleneck ResNet laid out like the PyTorch ResNets, to run their weights exactly.

Model Garden's ResNet (`paa_tf.modeling.backbone`, ``model.backbone_style: model_garden``)
pads its stride-2 convolutions and the stem's max-pool with TensorFlow's ``'same'`` rule:
for an even input it pads 0 pixels before and 1 after, so every stride-2 layer samples a grid
shifted by one pixel from PyTorch's, which pads ``kernel // 2`` pixels on every side. Weights
trained in PyTorch then give other features. This ResNet pads explicitly like PyTorch and
convolves ``'valid'``, and has the two bottleneck layouts of the PyTorch detection codes:

* ``torchvision`` (mmdetection's ``style='pytorch'``, torchvision's ``Bottleneck``): the
  stride of a downsampling block sits in its 3x3 conv (``conv2``);
* ``msra`` (maskrcnn-benchmark, the authors' code, ``MODEL.RESNETS.STRIDE_IN_1X1 = True``):
  the stride sits in the first 1x1 conv (``conv1``), as in the MSRA/Caffe ResNets.

Both: stem = 7x7 stride-2 conv with 3 pixels of padding (no bias), BN, ReLU, 3x3 stride-2
max-pool with 1 pixel of padding; stages ``layer1..layer4`` of (3, 4, 6, 3) / (3, 4, 23, 3) /
(3, 8, 36, 3) bottlenecks of width 64·2^(i-1) and output 256·2^(i-1); the first block of
every stage has a projection shortcut (1x1 conv with the block's stride, then BN); stage 1
has stride 1, the others stride 2. Every conv of the backbone is bias-free and followed by BN.

BatchNorm is Keras ``BatchNormalization`` with the checkpoint's ε (``model.bn_epsilon``):
1e-5 for torchvision/mmdetection (``nn.BatchNorm2d``'s default), 0 for maskrcnn-benchmark,
whose ``FrozenBatchNorm2d`` computes ``weight / sqrt(running_var)`` with no ε at all.

ResNeXt (Xie et al. 2017) is the same network with a grouped 3x3 conv: ``groups`` groups of
``width_per_group`` channels in the first stage's bottleneck (``X-101-64x4d``: 64 x 4 = 256,
where ResNet-50/101 have 64), the width doubling per stage like the output; the 1x1 convs and
the shortcut are unchanged. The authors' ResNeXt configs (and torchvision's ResNeXts) put
the stride in the 3x3 conv (``STRIDE_IN_1X1: False``), i.e. ``style='torchvision'``.

``dcn_stages`` makes the 3x3 conv of every block of those stages (numbered 2..5 = res2..res5
= ``layer1..layer4``) a modulated deformable conv (``paa_tf.modeling.deform_conv``; no bias,
the block's groups, ``deformable_groups``), as the authors' ``STAGE_WITH_DCN`` does.

Layer names follow the PyTorch module paths with '.' written '_' (``layer2_0_conv1``,
``layer2_0_downsample_conv``, ``layer2_0_downsample_bn``), so ``paa_tf.convert`` maps a
checkpoint key to a layer by name.
"""

from __future__ import annotations

import re

import tensorflow as tf
import tf_keras

from paa_tf import config as config_lib
from paa_tf.modeling.deform_conv import ModulatedDeformConv2D

STYLES = tuple(s for s in config_lib.choices("model.backbone_style") if s != "model_garden")
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _conv(x, filters, kernel, stride, name, groups=1):
    """Conv with PyTorch's symmetric zero padding of kernel // 2 pixels, no bias."""
    pad = kernel // 2
    if pad:
        x = tf_keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return tf_keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid",
                                  groups=groups, use_bias=False, name=name)(x)


def _bn(x, name, epsilon, frozen):
    # momentum 0.9 = PyTorch's momentum 0.1 (only used when BN trains).
    bn = tf_keras.layers.BatchNormalization(momentum=0.9, epsilon=epsilon, name=name)
    # trainable=False also puts tf_keras BN in inference mode: the checkpoint's statistics.
    bn.trainable = not frozen
    return bn(x)


def _bottleneck(x, width, out_channels, stride, name, style, epsilon, frozen_bn, groups=1,
                deformable=False, deformable_groups=1):
    """One bottleneck block: 1x1 -> 3x3 (grouped, maybe deformable) -> 1x1, residual, ReLU."""
    stride_1x1, stride_3x3 = (stride, 1) if style == "msra" else (1, stride)
    shortcut = x
    if x.shape[-1] != out_channels or stride != 1:
        shortcut = _conv(x, out_channels, 1, stride, f"{name}_downsample_conv")
        shortcut = _bn(shortcut, f"{name}_downsample_bn", epsilon, frozen_bn)
    y = _conv(x, width, 1, stride_1x1, f"{name}_conv1")
    y = tf_keras.layers.ReLU(name=f"{name}_relu1")(_bn(y, f"{name}_bn1", epsilon, frozen_bn))
    if deformable:
        y = ModulatedDeformConv2D(width, 3, strides=stride_3x3, padding=1, groups=groups,
                                  deformable_groups=deformable_groups, use_bias=False,
                                  name=f"{name}_conv2")(y)
    else:
        y = _conv(y, width, 3, stride_3x3, f"{name}_conv2", groups=groups)
    y = tf_keras.layers.ReLU(name=f"{name}_relu2")(_bn(y, f"{name}_bn2", epsilon, frozen_bn))
    y = _conv(y, out_channels, 1, 1, f"{name}_conv3")
    y = _bn(y, f"{name}_bn3", epsilon, frozen_bn)
    y = tf_keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return tf_keras.layers.ReLU(name=f"{name}_out")(y)


class ChannelReverse(tf_keras.layers.Layer):
    """RGB -> BGR: the pipeline feeds RGB, a Caffe-trained first conv expects BGR.

    Reversing the channels after the normalisation equals normalising the BGR image with the
    means in BGR order, since subtracting per-channel constants commutes with the permutation.
    """

    def call(self, x):
        return tf.reverse(x, axis=[-1])


def build_torch_resnet(depth: int, style: str = "torchvision", input_shape=(None, None, 3),
                       freeze_at: int = 2, frozen_bn: bool = True, bn_epsilon: float = 1e-5,
                       input_channels: str = "rgb", groups: int = 1, width_per_group: int = 64,
                       dcn_stages=(), deformable_groups: int = 1, name=None) -> tf_keras.Model:
    """The PyTorch-layout ResNet (see the module docstring).

    Args:
      depth: 50, 101 or 152.
      style: 'torchvision' (stride in the 3x3 conv) or 'msra' (stride in the first 1x1).
      input_shape: (H, W, 3); H and W may be None.
      freeze_at: 0 freezes nothing, 1 the stem, k >= 2 the stem and layer1..layer{k-1}
        (res2..res{k}, the references' FREEZE_CONV_BODY_AT / frozen_stages + 1).
      frozen_bn: every BatchNorm a fixed affine map with the checkpoint's statistics.
      bn_epsilon: BatchNorm ε (1e-5 torchvision, 0 maskrcnn-benchmark's FrozenBatchNorm2d).
      input_channels: 'rgb', or 'bgr' to reverse the (normalised RGB) input's channels first.
      groups, width_per_group: the first stage's 3x3 conv has ``groups`` groups of
        ``width_per_group`` channels (1 x 64: ResNet; 64 x 4, 32 x 8: ResNeXt).
      dcn_stages: stages (2..5) whose 3x3 convs are modulated deformable convs.
      deformable_groups: their offset groups.
    Returns:
      tf_keras.Model: image float32 [B, H, W, 3] -> {3: C3 [B, H/8, W/8, 512],
      4: C4 [B, H/16, W/16, 1024], 5: C5 [B, H/32, W/32, 2048]} (ceil division).
    """
    if depth not in BLOCKS:
        raise ValueError(f"PyTorch-layout ResNet depth {depth} is not supported; choose one of "
                         f"{sorted(BLOCKS)}")
    if style not in STYLES:
        raise ValueError(f"model.backbone_style {style!r}: choose one of {STYLES}")
    if input_channels not in ("rgb", "bgr"):
        raise ValueError(f"model.input_channels {input_channels!r}: choose 'rgb' or 'bgr'")
    if not 0 <= freeze_at <= 5:
        raise ValueError(f"model.freeze_at must be in 0..5, got {freeze_at}")
    if not set(dcn_stages) <= {2, 3, 4, 5}:
        raise ValueError(f"model.backbone_dcn_stages {list(dcn_stages)}: stages are 2..5 "
                         "(res2..res5)")
    inputs = tf_keras.Input(shape=input_shape, name="image")
    x = ChannelReverse(name="rgb_to_bgr")(inputs) if input_channels == "bgr" else inputs
    x = _conv(x, 64, 7, 2, "conv1")
    x = tf_keras.layers.ReLU(name="stem_relu")(_bn(x, "bn1", bn_epsilon, frozen_bn))
    # PyTorch pads the max-pool with -inf; after the ReLU every value is >= 0 and each window
    # holds at least one real pixel, so zero padding gives the same maxima.
    x = tf_keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = tf_keras.layers.MaxPool2D(3, strides=2, padding="valid", name="stem_pool")(x)
    outputs = {}
    for stage, count in enumerate(BLOCKS[depth], start=1):
        for block in range(count):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _bottleneck(x, groups * width_per_group * 2 ** (stage - 1),
                            256 * 2 ** (stage - 1), stride, f"layer{stage}_{block}", style,
                            bn_epsilon, frozen_bn, groups=groups,
                            deformable=stage + 1 in dcn_stages,
                            deformable_groups=deformable_groups)
        if stage >= 2:
            outputs[stage + 1] = x
    kind = f"resnext{depth}_{groups}x{width_per_group}d" if groups > 1 else f"resnet{depth}"
    model = tf_keras.Model(inputs, outputs, name=name or f"{kind}_{style}_backbone")
    for layer in model.layers:
        # Stage 1 is the stem (every layer not in a 'layerN_' stage), stage k is layer{k-1}.
        match = re.match(r"layer(\d)_", layer.name)
        stage = int(match.group(1)) + 1 if match else 1
        if stage <= freeze_at:
            layer.trainable = False
    return model
