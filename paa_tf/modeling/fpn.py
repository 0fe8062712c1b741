"""Feature pyramid P3..P7 on top of C3..C5 (docs/PAA.md, "Network").

* lateral 1x1 conv on each C_l, top-down: nearest upsample (PyTorch's index rule) of the
  coarser merged map to the exact size of the lateral, add; 3x3 output conv -> P3, P4, P5;
* P6 = 3x3 stride-2 conv on P5; P7 = 3x3 stride-2 conv on ReLU(P6) (KK) or on P6 (MM,
  ``p7_from_relu=False``);
* convs with bias, no norm; kernel init ``lecun_uniform`` (= PyTorch's kaiming_uniform(a=1),
  the authors') or ``glorot_uniform`` (= xavier_uniform, mmdetection's FPN; ``model.fpn_init``),
  bias 0; stride-2 convs pad one pixel on each side and convolve 'valid' so the sampling grid
  matches PyTorch's (TF's 'same' pads 0 before / 1 after on even inputs).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras


def nearest_resize(x, size):
    """Nearest-neighbour resize of x [B, h, w, C] to ``size`` (H, W), PyTorch's rule.

    Output row i reads input row floor(i * h / H) (``F.interpolate(mode='nearest')``);
    ``tf.image.resize`` uses half-pixel centres instead, which picks different rows when the
    ratio is not exactly 2 (e.g. 3 -> 5 rows: [0, 0, 1, 1, 2] here, [0, 0, 1, 2, 2] there).
    """
    in_h = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
    in_w = x.shape[2] if x.shape[2] is not None else tf.shape(x)[2]
    rows = (tf.range(size[0]) * in_h) // size[0]
    cols = (tf.range(size[1]) * in_w) // size[1]
    return tf.gather(tf.gather(x, rows, axis=1), cols, axis=2)


def _conv(filters, kernel_size, name, strides=1, padding="same", init="lecun_uniform"):
    return tf_keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=True,
        kernel_initializer=init, bias_initializer="zeros", name=name)


class FPN(tf_keras.layers.Layer):
    """Feature pyramid network.

    Call with a dict ``{3: C3, 4: C4, 5: C5}`` of float [B, H_l, W_l, C_l] maps; returns a dict
    ``{3: P3, ..., max_level: P_max}`` of [B, H_l, W_l, channels] maps, where
    H_{l+1} = ceil(H_l / 2) for the extra levels.
    """

    def __init__(self, channels: int = 256, min_level: int = 3, max_level: int = 7,
                 p7_from_relu: bool = True, kernel_init: str = "lecun_uniform", **kwargs):
        super().__init__(**kwargs)
        if min_level != 3 or not 5 <= max_level <= 7:
            raise ValueError(
                f"FPN supports min_level 3 and max_level 5..7, got {min_level}..{max_level}")
        self.channels = channels
        self.min_level = min_level
        self.max_level = max_level
        self.p7_from_relu = p7_from_relu
        self.kernel_init = kernel_init
        # String keys: trackable dicts with int keys cannot be checkpointed.
        self.laterals = {f"c{lv}": _conv(channels, 1, f"lateral_c{lv}", init=kernel_init)
                         for lv in (3, 4, 5)}
        self.output_convs = {f"p{lv}": _conv(channels, 3, f"output_p{lv}", init=kernel_init)
                             for lv in (3, 4, 5)}
        self.extra_pads = {f"p{lv}": tf_keras.layers.ZeroPadding2D(1, name=f"pad_p{lv}")
                           for lv in range(6, max_level + 1)}
        self.extra_convs = {f"p{lv}": _conv(channels, 3, f"extra_p{lv}", strides=2,
                                            padding="valid", init=kernel_init)
                            for lv in range(6, max_level + 1)}

    def call(self, features):
        merged = self.laterals["c5"](features[5])
        results = {5: self.output_convs["p5"](merged)}
        for lv in (4, 3):
            lateral = self.laterals[f"c{lv}"](features[lv])
            # Static sizes when known keep the anchor count static downstream.
            size = [lateral.shape[i] if lateral.shape[i] is not None else tf.shape(lateral)[i]
                    for i in (1, 2)]
            merged = lateral + nearest_resize(merged, size)
            results[lv] = self.output_convs[f"p{lv}"](merged)
        previous = results[5]
        for lv in range(6, self.max_level + 1):
            if lv == 7 and self.p7_from_relu:
                previous = tf.nn.relu(previous)
            previous = self.extra_convs[f"p{lv}"](self.extra_pads[f"p{lv}"](previous))
            results[lv] = previous
        return results

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, min_level=self.min_level,
                      max_level=self.max_level, p7_from_relu=self.p7_from_relu,
                      kernel_init=self.kernel_init)
        return config
