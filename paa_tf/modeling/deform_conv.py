"""Modulated deformable convolution (DCNv2, Zhu et al. 2019) as a tf_keras layer.

A K = kh x kw convolution samples its input at the regular grid of a plain convolution moved
by a learned offset per output location and kernel tap, and scales each sample by a learned
modulation in (0, 1). For output location (i, j) and tap k = (a, b) of deformable group g:

    p_y = i * stride - padding + a * dilation + dy[g, k](i, j)
    p_x = j * stride - padding + b * dilation + dx[g, k](i, j)
    y[i, j, o] = bias[o] + sum_k sum_c w[k, c, o] * m[g, k](i, j) * bilinear(x[:, :, c], p_y, p_x)

where channel c belongs to deformable group g = c // (C / deformable_groups) and, with
``groups`` > 1, output o only reads the input channels of its conv group (as a grouped conv).
``bilinear`` interpolates the four integer neighbours of (p_y, p_x); a neighbour outside the
image contributes zero, so a sample at or beyond one pixel outside the image is zero (the
boundary rule of the DCN CUDA kernels of maskrcnn-benchmark / mmcv and of
``torchvision.ops.deform_conv2d``, which tests/test_deform_conv.py checks against).

The offsets and modulations come from a plain conv of the layer's own (same kernel, stride,
padding and dilation, with bias) with 3 * deformable_groups * K outputs: the first
2 * deformable_groups * K channels are the offsets, laid out (group, tap, (dy, dx)), the last
deformable_groups * K go through a sigmoid and are the modulations, laid out (group, tap).
That conv starts at zero (weights and bias), so a new layer samples the plain grid with every
modulation sigmoid(0) = 0.5: it computes 0.5 x the plain convolution (+ bias) until the offset
conv learns. (The zero start is mmcv's and maskrcnn-benchmark's ``ModulatedDeformConvPack``;
the authors' ``DFConv2d`` starts its offset conv kaiming-uniform in the backbone and N(0, 0.01)
in the head. Importing their weights replaces either.)

Parameters, named for ``paa_tf.convert``: ``kernel`` [kh, kw, C / groups, filters] (HWIO),
``bias`` [filters] (when ``use_bias``), ``offset_kernel`` [kh, kw, C, 3 * dg * K] and
``offset_bias`` [3 * dg * K].
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras


def _taps(kernel_size, dilation):
    """The (row, column) displacement of each of the K taps from the window's corner: [K] x 2,
    tap k = a * kw + b (row-major, as the offset channels are laid out)."""
    kh, kw = kernel_size
    rows = tf.repeat(tf.range(kh, dtype=tf.float32) * dilation, kw)
    cols = tf.tile(tf.range(kw, dtype=tf.float32) * dilation, [kh])
    return rows, cols


def modulated_deform_conv(x, offset, mask, kernel, bias=None, strides=1, padding=0,
                          dilation=1, groups=1, deformable_groups=1):
    """The DCNv2 convolution of the module docstring, given its offsets and modulations.

    Args:
      x: [B, H, W, C] input (any float dtype; the result has it).
      offset: [B, Ho, Wo, 2 * dg * K] offsets, channel (g * K + k) * 2 + {0: dy, 1: dx}.
      mask: [B, Ho, Wo, dg * K] modulations (already through the sigmoid), channel g * K + k.
      kernel: [kh, kw, C / groups, F]; bias: [F] or None.
      strides, padding, dilation: ints, the same in both directions (padding is symmetric).
    Returns:
      [B, Ho, Wo, F], Ho = (H + 2 padding - dilation (kh - 1) - 1) // strides + 1 (and Wo).
    """
    kh, kw, cin_per_group, filters = kernel.shape
    taps = kh * kw
    shape = tf.shape(x)
    batch, height, width = shape[0], shape[1], shape[2]
    channels = x.shape[-1]
    dg = deformable_groups
    out_h, out_w = tf.shape(offset)[1], tf.shape(offset)[2]
    # Coordinates and interpolation weights in float32 whatever the compute dtype: float16
    # would round a position of ~200 px to 1/8 px.
    # dy and dx are every other channel, taken by a strided slice of the 4-D tensor: slicing
    # them off a 6-D [B, Ho, Wo, dg, K, 2] has no LiteRT builtin (its STRIDED_SLICE stops at
    # 5-D), and the exported LiteRT file may use builtin ops only.
    offset = tf.cast(offset, tf.float32)
    offset_y = tf.reshape(offset[..., 0::2], [batch, out_h, out_w, dg, taps])
    offset_x = tf.reshape(offset[..., 1::2], [batch, out_h, out_w, dg, taps])
    mask = tf.reshape(tf.cast(mask, tf.float32), [batch, out_h, out_w, dg, taps])
    tap_y, tap_x = _taps((kh, kw), float(dilation))
    grid_y = tf.cast(tf.range(out_h) * strides - padding, tf.float32)
    grid_x = tf.cast(tf.range(out_w) * strides - padding, tf.float32)
    pos_y = grid_y[:, None, None, None] + tap_y + offset_y  # [B, Ho, Wo, dg, K]
    pos_x = grid_x[None, :, None, None] + tap_x + offset_x
    y0, x0 = tf.floor(pos_y), tf.floor(pos_x)
    frac_y, frac_x = pos_y - y0, pos_x - x0
    # [B, Ho, Wo, dg, K] -> [B, dg, Ho * Wo * K]: one gather per (image, deformable group).
    def per_group(t):
        return tf.reshape(tf.transpose(t, [0, 3, 1, 2, 4]), [batch, dg, -1])

    values = tf.transpose(tf.reshape(x, [batch, height * width, dg, channels // dg]),
                          [0, 2, 1, 3])  # [B, dg, H * W, C / dg]
    max_y = tf.cast(height - 1, tf.float32)
    max_x = tf.cast(width - 1, tf.float32)
    sampled = None
    for corner_y, weight_y in ((y0, 1.0 - frac_y), (y0 + 1.0, frac_y)):
        for corner_x, weight_x in ((x0, 1.0 - frac_x), (x0 + 1.0, frac_x)):
            inside = ((corner_y >= 0.0) & (corner_y <= max_y)
                      & (corner_x >= 0.0) & (corner_x <= max_x))
            # A neighbour outside the image weighs 0 (its clipped index reads any pixel).
            weight = tf.where(inside, weight_y * weight_x * mask, 0.0)
            index = (tf.cast(tf.clip_by_value(corner_y, 0.0, max_y), tf.int32) * width
                     + tf.cast(tf.clip_by_value(corner_x, 0.0, max_x), tf.int32))
            term = tf.gather(values, per_group(index), batch_dims=2) * tf.cast(
                per_group(weight)[..., None], x.dtype)
            sampled = term if sampled is None else sampled + term
    # [B, dg, Ho * Wo, K, C / dg] -> columns [B, Ho * Wo, K, C] (channel g * C / dg + c).
    sampled = tf.reshape(sampled, [batch, dg, out_h * out_w, taps, channels // dg])
    columns = tf.reshape(tf.transpose(sampled, [0, 2, 3, 1, 4]),
                         [batch, out_h * out_w, taps, channels])
    kernel = tf.cast(kernel, x.dtype)
    if groups == 1:
        out = tf.matmul(tf.reshape(columns, [batch, out_h * out_w, taps * channels]),
                        tf.reshape(kernel, [taps * channels, filters]))
    else:
        # Output channel o of conv group o // (F / groups) reads input channels of that group.
        columns = tf.reshape(columns, [batch, out_h * out_w, taps, groups, cin_per_group])
        weights = tf.reshape(kernel, [taps, cin_per_group, groups, filters // groups])
        out = tf.reshape(tf.einsum("bpkgc,kcgf->bpgf", columns, weights),
                         [batch, out_h * out_w, filters])
    out = tf.reshape(out, [batch, out_h, out_w, filters])
    if bias is not None:
        out = out + tf.cast(bias, x.dtype)
    return out


class ModulatedDeformConv2D(tf_keras.layers.Layer):
    """DCNv2 with its own offset/modulation conv (module docstring).

    Call with x [B, H, W, C]; returns [B, Ho, Wo, filters] (the shape of a plain conv with the
    same kernel, stride, symmetric padding and dilation).
    """

    def __init__(self, filters, kernel_size=3, strides=1, padding=None, dilation_rate=1,
                 groups=1, deformable_groups=1, use_bias=True, kernel_initializer="he_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.dilation_rate = int(dilation_rate)
        # Default: 'same' for stride 1, and the references' padding = dilation * (k // 2).
        self.padding = self.dilation_rate * (self.kernel_size // 2) if padding is None else int(
            padding)
        self.groups = int(groups)
        self.deformable_groups = int(deformable_groups)
        self.use_bias = use_bias
        self.kernel_initializer = tf_keras.initializers.get(kernel_initializer)
        self.bias_initializer = tf_keras.initializers.get(bias_initializer)
        if self.filters % self.groups:
            raise ValueError(f"{self.name}: filters {filters} is not divisible by groups "
                             f"{groups}")

    def build(self, input_shape):
        channels = int(input_shape[-1])
        for what, count in (("groups", self.groups), ("deformable_groups",
                                                      self.deformable_groups)):
            if channels % count:
                raise ValueError(f"{self.name}: {channels} input channels are not divisible by "
                                 f"{what} {count}")
        k = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel", shape=(k, k, channels // self.groups, self.filters),
            initializer=self.kernel_initializer, trainable=True)
        self.bias = (self.add_weight(name="bias", shape=(self.filters,),
                                     initializer=self.bias_initializer, trainable=True)
                     if self.use_bias else None)
        outputs = 3 * self.deformable_groups * k * k
        self.offset_kernel = self.add_weight(name="offset_kernel", shape=(k, k, channels,
                                                                          outputs),
                                             initializer="zeros", trainable=True)
        self.offset_bias = self.add_weight(name="offset_bias", shape=(outputs,),
                                           initializer="zeros", trainable=True)
        super().build(input_shape)

    def offsets_and_mask(self, x):
        """(offset [B, Ho, Wo, 2 dg K], mask [B, Ho, Wo, dg K] in (0, 1)) of input x."""
        pad = self.padding
        padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]) if pad else x
        out = tf.nn.conv2d(padded, tf.cast(self.offset_kernel, x.dtype), self.strides, "VALID",
                           dilations=self.dilation_rate)
        out = out + tf.cast(self.offset_bias, x.dtype)
        split = 2 * self.deformable_groups * self.kernel_size ** 2
        return out[..., :split], tf.sigmoid(tf.cast(out[..., split:], tf.float32))

    def call(self, x):
        offset, mask = self.offsets_and_mask(x)
        return modulated_deform_conv(x, offset, mask, self.kernel, self.bias, self.strides,
                                     self.padding, self.dilation_rate, self.groups,
                                     self.deformable_groups)

    def compute_output_shape(self, input_shape):
        def size(n):
            if n is None:
                return None
            span = self.dilation_rate * (self.kernel_size - 1) + 1
            return (n + 2 * self.padding - span) // self.strides + 1

        return (input_shape[0], size(input_shape[1]), size(input_shape[2]), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
            padding=self.padding, dilation_rate=self.dilation_rate, groups=self.groups,
            deformable_groups=self.deformable_groups, use_bias=self.use_bias,
            kernel_initializer=tf_keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=tf_keras.initializers.serialize(self.bias_initializer))
        return config
