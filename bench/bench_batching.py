"""How far `export.batching: bucket` moves detections from `per_image` (the padding effect).

Both servables are built in one process from the same weights
(`paa_tf.serving.export.ExportedDetector`, the graph `bin/paa_export` saves, called as a
`tf.function` without the save): `per_image` runs each photo alone on its own multiples of 32;
`bucket` runs a whole request in one bucket (`paa_tf.serving.batching`). Each photo is sent (1)
alone to `per_image`, (2) to `bucket` in a request of the photos of its orientation (the
landscape or portrait bucket), (3) to `bucket` in one request of all photos (mixed
orientations: the square canvas). Each `per_image` detection is paired with the same-class
detection of highest IoU (>= 0.5) of the bucket run (`bench_buckets.paired_shift`).

    # random R50 weights (no trained R50 offline), model.prior_prob=0.2 so detections exist:
    .venv/bin/python bench/bench_batching.py --photos 6
    # a trained run folder on its own pictures (e.g. the quickstart on cropped shapes):
    .venv/bin/python bench/bench_batching.py --model_dir runs/quickstart \\
        --images 'data/shapes/val/*.jpg' --crop 176 --photos 8 \\
        --override data.max_size=400,data.image_size=[512,512]
"""

import argparse
import glob
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_buckets import paired_shift  # noqa: E402  (bench/: script folder)
from bench_common import COCO_PHOTO_GLOBS, machine_facts  # noqa: E402

import paa_tf  # noqa: E402,F401  (keeps Keras 3 out before TensorFlow loads)

R50 = "configs/paa_r50_fpn_1x_coco.yaml"


def build(args):
    """(config, {batching: ExportedDetector}) from one set of weights."""
    import dataclasses

    import tensorflow as tf

    from paa_tf import config as config_lib
    from paa_tf.data import label_map as label_map_lib
    from paa_tf.inference import postprocess
    from paa_tf.modeling.detector import build_detector
    from paa_tf.modeling.restore import restore_run
    from paa_tf.run_folder import RunFolder
    from paa_tf.serving import export, requests

    overrides = ["data.buckets=orientation"] + ([args.override] if args.override else [])
    if args.model_dir:
        run = RunFolder(args.model_dir)
        config = run.config(overrides=overrides)
        preprocess = requests.export_preprocess(config)[0]
        model, _ = restore_run(run, config, preprocess.image_size)
        label_map = run.label_map()
    else:
        config = config_lib.load_config(R50, overrides + ["model.prior_prob=0.2",
                                                          "model.num_classes=80"])
        config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, backbone_checkpoint=None))
        preprocess = requests.export_preprocess(config)[0]
        tf.random.set_seed(0)
        model = build_detector(config, image_size=preprocess.image_size)
        label_map = label_map_lib.LabelMap(ids=tuple(range(1, 81)),
                                           names=tuple(str(i) for i in range(1, 81)))
    params = postprocess.PostprocessParams.from_config(config)
    return config, {mode: export.ExportedDetector(model, preprocess, params, label_map,
                                                  requests.export_preprocess(config)[1],
                                                  batching=mode)
                    for mode in ("per_image", "bucket")}


def photos(args):
    """[(JPEG bytes, (h, w))]: the first of each orientation in name order, 2/3 landscape."""
    import numpy as np
    import tensorflow as tf

    patterns = [args.images] if args.images else COCO_PHOTO_GLOBS
    paths = sorted(p for pattern in patterns for p in glob.glob(pattern))
    found = {False: [], True: []}
    for index, path in enumerate(paths):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3).numpy()
        if args.crop:  # alternate landscape and portrait crops of square pictures
            image = image[:args.crop] if index % 2 else image[:, :args.crop]
        found[image.shape[0] > image.shape[1]].append(
            (tf.io.encode_jpeg(np.ascontiguousarray(image), quality=95).numpy(),
             image.shape[:2]))
    portrait = args.photos // 3
    chosen = found[False][:args.photos - portrait] + found[True][:portrait]
    if len(chosen) < args.photos:
        raise SystemExit(f"found {len(chosen)} usable photos under {patterns}, need "
                         f"{args.photos}; run from the project root with ../shared/data present")
    return chosen


