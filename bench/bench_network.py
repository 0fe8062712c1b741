"""The network floor: an imported PAA network in paa-tf vs the same network in PyTorch, same CPU.

The network is the authors' layout (maskrcnn-benchmark module names, MSRA ResNet with
FrozenBatchNorm, FPN P3-P7, the PAA head), written in PyTorch in
``tests/helpers/torch_references.py`` and given random weights and BN statistics (the offset
convs of its deformable convs give offsets of a few pixels). It is saved in their checkpoint
layout and imported with paa-tf's importer through the preset of that network (so the
TensorFlow side is exactly what ``bin/paa_import`` gives a user of their release):

- ``r50``: the authors' PAA_R_50_FPN (``paa_r50_fpn_1.5x_coco_authors.yaml``);
- ``r101_dcn``: their PAA_dcnv2_R_101_FPN (``paa_dcnv2_r101_fpn_2x_coco_authors.yaml``):
  modulated deformable 3x3 convs in every block of res3-res5 and in the last conv of both
  head towers; PyTorch runs them with ``torchvision.ops.deform_conv2d`` (the authors' own
  DCN op has no CPU kernel).

"Network floor" = backbone + FPN + head on one pre-processed image (batch 1), no anchor
decoding, NMS or voting: the part both sides compute identically. Inputs are real COCO photos
pre-processed by paa-tf's ``InferencePreprocess`` at the preset's test scale (800/1333, padded
to the image's own multiple of 32, as the authors' test loader does with one image per GPU);
PyTorch gets the same pixels (NCHW, the BGR order their network takes). First the outputs of
every configuration are checked to agree with PyTorch's eager output to 1e-4 of its largest
value; then all configurations are timed in rounds whose order alternates
(``bench_common.alternating_rounds``), wall and process CPU time per photo.

Configurations (each side's usual ways of running a CPU model; the best of each is compared):

- ``tf function``: the Keras model in a ``tf.function`` with a [1, None, None, 3] signature,
  as paa-tf's SavedModel and ``paa_predict`` run it;
- ``tf xla``: the same function with ``jit_compile=True``;
- ``torch eager``: ``torch.inference_mode()``, NCHW;
- ``torch channels_last``: the same with the network and input in channels-last memory format
  (oneDNN's preferred layout for convolutions);
- ``torch jit``: ``torch.jit.trace`` + ``torch.jit.freeze`` (constant folding, conv-BN fusion)
  of the eager network, per input shape;
- ``torch compile``: ``torch.compile`` (Inductor, C++ code for the CPU), one graph per input
  shape, compiled before timing.

Both sides use --threads threads
(TensorFlow intra-op; inter-op 1; ``torch.set_num_threads``).

    .venv/bin/python bench/bench_network.py                        # both networks, 3 photos
    .venv/bin/python bench/bench_network.py --networks r50 --photos 1 --rounds 1 --size 320
"""

import argparse
import copy
import os
import pathlib
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# torchvision imports triton (a dependency of torch's CUDA builds) through torch._dynamo; loaded
# after TensorFlow it crashes the process. No GPU kernels are compiled here.
sys.modules.setdefault("triton", None)

# Before TensorFlow: keeps Keras 3 out of the process (see paa_tf/__init__.py).
import paa_tf  # noqa: E402,F401  # isort: skip

import bench_common  # noqa: E402  (bench/ is the script folder)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

from paa_tf import config as config_lib  # noqa: E402
from paa_tf.convert import importer  # noqa: E402
from paa_tf.data.inference_preprocess import InferencePreprocess  # noqa: E402
from paa_tf.modeling import restore  # noqa: E402
from tests.helpers import torch_references as ref  # noqa: E402

# name: (the authors' network, the preset paa_import picks for it)
NETWORKS = {
    "r50": (lambda: ref.KKPAA(50), "paa_r50_fpn_1.5x_coco_authors.yaml"),
    "r101_dcn": (lambda: ref.KKPAA(101, dcn_stages=(3, 4, 5), head_dcn=True),
                 "paa_dcnv2_r101_fpn_2x_coco_authors.yaml"),
}
TOLERANCE = 1e-4


