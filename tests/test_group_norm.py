"""The head's GroupNorm (paa_tf/modeling/group_norm.py): the same function, gradients and
variables as tf_keras.layers.GroupNormalization, so old checkpoints still load."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from paa_tf.config import build_config
from paa_tf.modeling import build_detector
from paa_tf.modeling import head as head_module
from paa_tf.modeling.group_norm import GroupNorm

TINY = ("model.backbone=tiny,model.num_classes=3,model.fpn_channels=32,"
        "model.head_channels=32,model.head_convs=2")


def _features(shape, seed, mean=1.5, std=3.0):
    """float32 maps with per-channel offsets and spreads, so groups differ."""
    rng = np.random.default_rng(seed)
    channel_mean = rng.uniform(-mean, mean, shape[-1])
    channel_std = rng.uniform(0.1, std, shape[-1])
    return (rng.standard_normal(shape) * channel_std + channel_mean).astype(np.float32)


def _layer_pair(shape, groups, epsilon, seed, dtype="float32"):
    """(ours, Keras's) built for `shape`, sharing random gamma and beta."""
    ours = GroupNorm(groups=groups, epsilon=epsilon, dtype=dtype)
    keras = tf_keras.layers.GroupNormalization(groups=groups, epsilon=epsilon, dtype=dtype)
    ours.build(shape)
    keras.build(shape)
    rng = np.random.default_rng(seed + 100)
    for name in ("gamma", "beta"):
        value = rng.standard_normal(shape[-1]).astype(np.float32)
        getattr(ours, name).assign(value)
        getattr(keras, name).assign(value)
    return ours, keras


def numpy_group_norm(x, gamma, beta, groups, epsilon):
    """Independent oracle: the definition, two passes per group, in float64."""
    b, h, w, c = x.shape
    grouped = x.astype(np.float64).reshape(b, h, w, groups, c // groups)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    variance = ((grouped - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    normalised = ((grouped - mean) / np.sqrt(variance + epsilon)).reshape(b, h, w, c)
    return normalised * gamma + beta


@pytest.mark.parametrize("shape, groups, epsilon", [
    ((2, 7, 9, 64), 32, 1e-5),    # the head's setting, odd map sizes
    ((1, 16, 16, 32), 32, 1e-5),  # one channel per group (a narrow head)
    ((3, 5, 4, 48), 4, 1e-3),
    ((2, 1, 1, 32), 8, 1e-5),     # a P7-like 1x1 map: 4 values per group
    ((1, 20, 12, 16), 1, 0.1),    # one group (LayerNorm over H, W, C), large epsilon
])
def test_outputs_and_gradients_match_the_keras_layer(shape, groups, epsilon):
    x = tf.constant(_features(shape, seed=sum(shape) + groups))
    ours, keras = _layer_pair(shape, groups, epsilon, seed=groups)
    upstream = tf.constant(np.random.default_rng(7).standard_normal(shape), tf.float32)
    results = []
    for layer in (ours, keras):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * upstream)
        results.append((y, *tape.gradient(loss, [x, layer.gamma, layer.beta])))
    for got, want in zip(*results):
        scale = float(tf.reduce_max(tf.abs(want)))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6 * scale)
    oracle = numpy_group_norm(x.numpy(), ours.gamma.numpy(), ours.beta.numpy(), groups, epsilon)
    np.testing.assert_allclose(results[0][0], oracle, rtol=1e-5, atol=1e-5)


def test_statistics_survive_a_large_mean_where_one_pass_moments_cancel():
    # mean 1000, spread 0.1: E[x^2] - E[x]^2 in float32 loses every digit of the variance.
    x = _features((1, 8, 8, 32), seed=3, mean=1.0, std=0.1) + np.float32(1000.0)
    layer = GroupNorm(groups=4)
    y = layer(tf.constant(x)).numpy()
    oracle = numpy_group_norm(x, np.ones(32), np.zeros(32), 4, 1e-5)
    np.testing.assert_allclose(y, oracle, rtol=1e-3, atol=1e-3)
    grouped = x.astype(np.float32).reshape(1, 8, 8, 4, 8)
    one_pass = (grouped ** 2).mean(axis=(1, 2, 4)) - grouped.mean(axis=(1, 2, 4)) ** 2
    exact = grouped.astype(np.float64).var(axis=(1, 2, 4))
    assert np.max(np.abs(one_pass - exact) / exact) > 0.01  # why the layer does not do that


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_float16_input_gets_float32_statistics(policy):
    """The head's layers run in float32 (dtype='float32') under mixed precision; a layer in a
    mixed_float16 policy returns float16 but still computes its statistics in float32."""
    shape = (2, 6, 6, 64)
    x16 = tf.constant(_features(shape, seed=5), tf.float16)
    ours, keras = _layer_pair(shape, 32, 1e-5, seed=5, dtype=policy)
    y = ours(x16)
    assert y.dtype == (tf.float32 if policy == "float32" else tf.float16)
    want = keras(tf.cast(x16, tf.float32)) if policy == "mixed_float16" else keras(x16)
    tolerance = 1e-5 if policy == "float32" else 1e-2  # float16 output: 11-bit mantissa
    scale = float(tf.reduce_max(tf.abs(want)))
    np.testing.assert_allclose(tf.cast(y, tf.float32), tf.cast(want, tf.float32),
                               rtol=tolerance, atol=tolerance * scale)


def test_bad_channel_count_names_the_layer_and_the_fix():
    with pytest.raises(ValueError, match=r"my_gn: 48 channels .* 32 groups"):
        GroupNorm(groups=32, name="my_gn")(tf.zeros([1, 2, 2, 48]))


def _keras_group_norm(groups, epsilon, dtype, name):
    return tf_keras.layers.GroupNormalization(groups=groups, epsilon=epsilon, dtype=dtype,
                                              name=name)


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["keras_to_ours", "ours_to_keras"])
def test_checkpoints_load_across_the_keras_layer_and_ours(monkeypatch, tmp_path, direction):
    """A run trained with tf_keras.layers.GroupNormalization (checkpoints before this layer)
    restores into today's detector, and back: same object paths, names and shapes."""
    config = build_config(overrides=TINY)
    images = tf.constant(_features((1, 64, 64, 3), seed=9, mean=1.0, std=1.0))
    tf_keras.utils.set_random_seed(4)
    ours = build_detector(config, (64, 64))
    with monkeypatch.context() as patch:
        patch.setattr(head_module, "GroupNorm", _keras_group_norm)
        tf_keras.utils.set_random_seed(5)
        keras = build_detector(config, (64, 64))
    assert isinstance(keras.head.cls_tower[1], tf_keras.layers.GroupNormalization)
    assert isinstance(ours.head.cls_tower[1], GroupNorm)
    assert ([(v.name, v.shape) for v in ours.variables]
            == [(v.name, v.shape) for v in keras.variables])
    source, target = (keras, ours) if direction == "keras_to_ours" else (ours, keras)
    # Trained-looking GroupNorm parameters, so a mix-up of gamma and beta would show.
    rng = np.random.default_rng(11)
    for variable in source.variables:
        if "_gn" in variable.name:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
    prefix = tf.train.Checkpoint(model=source).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=target).read(prefix).assert_consumed()
    for got, want in zip(target.variables, source.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    got, want = target(images), source(images)
    for key in want:
        scale = float(tf.reduce_max(tf.abs(want[key])))
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5 * scale)