def call(module, jpegs):
    """[per-photo dict: boxes in pixels [N, 4], scores [N], classes [N]], wall seconds."""
    import tensorflow as tf

    start = time.perf_counter()
    out = {k: v.numpy() for k, v in module.serve_encoded(tf.constant([j for j, _ in jpegs]))
           .items()}
    seconds = time.perf_counter() - start
    results = []
    for index, (_, (height, width)) in enumerate(jpegs):
        count = int(out["num_detections"][index])
        results.append({"detection_boxes": out["detection_boxes"][index, :count]
                        * [height, width, height, width],
                        "detection_scores": out["detection_scores"][index, :count],
                        "detection_classes": out["detection_classes"][index, :count]})
    return results, seconds


def confident(detections, low):
    """`detections` (one photo's dict) with score >= `low`."""
    keep = detections["detection_scores"] >= low
    return {k: v[keep] for k, v in detections.items()}


def summary(name, shifts):
    import numpy as np

    matched = np.array([s for s in shifts if s is not None]).reshape(-1, 2)
    if not len(matched):
        return f"{name}: {len(shifts)} detections, none with a partner"
    return (f"{name}: {len(shifts)} per_image detections, {len(matched)} "
            f"({100 * len(matched) / len(shifts):.1f} %) with a same-class partner of IoU >= 0.5;"
            f" |score change| median {np.median(matched[:, 0]):.4f}, 95th pct "
            f"{np.percentile(matched[:, 0], 95):.4f}, max {matched[:, 0].max():.4f}; largest "
            f"box-corner move median {np.median(matched[:, 1]):.2f} px, 95th pct "
            f"{np.percentile(matched[:, 1], 95):.2f} px")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--model_dir", default=None, help="a trained run folder")
    parser.add_argument("--images", default=None, help="JPEG glob (default: COCO photos)")
    parser.add_argument("--crop", type=int, default=0,
                        help="crop square pictures to this side, landscape and portrait")
    parser.add_argument("--override", default="", help="config overrides 'a.b=1,c.d=2'")
    parser.add_argument("--min_scores", default="0,0.3,0.5",
                        help="also count only per_image detections of at least these scores")
    args = parser.parse_args()
    import tensorflow as tf

    print(machine_facts(tf), flush=True)
    config, modules = build(args)
    jpegs = photos(args)
    print(f"{len(jpegs)} photos {[s for _, s in jpegs]}; S={config.data.eval_shorter_side} "
          f"L={config.data.max_size} canvas {tuple(config.data.image_size)}", flush=True)
    for module in modules.values():  # trace (untimed)
        call(module, jpegs[:1])
    alone, seconds = [], {"per_image": 0.0, "bucket": 0.0}
    for jpeg in jpegs:
        result, spent = call(modules["per_image"], [jpeg])
        alone += result
        seconds["per_image"] += spent
    portrait = [shape[0] > shape[1] for _, shape in jpegs]
    own = [None] * len(jpegs)
    for orientation in (False, True):
        indices = [i for i, p in enumerate(portrait) if p == orientation]
        if indices:
            result, spent = call(modules["bucket"], [jpegs[i] for i in indices])
            seconds["bucket"] += spent
            for i, r in zip(indices, result):
                own[i] = r
    mixed, _ = call(modules["bucket"], jpegs)
    for name, runs in (("bucket of its orientation", own), ("bucket of a mixed request", mixed)):
        for low in (float(v) for v in args.min_scores.split(",")):
            shifts = [s for a, b in zip(alone, runs) for s in paired_shift(confident(a, low), b)]
            print(summary(f"per_image (score >= {low}) vs {name}", shifts), flush=True)
    print(f"CPU wall seconds for the {len(jpegs)} photos: per_image one by one "
          f"{seconds['per_image']:.1f}, bucket in {len(set(portrait))} "
          f"orientation request(s) {seconds['bucket']:.1f} (one pass each, loaded machine)")


if __name__ == "__main__":
    main()
