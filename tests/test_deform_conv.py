"""The DCNv2 layer (paa_tf/modeling/deform_conv.py) against torchvision.ops.deform_conv2d.

torchvision's op is the oracle: the same random input, offsets, modulation masks, weights and
bias go through both (NCHW for torchvision, NHWC for paa-tf), with offsets of several pixels
(samples cross pixel borders and leave the image, where the references' rule gives zero),
strides, dilation, conv groups and deformable groups. Outputs must agree to 1e-5 of the
largest reference magnitude, and so must the gradients with respect to every input.
"""

import numpy as np
import pytest
import tensorflow as tf
import torch

from paa_tf.modeling.deform_conv import ModulatedDeformConv2D, modulated_deform_conv

torchvision_ops = pytest.importorskip("torchvision.ops", reason="the oracle is torchvision")

TOLERANCE = 1e-5
CASES = [
    # (batch, channels, height, width, filters, kernel, stride, padding, dilation, groups, dg)
    (2, 8, 9, 11, 6, 3, 1, 1, 1, 1, 1),
    (1, 8, 10, 7, 4, 3, 2, 1, 1, 1, 2),
    (2, 12, 8, 9, 6, 3, 1, 2, 2, 3, 1),
    (1, 16, 9, 9, 8, 3, 2, 1, 1, 4, 4),
    (1, 6, 6, 8, 3, 1, 1, 0, 1, 1, 3),
]


