"""The PAA head, shared by all pyramid levels (paper Sec. 3.2; docs/PAA.md, "Network").

Two towers of ``num_convs`` x (3x3 conv, GroupNorm(32), ReLU) (with ``dcn``, the last conv of
each tower a modulated deformable conv, ``paa_tf.modeling.deform_conv``, as the authors'
``USE_DCN_IN_TOWER``; its offset conv starts at zero): the classification tower feeds
the class logits, the box tower feeds the box deltas (times a learnable per-level scale,
initialised to 1) and the auxiliary quality logit (IoU prediction, or centerness for the
ablation). Convs are initialised N(0, 0.01) with bias 0; the class bias is
-log((1 - prior) / prior) so that every anchor starts with probability ``prior`` (-4.59512 for
0.01).

Outputs are flattened over levels exactly as the references (KK, MM) do: per image, level
``min_level`` first, inside a level row-major over (y, x), one anchor per location.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras

from paa_tf.modeling.deform_conv import ModulatedDeformConv2D
from paa_tf.modeling.group_norm import GroupNorm

AUX_HEADS = ("iou", "centerness", "none")


def _normal_conv(filters, name, bias_value=0.0):
    return tf_keras.layers.Conv2D(
        filters, 3, padding="same", use_bias=True,
        kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.01),
        bias_initializer=tf_keras.initializers.Constant(bias_value), name=name)


class PAAHead(tf_keras.layers.Layer):
    """Shared PAA head.

    Call with a dict ``{level: feature [B, H_l, W_l, channels]}`` for levels
    ``min_level..max_level``; returns a dict of tensors in the compute dtype:
      ``cls_logits`` [B, A, num_classes], ``box_deltas`` [B, A, 4] in the order (dy, dx, dh, dw)
      of ``paa_tf.ops.boxes.encode_boxes``, and, unless ``aux_head == 'none'``, ``iou_logits``
      [B, A] (the IoU-prediction logit, or the centerness logit when ``aux_head ==
      'centerness'``), with A = sum_l H_l * W_l.
    """

    def __init__(self, num_classes: int, channels: int = 256, num_convs: int = 4,
                 min_level: int = 3, max_level: int = 7, prior_prob: float = 0.01,
                 aux_head: str = "iou", norm: str = "group", dcn: bool = False,
                 deformable_groups: int = 1, **kwargs):
        super().__init__(**kwargs)
        if aux_head not in AUX_HEADS:
            raise ValueError(f"model.aux_head = {aux_head!r}; choose one of {AUX_HEADS}")
        if norm not in ("group", "none"):
            raise ValueError(f"model.head_norm = {norm!r}; choose 'group' or 'none'")
        if norm == "group" and channels % 32:
            raise ValueError(
                f"model.head_channels = {channels} must be a multiple of 32 for GroupNorm(32)")
        self.num_classes = num_classes
        self.channels = channels
        self.num_convs = num_convs
        self.min_level = min_level
        self.max_level = max_level
        self.prior_prob = prior_prob
        self.aux_head = aux_head
        self.norm = norm
        self.dcn = dcn
        self.deformable_groups = deformable_groups
        self.cls_tower = self._tower("cls_tower")
        self.box_tower = self._tower("box_tower")
        prior_bias = -math.log((1.0 - prior_prob) / prior_prob)
        self.cls_logits = _normal_conv(num_classes, "cls_logits", bias_value=prior_bias)
        self.bbox_pred = _normal_conv(4, "bbox_pred")
        self.aux_pred = _normal_conv(1, f"{aux_head}_pred") if aux_head != "none" else None

    def _tower(self, name):
        layers = []
        for i in range(self.num_convs):
            if self.dcn and i == self.num_convs - 1:
                layers.append(ModulatedDeformConv2D(
                    self.channels, 3, deformable_groups=self.deformable_groups,
                    kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.01),
                    name=f"{name}_conv{i}"))
            else:
                layers.append(_normal_conv(self.channels, f"{name}_conv{i}"))
            if self.norm == "group":
                # float32 under mixed precision: with few values per group the backward pass
                # scales like 1/sigma^3 and overflows float16.
                layers.append(GroupNorm(groups=32, epsilon=1e-5, dtype="float32",
                                        name=f"{name}_gn{i}"))
            layers.append(tf_keras.layers.ReLU(name=f"{name}_relu{i}"))
        return layers

    def build(self, input_shape):
        # One scalar per level multiplies all four deltas of that level (as in KK and MM).
        self.scales = [
            self.add_weight(name=f"scale_p{level}", shape=(), initializer="ones",
                            trainable=True)
            for level in range(self.min_level, self.max_level + 1)]
        super().build(input_shape)

    @staticmethod
    def _run(layers, x):
        for layer in layers:
            x = layer(x)
        return x

    def call(self, features):
        cls_out, box_out, aux_out = [], [], []
        for index, level in enumerate(range(self.min_level, self.max_level + 1)):
            feature = features[level]
            batch = tf.shape(feature)[0]
            height, width = feature.shape[1], feature.shape[2]
            # A static location count keeps A known at graph-building time.
            locations = height * width if height is not None and width is not None else -1
            cls_feature = self._run(self.cls_tower, feature)
            box_feature = self._run(self.box_tower, feature)
            logits = self.cls_logits(cls_feature)
            deltas = self.bbox_pred(box_feature) * tf.cast(self.scales[index], feature.dtype)
            # NHWC reshape = row-major (y, x) order, as the references flatten NCHW outputs.
            cls_out.append(tf.reshape(logits, [batch, locations, self.num_classes]))
            box_out.append(tf.reshape(deltas, [batch, locations, 4]))
            if self.aux_pred is not None:
                aux_out.append(tf.reshape(self.aux_pred(box_feature), [batch, locations]))
        outputs = {"cls_logits": tf.concat(cls_out, axis=1),
                   "box_deltas": tf.concat(box_out, axis=1)}
        if aux_out:
            outputs["iou_logits"] = tf.concat(aux_out, axis=1)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, channels=self.channels,
                      num_convs=self.num_convs, min_level=self.min_level,
                      max_level=self.max_level, prior_prob=self.prior_prob,
                      aux_head=self.aux_head, norm=self.norm, dcn=self.dcn,
                      deformable_groups=self.deformable_groups)
        return config