def imported_model(name, folder, shorter_side, max_size):
    """(PyTorch network, paa-tf model, its InferencePreprocess at that scale, import report)
    for NETWORKS[name], imported as a user would."""
    build, preset = NETWORKS[name]
    torch.manual_seed(0)
    network = ref.randomize(build(), seed=21)
    checkpoint = folder / f"{name}.pth"
    torch.save(network.checkpoint(), checkpoint)
    run_dir = folder / name
    report = importer.import_checkpoint(checkpoint, run_dir)
    if pathlib.Path(report["config"]).name != preset:
        raise SystemExit(f"{name}: the importer chose {report['config']}, expected {preset}")
    config = config_lib.load_config(run_dir / "config.yaml")
    side = -(-max_size // 32) * 32
    model = restore.restore_model(config, tf.train.latest_checkpoint(str(run_dir)),
                                  (side, side))
    preprocess = InferencePreprocess.from_config(config, shorter_side, max_size)
    return network, model, preprocess, report


def level_outputs_tf(outputs):
    """paa-tf's flattened outputs -> one float32 array of all of them (comparison only)."""
    return np.concatenate([tf.reshape(outputs[k], [-1]).numpy()
                           for k in ("cls_logits", "box_deltas", "iou_logits")])


def level_outputs_torch(levels):
    """The reference's per-level NCHW outputs, in paa-tf's layout, as one float32 array."""
    flat = ref.to_paa_layout(levels)
    return np.concatenate([np.concatenate([a.reshape(-1) for a in flat[k]])
                           for k in ("cls_logits", "box_deltas", "iou_logits")])


class _Flat(torch.nn.Module):
    """The network with its per-level (cls, box, iou) tuples as one flat tuple (jit.trace
    takes no nested outputs)."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, x):
        return tuple(t for level in self.network(x) for t in level)


def torch_configurations(network):
    """name -> callable(NCHW tensor) -> the network's per-level outputs. The traced and
    compiled forms are built per input shape at their first call (the untimed warm-up)."""
    network = network.eval()

    def eager(x):
        with torch.inference_mode():
            return network(x)

    channels_last = copy.deepcopy(network).to(memory_format=torch.channels_last)

    def in_channels_last(x):
        with torch.inference_mode():
            return channels_last(x.contiguous(memory_format=torch.channels_last))

    frozen = {}
    flat = _Flat(network).eval()

    def jit(x):
        key = tuple(x.shape)
        if key not in frozen:  # one trace per input shape
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated"
                frozen[key] = torch.jit.freeze(torch.jit.trace(flat, x, check_trace=False))
        with torch.inference_mode():
            outputs = frozen[key](x)
        return [outputs[i:i + 3] for i in range(0, len(outputs), 3)]

    # Inductor's C++ code for the CPU, one graph per input shape (dynamic=False), compiled in
    # the untimed warm-up round.
    compiled = torch.compile(network, dynamic=False)

    def compile_(x):
        with torch.inference_mode():
            return compiled(x)

    return {"torch eager": eager, "torch channels_last": in_channels_last, "torch jit": jit,
            "torch compile": compile_}


def tf_configurations(model):
    spec = [tf.TensorSpec([1, None, None, 3], tf.float32)]

    def call(images):
        outputs = model(images, training=False)
        return {k: outputs[k] for k in ("cls_logits", "box_deltas", "iou_logits")}

    return {"tf function": tf.function(call, input_signature=spec),
            "tf xla": tf.function(call, input_signature=spec, jit_compile=True)}


def run(name, photos, args, folder):
    network, model, preprocess, report = imported_model(name, folder, args.size, args.max_size)
    tf_inputs, torch_inputs = [], []
    for _, image in photos:
        padded, _ = preprocess(image[0])
        tf_inputs.append(padded[None])
        # The network takes BGR (model.input_channels: bgr reverses the channels in paa-tf).
        torch_inputs.append(torch.from_numpy(np.ascontiguousarray(
            padded.numpy()[..., ::-1].transpose(2, 0, 1)[None])))
    shapes = ", ".join(f"{t.shape[1]}x{t.shape[2]}" for t in tf_inputs)
    print(f"\n{name}: {report['architecture']} ({NETWORKS[name][1]}), inputs {shapes}")

    tf_calls = tf_configurations(model)
    torch_calls = torch_configurations(network)
    reference = level_outputs_torch(torch_calls["torch eager"](torch_inputs[0]))
    scale = np.abs(reference).max()
    for label, call in {**tf_calls, **torch_calls}.items():
        is_tf = label.startswith("tf")
        got = (level_outputs_tf(call(tf_inputs[0])) if is_tf
               else level_outputs_torch(call(torch_inputs[0])))
        error = np.abs(got - reference).max() / scale
        print(f"  {label:20s} largest difference to torch eager: {error:.1e} of the largest "
              "output")
        if error > TOLERANCE:
            raise SystemExit(f"{name}: {label} differs from PyTorch by {error:.2e}")

    # One timed call takes the input index; each side reads its own tensor of that photo.
    calls = {label: (lambda i, c=call: c(tf_inputs[i])) for label, call in tf_calls.items()}
    calls.update({label: (lambda i, c=call: c(torch_inputs[i]))
                  for label, call in torch_calls.items()})
    cpu = {}
    wall = bench_common.alternating_rounds(calls, list(range(len(photos))), args.rounds, cpu=cpu)
    print(f"  {'per photo':20s}{'wall ms':>10s}{'CPU ms':>10s}")
    for label in calls:
        print(f"  {label:20s}{wall[label] * 1e3:10.0f}{cpu[label] * 1e3:10.0f}")
    best_tf, best_torch = min(tf_calls, key=cpu.get), min(torch_calls, key=cpu.get)
    print(f"  best TF ({best_tf}) / best PyTorch ({best_torch}): CPU "
          f"{cpu[best_tf] / cpu[best_torch]:.2f}x, wall {wall[best_tf] / wall[best_torch]:.2f}x;"
          f" tf function / torch eager: CPU {cpu['tf function'] / cpu['torch eager']:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", default="r50,r101_dcn",
                        help=f"comma-separated, of {sorted(NETWORKS)}")
    parser.add_argument("--photos", type=int, default=3, help="real COCO photos")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (all photos each)")
    parser.add_argument("--size", type=int, default=800, help="shorter side (test scale)")
    parser.add_argument("--max_size", type=int, default=1333, help="longer side at most")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", default=None,
                        help="folder for the checkpoints and run folders (default a temp one)")
    args = parser.parse_args()
    names = args.networks.split(",")
    unknown = sorted(set(names) - set(NETWORKS))
    if unknown:
        parser.error(f"--networks: unknown {unknown}; known {sorted(NETWORKS)}")
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)
    import torchvision

    print(f"{bench_common.machine_facts(tf)} | torch {torch.__version__}, torchvision "
          f"{torchvision.__version__} | {args.threads} threads each | batch 1, "
          f"{args.rounds} rounds, random weights")
    photos = bench_common.load_photos(args.photos, tf)
    print("photos: " + ", ".join(f"{os.path.basename(p)} ({i.shape[1]}x{i.shape[2]})"
                                 for p, i in photos))
    with tempfile.TemporaryDirectory() as temp:
        folder = pathlib.Path(args.keep or temp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            run(name, photos, args, folder)


if __name__ == "__main__":
    main()
