"""Square canvas vs 32-multiple buckets (data.buckets) for R50-FPN at 800/1333 on the CPU.

Both cases use the same real photos of coco_mini and the R50-FPN 1x config
(random weights; model.backbone_checkpoint is not loaded):

  train   one training step of `paa_tf.training.train.Trainer` (its compiled step, PAA assignment,
          SGD), batch 1, on images of the bucketed training pipeline (800x1344 landscape,
          1344x800 portrait); the square case gets the very same batch zero-padded to the
          1408x1408 canvas (exactly what the square pipeline makes, see tests/test_buckets.py).
  serve   one `serving_default` request (one JPEG of val2017) to a SavedModel exported by
          `paa_tf.serving.export` with data.buckets square (every image padded to 1408x1408) and
          orientation (each image padded to its own multiple of 32, e.g. 800x1216).

Time mode (default): both cases in this process, calls alternating and the order swapped
every round (square first, then bucketed first, ...), so load drift hits both alike; prints
images/s, the median time per image, the anchors per image and the ratio.

Memory mode (--memory): peak RSS (ru_maxrss) is per process and cannot be reset, so each
(case, square|bucketed) runs in its own child process of this script and reports its peak
after building (trainer; or export, reload and one warm-up call) and after the calls; the
difference is what the steps or requests themselves add.

    .venv/bin/python bench/bench_buckets.py [--train-images 6] [--serve-images 12]
        [--rounds 2] [--data ../shared/data/coco_mini]
    .venv/bin/python bench/bench_buckets.py --memory [--cases train,serve]
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

from bench_common import machine_facts  # noqa: E402  (bench/: script folder)

import paa_tf  # noqa: E402,F401  (keeps Keras 3 out before TensorFlow loads)

CONFIG = "configs/paa_r50_fpn_1x_coco.yaml"
MODES = ("square", "orientation")


def load_config(data_root, mode):
    from paa_tf import config as config_lib

    root = os.path.abspath(data_root)
    return config_lib.load_config(CONFIG, [
        f"data.train_images={root}/train2017",
        f"data.train_annotations={root}/annotations/instances_train2017.json",
        f"data.val_images={root}/val2017",
        f"data.val_annotations={root}/annotations/instances_val2017.json",
        f"data.buckets={mode}", "data.deterministic=true", "train.batch_size=1"])


def train_batches(data_root, count):
    """`count` batches of 1 from the bucketed training pipeline (a third of them portrait),
    and the same batches zero-padded to the square canvas."""
    import numpy as np

    from paa_tf.data import pipeline

    config = load_config(data_root, "orientation")
    dataset, _ = pipeline.build_dataset(config.data, "train", True, batch_size=1)
    first = [{k: v.numpy() for k, v in b.items()} for b in dataset.take(10 * count)]
    # Both orientations: a third portrait (as in COCO: 22 % of coco_mini's train images).
    portrait = [b for b in first if b["image"].shape[1] > b["image"].shape[2]]
    landscape = [b for b in first if b["image"].shape[1] <= b["image"].shape[2]]
    bucketed = landscape[:count - count // 3] + portrait[:count // 3]
    canvas = tuple(config.data.image_size)
    squared = []
    for batch in bucketed:
        image = np.zeros((1, *canvas, 3), np.float32)
        image[:, :batch["image"].shape[1], :batch["image"].shape[2]] = batch["image"]
        squared.append(dict(batch, image=image))
    return {"square": squared, "orientation": bucketed}


def build_trainer(data_root, mode, first_batch, model_dir):
    import tensorflow as tf

    from paa_tf.training import train as train_lib

    config = load_config(data_root, mode)
    config.model.backbone_checkpoint = None
    tf.random.set_seed(0)
    return train_lib.Trainer(config, model_dir, train_lib.build_strategy("one_device"),
                             dataset_fn=lambda _: tf.data.Dataset.from_tensors(
                                 first_batch).repeat())


def train_call(trainer, batch):
    """Seconds of one training step on `batch` (the loss fetched, as the loop does)."""
    import tensorflow as tf

    step = trainer._train_step_fn()
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    start = time.perf_counter()
    float(step(tensors)["loss"])
    return time.perf_counter() - start


def export_model(data_root, mode, folder):
    """Random-weight R50 exported as `paa_tf.serving.export` does for data.buckets = `mode`."""
    import tensorflow as tf

    from paa_tf.data import label_map as label_map_lib
    from paa_tf.inference import postprocess
    from paa_tf.modeling.detector import build_detector
    from paa_tf.serving import export, requests

    config = load_config(data_root, mode)
    config.model.backbone_checkpoint = None
    tf.random.set_seed(0)
    model = build_detector(config)
    label_map = label_map_lib.LabelMap(ids=tuple(range(1, 81)),
                                       names=tuple(f"c{i}" for i in range(80)))
    preprocess, max_pixels = requests.export_preprocess(config)
    module = export.ExportedDetector(
        model, preprocess, postprocess.PostprocessParams.from_config(config), label_map,
        max_pixels)
    labels = label_map_lib.write_label_map(label_map, os.path.join(folder, "lm.json"))
    path = export.save_exported(module, os.path.join(folder, mode), 1, assets=(labels,))
    return tf.saved_model.load(path).signatures["serving_default"]


def val_jpegs(data_root, count):
    """(JPEG bytes, (height, width)) of the first `count` val images, both orientations."""
    annotations = os.path.join(data_root, "annotations", "instances_val2017.json")
    with open(annotations) as f:
        images = sorted(json.load(f)["images"], key=lambda i: i["id"])
    portrait = [i for i in images if i["height"] > i["width"]]
    landscape = [i for i in images if i["height"] <= i["width"]]
    chosen = (landscape[:count - count // 3] + portrait[:count // 3])[:count]
    out = []
    for info in chosen:
        with open(os.path.join(data_root, "val2017", info["file_name"]), "rb") as f:
            out.append((f.read(), (info["height"], info["width"])))
    return out


def serve_call(serving, jpeg):
    import tensorflow as tf

    start = time.perf_counter()
    serving(inputs=tf.constant([jpeg]))["num_detections"].numpy()
    return time.perf_counter() - start


def anchors_per_image(shapes):
    from paa_tf.ops.anchors import generate_anchors

    counts = [len(generate_anchors(h, w, 3, 7)[0]) for h, w in shapes]
    return sum(counts) / len(counts)


def serve_shape(mode, size, config):
    """The padded shape a request of one image of `size` runs on (as the export pads it)."""
    from paa_tf.data import buckets

    if mode == "square":
        return tuple(config.data.image_size)
    h, w = size
    data = config.data
    scale = min(max(data.min_size) / min(h, w), data.max_size / max(h, w))
    return (buckets.round_up(round(h * scale)), buckets.round_up(round(w * scale)))


def summarise(name, times, anchors):
    import numpy as np

    print(f"\n{name}:")
    med = {}
    for mode in MODES:
        med[mode] = float(np.median(times[mode]))
        print(f"  {mode:11s} {len(times[mode]) / sum(times[mode]):6.3f} "
              f"images/s (median {med[mode]:6.2f} s/image, min {min(times[mode]):6.2f}) | "
              f"{anchors[mode]:8.0f} anchors/image")
    print(f"  bucketed / square: {med['square'] / med['orientation']:.2f}x images/s (medians), "
          f"{anchors['square'] / anchors['orientation']:.2f}x fewer anchors")


def bench_time(args):
    print(machine_facts())
    print(f"load average before: {os.getloadavg()}")
    batches = train_batches(args.data, args.train_images)
    jpegs = val_jpegs(args.data, args.serve_images)
    shapes = [b["image"].shape[1:3] for b in batches["orientation"]]
    print(f"train: {len(shapes)} images, buckets {sorted(set(shapes))}; serve: {len(jpegs)} "
          f"JPEGs ({sum(h > w for _, (h, w) in jpegs)} portrait)")
    with tempfile.TemporaryDirectory() as root:
        if "train" in args.cases:
            bench_train(args, batches, shapes, root)
        if "serve" in args.cases:
            bench_serve(args, jpegs, root)
    print(f"load average after: {os.getloadavg()}")


def bench_train(args, batches, shapes, root):
    """Training steps, square vs bucketed, on the same batches (see the module docstring)."""
    trainers = {m: build_trainer(args.data, m, batches[m][0], os.path.join(root, m))
                for m in MODES}
    for mode in MODES:  # trace + compile every shape once, untimed
        for shape in sorted(set(shapes)):
            index = shapes.index(shape)
            train_call(trainers[mode], batches[mode][index])
    times = {m: [] for m in MODES}
    for r in range(args.rounds):
        for i in range(len(shapes)):
            order = MODES if (r + i) % 2 == 0 else MODES[::-1]
            for mode in order:
                times[mode].append(train_call(trainers[mode], batches[mode][i]))
    anchors = {"square": anchors_per_image([tuple(trainers["square"].config.data.image_size)]),
               "orientation": anchors_per_image(shapes)}
    summarise(f"training step, batch 1, {args.rounds} rounds x {len(shapes)} images",
              times, anchors)
    del trainers


def bench_serve(args, jpegs, root):
    """serving_default requests, square vs bucketed export, on the same JPEGs."""
    servings = {m: export_model(args.data, m, root) for m in MODES}
    config = load_config(args.data, "orientation")
    for mode in MODES:
        for jpeg, _ in jpegs[:1] + [j for j in jpegs if j[1][0] > j[1][1]][:1]:
            serve_call(servings[mode], jpeg)  # warm-up of each branch
    times = {m: [] for m in MODES}
    for r in range(args.rounds):
        for i, (jpeg, _) in enumerate(jpegs):
            order = MODES if (r + i) % 2 == 0 else MODES[::-1]
            for mode in order:
                times[mode].append(serve_call(servings[mode], jpeg))
    anchors = {m: anchors_per_image([serve_shape(m, size, config) for _, size in jpegs])
               for m in MODES}
    summarise(f"SavedModel serving_default, 1 JPEG per request, {args.rounds} rounds x "
              f"{len(jpegs)} images", times, anchors)


def padding_positives(data_root, count):
    """PAA at initialisation on the square canvas: positives whose anchor lies outside the
    image's bucket (the anchors the bucket drops). Zero logits and zero deltas, so the anchor
    scores depend on the anchor-GT geometry only; `count` training images at S = 800."""
    import tensorflow as tf

    from paa_tf.assign import assign
    from paa_tf.data import pipeline
    from paa_tf.ops.anchors import generate_anchors

    config = load_config(data_root, "orientation")
    dataset, _ = pipeline.build_dataset(config.data, "train", True, batch_size=1)
    canvas = tuple(config.data.image_size)
    anchors, levels = generate_anchors(*canvas, 3, 7)
    # The cell's top-left corner: a bucket holds every cell that starts inside it (P6/P7
    # have ceil sizes, so a cell may start inside and end in the padding).
    starts = (anchors[:, :2] + anchors[:, 2:]) / 2 - 2.0 ** (levels[:, None] + 3) / 2
    totals = {"gts": 0, "positives": 0, "outside": 0, "gts_with_outside": 0}
    for batch in dataset.take(count):
        height, width = batch["image"].shape[1:3]
        outside = (starts[:, 0] >= height) | (starts[:, 1] >= width)
        result = assign(config.assign, tf.constant(anchors), levels, 5, batch["gt_boxes"],
                        batch["gt_classes"], tf.zeros([1, len(anchors), 80]),
                        tf.constant(anchors)[None])
        positive = result.positive_mask.numpy()[0]
        matched = result.matched_gt.numpy()[0]
        totals["gts"] += int((batch["gt_classes"].numpy() >= 0).sum())
        totals["positives"] += int(positive.sum())
        totals["outside"] += int((positive & outside).sum())
        totals["gts_with_outside"] += len(set(matched[positive & outside].tolist()))
    print(f"\nPAA at initialisation on the 1408x1408 canvas, {count} training images: "
          f"{totals['positives']} positives for {totals['gts']} GTs; {totals['outside']} "
          f"positives ({100 * totals['outside'] / max(totals['positives'], 1):.2f} %) lie "
          f"outside the image's bucket, for {totals['gts_with_outside']} GTs")


def detections_at(model, config, image, shape):
    """Detections (original pixels) of one decoded uint8 image padded to `shape` (H, W), or
    to its own multiples of 32 when `shape` is None; the evaluation resize in both."""
    import numpy as np
    import tensorflow as tf

    from paa_tf.data import buckets, transforms
    from paa_tf.inference import postprocess

    data = config.data
    resized, info = transforms.resize_image(
        tf.constant(image), max(data.min_size), data.max_size, tuple(data.image_size),
        data.pixel_mean, data.pixel_std)
    height, width = resized.shape[:2]
    shape = shape or (buckets.round_up(height), buckets.round_up(width))
    padded = np.zeros((1, *shape, 3), np.float32)
    padded[0, :height, :width] = resized.numpy()
    outputs = model(padded, training=False)
    anchors, level_ids = model.anchors_for(*shape)
    det = postprocess.postprocess(
        outputs["cls_logits"], outputs["box_deltas"], outputs["iou_logits"], anchors,
        info[None], level_ids=level_ids, params=postprocess.PostprocessParams.from_config(config))
    count = int(det["num_detections"][0])
    return {k: det[k].numpy()[0][:count] for k in
            ("detection_boxes", "detection_scores", "detection_classes")}


def paired_shift(own, square):
    """Per detection of `own`: (|score change|, largest |box corner change| px) against the
    same-class detection of `square` with the highest IoU, or None without one of IoU >= 0.5."""
    import numpy as np

    a, b = own["detection_boxes"], square["detection_boxes"]
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)  # noqa: E731
    iou = inter / (area(a)[:, None] + area(b)[None, :] - inter)
    iou = np.where(own["detection_classes"][:, None] == square["detection_classes"][None],
                   iou, 0.0)
    shifts = []
    for i, j in enumerate(np.argmax(iou, axis=1) if len(b) else [0] * len(a)):
        if not len(b) or iou[i, j] < 0.5:
            shifts.append(None)
            continue
        shifts.append((abs(float(own["detection_scores"][i] - square["detection_scores"][j])),
                       float(np.abs(a[i] - b[j]).max())))
    return shifts


def padding_effect(args):
    """How far detections move between the own-32-multiple padding (export) and the square
    canvas, on val photos; random R50 weights with model.prior_prob=0.2 so that detections
    exist (no trained R50 is available offline; a trained head differs)."""
    import numpy as np
    import tensorflow as tf

    from paa_tf.data import transforms
    from paa_tf.modeling.detector import build_detector

    config = load_config(args.data, "orientation")
    config.model.backbone_checkpoint = None
    config.model.prior_prob = 0.2
    tf.random.set_seed(0)
    model = build_detector(config)
    canvas = tuple(config.data.image_size)
    shifts = []
    for jpeg, _ in val_jpegs(args.data, args.padding_effect):
        image = transforms.decode_image(tf.constant(jpeg)).numpy()
        own = detections_at(model, config, image, None)
        square = detections_at(model, config, image, canvas)
        shifts += paired_shift(own, square)
        print(f"  {image.shape[:2]}: {len(own['detection_scores'])} detections own-32, "
              f"{len(square['detection_scores'])} square", flush=True)
    matched = np.array([s for s in shifts if s is not None]).reshape(-1, 2)
    print(f"\nown multiple of 32 vs {canvas[0]}x{canvas[1]} canvas, {args.padding_effect} photos, "
          f"{len(shifts)} detections: {len(matched)} have a same-class partner of IoU >= 0.5; "
          f"|score change| median {np.median(matched[:, 0]):.4f}, 95th pct "
          f"{np.percentile(matched[:, 0], 95):.4f}, max {matched[:, 0].max():.4f}; "
          f"largest box-corner move median {np.median(matched[:, 1]):.2f} px, 95th pct "
          f"{np.percentile(matched[:, 1], 95):.2f} px")


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(args):
    """Hidden child mode: `train:MODE` or `serve:MODE:FOLDER` prints the peak RSS of one case
    as a JSON line; `export:MODE:FOLDER` only writes the SavedModel for a later serve child."""
    case, mode, *folder = args.child.split(":")
    report = {}
    if case == "export":
        export_model(args.data, mode, folder[0])
        return
    if case == "train":
        with tempfile.TemporaryDirectory() as root:
            batches = train_batches(args.data, args.train_images)[mode]
            trainer = build_trainer(args.data, mode, batches[0], root)
            report["build"] = peak_mib()
            report["s"] = [train_call(trainer, b) for b in batches]
    else:
        import tensorflow as tf

        jpegs = val_jpegs(args.data, args.serve_images)
        serving = tf.saved_model.load(os.path.join(folder[0], mode, "1")).signatures[
            "serving_default"]
        report["build"] = peak_mib()
        report["s"] = [serve_call(serving, jpeg) for jpeg, _ in jpegs]
    report["peak"] = peak_mib()
    print("MEMORY " + json.dumps(report), flush=True)


def run_child(args, spec):
    """(exit code, stderr, last MEMORY report or None) of `--child spec`."""
    command = [sys.executable, os.path.abspath(__file__), "--child", spec, "--data", args.data,
               "--train-images", str(args.train_images), "--serve-images", str(args.serve_images)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [x for x in result.stdout.splitlines() if x.startswith("MEMORY ")]
    return result.returncode, result.stderr, json.loads(lines[-1][7:]) if lines else None


def bench_memory(args):
    print(machine_facts())
    print("peak RSS (ru_maxrss, MiB) of a fresh process per case: after building (training: "
          "the trainer; serving: the SavedModel loaded, exported beforehand by another "
          "process), and after the calls (training: the first compiles each bucket; serving: "
          "every request, the first included)")
    with tempfile.TemporaryDirectory() as folder:
        for case in args.cases:
            for mode in MODES:
                if case == "serve":
                    code, err, _ = run_child(args, f"export:{mode}:{folder}")
                    if code:
                        print(f"  export {mode} FAILED (exit {code}):\n{err[-2000:]}")
                        continue
                spec = f"{case}:{mode}" + (f":{folder}" if case == "serve" else "")
                code, err, r = run_child(args, spec)
                if code or r is None:
                    print(f"  {case} {mode} FAILED (exit {code}):\n{err[-2000:]}")
                    continue
                print(f"  {case:5s} {mode:11s} build {r['build']:7.0f} | peak {r['peak']:7.0f} | "
                      f"calls add {r['peak'] - r['build']:6.0f} | {len(r['s'])} calls, median "
                      f"{sorted(r['s'])[len(r['s']) // 2]:.2f} s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/coco_mini",
                        help="COCO folder with train2017/, val2017/ and annotations/")
    parser.add_argument("--train-images", type=int, default=6)
    parser.add_argument("--serve-images", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="peak RSS, one child per case")
    parser.add_argument("--cases", default="train,serve", type=lambda v: v.split(","),
                        help="comma-separated: train, serve")
    parser.add_argument("--padding-positives", type=int, default=0, metavar="N",
                        help="only count PAA positives outside the bucket on N images")
    parser.add_argument("--padding-effect", type=int, default=0, metavar="N",
                        help="only measure how far detections move, own 32-multiple vs square "
                             "canvas, on N val photos")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.padding_effect:
        print(machine_facts())
        padding_effect(args)
    elif args.padding_positives:
        padding_positives(args.data, args.padding_positives)
    elif args.child:
        child(args)
    elif args.memory:
        bench_memory(args)
    else:
        bench_time(args)


if __name__ == "__main__":
    main()
