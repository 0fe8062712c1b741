"""PAA's overhead on a training step, and the peak memory of a step.

Step time (default mode): three trainers built from one config that differ only in
`assign.method` (paa, iou, atss), each the training loop's own set-up
(`paa_tf.training.train.Trainer`: same seed, SGD with momentum and the LR schedule, the compiled
`tf.function` around `strategy.run(model.train_step, ...)`, no `jit_compile` on the step; PAA's
EM is XLA-compiled inside it as in training), fed ONE fixed batch shaped like the training
pipeline's output. After warm-up (compilation) the steps are timed round-robin (paa, iou,
atss, paa, ...) so load drift hits every method alike; it prints the median and minimum
step time per method and "PAA adds X % over IoU / Y % over ATSS". It then times the
assignment alone (`paa_tf.assign.assign` in a `tf.function`, on the outputs of the PAA model
for the same batch) and prints it as a share of the PAA step.

Memory (--memory): each (config, method) runs in a fresh child process of this script,
which reports the peak RSS (`ru_maxrss`) after building the trainer (model + optimizer) and
after N training steps; the step's peak is (after steps) - (after build). Without --config it
runs the quickstart config and the R50 config at batch 2 at 512x512 and at 896x1408
(`R50_OVERRIDES`, `R50_LARGE_OVERRIDES`; model.backbone_checkpoint is not loaded: the
trainer loads it only in `restore_or_initialise`, which is not called).

The batch: with --data auto (default) one batch of the real training pipeline when the
config's train annotations exist (e.g. data/shapes for the quickstart), otherwise a
synthetic batch (normal-noise images, `--gts` random boxes per image, the rest -1 padded to
data.max_instances).

    taskset -c 1 .venv/bin/python bench/bench_step.py [--config configs/quickstart.yaml]
        [--override a.b=c,...] [--steps 20] [--data auto|pipeline|synthetic]
    taskset -c 1 .venv/bin/python bench/bench_step.py --memory [--memory-steps 3]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_common import machine_facts, run_times  # noqa: E402  (bench/: script folder)

import paa_tf  # noqa: E402,F401  (keeps Keras 3 out before TensorFlow loads)

METHODS = ("paa", "iou", "atss")
QUICKSTART = "configs/quickstart.yaml"
R50 = "configs/paa_r50_fpn_1x_coco.yaml"
# R50 on a CPU at batch 2 (sizes are multiples of 128; the config's square canvas is 1408x1408):
# 512x512, and 896x1408 (the 128-multiple bucket of an 800x1333 image that the memory rows of
# docs/BENCHMARKS.md were measured at; today's 32-multiple bucket is 800x1344).
R50_OVERRIDES = "data.image_size=[512,512],data.min_size=[512],data.max_size=512,train.batch_size=2"
R50_LARGE_OVERRIDES = ("data.image_size=[896,1408],data.min_size=[800],data.max_size=1333,"
                       "train.batch_size=2")


def load_config(path, overrides):
    from paa_tf import config as config_lib

    config = config_lib.load_config(path, overrides)
    if config.model.num_classes is None:  # quickstart.yaml takes it from its data: 6 shapes
        config.model.num_classes = 6
    return config


def synthetic_batch(config, gts, seed=0):
    """A batch shaped like the pipeline's output, with random GT boxes.

    Returns dict of NumPy arrays: image float32 [B, H, W, 3] (normalised-looking noise),
    gt_boxes float32 [B, M, 4] yxyx pixels (-1 pads), gt_classes int32 [B, M] (-1 pads),
    image_info float32 [B, 4, 2], source_id int64 [B]; B = train.batch_size,
    M = data.max_instances (`gts` when unset: there are no annotations to count it from),
    `gts` real boxes per image (at most M).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    batch = config.train.batch_size
    height, width = (int(s) for s in config.data.image_size)
    rows = config.data.max_instances or gts
    count = min(gts, rows)
    boxes = np.full((batch, rows, 4), -1.0, np.float32)
    classes = np.full((batch, rows), -1, np.int32)
    short = min(height, width)
    for b in range(batch):
        # Side lengths log-uniform from 16 px to 60 % of the image: all pyramid levels see GTs.
        h = np.exp(rng.uniform(np.log(16), np.log(0.6 * short), count))
        w = np.clip(h * np.exp(rng.uniform(-0.7, 0.7, count)), 8, width)
        y0 = rng.uniform(0, height - h)
        x0 = rng.uniform(0, width - w)
        boxes[b, :count] = np.stack([y0, x0, y0 + h, x0 + w], -1)
        classes[b, :count] = rng.integers(0, config.model.num_classes, count)
    info = np.array([[height, width], [height, width], [1.0, 1.0], [0.0, 0.0]], np.float32)
    return {"image": rng.normal(size=(batch, height, width, 3)).astype(np.float32),
            "gt_boxes": boxes, "gt_classes": classes,
            "image_info": np.tile(info, (batch, 1, 1)),
            "source_id": np.arange(batch, dtype=np.int64)}


