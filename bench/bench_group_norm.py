"""The head's GroupNorm: tf_keras.layers.GroupNormalization vs the project's own, CPU.

Two PAA R50-FPN detectors (configs/paa_r50_fpn_1x_coco.yaml at a square input bucket, random
weights, the same values copied into both) that differ only in the layer class of the head's
eight GroupNorms: `keras` (tf_keras.layers.GroupNormalization, the head before
paa_tf/modeling/group_norm.py) and `lean` (paa_tf.modeling.group_norm.GroupNorm). Their
outputs are checked to agree, then, on several real COCO photos:

  head alone      `tf.function` of the head on each photo's FPN features: forward, and forward
                  + backward (gradients of the head's variables: what a training step pays)
  end to end      each detector exported with `paa_tf.serving.export` (score voting on) and
                  reloaded; its `image_tensor` signature on each photo (uint8 [1, h, w, 3])
  layer (--layer) GroupNorm + ReLU alone on each photo's five FPN maps (the head's GroupNorm
                  input shapes): keras, lean, lean under `jit_compile=True`, and a one-pass
                  variant (sum and sum of squares of the map minus one of its values per
                  channel), to see whether another formulation of the layer is cheaper
  XLA (--xla)     the lean detector's network (backbone, FPN, head), and its head alone, as a
                  `tf.function` with and without `jit_compile=True`, the other way to make the
                  GroupNorm cheap
  op-time shares  a `tf.profiler` trace of the exported signature over the photos; every op's
                  time summed by part: GroupNorm (the ops under a `*_gn<i>` name scope), the
                  rest of the head, FPN, backbone, and pre-/post-processing (everything else)

Timed calls run in rounds; each round runs both variants over all photos, and the order of the
two variants alternates from one round to the next so load drift hits both alike. Reported:
the median over rounds of each variant's wall time and of this process's CPU time per photo,
and the ratios keras / lean (> 1: the lean layer is faster). On a shared machine the CPU time
is the steadier figure: other processes stretch the wall time, not the work done.

    .venv/bin/python bench/bench_group_norm.py                       # 640x640, 4 photos
    .venv/bin/python bench/bench_group_norm.py --size 256 --photos 2 --rounds 2  # smoke run
"""

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Before TensorFlow: keeps Keras 3 out of the process (see paa_tf/__init__.py).
import paa_tf  # noqa: E402,F401  # isort: skip

import bench_common  # noqa: E402  (bench/ is the script folder)
import bench_inference  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from bench_common import alternating_rounds  # noqa: E402

from paa_tf.modeling import group_norm  # noqa: E402
from paa_tf.modeling import head as head_module  # noqa: E402

VARIANTS = ("keras", "lean")
PARTS = ("GroupNorm", "head, rest", "FPN", "backbone", "pre/post-processing")
# Ops whose event spans other ops' execution (function calls, control flow): not op time.
CALL_OPS = {"PartitionedCall", "StatefulPartitionedCall", "If", "StatelessIf", "While",
            "StatelessWhile", "_Send", "_Recv"}


def _keras_group_norm(groups, epsilon, dtype, name):
    return tf_keras.layers.GroupNormalization(groups=groups, epsilon=epsilon, dtype=dtype,
                                              name=name)


def build_pair(size):
    """(config, {variant: PAADetector}) with identical weights."""
    config, lean = bench_inference.build_paa(size, prior=0.01)
    original = head_module.GroupNorm
    head_module.GroupNorm = _keras_group_norm
    tf_keras.backend.clear_session()  # the same automatic layer names in both detectors
    try:
        _, keras = bench_inference.build_paa(size, prior=0.01)
    finally:
        head_module.GroupNorm = original
    gn = keras.head.cls_tower[1]
    if not isinstance(gn, tf_keras.layers.GroupNormalization):
        raise SystemExit(f"the 'keras' detector's head holds {type(gn).__name__}, not "
                         "tf_keras.layers.GroupNormalization: paa_tf/modeling/head.py no longer "
                         "builds its GroupNorm through `head.GroupNorm`")
    rng = np.random.default_rng(0)
    for source, target in zip(lean.variables, keras.variables):
        if (source.name, source.shape) != (target.name, target.shape):
            raise SystemExit(f"variables differ: {source.name} {source.shape} vs {target.name} "
                             f"{target.shape}")
        if "_gn" in source.name:  # trained-looking GroupNorm parameters
            source.assign(rng.uniform(0.5, 1.5, source.shape).astype(np.float32))
        target.assign(source)
    return config, {"keras": keras, "lean": lean}


