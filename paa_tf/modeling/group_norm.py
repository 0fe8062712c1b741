"""GroupNorm for NHWC feature maps: the head's normalisation (Wu & He, 2018).

Each image's channels are split into ``groups`` consecutive groups; every group is normalised
by the mean and variance of all its values (H x W x C/groups of them), then each channel is
scaled by ``gamma`` and shifted by ``beta``.

Why not ``tf_keras.layers.GroupNormalization``: it reshapes the map to [B, H, W, G, C/G],
reduces over the non-adjacent axes (1, 2, 4), and computes weighted moments against a mask of
ones that it materialises even when no mask is given. Here the statistics come from
per-channel moments over (H, W), a reduction over the leading axes that TensorFlow runs fast,
merged into group statistics on [B, C]-sized tensors; the normalisation is folded into one
per-channel scale and offset, so the full-size map is read twice for the moments and once for
``x * scale + offset``. On the CPU this takes about half the Keras layer's time or less
(GroupNorm + ReLU at the R50 head's shapes at 640x640: 6.5-9.0 against 15.7-17.2 CPU ms per
image and layer; docs/BENCHMARKS.md).

The variables are those of the Keras layer (``gamma`` and ``beta``, float32 [C], initialised
to 1 and 0), so checkpoints written with either layer load into the other.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras


def channel_moments(features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and (biased) variance of each channel of float32 [B, H, W, C] over (H, W): [B, C]
    each. Two passes over the map (mean, then squared deviations), so nothing cancels."""
    return tf.nn.moments(features, axes=[1, 2])


def group_moments(features: tf.Tensor, groups: int,
                  per_channel=channel_moments) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and (biased) variance of each channel group.

    Args:
      features: float32 [B, H, W, C], C a multiple of ``groups``.
      groups: number of consecutive channel groups G.
      per_channel: the function giving each channel's (mean, variance), [B, C] each.
    Returns:
      (mean, variance), float32 [B, G, 1] each.
    """
    channels = features.shape[-1]
    channel_mean, channel_variance = per_channel(features)  # [B, C] each
    channel_mean = tf.reshape(channel_mean, [-1, groups, channels // groups])
    channel_variance = tf.reshape(channel_variance, [-1, groups, channels // groups])
    mean = tf.reduce_mean(channel_mean, axis=-1, keepdims=True)
    # Law of total variance (all channels of a group hold H x W values): the group's variance
    # is the mean of its channels' variances plus the variance of its channels' means. Both
    # terms are sums of squares of centred values, so nothing cancels as in E[x^2] - E[x]^2.
    variance = (tf.reduce_mean(channel_variance, axis=-1, keepdims=True)
                + tf.reduce_mean(tf.square(channel_mean - mean), axis=-1, keepdims=True))
    return mean, variance


class GroupNorm(tf_keras.layers.Layer):
    """GroupNorm over the last axis of [B, H, W, C] maps; output has the input's shape.

    Statistics are always computed in float32 (a float16 input is upcast for them); the
    output is in the layer's compute dtype. The head builds it with ``dtype="float32"``: under
    mixed precision its backward pass scales like 1 / sigma^3 and overflows float16.

    Args:
      groups: number of channel groups; the channel count must be a multiple of it.
      epsilon: added to the variance before the inverse square root.
    """

    # Each channel's moments over (H, W); a benchmark swaps in other formulations.
    channel_moments = staticmethod(channel_moments)

    def __init__(self, groups: int = 32, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        if groups < 1:
            raise ValueError(f"GroupNorm groups = {groups} must be at least 1")
        self.groups = groups
        self.epsilon = epsilon

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank != 4 or input_shape[-1] is None:
            raise ValueError(f"{self.name}: GroupNorm expects [B, H, W, C] maps with a known "
                             f"channel count, got shape {input_shape}")
        channels = int(input_shape[-1])
        if channels % self.groups:
            raise ValueError(f"{self.name}: {channels} channels are not divisible into "
                             f"{self.groups} groups; use a channel count that is a multiple "
                             f"of {self.groups}")
        # Same names, shapes and initial values as tf_keras.layers.GroupNormalization.
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        channels = inputs.shape[-1]
        per_group = channels // self.groups
        mean, variance = group_moments(tf.cast(inputs, tf.float32), self.groups,
                                       self.channel_moments)  # [B, G, 1] each
        # y = (x - mean) / sqrt(var + eps) * gamma + beta = x * scale + offset per channel.
        inv_std = tf.math.rsqrt(variance + self.epsilon)
        gamma = tf.reshape(tf.cast(self.gamma, tf.float32), [self.groups, per_group])
        beta = tf.reshape(tf.cast(self.beta, tf.float32), [self.groups, per_group])
        scale = inv_std * gamma  # [B, G, C/G]
        offset = beta - mean * scale
        scale = tf.reshape(scale, [-1, 1, 1, channels])
        offset = tf.reshape(offset, [-1, 1, 1, channels])
        return inputs * tf.cast(scale, inputs.dtype) + tf.cast(offset, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(groups=self.groups, epsilon=self.epsilon)
        return config