def pipeline_batch(config):
    """The first batch of the real training pipeline (dict of NumPy arrays, as synthetic)."""
    from paa_tf.data import pipeline

    dataset, _ = pipeline.build_dataset(config.data, split="train", is_training=True,
                                        batch_size=config.train.batch_size,
                                        plus_one=config.model.plus_one)
    return {key: value.numpy() for key, value in next(iter(dataset)).items()}


def make_batch(config, source, gts):
    """(batch dict, description) from the pipeline or synthetic (see the module docstring)."""
    if source == "auto":
        source = "pipeline" if os.path.isfile(config.data.train_annotations) else "synthetic"
    batch = pipeline_batch(config) if source == "pipeline" else synthetic_batch(config, gts)
    real = int((batch["gt_classes"] >= 0).sum())
    shape = "x".join(str(s) for s in batch["image"].shape)
    return batch, (f"{source} batch: image {shape}, {real} GT boxes "
                   f"({real / len(batch['image']):.1f}/image, padded to "
                   f"{batch['gt_classes'].shape[1]})")


def build_trainer(config, method, batch, model_dir):
    """A `paa_tf.training.train.Trainer` for `method`, on one device, fed `batch` forever."""
    import copy

    import tensorflow as tf
    import tf_keras

    from paa_tf.training import train as train_lib

    config = copy.deepcopy(config)
    config.assign.method = method
    if config.train.mixed_precision:  # as bin/paa_train does
        tf_keras.mixed_precision.set_global_policy("mixed_float16")

    def dataset_fn(_):
        return tf.data.Dataset.from_tensors(batch).repeat()

    return train_lib.Trainer(config, model_dir, train_lib.build_strategy("one_device"),
                             dataset_fn=dataset_fn)


def timed_step(trainer):
    """Seconds of one training step, the loss fetched (as the training loop does)."""
    step_fn = trainer._train_step_fn()  # the training loop's compiled step
    start = time.perf_counter()
    logs = step_fn(next(trainer.iterator))
    loss = float(logs["loss"])
    return time.perf_counter() - start, loss


def assign_inputs(model, batch):
    """Inputs of the assignment as `forward_and_losses` makes them for `batch`.

    Returns (gt_boxes float32 [B, M, 4] yxyx, gt_classes int32 [B, M], cls_logits float32
    [B, A, C], pred_boxes float32 [B, A, 4] decoded yxyx).
    """
    import tensorflow as tf

    outputs = model(tf.constant(batch["image"]), training=True)
    return (tf.constant(batch["gt_boxes"]), tf.constant(batch["gt_classes"]),
            tf.cast(outputs["cls_logits"], tf.float32), model.decode(outputs["box_deltas"]))