def head_calls(models, pyramids):
    """{kind: {variant: callable(pyramid)}} for the head's forward pass with a dynamic batch
    size (as in the exported SavedModel, whose signatures take any batch) and with the batch
    size known, and for forward + backward (training, whose per-replica batch is fixed)."""
    calls = {"forward, batch unknown (export)": {}, "forward, batch known": {},
             "forward+backward, batch known": {}}
    signature = [{level: tf.TensorSpec([None, *feature.shape[1:]], feature.dtype)
                  for level, feature in pyramids[0].items()}]
    for name, model in models.items():
        head = model.head
        dynamic = tf.function(lambda p, head=head: head(p, training=False),
                              input_signature=signature)
        forward = tf.function(lambda p, head=head: head(p, training=False))

        @tf.function
        def backward(p, head=head):
            with tf.GradientTape() as tape:
                outputs = head(p, training=True)
                loss = tf.add_n([tf.reduce_mean(tf.cast(v, tf.float32) ** 2)
                                 for v in outputs.values()])
            return tape.gradient(loss, head.trainable_variables)

        calls["forward, batch unknown (export)"][name] = (
            lambda p, f=dynamic: f(p)["cls_logits"].numpy())
        calls["forward, batch known"][name] = lambda p, f=forward: f(p)["cls_logits"].numpy()
        calls["forward+backward, batch known"][name] = lambda p, f=backward: f(p)[0].numpy()
    return calls


class OnePassGroupNorm(group_norm.GroupNorm):
    """The lean layer with each channel's moments from the means of d and d^2, d = x minus the
    channel's first value, both taken without waiting for the mean (the shift keeps
    E[d^2] - E[d]^2 from cancelling when the mean is large against the spread; not a guarantee,
    hence not the layer's way)."""

    @staticmethod
    def channel_moments(features):
        shift = tf.stop_gradient(features[:, :1, :1, :])
        deviation = features - shift
        mean = tf.reduce_mean(deviation, axis=[1, 2])
        second = tf.reduce_mean(tf.square(deviation), axis=[1, 2])
        return shift[:, 0, 0, :] + mean, tf.maximum(second - tf.square(mean), 0.0)


def layer_calls(models, pyramids):
    """{variant: callable(pyramid)}: the first GroupNorm of each detector's class tower + ReLU
    on every level of a pyramid, and two other formulations of the lean layer's function."""
    keras_gn, lean_gn = models["keras"].head.cls_tower[1], models["lean"].head.cls_tower[1]

    one_pass = OnePassGroupNorm(groups=lean_gn.groups, epsilon=lean_gn.epsilon,
                                dtype="float32", name="one_pass_gn")
    one_pass.build(pyramids[0][min(pyramids[0])].shape)
    one_pass.set_weights(lean_gn.get_weights())

    def run(layer):
        return lambda p: [tf.nn.relu(layer(feature)) for feature in p.values()]

    functions = {"keras": tf.function(run(keras_gn)), "lean": tf.function(run(lean_gn)),
                 "lean, XLA": tf.function(run(lean_gn), jit_compile=True),
                 "one-pass": tf.function(run(one_pass))}
    for pyramid in pyramids:
        want = functions["keras"](pyramid)
        for name, function in functions.items():
            for got, expected in zip(function(pyramid), want):
                error = float(tf.reduce_max(tf.abs(got - expected)))
                scale = float(tf.reduce_max(tf.abs(expected)))
                if error > 1e-4 * max(scale, 1.0):
                    raise SystemExit(f"GroupNorm variant {name!r} differs from the Keras "
                                     f"layer by {error} (scale {scale})")
    return {name: lambda p, f=function: [y.numpy() for y in f(p)]
            for name, function in functions.items()}


