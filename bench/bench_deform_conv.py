"""The DCNv2 layer: paa-tf's TensorFlow op vs torchvision.ops.deform_conv2d, same CPU.

The three shapes where the authors' dcnv2 models use a modulated deformable 3x3 conv, at an
input of --size x --size pixels: ResNeXt-101 64x4d's res4 (stride 16, 1024 channels in 64
groups) and res5 (stride 32, 2048 channels in 64 groups, the first block's stride 2 left out),
and the last conv of a head tower on P3 (stride 8, 256 channels, bias). For each shape,
--inputs random feature maps with offsets of a few pixels (std 2, so samples cross pixels and
the image border) and random modulations go through both ops with the same weights; the
outputs are checked to agree (1e-4 of the largest value), then timed in rounds whose order of
the two ops alternates (bench_common.alternating_rounds): forward, and with --backward
forward + backward (gradients of input, offsets, masks and weights). Both use --threads
threads (TensorFlow intra-op, torch.set_num_threads; TensorFlow inter-op 1).

Where TensorFlow's time goes: the row 'tf matmul only' times the op's final (grouped)
matrix product alone on columns of the same shape; the rest of the op is the bilinear
sampling (four gathers, weights, the transposes into columns).

Needs torchvision (requirements-test.txt), e.g. in the test environment:

    .venv/bin/python bench/bench_deform_conv.py                     # 512x512, 3 inputs
    .venv/bin/python bench/bench_deform_conv.py --size 256 --inputs 1 --rounds 2  # smoke run
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# torchvision imports triton (a dependency of torch's CUDA builds) through torch._dynamo; loaded
# after TensorFlow it crashes the process. No GPU kernels are compiled here.
sys.modules.setdefault("triton", None)

# Before TensorFlow: keeps Keras 3 out of the process (see paa_tf/__init__.py).
import paa_tf  # noqa: E402,F401  # isort: skip

import bench_common  # noqa: E402  (bench/ is the script folder)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
from bench_common import alternating_rounds  # noqa: E402
from torchvision.ops import deform_conv2d  # noqa: E402

from paa_tf.modeling.deform_conv import modulated_deform_conv  # noqa: E402

# name: (stride of the feature map, channels, conv groups, bias)
SHAPES = {"X-101 64x4d res4": (16, 1024, 64, False), "X-101 64x4d res5": (32, 2048, 64, False),
          "head tower, P3": (8, 256, 1, True)}


def make_inputs(size, stride, channels, groups, bias, count, seed):
    """[dict of NCHW float32 arrays: x, offset, mask, weight, bias] x count (shared weights)."""
    rng = np.random.default_rng(seed)
    side = -(-size // stride)
    weight = rng.normal(0, (9 * channels / groups) ** -0.5,
                        (channels, channels // groups, 3, 3)).astype(np.float32)
    bias_value = rng.normal(size=channels).astype(np.float32) if bias else None
    return [{"x": rng.normal(size=(1, channels, side, side)).astype(np.float32),
             "offset": rng.normal(0, 2.0, (1, 18, side, side)).astype(np.float32),
             "mask": rng.uniform(0, 1, (1, 9, side, side)).astype(np.float32),
             "weight": weight, "bias": bias_value, "groups": groups} for _ in range(count)]


def nhwc(array):
    return tf.constant(np.transpose(array, (0, 2, 3, 1)))


def tf_calls(items, backward):
    """callable(index) of the TensorFlow op on prepared inputs, and of its matmul alone."""
    prepared = [{"x": nhwc(d["x"]), "offset": nhwc(d["offset"]), "mask": nhwc(d["mask"]),
                 "weight": tf.Variable(np.transpose(d["weight"], (2, 3, 1, 0))),
                 "bias": None if d["bias"] is None else tf.constant(d["bias"])} for d in items]
    groups = items[0]["groups"]

    @tf.function
    def forward(x, offset, mask, weight, bias):
        return modulated_deform_conv(x, offset, mask, weight, bias, 1, 1, 1, groups, 1)

    @tf.function
    def forward_backward(x, offset, mask, weight, bias):
        with tf.GradientTape() as tape:
            tape.watch([x, offset, mask])
            out = modulated_deform_conv(x, offset, mask, weight, bias, 1, 1, 1, groups, 1)
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, [x, offset, mask, weight])

    function = forward_backward if backward else forward

    def run(index):
        p = prepared[index]
        result = function(p["x"], p["offset"], p["mask"], p["weight"], p["bias"])
        return [r.numpy() for r in result] if backward else result.numpy()

    # The same product as the op's last step, on columns [1, P, K, G, C/G] of the same shape.
    shape = prepared[0]["x"].shape
    channels, positions = shape[-1], shape[1] * shape[2]
    columns = tf.random.normal([1, positions, 9, groups, channels // groups])
    kernel = tf.reshape(prepared[0]["weight"], [9, channels // groups, groups, -1])
    if groups == 1:
        matmul = tf.function(lambda: tf.matmul(tf.reshape(columns, [1, positions, -1]),
                                                tf.reshape(kernel, [9 * channels, -1])))
    else:
        matmul = tf.function(lambda: tf.einsum("bpkgc,kcgf->bpgf", columns, kernel))
    return run, lambda index: matmul().numpy(), prepared


def torch_call(items, backward):
    tensors = [{k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)
                for k, v in d.items()} for d in items]

    def run(index):
        t = tensors[index]
        if not backward:
            with torch.no_grad():
                return deform_conv2d(t["x"], t["offset"], t["weight"], t["bias"], padding=1,
                                     mask=t["mask"]).numpy()
        inputs = [t[k].clone().requires_grad_(True) for k in ("x", "offset", "mask", "weight")]
        out = deform_conv2d(inputs[0], inputs[1], inputs[3], t["bias"], padding=1,
                            mask=inputs[2])
        (out * out).sum().backward()
        return [i.grad.numpy() for i in inputs]

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="input image side (pixels)")
    parser.add_argument("--inputs", type=int, default=3, help="random inputs per shape")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (all inputs each)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--backward", action="store_true", help="also forward + backward")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)
    tf.get_logger().setLevel("ERROR")
    import torchvision

    print(f"{bench_common.machine_facts(tf)} | torch {torch.__version__}, torchvision "
          f"{torchvision.__version__} | {args.threads} threads each")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"input {args.size}x{args.size}, {args.inputs} random inputs per shape, "
          f"{args.rounds} rounds, order alternating\n")
    header = (f"{'shape':22s}{'pass':18s}{'tf ms':>9s}{'torchvision ms':>16s}{'tf/tv':>7s}"
              f"{'tf CPU ms':>11s}{'tv CPU ms':>11s}{'tf/tv':>7s}{'tf matmul ms':>14s}")
    print(header)
    for name, (stride, channels, groups, bias) in SHAPES.items():
        items = make_inputs(args.size, stride, channels, groups, bias, args.inputs, seed=stride)
        for backward in (False, True) if args.backward else (False,):
            tf_run, matmul_run, _ = tf_calls(items, backward)
            tv_run = torch_call(items, backward)
            for index in range(len(items)):
                got, want = tf_run(index), tv_run(index)
                got = got if backward else [got]
                want = want if backward else [want]
                # NHWC / HWIO -> torchvision's NCHW / OIHW.
                orders = [(0, 3, 1, 2)] * 3 + [(3, 2, 0, 1)]
                for g, w, order in zip(got, want, orders):
                    error = np.abs(np.transpose(g, order) - w).max() / np.abs(w).max()
                    if error > 1e-4:
                        raise SystemExit(f"{name}: TensorFlow and torchvision differ by "
                                         f"{error:.1e} of the largest value")
            cpu = {}
            calls = {"tf": tf_run, "tv": tv_run, "matmul": matmul_run}
            wall = alternating_rounds(calls, list(range(len(items))), args.rounds, cpu=cpu)
            label = "forward+backward" if backward else "forward"
            print(f"{name:22s}{label:18s}{wall['tf'] * 1e3:9.1f}{wall['tv'] * 1e3:16.1f}"
                  f"{wall['tf'] / wall['tv']:6.2f}x{cpu['tf'] * 1e3:11.1f}{cpu['tv'] * 1e3:11.1f}"
                  f"{cpu['tf'] / cpu['tv']:6.2f}x{wall['matmul'] * 1e3:14.1f}", flush=True)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