def assign_runner(model, inputs):
    """A no-argument callable running only `paa_tf.assign.assign` with `model`'s config.

    Compiled like the step (`tf.function`, no jit_compile); fetches the labels.
    """
    import tensorflow as tf

    from paa_tf.assign import assign

    @tf.function
    def run():
        return assign(model.config.assign, model.anchors, model.level_ids, model.num_levels,
                      *inputs, plus_one=model.plus_one).labels

    return lambda: run().numpy()


def ms(times):
    import numpy as np

    return f"{np.median(times) * 1e3:9.1f} ms (min {min(times) * 1e3:8.1f})"


def bench_time(args):
    import numpy as np
    import tensorflow as tf

    config = load_config(args.config or QUICKSTART, args.override)
    print(machine_facts())
    print(f"config {args.config or QUICKSTART}, overrides {args.override or 'none'}; "
          f"backbone {config.model.backbone}, {config.model.num_classes} classes, "
          f"P{config.model.min_level}-P{config.model.max_level}, "
          f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}")
    batch, description = make_batch(config, args.data, args.gts)
    print(description)
    trainers, compile_s = {}, {}
    with tempfile.TemporaryDirectory() as root:
        for method in METHODS:
            trainers[method] = build_trainer(config, method, batch, os.path.join(root, method))
        first = [w.sum() for w in trainers["paa"].model.get_weights()]
        same = all(np.allclose(first, [w.sum() for w in t.model.get_weights()])
                   for t in trainers.values())
        print(f"{len(trainers['paa'].model.anchors)} anchors; same initial weights for the "
              f"three models: {same}")
        for method, trainer in trainers.items():
            start = time.perf_counter()
            timed_step(trainer)  # trace + compile
            compile_s[method] = time.perf_counter() - start
            for _ in range(args.warmup):
                timed_step(trainer)
        times = {method: [] for method in METHODS}
        losses = {}
        for _ in range(args.steps):  # round-robin: drift hits every method alike
            for method, trainer in trainers.items():
                elapsed, losses[method] = timed_step(trainer)
                times[method].append(elapsed)
        print(f"\ntraining step, {args.steps} steps each, interleaved round-robin "
              f"(median, min); first call = trace + compile + step:")
        for method in METHODS:
            print(f"  {method:5s} {ms(times[method])} | first call {compile_s[method]:6.1f} s | "
                  f"loss after {args.steps + args.warmup + 1} steps {losses[method]:.4f}")
        med = {m: float(np.median(t)) for m, t in times.items()}
        low = {m: min(t) for m, t in times.items()}
        print(f"PAA adds {100 * (med['paa'] / med['iou'] - 1):.1f} % over IoU / "
              f"{100 * (med['paa'] / med['atss'] - 1):.1f} % over ATSS "
              f"(medians; minima: {100 * (low['paa'] / low['iou'] - 1):.1f} % / "
              f"{100 * (low['paa'] / low['atss'] - 1):.1f} %)")
        if args.assign_repeats:
            bench_assign_alone(trainers, batch, args.assign_repeats, med["paa"])


def bench_assign_alone(trainers, batch, repeats, paa_step):
    import numpy as np

    # Every method sees the PAA model's outputs (iou and atss do not read them).
    inputs = assign_inputs(trainers["paa"].model, batch)
    runs = {method: assign_runner(trainer.model, inputs) for method, trainer in trainers.items()}
    for run in runs.values():
        run()  # trace + compile
    times = {method: [] for method in METHODS}
    for _ in range(repeats):
        for method, run in runs.items():
            times[method] += run_times(run, 1)
    print(f"\nassignment alone (paa_tf.assign.assign in a tf.function on fixed model outputs, "
          f"{repeats} runs each, interleaved):")
    for method in METHODS:
        share = float(np.median(times[method])) / paa_step
        print(f"  {method:5s} {ms(times[method])} | {100 * share:5.1f} % of the PAA step")