def part_of(op_name):
    """Which part of `PARTS` an op of the exported graph belongs to, by its name scope."""
    scopes = op_name.split("/")
    if any(scope.startswith(("cls_tower_gn", "box_tower_gn")) for scope in scopes):
        return "GroupNorm"
    if "paa_head" in scopes:
        return "head, rest"
    if "fpn" in scopes:
        return "FPN"
    if "paa_detector" in scopes:
        return "backbone"
    return "pre/post-processing"


def profile_op_time(call, inputs, logdir):
    """{part: summed op seconds} of `call` over `inputs`, from a tf.profiler trace.

    Op events are the `name:type` events on TensorFlow's compute threads; each lasts from the
    op's start to its end (including the parallel work it hands to the Eigen pool).
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tf.profiler.experimental.start(logdir)
    try:
        for item in inputs:
            call(item)
    finally:
        tf.profiler.experimental.stop()
    paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
    if not paths:
        raise SystemExit(f"tf.profiler wrote no .xplane.pb under {logdir}")
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                op_name, _, op_type = name.rpartition(":")
                # Executor and thread-pool events are named 'Class::method'.
                if not op_name or "::" in name or op_type in CALL_OPS:
                    continue
                totals[part_of(op_name)] += event.duration_ps * 1e-12
    if not totals:
        raise SystemExit("the profile holds no TensorFlow op events; tf.profiler's trace "
                         "format changed")
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640,
                        help="square input bucket (multiple of 128)")
    parser.add_argument("--photos", type=int, default=4, help="real COCO photos")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (all photos each)")
    parser.add_argument("--inter-op", type=int, default=None,
                        help="TF inter-op threads; 1 runs one op at a time, so an op's time in "
                             "the profile is its own, not shared with ops running beside it")
    parser.add_argument("--skip-head", action="store_true", help="skip the head-alone rows")
    parser.add_argument("--layer", action="store_true",
                        help="also time GroupNorm + ReLU alone in four formulations")
    parser.add_argument("--skip-end-to-end", action="store_true",
                        help="skip the exported models' timing and profile")
    parser.add_argument("--xla", action="store_true",
                        help="also time the lean network and head XLA-compiled (jit_compile=True)")
    args = parser.parse_args()
    if args.size % 128:
        parser.error(f"--size {args.size} must be a multiple of 128 (PAA's padded bucket)")
    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    tf.get_logger().setLevel("ERROR")
    print(bench_inference.machine_facts())
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    photos = bench_common.load_photos(args.photos, tf)
    print(f"photos: {', '.join(f'{os.path.basename(p)} ({i.shape[1]}x{i.shape[2]})' for p, i in photos)}"  # noqa: E501
          f"; input bucket {args.size}x{args.size}; {args.rounds} rounds, variant order "
          "alternating")
    config, models = build_pair(args.size)
    images = [image for _, image in photos]

    from paa_tf.data.inference_preprocess import InferencePreprocess

    preprocess = InferencePreprocess.from_config(config)
    inputs = [preprocess(image[0])[0][None] for image in images]
    lean = models["lean"]
    pyramids = [lean.fpn(lean.backbone(x, training=False), training=False) for x in inputs]

    # Same function: the head's outputs agree to float32 round-off.
    for x in inputs:
        want, got = models["keras"](x), models["lean"](x)
        for key in want:
            scale = float(tf.reduce_max(tf.abs(want[key])))
            error = float(tf.reduce_max(tf.abs(got[key] - want[key])))
            if error > 1e-4 * max(scale, 1.0):
                raise SystemExit(f"{key}: keras and lean detectors differ by {error} "
                                 f"(scale {scale})")
    print("outputs of the two detectors agree to float32 round-off on every photo")

    results, cpu_results = {}, {}
    if args.layer:
        cpu = {}
        layer = alternating_rounds(layer_calls(models, pyramids), pyramids, args.rounds,
                                   cpu=cpu)
        print("GroupNorm + ReLU alone, 5 levels, median per photo: " + "; ".join(
            f"{name} {layer[name] * 1e3:.2f} ms ({cpu[name] * 1e3:.2f} CPU ms)"
            for name in layer), flush=True)
    for kind, calls in ({} if args.skip_head else head_calls(models, pyramids)).items():
        row = f"head alone, {kind}"
        cpu = cpu_results[row] = {}
        medians = results[row] = alternating_rounds(calls, pyramids, args.rounds, cpu=cpu)
        print(f"{row}: keras / lean = {medians['keras'] / medians['lean']:.2f}x wall, "
              f"{cpu['keras'] / cpu['lean']:.2f}x CPU", flush=True)

    if args.xla:
        head = lean.head
        for part, function, feed in (
                ("network", lambda x: lean(x, training=False), inputs),
                ("head", lambda p: head(p, training=False), pyramids)):
            compiled = {"plain": tf.function(function),
                        "XLA": tf.function(function, jit_compile=True)}
            start = time.perf_counter()
            compiled["XLA"](feed[0])
            print(f"XLA compilation of the lean {part}: {time.perf_counter() - start:.0f} s")
            cpu = {}
            xla = alternating_rounds({name: lambda x, f=f: f(x)["cls_logits"].numpy()
                                      for name, f in compiled.items()}, feed, args.rounds,
                                     cpu=cpu)
            print(f"lean {part}, tf.function {xla['plain'] * 1e3:.1f} ms/photo "
                  f"({cpu['plain'] * 1e3:.1f} CPU ms), with jit_compile {xla['XLA'] * 1e3:.1f} "
                  f"ms/photo ({cpu['XLA'] * 1e3:.1f} CPU ms): plain / XLA = "
                  f"{xla['plain'] / xla['XLA']:.2f}x wall, {cpu['plain'] / cpu['XLA']:.2f}x CPU",
                  flush=True)

    shares = {}
    if not args.skip_end_to_end:
        with tempfile.TemporaryDirectory(prefix="bench_group_norm_") as scratch:
            signatures = {}
            for name, model in models.items():
                folder = os.path.join(scratch, name)
                os.makedirs(folder)
                directory = bench_inference.export_paa(config, model, folder, votings=(True,))[True]
                signatures[name] = tf.saved_model.load(directory).signatures["image_tensor"]
            calls = {name: lambda image, s=signature: [v.numpy() for v in s(inputs=image).values()]
                     for name, signature in signatures.items()}
            cpu = cpu_results["end to end (SavedModel)"] = {}
            results["end to end (SavedModel)"] = alternating_rounds(calls, images, args.rounds,
                                                                    cpu=cpu)
            for name in signatures:
                shares[name] = profile_op_time(calls[name], images,
                                               os.path.join(scratch, f"profile_{name}"))

    if results:
        print(f"\n{'median per photo':44s}{'keras ms':>10s}{'lean ms':>10s}{'ratio':>8s}"
              f"{'keras CPU ms':>14s}{'lean CPU ms':>13s}{'ratio':>8s}")
    for row, medians in results.items():
        cpu = cpu_results[row]
        print(f"{row:44s}{medians['keras'] * 1e3:10.1f}{medians['lean'] * 1e3:10.1f}"
              f"{medians['keras'] / medians['lean']:7.3f}x{cpu['keras'] * 1e3:14.1f}"
              f"{cpu['lean'] * 1e3:13.1f}{cpu['keras'] / cpu['lean']:7.3f}x")
    if shares:
        print(f"\nop time of the exported model over {len(images)} photos (tf.profiler), share:")
        print(f"{'':22s}" + "".join(f"{name + ' ms':>12s}{'%':>7s}" for name in VARIANTS))
        for part in PARTS:
            cells = ""
            for name in VARIANTS:
                total = sum(shares[name].values())
                cells += f"{shares[name][part] * 1e3:12.1f}{100 * shares[name][part] / total:7.1f}"
            print(f"{part:22s}{cells}")
        print(f"{'total':22s}" + "".join(f"{sum(shares[n].values()) * 1e3:12.1f}{100.0:7.1f}"
                                         for n in VARIANTS))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