def _output_size(n, kernel, stride, padding, dilation):
    return (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _random_case(case, seed):
    batch, channels, height, width, filters, kernel, stride, padding, dilation, groups, dg = case
    rng = np.random.default_rng(seed)
    out_h = _output_size(height, kernel, stride, padding, dilation)
    out_w = _output_size(width, kernel, stride, padding, dilation)
    taps = kernel * kernel
    x = rng.normal(size=(batch, channels, height, width)).astype(np.float32)
    # Offsets of a few pixels, and 10 % of them far outside the image.
    offset = rng.normal(0.0, 2.5, size=(batch, 2 * dg * taps, out_h, out_w))
    far = rng.random(offset.shape) < 0.1
    offset[far] = rng.choice([-1, 1], far.sum()) * rng.uniform(height, 2 * height, far.sum())
    offset = offset.astype(np.float32)
    mask = rng.uniform(0.0, 1.0, size=(batch, dg * taps, out_h, out_w)).astype(np.float32)
    weight = rng.normal(0.0, 0.3, size=(filters, channels // groups, kernel, kernel))
    bias = rng.normal(size=filters)
    return {"x": x, "offset": offset, "mask": mask, "weight": weight.astype(np.float32),
            "bias": bias.astype(np.float32), "stride": stride, "padding": padding,
            "dilation": dilation, "groups": groups, "dg": dg}


def _nhwc(array):
    return tf.constant(np.transpose(array, (0, 2, 3, 1)))


def _torchvision(data, requires_grad=False):
    tensors = {k: torch.tensor(data[k], requires_grad=requires_grad)
               for k in ("x", "offset", "mask", "weight", "bias")}
    out = torchvision_ops.deform_conv2d(
        tensors["x"], tensors["offset"], tensors["weight"], tensors["bias"],
        stride=data["stride"], padding=data["padding"], dilation=data["dilation"],
        mask=tensors["mask"])
    return out, tensors


def _paa(data, tensors=None):
    tensors = tensors or {
        "x": _nhwc(data["x"]), "offset": _nhwc(data["offset"]), "mask": _nhwc(data["mask"]),
        "weight": tf.constant(np.transpose(data["weight"], (2, 3, 1, 0))),
        "bias": tf.constant(data["bias"])}
    return modulated_deform_conv(
        tensors["x"], tensors["offset"], tensors["mask"], tensors["weight"], tensors["bias"],
        strides=data["stride"], padding=data["padding"], dilation=data["dilation"],
        groups=data["groups"], deformable_groups=data["dg"]), tensors


def _relative(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("case", CASES)
def test_output_matches_torchvision(case):
    data = _random_case(case, seed=sum(case))
    with torch.no_grad():
        want = _torchvision(data)[0].numpy().transpose(0, 2, 3, 1)
    got = _paa(data)[0].numpy()
    assert got.shape == want.shape
    error = _relative(got, want)
    print(f"\n{case}: max |diff| / max |torchvision| = {error:.1e}")
    assert error < TOLERANCE
    # The case exercises the boundary rule: many samples land outside the image.
    assert (np.abs(data["offset"]) > data["x"].shape[2]).mean() > 0.05


@pytest.mark.parametrize("case", CASES[1:3])
def test_gradients_match_torchvision(case):
    data = _random_case(case, seed=7 + sum(case))
    out, tensors = _torchvision(data, requires_grad=True)
    upstream = np.random.default_rng(3).normal(size=out.shape).astype(np.float32)
    out.backward(torch.from_numpy(upstream))
    want = {k: v.grad.numpy() for k, v in tensors.items()}
    _, ours = _paa(data)
    ours = {k: tf.Variable(v) for k, v in ours.items()}
    with tf.GradientTape() as tape:
        got_out, _ = _paa(data, ours)
        loss = tf.reduce_sum(got_out * np.transpose(upstream, (0, 2, 3, 1)))
    grads = dict(zip(ours, tape.gradient(loss, list(ours.values()))))
    layout = {"x": (0, 3, 1, 2), "offset": (0, 3, 1, 2), "mask": (0, 3, 1, 2),
              "weight": (3, 2, 0, 1), "bias": (0,)}
    for name, expected in want.items():
        got = np.transpose(grads[name].numpy(), layout[name])
        error = _relative(got, expected)
        print(f"\n{case} d/d{name}: {error:.1e}")
        assert error < TOLERANCE, name


def test_layer_predicts_offsets_and_masks_like_the_references_conv():
    """The layer's own offset conv, split (first 2/3 offsets, last 1/3 sigmoid masks) as
    mmcv's / maskrcnn-benchmark's DCNv2 do, then the deformable conv: against torch's conv2d
    and torchvision's op with the same weights."""
    rng = np.random.default_rng(5)
    batch, channels, size, filters, dg = 2, 8, 9, 6, 2
    layer = ModulatedDeformConv2D(filters, 3, strides=2, groups=2, deformable_groups=dg)
    x = rng.normal(size=(batch, channels, size, size)).astype(np.float32)
    layer(_nhwc(x))
    offset_weight = rng.normal(0.0, 0.4, size=(3 * dg * 9, channels, 3, 3)).astype(np.float32)
    offset_bias = rng.normal(0.0, 1.0, size=3 * dg * 9).astype(np.float32)
    weight = rng.normal(0.0, 0.3, size=(filters, channels // 2, 3, 3)).astype(np.float32)
    bias = rng.normal(size=filters).astype(np.float32)
    layer.set_weights([weight.transpose(2, 3, 1, 0), bias, offset_weight.transpose(2, 3, 1, 0),
                       offset_bias])
    with torch.no_grad():
        predicted = torch.nn.functional.conv2d(torch.from_numpy(x),
                                               torch.from_numpy(offset_weight),
                                               torch.from_numpy(offset_bias), stride=2,
                                               padding=1)
        offset, mask = predicted[:, :2 * dg * 9], predicted[:, 2 * dg * 9:].sigmoid()
        assert offset.abs().max() > 3.0  # samples several pixels away
        want = torchvision_ops.deform_conv2d(
            torch.from_numpy(x), offset, torch.from_numpy(weight), torch.from_numpy(bias),
            stride=2, padding=1, mask=mask).numpy().transpose(0, 2, 3, 1)
    got = layer(_nhwc(x)).numpy()
    assert got.shape == want.shape == (batch, 5, 5, filters)
    assert _relative(got, want) < TOLERANCE


def test_new_layer_is_half_the_plain_convolution():
    """Zero-initialised offset conv: plain grid, every modulation sigmoid(0) = 1/2."""
    rng = np.random.default_rng(6)
    layer = ModulatedDeformConv2D(5, 3, strides=2, use_bias=False)
    x = tf.constant(rng.normal(size=(1, 10, 9, 4)).astype(np.float32))
    got = layer(x).numpy()
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    plain = tf.nn.conv2d(padded, layer.kernel, 2, "VALID").numpy()
    np.testing.assert_allclose(got, 0.5 * plain, rtol=0, atol=1e-5)
    assert not np.any(layer.offset_kernel.numpy()) and not np.any(layer.offset_bias.numpy())


def test_mixed_float16_layer_matches_float32():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(1, 8, 8, 8)).astype(np.float32)
    reference = ModulatedDeformConv2D(8, 3)
    reference(x)
    weights = reference.get_weights()
    # Offsets of a pixel or two instead of the zero initialisation.
    weights[2] = rng.normal(0.0, 0.2, weights[2].shape).astype(np.float32)
    reference.set_weights(weights)
    half = ModulatedDeformConv2D(8, 3, dtype="mixed_float16")
    half(x)
    half.set_weights(weights)
    got = half(x)
    assert got.dtype == tf.float16
    assert _relative(got.numpy().astype(np.float32), reference(x).numpy()) < 1e-2


def test_bad_group_counts_are_named():
    with pytest.raises(ValueError, match="not divisible by deformable_groups 3"):
        ModulatedDeformConv2D(4, 3, deformable_groups=3)(tf.zeros([1, 5, 5, 8]))
    with pytest.raises(ValueError, match="filters 5 is not divisible by groups 2"):
        ModulatedDeformConv2D(5, 3, groups=2)