def peak_mib():
    """Peak RSS of this process in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_memory(args):
    """Hidden child mode: peak RSS (MiB) at each stage of one (config, method), as JSON.

    Stages: imports, batch, build (trainer: model + optimizer slots), first step (trace +
    XLA compile + step) and `--memory-steps` later steps. ru_maxrss cannot be reset, so the
    later figure includes the first step's peak.
    """
    import tensorflow as tf  # noqa: F401

    report = {"imports": peak_mib()}
    config = load_config(args.config, args.override)
    batch, description = make_batch(config, args.data, args.gts)
    report["batch"] = peak_mib()
    with tempfile.TemporaryDirectory() as root:
        trainer = build_trainer(config, args.child_method, batch, root)
        report["build"] = peak_mib()
        report["first_step_s"] = timed_step(trainer)[0]
        report["first_step"] = peak_mib()
        report["step_s"] = [timed_step(trainer)[0] for _ in range(args.memory_steps)]
        report["later"] = peak_mib()
    report["description"] = description
    print("MEMORY " + json.dumps(report), flush=True)


def memory_cases(args):
    if args.config:
        return [(args.config, args.override)]
    return [(QUICKSTART, args.override), (R50, [R50_OVERRIDES, *args.override]),
            (R50, [R50_LARGE_OVERRIDES, *args.override])]


def run_child(path, overrides, method, args):
    """The child's report dict, or None after printing why it failed."""
    command = [sys.executable, os.path.abspath(__file__), "--child-method", method,
               "--config", path, "--data", args.data, "--gts", str(args.gts),
               "--memory-steps", str(args.memory_steps)]
    for item in overrides:
        command += ["--override", item]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [x for x in result.stdout.splitlines() if x.startswith("MEMORY ")]
    if result.returncode or not lines:
        print(f"  {method:5s} FAILED (exit {result.returncode}):\n{result.stderr[-2000:]}")
        return None
    return json.loads(lines[-1][len("MEMORY "):])


def bench_memory(args):
    import numpy as np

    print(machine_facts())
    print(f"peak RSS (ru_maxrss, MiB) of a fresh process per (config, method): after imports, "
          f"batch, build (model + optimizer), the 1st step (trace + XLA compile + step), and "
          f"after {args.memory_steps} more steps. step peak = that peak - build.")
    for path, overrides in memory_cases(args):
        print(f"\nconfig {path}, overrides {','.join(overrides) or 'none'}")
        for method in METHODS:
            r = run_child(path, overrides, method, args)
            if r is None:
                continue
            if method == METHODS[0]:
                print(f"  {r['description']}")
            print(f"  {method:5s} imports {r['imports']:5.0f} | batch {r['batch']:5.0f} | "
                  f"build {r['build']:5.0f} | 1st step {r['first_step']:6.0f} | later "
                  f"{r['later']:6.0f} || step peak {r['later'] - r['build']:6.0f} || 1st step "
                  f"{r['first_step_s']:.1f} s, later {np.median(r['step_s']):.2f} s")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None,
                        help=f"experiment YAML (default {QUICKSTART}; with --memory and no "
                        f"--config: {QUICKSTART}, and {R50} with {R50_OVERRIDES} and with "
                        f"{R50_LARGE_OVERRIDES})")
    parser.add_argument("--override", action="append", default=[],
                        help="dotted overrides a.b=c, comma-separated or repeated (as paa_train)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per method after the compiling first call")
    parser.add_argument("--assign-repeats", type=int, default=20,
                        help="timed runs of the assignment alone per method (0: skip)")
    parser.add_argument("--data", choices=("auto", "pipeline", "synthetic"), default="auto")
    parser.add_argument("--gts", type=int, default=8, help="GT boxes per synthetic image")
    parser.add_argument("--memory", action="store_true", help="peak memory mode (see above)")
    parser.add_argument("--memory-steps", type=int, default=2,
                        help="--memory: steps measured after the first (compiling) one")
    parser.add_argument("--child-method", choices=METHODS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main():
    args = parse_args()
    if args.child_method:
        child_memory(args)
    elif args.memory:
        bench_memory(args)
    else:
        bench_time(args)


if __name__ == "__main__":
    main()
